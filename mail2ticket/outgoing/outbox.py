"""The outbox: mail is queued in the transaction that caused it, then sent with retries.

A mail is marked sent only once the server answered 250 to DATA. A sender claims a mail before
sending it; a crash between the server's 250 and the update leaves the claim of a dead process,
so the mail is sent once more, byte for byte the same (same Message-ID): at most one repeat.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from mail2ticket.config.conversations import conversation_settings
from mail2ticket.errors import Mail2TicketError, NotFoundError
from mail2ticket.outgoing.compose import (
    Draft,
    base_subject,
    build,
    check_address,
    header_text,
    mailbox_domains,
    mailbox_key,
    not_a_mailbox,
    render,
    tagged_subject,
)
from mail2ticket.tickets.db import (
    current_user,
    get_raw,
    get_ticket,
    log_event,
    now_iso,
    transaction,
)
from mail2ticket.tickets.ids import make_tag

log = logging.getLogger(__name__)

BACKOFF_FIRST = 30  # seconds after the first failed attempt, doubling up to BACKOFF_MAX
BACKOFF_MAX = 15 * 60
CLAIM_LEASE = 20 * 60  # a claim older than this is stale even if its process looks alive
UNSENT = ("queued", "sending", "failed", "held")
# Mail a machine decided to send: capped per ticket and per address, never sent to a failing
# address (RELIABILITY 45, 46). A reply typed by a person is never held, only warned about.
AUTOMATIC_KINDS = ("ack", "close", "reopen", "sla-notice")

# Test seam: called right after the server accepted a mail and before it is marked sent.
after_accept: Callable[[dict], None] | None = None


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def backoff_seconds(attempts: int) -> int:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1))


# --- loop protection ---------------------------------------------------------------------------


def failing_address(db: Database, address: str, now: datetime | None = None) -> dict | None:
    """The failing_addresses row of ``address`` while its hold lasts (a bounce said it fails)."""
    rows = list(db.query(
        "select * from failing_addresses where address = ? and hold_until > ?",
        [address.lower(), _iso(now or datetime.now(UTC))],
    ))
    return rows[0] if rows else None


def failing_participants(db: Database, ticket_id: int) -> list[dict]:
    """The ticket's participants that are failing addresses now ('tickets show' says so)."""
    from mail2ticket.tickets.threading import participants

    found = []
    for address in sorted(participants(db, ticket_id)):
        row = failing_address(db, address)
        if row is not None:
            found.append({k: row[k] for k in ("address", "reason", "failed_at", "hold_until", "ticket_id")})
    return found


def automatic_count(db: Database, *, since: datetime, ticket_id: int | None = None,
                    address: str | None = None, kinds: tuple[str, ...] = AUTOMATIC_KINDS,
                    account: str | None = None) -> int:
    """Automatic mails queued (held ones not counted) since ``since``, on a ticket, from an
    account, or to the mailbox of an address (compose.mailbox_key: ``v.i.c.t.i.m+1@gmail.com``
    is ``victim@gmail.com``, item 56)."""
    where = [f"kind in ({','.join('?' * len(kinds))})", "status != 'held'", "created_at >= ?"]
    args: list[Any] = [*kinds, _iso(since)]
    if ticket_id is not None:
        where.append("ticket_id = ?")
        args.append(ticket_id)
    if account is not None:
        where.append("account = ?")
        args.append(account)
    if address is None:
        return db.execute(f"select count(*) from outbox where {' and '.join(where)}", args).fetchone()[0]
    key = mailbox_key(address)
    domains = mailbox_domains(key)
    where.append("(" + " or ".join("to_address like ?" for _ in domains) + ")")
    args += [f"%@{d}" for d in domains]
    rows = db.execute(f"select to_address from outbox where {' and '.join(where)}", args)
    return sum(1 for (to,) in rows if mailbox_key(to or "") == key)


