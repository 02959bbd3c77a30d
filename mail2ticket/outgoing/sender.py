"""The outbox sender: claims a queued mail, sends it over SMTP, records the answer; retries with backoff.

Who sends is a ``Claimer``: ``host:pid`` for a command (``poll``, ``outbox retry``), and for a
daemon ``host:pid/ID`` with ID its row in the daemons table (tickets/leases.py); that name is the
outbox row's ``claimed_by`` while it sends. A claim is taken over only from a dead claimer
(``_claim_is_stale``): on this host its pid is gone; on PostgreSQL a daemon whose row is gone or
whose heartbeat is older than [daemon] lease_ttl, at once, on any host; another host's command
after CLAIM_LEASE. A daemon's claim is never taken while its heartbeat is fresh, however old the
claim; and a daemon stops claiming and sending once its own clock says its heartbeat may be
going stale (``Claimer.alive``). Why this sends a mail at most once more after a crash between
the server's 250 and the update, and never twice otherwise: tickets/mailqueue.py. A process that
lives on after its record failed (a cut database connection) records the mail at its next claim
instead of sending it again (``_accepted``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mail2ticket.accounts.credentials import open_smtp
from mail2ticket.config.conversations import conversation_settings
from mail2ticket.config.daemon import DaemonSettings
from mail2ticket.config.model import Config
from mail2ticket.config.periods import parse_duration
from mail2ticket.errors import Mail2TicketError
from mail2ticket.outgoing.loops import iso_utc, parse_utc
from mail2ticket.outgoing.outbox import account_for
from mail2ticket.tickets.db import get_raw, log_event, now_iso, transaction
from mail2ticket.tickets.engine import engine_of
from mail2ticket.tickets.leases import heartbeat_age
from mail2ticket.tickets.mailqueue import (
    accounts_of,
    claim_entry,
    due_entries,
    get_entry,
    list_entries,
    mark_finished,
)
from mail2ticket.transport.smtp import SendFailure, send_raw, smtp_connect

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

# Test seam: called right after the server accepted a mail and before it is marked sent.
after_accept: Callable[[dict], None] | None = None

log = logging.getLogger(__name__)


def backoff_seconds(attempts: int) -> int:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1))


@dataclass
class SendReport:
    sent: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)  # temporary failure: retried later
    failed: list[int] = field(default_factory=list)  # permanent failure: needs a person
    errors: dict[int, str] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.sent)} sent, {len(self.deferred)} deferred, {len(self.failed)} failed"


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Claimer:
    """Who claims outbox mail. ``name`` goes into the row's claimed_by: ``host:pid``, or for a
    daemon ``host:pid/ID`` (``for_daemon``). ``alive``: whether this claimer may still claim and
    send; a daemon says no once its heartbeat may be stale (or it is stopping), so no other
    sender can have taken its claims for dead while it sends."""

    name: str
    alive: Callable[[], bool] = _always

    @classmethod
    def this_process(cls) -> Claimer:
        return cls(_me())

    @classmethod
    def for_daemon(cls, daemon_id: str, alive: Callable[[], bool]) -> Claimer:
        return cls(f"{_me()}/{daemon_id}", alive)


# The entries this process is sending now, and the thread of each: a claim under this process's
# name is a leftover (an exception between the claim and recording the answer, such as a cut
# database connection) unless another thread of it is sending that entry now.
_in_flight: dict[int, int] = {}
_in_flight_lock = threading.Lock()
# The entries whose mail the server accepted (its reply, and the note of refused recipients)
# that this process has not recorded as sent yet: recording failed (a cut database connection).
# Its next claim of the entry records them instead of sending the mail again (catalogue 127):
# only a process that dies between the 250 and the record sends a mail twice.
_accepted: dict[int, tuple[str, str | None]] = {}


def parse_claimer(claimed_by: str) -> tuple[str, str, str | None]:
    """(host, pid, daemon id or None) of a claimed_by value."""
    who, _, daemon_id = claimed_by.partition("/")
    host, _, pid = who.rpartition(":")
    return host, pid, daemon_id or None


def _claim_is_stale(db: Database, row: dict, now: datetime, ttl: float) -> bool:
    """Whether the claim on ``row`` (status 'sending') is a dead claimer's, so it may be taken
    over: the module docstring. ``ttl``: [daemon] lease_ttl, the age of a dead daemon's heartbeat."""
    claimed_by = row["claimed_by"]
    if not claimed_by:
        return True
    host, pid, daemon_id = parse_claimer(claimed_by)
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            with _in_flight_lock:  # our own leftover, unless another of our threads sends it now
                return _in_flight.get(row["id"], threading.get_ident()) == threading.get_ident()
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True  # the sender died (after the server's 250, perhaps): send again
        except PermissionError:
            pass
    if daemon_id is not None:
        if engine_of(db) != "postgresql":
            # SQLite: one host, and its daemon does not watch its own heartbeat (Claimer.alive is
            # always true there): its pid, alive, is the proof. Never taken, however old.
            return False
        age = heartbeat_age(db, daemon_id)
        return age is None or age > ttl  # a live daemon's claim is never taken, however old
    at = parse_utc(row["claimed_at"])
    return at is None or (now - at).total_seconds() > CLAIM_LEASE


