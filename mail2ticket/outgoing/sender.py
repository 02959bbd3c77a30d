"""The outbox sender: claims a queued mail, sends it over SMTP, records the answer; retries with backoff."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mail2ticket.accounts.credentials import open_smtp
from mail2ticket.config.conversations import conversation_settings
from mail2ticket.config.model import Config
from mail2ticket.config.periods import parse_duration
from mail2ticket.errors import Mail2TicketError
from mail2ticket.outgoing.loops import iso_utc, parse_utc
from mail2ticket.outgoing.outbox import account_for
from mail2ticket.tickets.db import get_raw, log_event, now_iso, transaction
from mail2ticket.tickets.mailqueue import (
    accounts_of,
    due_entries,
    entry_row,
    get_entry,
    list_entries,
    mark_finished,
    mark_sending,
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


def _claim_is_stale(claimed_by: str | None, claimed_at: str | None, now: datetime) -> bool:
    if not claimed_by:
        return True
    at = parse_utc(claimed_at)
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
        row = entry_row(db, entry_id)
        if row is None or row["status"] == "sent":
            return None
        if row["status"] in ("failed", "held") and not force:
            return None
        if row["status"] == "sending" and not _claim_is_stale(row["claimed_by"], row["claimed_at"], now):
            return None
        due = parse_utc(row["next_attempt_at"])
        if not force and due is not None and due > now:
            return None
        mark_sending(db, entry_id, _me(), iso_utc(now))
        row["attempts"] += 1
        return row


def _finish(db: Database, row: dict, *, status: str, error: str | None = None, reply: str | None = None,
            next_at: datetime | None = None) -> None:
    now = now_iso()
    with transaction(db):
        mark_finished(db, row["id"], status=status, error=error, reply=reply,
                      next_attempt_at=iso_utc(next_at) if next_at else None, now=now)
        what = f"{row['kind']} {row['message_id']} to {', '.join(json.loads(row['recipients']))}"
        if status == "sent":
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
    now: datetime | None = None,
) -> SendReport:
    """Send what is due (or the named entries; ``force`` ignores backoff and retries failed ones).

    One SMTP connection per account. Never raises for a mail that could not be sent: it stays
    queued with the error and a next attempt time (4xx, network, TLS, login), or is marked
    failed (5xx, or older than outbox_expire).
    """

    now = now or datetime.now(UTC)
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


def outbox_job(cfg: Config, db: Database) -> None:
    """The scheduled job (service.AFTER_POLL_JOBS): send what is due."""
    report = send_pending(cfg, db)
    if report.sent or report.deferred or report.failed:
        log.info("outbox: %s", report.summary())


BACKOFF_FIRST = 30  # seconds after the first failed attempt, doubling up to BACKOFF_MAX


BACKOFF_MAX = 15 * 60


CLAIM_LEASE = 20 * 60  # a claim older than this is stale even if its process looks alive