def hold_reason(cfg: Any, db: Database, *, to_address: str, ticket_id: int | None,
                now: datetime | None = None) -> str | None:
    """Why one more automatic mail to ``to_address`` (about ``ticket_id``) must not be sent, or None.

    An address that is no outside mailbox (compose.not_a_mailbox, item 56), a failing address
    (a bounce said so, RELIABILITY 46), or too many automatic mails on the
    ticket or to the address within [conversations] auto_mail_*_period (RELIABILITY 45): what
    stops a ping-pong with a responder that ignores Auto-Submitted.
    """
    from mail2ticket.config.periods import parse_duration

    now = now or datetime.now(UTC)
    address = to_address.lower()
    own_domains = {a.email.lower().rpartition("@")[2] for a in getattr(cfg, "accounts", []) if a.email}
    nowhere = not_a_mailbox(address, own_domains)
    if nowhere:
        return f"not a mailbox: {nowhere}; no automatic mail goes to it"
    failing = failing_address(db, address, now)
    if failing is not None:
        return (
            f"failing address: mail to {address} bounced ({failing['failed_at']}: {failing['reason']}); "
            f"no automatic mail to it until {failing['hold_until']} or until it writes to us"
        )
    settings = conversation_settings(cfg)
    checks = [("address", address, f"to {address}")]
    if ticket_id is not None:
        checks.insert(0, ("ticket", ticket_id, f"on ticket #{ticket_id}"))
    for scope, value, what in checks:
        limit, period = settings[f"auto_mail_{scope}_limit"], settings[f"auto_mail_{scope}_period"]
        since = now - timedelta(seconds=parse_duration(period))
        sent = automatic_count(db, since=since, **{"ticket_id" if scope == "ticket" else "address": value})
        if sent >= limit:
            return (f"loop protection: {sent} automatic mail(s) {what} in the last {period} "
                    f"(auto_mail_{scope}_limit = {limit})")
    return None


# --- queueing ----------------------------------------------------------------------------------


def queue(
    db: Database, draft: Draft, *, account: str, kind: str, ticket_id: int | None,
    message_row: int | None = None, raw: bytes | None = None, cfg: Any = None,
) -> dict:
    """Put a mail in the outbox; call inside the caller's transaction.

    ``raw``: the bytes of a reply already stored in raw_messages with its messages row. Without,
    the mail is built here and its bytes are kept in the outbox row (acknowledgements, notices:
    raw_messages holds only mail that is a message of a ticket).

    Automatic mail (AUTOMATIC_KINDS) that hold_reason() stops is kept with status 'held' and the
    reason in last_error (an event 'mail-held' on the ticket); it is sent only by 'outbox retry'.
    For other mail (a person's reply) the returned row has the reason as 'warning'.
    ``cfg``: the limits of [conversations]; without it, the defaults.
    """
    own = raw is None
    why = hold_reason(cfg, db, to_address=draft.to[0], ticket_id=ticket_id)
    held = why is not None and kind in AUTOMATIC_KINDS
    if raw is None:
        raw = build(db, draft)
    sha = hashlib.sha256(raw).hexdigest()
    now = now_iso()
    row_id = db["outbox"].insert(
        {
            "ticket_id": ticket_id,
            "message": message_row,
            "account": account,
            "kind": kind,
            "mail_from": draft.from_address,
            "recipients": json.dumps(draft.recipients),
            "to_address": draft.to[0].lower(),
            "message_id": draft.message_id,
            "subject": header_text(draft.subject, 250),
            "raw_sha256": sha,
            "raw": raw if own else None,
            "status": "held" if held else "queued",
            "attempts": 0,
            "created_at": now,
            "last_error": why if held else None,
        }
    ).last_pk
    entry = get_entry(db, row_id)
    if held:
        log_event(db, "mail-held", f"{kind} to {entry['to_address']} not sent: {why}", ticket_id=ticket_id,
                  account=account)
        log.warning("outbox #%s: %s to %s held back: %s", row_id, kind, entry["to_address"], why)
    elif why is not None:
        entry["warning"] = why
        log.warning("outbox #%s: %s to %s is sent although: %s", row_id, kind, entry["to_address"], why)
    return entry


def _account(cfg: Any, name: str) -> Any:
    account = next((a for a in cfg.accounts if a.name == name), None)
    if account is None:
        raise NotFoundError(
            f"the ticket's account {name!r} is not in the config any more",
            "add it back (its SMTP server is needed to send)",
        )
    return account