def _claim(db: Database, entry_id: int, now: datetime, *, force: bool, claimer: Claimer, ttl: float) -> dict | None:
    """Take one mail for sending; None if it is not due, sent, or another sender has it."""

    def may_take(row: dict) -> bool:
        if row["status"] == "sent":
            return False
        if row["status"] in ("failed", "held") and not force:
            return False
        if row["status"] == "sending" and not _claim_is_stale(db, row, now, ttl):
            return False
        due = parse_utc(row["next_attempt_at"])
        return force or due is None or due <= now

    return claim_entry(db, entry_id, claimed_by=claimer.name, claimed_at=iso_utc(now), may_take=may_take)


def _finish(db: Database, row: dict, *, status: str, error: str | None = None, reply: str | None = None,
            next_at: datetime | None = None) -> None:
    now = now_iso()
    # The outbox row's own lock, not the writers' lock (PostgreSQL): a kill between the server's
    # 250 and this commit sends the mail again, and waiting for an import's batch made that
    # window long enough for two kills in a row to fall in it for one mail (catalogue 127).
    with transaction(db, writers_lock=False):
        done = mark_finished(db, row["id"], claimed_by=row["claimed_by"], status=status, error=error, reply=reply,
                             next_attempt_at=iso_utc(next_at) if next_at else None, now=now)
        what = f"{row['kind']} {row['message_id']} to {', '.join(json.loads(row['recipients']))}"
        if not done:
            # Another sender took our claim for a dead one's (this process was frozen or cut
            # off from the database): it sends, or has sent, the mail itself.
            log.warning("outbox #%s: %s, but another sender had taken the claim over meanwhile%s", row["id"],
                        status, ": the mail may have gone out twice" if status == "sent" else "; left to it")
        elif status == "sent":
            log_event(db, "mail-sent", f"{what}: {reply}", ticket_id=row["ticket_id"], account=row["account"])
        elif status == "failed":
            log_event(db, "mail-failed", f"{what}: {error}", ticket_id=row["ticket_id"], account=row["account"])


def _defer(cfg: Config, db: Database, row: dict, error: str, now: datetime, report: SendReport) -> None:

    expire = parse_duration(conversation_settings(cfg)["outbox_expire"])
    created = parse_utc(row["created_at"]) or now
    if (now - created).total_seconds() > expire:
        _finish(db, row, status="failed", error=f"gave up after {conversation_settings(cfg)['outbox_expire']}: {error}")
        report.failed.append(row["id"])
        log.error("outbox #%s: gave up: %s", row["id"], error)
    else:
        next_at = now + timedelta(seconds=backoff_seconds(row["attempts"]))
        _finish(db, row, status="queued", error=error, next_at=next_at)
        report.deferred.append(row["id"])
        log.warning("outbox #%s: not sent, retrying at %s: %s", row["id"], iso_utc(next_at), error)
    report.errors[row["id"]] = error


def send_pending(
    cfg: Config, db: Database, *, ids: list[int] | None = None, force: bool = False,
    now: datetime | None = None, claimer: Claimer | None = None,
) -> SendReport:
    """Send what is due (or the named entries; ``force`` ignores backoff and retries failed ones).

    One SMTP connection per account. Never raises for a mail that could not be sent: it stays
    queued with the error and a next attempt time (4xx, network, TLS, login), or is marked
    failed (5xx, or older than outbox_expire). ``claimer``: who sends (a daemon gives its own;
    default this process, ``host:pid``).
    """

    now = now or datetime.now(UTC)
    claimer = claimer or Claimer.this_process()
    ttl = (cfg.daemon or DaemonSettings()).lease_ttl  # a daemon's heartbeat older than this: it died
    if ids is None:
        candidates = due_entries(db, iso_utc(now))
    else:
        candidates = list(ids)
    by_account: dict[str, list[int]] = {}
    for entry_id, account in accounts_of(db, candidates):
        by_account.setdefault(account, []).append(entry_id)
    report = SendReport()
    for account_name, entry_ids in by_account.items():
        conn = None
        try:
            for entry_id in entry_ids:
                if not claimer.alive():
                    log.warning("outbox: not sending any more in this pass (this daemon is stopping, or its "
                                "heartbeat may be stale: the database cannot be reached)")
                    return report
                with _in_flight_lock:
                    _in_flight[entry_id] = threading.get_ident()
                try:
                    conn = _send_one(cfg, db, entry_id, account_name, conn, now, force=force, claimer=claimer,
                                     ttl=ttl, report=report)
                finally:
                    with _in_flight_lock:
                        _in_flight.pop(entry_id, None)
        finally:
            _close(conn)
    return report


