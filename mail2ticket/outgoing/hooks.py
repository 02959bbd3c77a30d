"""Hook delivery: the queued events go to each hook's command or URL, at least once, with retries.

Events are queued by tickets/db.log_event in their own transaction (tickets/hookqueue.py); this
module keeps the queue's subscriptions in step with the config, delivers what is due (the
daemon's "hooks" job, on a thread of its own: never on the poll path), and sends one event now
for 'hooks test'. A command gets the body on standard input, has no shell, and is killed at its
time limit; a URL gets a POST over verified TLS, signed with HMAC-SHA256 (docs/hooks.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mail2ticket import __version__
from mail2ticket.config.hooks import EVENTS, Hook
from mail2ticket.config.model import Config
from mail2ticket.errors import Mail2TicketError, NotFoundError
from mail2ticket.tickets import hookqueue
from mail2ticket.tickets.db import get_tickets, list_tickets, now_iso, transaction

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    import http.client

    from sqlite_utils import Database

log = logging.getLogger(__name__)

BACKOFF_FIRST = 30  # seconds before the second attempt, doubling up to BACKOFF_MAX
BACKOFF_MAX = 3600
MAX_ATTEMPTS = 12  # then the delivery is failed (about 5 hours after the event): 'hooks retry'
KEEP_DELIVERED_DAYS = 7  # delivered entries shown by 'hooks list --all' this long
SIGNATURE_HEADER = "X-Mail2ticket-Signature"


def backoff_seconds(attempts: int) -> int:
    """The wait after the ``attempts``-th failed attempt: 30 s, 60 s, 2 min ... at most 1 hour."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1))


@dataclass
class Attempt:
    """One try of one event: delivered or not, what the target answered, and how long it took."""

    ok: bool
    result: str  # "HTTP 200", "exit 0", "killed after 10 s", "no answer"
    error: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        text = f"{self.result} in {self.seconds:.2f} s"
        return text if self.ok else f"{text}: {self.error}"


@dataclass
class Report:
    delivered: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.delivered)} delivered, {len(self.deferred)} to retry, {len(self.failed)} failed"


# --- the subscriptions: the config's hooks, as rows log_event reads -------------------------------


def subscribe(cfg: Config, db: Database) -> bool:
    """Make the database's subscriptions those of ``cfg``'s [[hooks]] (written only when they
    differ: a read when nothing changed); deliveries waiting for a hook no longer configured
    are failed. True when something changed."""
    wanted = {
        (hook.name, kind, event, account)
        for hook in cfg.hooks
        for kind, event in hook.kinds()
        for account in (hook.accounts or (None,))
    }
    if hookqueue.subscriptions(db) == wanted:
        return False
    with transaction(db):
        hookqueue.replace_subscriptions(db, wanted)
        gone = hookqueue.fail_unknown_hooks(db, [h.name for h in cfg.hooks], now_iso())
    if gone:
        log.warning("hooks: %d waiting deliveries belong to hooks no longer in the config: failed", gone)
    return True


# --- one attempt ----------------------------------------------------------------------------------


def body_of(hook: Hook, payload: dict) -> tuple[bytes, str]:
    """What the hook is sent, by its format: the event's JSON, {"text": ...} for a chat's
    incoming webhook, or the one line of text (for wall, notify-send, a pager's SMS)."""
    if hook.format == "chat":
        return json.dumps({"text": payload["text"]}).encode(), "application/json"
    if hook.format == "text":
        return (payload["text"] + "\n").encode(), "text/plain; charset=utf-8"
    return json.dumps(payload, indent=None).encode(), "application/json"