def _template_values(cfg: Any, ticket: dict) -> dict[str, Any]:
    settings = conversation_settings(cfg)
    return {
        "ticket": ticket["id"],
        "tag": make_tag(settings["tag_format"], ticket["id"]),
        "subject": header_text(base_subject(ticket["subject"], settings["tag_format"]), 120),
        "requester": ticket.get("requester") or "",
        "account": ticket.get("account") or "",
    }


def queue_ack(cfg: Any, db: Database, ticket_id: int, message_row: int, parsed: Any) -> dict:
    """The acknowledgement of a new ticket: threaded with the customer's mail, RFC 3834 marked."""
    ticket = get_ticket(db, ticket_id)
    account = _account(cfg, ticket["account"])
    settings = conversation_settings(cfg)
    values = _template_values(cfg, ticket)
    draft = Draft(
        from_address=account.email,
        to=[check_address(parsed.from_address)],
        subject=tagged_subject(values["tag"], render(settings["ack_subject"], values)),
        body=render(settings["ack_body"], values),
        in_reply_to=parsed.message_id,
        references=[*parsed.references, *([parsed.message_id] if parsed.message_id else [])],
        auto_submitted="auto-replied",
        ticket_id=ticket_id,
    )
    row = queue(db, draft, account=account.name, kind="ack", ticket_id=ticket_id, cfg=cfg)
    if row["status"] == "held":
        return row
    log_event(db, "ack-queued", f"acknowledgement to {row['to_address']} ({row['message_id']})",
              ticket_id=ticket_id, account=account.name)
    return row


def _thread_parent(db: Database, ticket_id: int) -> dict | None:
    """The message a reply answers: the newest incoming one, else the newest with an id."""
    for sql in (
        "select * from messages where ticket_id = ? and direction = 'in' and message_id is not null "
        "order by id desc limit 1",
        "select * from messages where ticket_id = ? and message_id is not null order by id desc limit 1",
    ):
        row = next(iter(db.query(sql, [ticket_id])), None)
        if row:
            return row
    return None


def _threading(db: Database, ticket_id: int) -> tuple[str | None, list[str]]:
    parent = _thread_parent(db, ticket_id)
    if parent is None:
        return None, []
    refs = json.loads(parent["refs"] or "[]")
    return parent["message_id"], [*refs, parent["message_id"]]


def _other_participants(cfg: Any, db: Database, ticket: dict) -> list[str]:
    """Everyone else who took part in the ticket (threader.participant_list), in order; never our
    accounts, never an address that cannot be mailed."""
    from mail2ticket.tickets.threading import participant_list

    ours = {a.email.lower() for a in cfg.accounts}
    skip = ours | {(ticket["requester"] or "").lower()}
    found: list[str] = []
    for address in participant_list(db, ticket["id"]):
        if not address or address in skip:
            continue
        try:
            check_address(address)
        except ValueError:
            continue
        found.append(address)
    return found


def _set_status(db: Database, ticket_id: int, status: str, now: str) -> None:
    db.execute(
        "update tickets set status = ?, updated_at = ?, "
        "closed_at = case when ? = 'closed' then coalesce(closed_at, ?) else null end where id = ?",
        [status, now, status, now, ticket_id],
    )


def check_reply_all(cfg: Any, db: Database, ticket_id: int, *, yes: bool = False) -> int:
    """The number of recipients of 'tickets reply --all' on the ticket; Mail2TicketError when it is
    over [conversations] reply_all_limit and ``yes`` is not given (item 57)."""
    ticket = get_ticket(db, ticket_id)
    count = 1 + len(_other_participants(cfg, db, ticket))
    limit = conversation_settings(cfg)["reply_all_limit"]
    if count > limit and not yes:
        raise Mail2TicketError(
            f"ticket #{ticket_id}: reply --all would go to {count} recipients, more than "
            f"reply_all_limit = {limit}; nothing sent",
            "add --yes to send it to all of them, or reply without --all",
        )
    return count