def _send_one(cfg: Config, db: Database, entry_id: int, account_name: str, conn: Any, now: datetime, *,
              force: bool, claimer: Claimer, ttl: float, report: SendReport) -> Any:
    """Claim, send and record one entry; the SMTP connection to go on with (None: closed)."""
    row = _claim(db, entry_id, now, force=force, claimer=claimer, ttl=ttl)
    if row is None:
        return conn
    with _in_flight_lock:
        accepted = _accepted.get(row["id"])
    if accepted is not None:  # sent by this process already: its record failed
        _finish(db, row, status="sent", reply=accepted[0], error=accepted[1])
        with _in_flight_lock:
            _accepted.pop(row["id"], None)
        report.sent.append(row["id"])
        log.info("outbox #%s: sent %s (%s), recorded at the next pass", row["id"], row["message_id"], accepted[0])
        return conn
    try:
        if conn is None:
            conn = _connect(cfg, account_name, smtp_connect)
        raw = row["raw"] or get_raw(db, row["raw_sha256"])
        if raw is None:
            raise SendFailure(f"the raw mail {row['raw_sha256']} is missing", permanent=True)
        if not claimer.alive():  # our claim may be taken for dead soon: leave the mail to the others
            _finish(db, row, status="queued", error=row["last_error"])
            log.warning("outbox #%s: not sent by this daemon (stopping, or its heartbeat may be stale); "
                        "left in the outbox", row["id"])
            return conn
        reply, refused = send_raw(conn, row["mail_from"], json.loads(row["recipients"]), raw)
    except SendFailure as exc:
        if exc.permanent:
            _finish(db, row, status="failed", error=str(exc))
            report.failed.append(row["id"])
            report.errors[row["id"]] = str(exc)
            log.error("outbox #%s: refused, not retried: %s", row["id"], exc)
            return conn
        _defer(cfg, db, row, str(exc), now, report)
        _close(conn)
        return None
    except Mail2TicketError as exc:  # connect, TLS, login, no password, no account
        _defer(cfg, db, row, exc.one_line(), now, report)
        _close(conn)
        return None
    note = None
    if refused:
        note = "refused for " + "; ".join(f"{r}: {t}" for r, t in refused.items())
    with _in_flight_lock:
        _accepted[row["id"]] = (reply, note)
    if after_accept is not None:
        after_accept(row)
    _finish(db, row, status="sent", reply=reply, error=note)
    with _in_flight_lock:
        _accepted.pop(row["id"], None)
    report.sent.append(row["id"])
    log.info("outbox #%s: sent %s (%s)", row["id"], row["message_id"], reply)
    return conn


def _connect(cfg: Config, account_name: str, smtp_connect: Callable) -> Any:

    account = account_for(cfg, account_name)
    try:
        return open_smtp(account, smtp_connect)
    except Mail2TicketError:
        raise
    except Exception as exc:  # smtplib errors during EHLO/STARTTLS/AUTH
        raise SendFailure(f"SMTP {account.smtp_host}:{account.smtp_port}: {exc.__class__.__name__}: {exc}") from None


def _close(conn: Any) -> None:
    if conn is None:
        return
    try:
        conn.quit()
    except Exception:
        try:
            conn.close()
        except Exception:
            pass


def retry(cfg: Config, db: Database, ids: list[int] | None = None) -> SendReport:
    """Send the named entries (or every unsent one) now, whatever their backoff or failure."""
    if ids is None:
        ids = [r["id"] for r in list_entries(db)]
    for entry_id in ids:
        get_entry(db, entry_id)  # NotFoundError for a wrong id, before anything is sent
    return send_pending(cfg, db, ids=ids, force=True)


def outbox_job(cfg: Config, db: Database, claimer: Claimer | None = None) -> None:
    """The scheduled job (service.AFTER_POLL_JOBS): send what is due (``claimer``: the daemon)."""
    report = send_pending(cfg, db, claimer=claimer)
    if report.sent or report.deferred or report.failed:
        log.info("outbox: %s", report.summary())


BACKOFF_FIRST = 30  # seconds after the first failed attempt, doubling up to BACKOFF_MAX


BACKOFF_MAX = 15 * 60


CLAIM_LEASE = 20 * 60  # a claim older than this is stale even if its process looks alive