def signature(secret: str, body: bytes) -> str:
    """The value of the signature header: "sha256=" and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(hook: Hook, payload: dict, delivery: int | None = None) -> Attempt:
    """Deliver ``payload`` to ``hook`` once, within its time limit; never raises."""
    body, content_type = body_of(hook, payload)
    started = time.monotonic()
    try:
        if hook.command:
            attempt = _run(hook, body, payload)
        else:
            attempt = _post(hook, body, content_type, payload, delivery)
    except Mail2TicketError as exc:  # no secret, an unreadable ca_file
        attempt = Attempt(False, "not sent", exc.one_line())
    attempt.seconds = time.monotonic() - started
    return attempt


def _post(hook: Hook, body: bytes, content_type: str, payload: dict, delivery: int | None) -> Attempt:
    # Here, not at the top: every command imports this module (subscribe), and these load ssl,
    # the email package and keyring's machinery (about 50 ms of each command's start-up).
    import http.client

    from mail2ticket.accounts.secrets import get_hook_secret
    from mail2ticket.transport.imap import tls_context

    secret = get_hook_secret(hook.name, hook.secret_command)
    url = str(hook.url).replace("{secret}", secret)  # a chat whose webhook URL is itself the secret
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=hook.timeout, context=tls_context(hook.ca_file))
    else:  # http:// only to this machine (config/hooks.py)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=hook.timeout)
    headers = {
        "Content-Type": content_type,
        "User-Agent": f"mail2ticket/{__version__}",
        "X-Mail2ticket-Event": payload["event"],
        "X-Mail2ticket-Hook": hook.name,
        SIGNATURE_HEADER: signature(secret, body),
    }
    if delivery is not None:
        headers["X-Mail2ticket-Delivery"] = str(delivery)
    where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    # The socket's timeout bounds each wait; the hook's time limit is for the whole request: at
    # the deadline the connection is shut, so a target that sends a byte now and then cannot hold
    # the deliverer (and its claim on the event) past it.
    expired = threading.Event()
    deadline = threading.Timer(hook.timeout, _cut, (conn, expired))
    deadline.daemon = True
    deadline.start()
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read(2000).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return Attempt(False, "no answer", f"{where} did not answer within {hook.timeout} s")
        return Attempt(False, "not sent", f"{where}: {exc.__class__.__name__}: {exc}")
    finally:
        deadline.cancel()
        conn.close()
    result = f"HTTP {response.status}"
    if 200 <= response.status < 300:
        return Attempt(True, result)
    return Attempt(False, result, f"{where} answered {response.status} {response.reason}: {answer[:200]}")


def _cut(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    """The whole-request deadline of a webhook: shut its socket (the blocked read returns)."""
    expired.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _run(hook: Hook, body: bytes, payload: dict) -> Attempt:
    assert hook.command is not None
    env = {**os.environ, "MAIL2TICKET_EVENT": payload["event"], "MAIL2TICKET_HOOK": hook.name,
           "MAIL2TICKET_TEXT": payload["text"]}
    try:
        # Its own session: at the time limit the whole group goes (a shell script's children too).
        proc = subprocess.Popen(list(hook.command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:
        return Attempt(False, "not run", f"{hook.command[0]}: {exc.strerror or exc}")
    try:
        _, err = proc.communicate(body, timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Attempt(False, f"killed after {hook.timeout} s", f"{hook.command[0]} did not finish within "
                       f"{hook.timeout} s (the hook's timeout)")
    if proc.returncode == 0:
        return Attempt(True, "exit 0")
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return Attempt(False, f"exit {proc.returncode}", f"{hook.command[0]} exited with {proc.returncode}"
                   + (f": {lines[-1][:200]}" if lines else ""))


# --- the queue -------------------------------------------------------------------------------------


def deliver_due(cfg: Config, db: Database, *, now: datetime | None = None,
                only: Sequence[str] | None = None) -> Report:
    """Deliver every due event, hook by hook, oldest first. A hook whose target fails is left
    for this pass after that one attempt (its other events wait their turn: a target that is
    down or hangs costs one time limit per pass, not one per event)."""
    report = Report()
    hooks = {h.name: h for h in cfg.hooks if only is None or h.name in only}
    if not hooks:
        return report
    now = now or datetime.now(UTC)
    with transaction(db):  # a payload left unfrozen by a transaction that did not use transaction()
        hookqueue.freeze(db, partial(get_tickets, db))
    given_up: set[str] = set()
    for row in hookqueue.due_deliveries(db, _iso(now), list(hooks)):
        hook = hooks[row["hook"]]
        if hook.name in given_up or row["payload"] is None:  # None: frozen at its transaction's commit
            continue
        now = datetime.now(UTC)
        with transaction(db):
            # Not due again before the time limit has passed (and a minute more): a deliverer
            # that dies mid-attempt leaves the event to the next one then. At least once.
            claimed = hookqueue.claim(db, row["id"], _iso(now), _iso(now + timedelta(seconds=hook.timeout + 60)))
        if not claimed:
            continue  # another deliverer has it
        attempt = send(hook, json.loads(row["payload"]), row["id"])
        attempts = row["attempts"] + 1
        with transaction(db):
            if attempt.ok:
                hookqueue.mark_delivered(db, row["id"], attempt.line(), now_iso())
                report.delivered.append(row["id"])
                continue
            failed = attempts >= MAX_ATTEMPTS
            next_at = None if failed else _iso(datetime.now(UTC) + timedelta(seconds=backoff_seconds(attempts)))
            hookqueue.mark_not_delivered(db, row["id"], attempt.error or attempt.result, attempt.line(),
                                         next_attempt_at=next_at, failed=failed)
        given_up.add(hook.name)
        if failed:
            report.failed.append(row["id"])
            log.error("hook %s: event #%s (%s) failed after %d attempts: %s", hook.name, row["id"],
                      row["event"], attempts, attempt.error)
        else:
            report.deferred.append(row["id"])
            log.warning("hook %s: event #%s (%s) not delivered, retrying at %s: %s", hook.name, row["id"],
                        row["event"], next_at, attempt.error)
    return report


def hooks_job(cfg: Config, db: Database) -> None:
    """The scheduled job (service/jobs.py, [schedule] hooks): deliver what is due, forget what was
    delivered more than KEEP_DELIVERED_DAYS ago."""
    if not cfg.hooks:
        return
    report = deliver_due(cfg, db)
    if report.delivered or report.deferred or report.failed:
        log.info("hooks: %s", report.summary())
    with transaction(db):
        hookqueue.prune_delivered(db, _iso(datetime.now(UTC) - timedelta(days=KEEP_DELIVERED_DAYS)))


def retry(cfg: Config, db: Database, target: str | int | None) -> list[dict]:
    """Failed (and waiting) deliveries of one hook, one delivery, or all: due now with a fresh
    count of attempts, then delivered at once. The deliveries afterwards."""
    if isinstance(target, str):
        hook_of(cfg, target)
    with transaction(db):
        ids = hookqueue.make_due(db, target)
    if ids:
        deliver_due(cfg, db, only=[target] if isinstance(target, str) else None)
    return hookqueue.get_deliveries(db, ids)


def hook_of(cfg: Config, name: str) -> Hook:
    for hook in cfg.hooks:
        if hook.name == name:
            return hook
    known = ", ".join(h.name for h in cfg.hooks) or "none"
    raise NotFoundError(f"no hook named {name!r} in {cfg.path}", f"known hooks: {known} (see docs/hooks.md)")


def sample_payload(db: Database, hook: Hook) -> dict[str, Any]:
    """A test event for ``hook``: its first event, about the newest ticket (or a made-up one)."""
    event = hook.events[0]
    ticket = None
    if event.startswith(("ticket.", "monitoring.")):
        newest = list_tickets(db, status="all", limit=1, order="created")
        ticket = newest[0] if newest else {
            "id": 0, "subject": "Test ticket from mail2ticket", "requester": "someone@example.com",
            "requester_name": "Someone", "status": "open", "priority": "normal", "assignee": None,
            "account": hook.accounts[0] if hook.accounts else "support", "created_at": now_iso(),
            "updated_at": now_iso(), "closed_at": None, "first_response_at": None, "due_response_at": None,
            "due_resolution_at": None, "due_at": None, "overdue": False, "message_count": 1,
            "incoming_count": 1, "first_message_at": now_iso(), "tags": [],
        }
    account = ticket["account"] if ticket else (hook.accounts[0] if hook.accounts else "support")
    return hookqueue.event_payload(
        event, event_id=0, time=now_iso(), kind=EVENTS[event][0], actor="mail2ticket hooks test",
        detail="a test event sent by 'mail2ticket hooks test'", account=account, ticket=ticket,
        hook=hook.name, test=True,
    )


def try_hook(cfg: Config, db: Database, name: str) -> tuple[dict, Attempt]:
    """Send a sample event to the hook ``name`` now (not queued): the payload and the attempt."""
    hook = hook_of(cfg, name)
    payload = sample_payload(db, hook)
    return payload, send(hook, payload)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