def queue_reply(
    cfg: Any, db: Database, ticket_id: int, text: str, *, to_all: bool = False,
    status: str | None = None, actor: str | None = None, yes: bool = False,
) -> dict:
    """Store an agent's reply in the ticket, queue it for the requester, set the ticket status.

    Returns the outbox entry. All in one transaction: the reply is either stored and queued, or
    neither. With ``to_all``, more recipients than reply_all_limit need ``yes``.
    """
    if not text.strip():
        raise Mail2TicketError("the reply is empty: nothing sent", "write some text")
    settings = conversation_settings(cfg)
    status = status or settings["reply_status"]
    actor = actor or current_user()
    with transaction(db):
        ticket = get_ticket(db, ticket_id)
        account = _account(cfg, ticket["account"])
        if not ticket["requester"]:
            raise Mail2TicketError(f"ticket #{ticket_id} has no requester address to answer")
        try:
            to = [check_address(ticket["requester"])]
        except ValueError:
            raise Mail2TicketError(
                f"ticket #{ticket_id}: the requester address {ticket['requester']!r} cannot be mailed"
            ) from None
        if to_all:
            check_reply_all(cfg, db, ticket_id, yes=yes)
        cc = _other_participants(cfg, db, ticket) if to_all else []
        values = _template_values(cfg, ticket)
        in_reply_to, references = _threading(db, ticket_id)
        draft = Draft(
            from_address=account.email,
            to=to,
            cc=cc,
            subject=tagged_subject(values["tag"], base_subject(ticket["subject"], settings["tag_format"]), "Re: "),
            body=text,
            in_reply_to=in_reply_to,
            references=references,
            ticket_id=ticket_id,
        )
        raw = build(db, draft)
        sha = hashlib.sha256(raw).hexdigest()
        now = now_iso()
        db.execute(
            "insert into raw_messages (sha256, size, raw, stored_at) values (?, ?, ?, ?) "
            "on conflict(sha256) do nothing",
            [sha, len(raw), raw, now],
        )
        message_row = db["messages"].insert(
            {
                "ticket_id": ticket_id,
                "direction": "out",
                "account": account.name,
                "raw_sha256": sha,
                "message_id": draft.message_id,
                "in_reply_to": in_reply_to,
                "refs": json.dumps(references),
                "subject": header_text(draft.subject, 250),
                "from_address": account.email.lower(),
                "from_name": None,
                "to_addrs": json.dumps(to),
                "cc_addrs": json.dumps(cc),
                "date": now,
                "received_at": now,
                "body_text": draft.body,
                "defects": "[]",
                "thread_reason": f"reply by {actor} from the shell",
            }
        ).last_pk
        row = queue(db, draft, account=account.name, kind="reply", ticket_id=ticket_id, message_row=message_row,
                    raw=raw, cfg=cfg)
        _set_status(db, ticket_id, status, now)
        db.execute("update tickets set first_response_at = coalesce(first_response_at, ?) where id = ?",
                   [now, ticket_id])
        log_event(db, "replied", f"reply to {', '.join(draft.recipients)}; status {status}",
                  ticket_id=ticket_id, account=account.name, actor=actor)
    return row


def change_status(
    cfg: Any, db: Database, ticket_id: int, status: str, *, notify: bool = False, actor: str | None = None,
) -> dict | None:
    """Close or reopen a ticket; with ``notify``, queue a notice to the requester (same transaction).

    Returns the outbox entry of the notice, or None.
    """
    kind = {"closed": "close", "open": "reopen"}[status]
    actor = actor or current_user()
    with transaction(db):
        ticket = get_ticket(db, ticket_id)
        now = now_iso()
        _set_status(db, ticket_id, status, now)
        log_event(db, "closed" if status == "closed" else "reopened", f"by {actor}",
                  ticket_id=ticket_id, account=ticket["account"], actor=actor)
        if not notify:
            return None
        account = _account(cfg, ticket["account"])
        if not ticket["requester"]:
            raise Mail2TicketError(f"ticket #{ticket_id} has no requester address to notify")
        settings = conversation_settings(cfg)
        values = _template_values(cfg, ticket)
        in_reply_to, references = _threading(db, ticket_id)
        draft = Draft(
            from_address=account.email,
            to=[check_address(ticket["requester"])],
            subject=tagged_subject(values["tag"], render(settings[f"{kind}_subject"], values)),
            body=render(settings[f"{kind}_body"], values),
            in_reply_to=in_reply_to,
            references=references,
            auto_submitted="auto-generated",
            ticket_id=ticket_id,
        )
        row = queue(db, draft, account=account.name, kind=kind, ticket_id=ticket_id, cfg=cfg)
        if row["status"] == "held":
            return row
        log_event(db, f"{kind}-notice-queued", f"notice to {row['to_address']} ({row['message_id']})",
                  ticket_id=ticket_id, account=account.name, actor=actor)
        return row


# --- reading -----------------------------------------------------------------------------------

ENTRY_COLUMNS = (
    "id, ticket_id, message, account, kind, mail_from, recipients, to_address, message_id, subject, "
    "status, attempts, created_at, next_attempt_at, sent_at, last_error, smtp_reply"
)


def _entry(row: dict) -> dict:
    row = dict(row)
    row["recipients"] = json.loads(row["recipients"] or "[]")
    return row


def get_entry(db: Database, entry_id: int) -> dict:
    rows = list(db.query(f"select {ENTRY_COLUMNS} from outbox where id = ?", [entry_id]))
    if not rows:
        raise NotFoundError(f"no outbox entry #{entry_id}", "see 'mail2ticket outbox list --all'")
    return _entry(rows[0])


def list_entries(db: Database, *, include_sent: bool = False) -> list[dict]:
    sql = f"select {ENTRY_COLUMNS} from outbox"
    if not include_sent:
        sql += " where status != 'sent'"
    return [_entry(r) for r in db.query(sql + " order by id")]


def waiting_count(db: Database) -> dict[str, int]:
    return {
        r["status"]: r["n"]
        for r in db.query("select status, count(*) as n from outbox where status != 'sent' group by status")
    }


# --- sending -----------------------------------------------------------------------------------


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


def _claim_is_stale(claimed_by: str | None, claimed_at: str | None, now: datetime) -> bool:
    if not claimed_by:
        return True
    at = _parse(claimed_at)
    if at is None or (now - at).total_seconds() > CLAIM_LEASE:
        return True
    host, _, pid = claimed_by.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return True  # our own leftover (an exception between claim and update)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True  # the sender died (after the server's 250, perhaps): send again
        except PermissionError:
            return False
        return False
    return False


def _claim(db: Database, entry_id: int, now: datetime, *, force: bool) -> dict | None:
    """Take one mail for sending; None if it is not due, sent, or another sender has it."""
    with transaction(db):
        row = next(iter(db.query("select * from outbox where id = ?", [entry_id])), None)
        if row is None or row["status"] == "sent":
            return None
        if row["status"] in ("failed", "held") and not force:
            return None
        if row["status"] == "sending" and not _claim_is_stale(row["claimed_by"], row["claimed_at"], now):
            return None
        due = _parse(row["next_attempt_at"])
        if not force and due is not None and due > now:
            return None
        db.execute(
            "update outbox set status = 'sending', claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
            "where id = ?",
            [_me(), _iso(now), entry_id],
        )
        row["attempts"] += 1
        return row


def _finish(db: Database, row: dict, *, status: str, error: str | None = None, reply: str | None = None,
            next_at: datetime | None = None) -> None:
    now = now_iso()
    with transaction(db):
        db.execute(
            "update outbox set status = ?, claimed_by = null, claimed_at = null, last_error = ?, "
            "smtp_reply = coalesce(?, smtp_reply), next_attempt_at = ?, "
            "sent_at = case when ? = 'sent' then ? else sent_at end where id = ?",
            [status, error, reply, _iso(next_at) if next_at else None, status, now, row["id"]],
        )
        what = f"{row['kind']} {row['message_id']} to {', '.join(json.loads(row['recipients']))}"
        if status == "sent":
            log_event(db, "mail-sent", f"{what}: {reply}", ticket_id=row["ticket_id"], account=row["account"])
        elif status == "failed":
            log_event(db, "mail-failed", f"{what}: {error}", ticket_id=row["ticket_id"], account=row["account"])


def _defer(cfg: Any, db: Database, row: dict, error: str, now: datetime, report: SendReport) -> None:
    from mail2ticket.config.periods import parse_duration

    expire = parse_duration(conversation_settings(cfg)["outbox_expire"])
    created = _parse(row["created_at"]) or now
    if (now - created).total_seconds() > expire:
        _finish(db, row, status="failed", error=f"gave up after {conversation_settings(cfg)['outbox_expire']}: {error}")
        report.failed.append(row["id"])
        log.error("outbox #%s: gave up: %s", row["id"], error)
    else:
        next_at = now + timedelta(seconds=backoff_seconds(row["attempts"]))
        _finish(db, row, status="queued", error=error, next_at=next_at)
        report.deferred.append(row["id"])
        log.warning("outbox #%s: not sent, retrying at %s: %s", row["id"], _iso(next_at), error)
    report.errors[row["id"]] = error


def send_pending(
    cfg: Any, db: Database, *, ids: list[int] | None = None, force: bool = False,
    now: datetime | None = None,
) -> SendReport:
    """Send what is due (or the named entries; ``force`` ignores backoff and retries failed ones).

    One SMTP connection per account. Never raises for a mail that could not be sent: it stays
    queued with the error and a next attempt time (4xx, network, TLS, login), or is marked
    failed (5xx, or older than outbox_expire).
    """
    from mail2ticket.transport.smtp import SendFailure, send_raw, smtp_connect

    now = now or datetime.now(UTC)
    if ids is None:
        candidates = [
            r[0] for r in db.execute(
                "select id from outbox where status in ('queued', 'sending') "
                "and (next_attempt_at is null or next_attempt_at <= ?) order by id",
                [_iso(now)],
            ).fetchall()
        ]
    else:
        candidates = list(ids)
    by_account: dict[str, list[int]] = {}
    for entry_id, account in db.execute(
        f"select id, account from outbox where id in ({','.join('?' * len(candidates))}) order by id",
        candidates,
    ).fetchall() if candidates else []:
        by_account.setdefault(account, []).append(entry_id)
    report = SendReport()
    for account_name, entry_ids in by_account.items():
        conn = None
        try:
            for entry_id in entry_ids:
                row = _claim(db, entry_id, now, force=force)
                if row is None:
                    continue
                try:
                    if conn is None:
                        conn = _connect(cfg, account_name, smtp_connect)
                    raw = row["raw"] or get_raw(db, row["raw_sha256"])
                    if raw is None:
                        raise SendFailure(f"the raw mail {row['raw_sha256']} is missing", permanent=True)
                    reply, refused = send_raw(conn, row["mail_from"], json.loads(row["recipients"]), raw)
                except SendFailure as exc:
                    if exc.permanent:
                        _finish(db, row, status="failed", error=str(exc))
                        report.failed.append(row["id"])
                        report.errors[row["id"]] = str(exc)
                        log.error("outbox #%s: refused, not retried: %s", row["id"], exc)
                    else:
                        _defer(cfg, db, row, str(exc), now, report)
                        _close(conn)
                        conn = None
                    continue
                except Mail2TicketError as exc:  # connect, TLS, login, no password, no account
                    _defer(cfg, db, row, exc.one_line(), now, report)
                    _close(conn)
                    conn = None
                    continue
                if after_accept is not None:
                    after_accept(row)
                note = None
                if refused:
                    note = "refused for " + "; ".join(f"{r}: {t}" for r, t in refused.items())
                _finish(db, row, status="sent", reply=reply, error=note)
                report.sent.append(row["id"])
                log.info("outbox #%s: sent %s (%s)", row["id"], row["message_id"], reply)
        finally:
            _close(conn)
    return report


def _connect(cfg: Any, account_name: str, smtp_connect: Callable) -> Any:
    from mail2ticket.accounts.credentials import open_smtp
    from mail2ticket.transport.smtp import SendFailure

    account = _account(cfg, account_name)
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


def retry(cfg: Any, db: Database, ids: list[int] | None = None) -> SendReport:
    """Send the named entries (or every unsent one) now, whatever their backoff or failure."""
    if ids is None:
        ids = [r["id"] for r in list_entries(db)]
    for entry_id in ids:
        get_entry(db, entry_id)  # NotFoundError for a wrong id, before anything is sent
    return send_pending(cfg, db, ids=ids, force=True)


def outbox_job(cfg: Any, db: Database) -> None:
    """The scheduled job (service.AFTER_POLL_JOBS): send what is due."""
    report = send_pending(cfg, db)
    if report.sent or report.deferred or report.failed:
        log.info("outbox: %s", report.summary())
