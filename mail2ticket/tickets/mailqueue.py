"""The rows of the outbox and failing_addresses tables: queued mail, its claims and results, and
addresses that bounced. outgoing/ decides what to queue, holds and sends; the SQL is here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mail2ticket.errors import NotFoundError

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

ENTRY_COLUMNS = (
    "id, ticket_id, message, account, kind, mail_from, recipients, to_address, message_id, subject, "
    "status, attempts, created_at, next_attempt_at, sent_at, last_error, smtp_reply"
)


def _entry(row: dict) -> dict:
    row = dict(row)
    row["recipients"] = json.loads(row["recipients"] or "[]")
    return row


def insert_entry(db: Database, row: dict[str, Any]) -> int:
    """A new outbox row (the caller's transaction); its id."""
    return db["outbox"].insert(row).last_pk


def get_entry(db: Database, entry_id: int) -> dict:
    """One outbox entry, recipients as a list; NotFoundError names the command that lists them."""
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
    """Unsent entries by status (queued, sending, failed, held)."""
    return {
        r["status"]: r["n"]
        for r in db.query("select status, count(*) as n from outbox where status != 'sent' group by status")
    }


# Every status of an outbox entry not yet sent (the sent ones stay as the record).
UNSENT_STATUSES = ("queued", "sending", "failed", "held")


def unsent_summary(db: Database) -> dict[str, tuple[int, str]]:
    """{status: (entries, the oldest one's created_at)} of the unsent entries (the metrics), from
    the index on (status, next_attempt_at): the sent ones, however many, are never read."""
    marks = ", ".join("?" * len(UNSENT_STATUSES))
    return {
        status: (n, oldest)
        for status, n, oldest in db.execute(
            f"select status, count(*), min(created_at) from outbox where status in ({marks}) group by status",
            list(UNSENT_STATUSES),
        )
    }


def entry_row(db: Database, entry_id: int) -> dict | None:
    """The whole outbox row (raw bytes and claim included), or None."""
    return next(iter(db.query("select * from outbox where id = ?", [entry_id])), None)


def mark_sending(db: Database, entry_id: int, claimed_by: str, claimed_at: str) -> None:
    """Claim an entry for sending: one more attempt, by ``claimed_by`` since ``claimed_at``."""
    db.execute(
        "update outbox set status = 'sending', claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
        "where id = ?",
        [claimed_by, claimed_at, entry_id],
    )


def mark_finished(db: Database, entry_id: int, *, status: str, error: str | None, reply: str | None,
                  next_attempt_at: str | None, now: str) -> None:
    """Release the claim with the outcome: sent (with the server's reply), queued again, or failed."""
    db.execute(
        "update outbox set status = ?, claimed_by = null, claimed_at = null, last_error = ?, "
        "smtp_reply = coalesce(?, smtp_reply), next_attempt_at = ?, "
        "sent_at = case when ? = 'sent' then ? else sent_at end where id = ?",
        [status, error, reply, next_attempt_at, status, now, entry_id],
    )


def due_entries(db: Database, now: str) -> list[int]:
    """Ids of the entries to send at ``now``: queued (or in a claim that may be stale), due."""
    return [
        r[0] for r in db.execute(
            "select id from outbox where status in ('queued', 'sending') "
            "and (next_attempt_at is null or next_attempt_at <= ?) order by id",
            [now],
        ).fetchall()
    ]


def accounts_of(db: Database, entry_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(id, account) of each entry, in id order."""
    if not entry_ids:
        return []
    return db.execute(
        f"select id, account from outbox where id in ({','.join('?' * len(entry_ids))}) order by id",
        list(entry_ids),
    ).fetchall()


def automatic_recipients(db: Database, *, since: str, kinds: Sequence[str], ticket_id: int | None = None,
                         account: str | None = None, domains: Sequence[str] | None = None) -> list[str] | int:
    """Automatic mail queued (not held) since ``since``: their count, or with ``domains`` the
    to-addresses in those domains (the caller compares mailboxes)."""
    where = [f"kind in ({','.join('?' * len(kinds))})", "status != 'held'", "created_at >= ?"]
    args: list[Any] = [*kinds, since]
    if ticket_id is not None:
        where.append("ticket_id = ?")
        args.append(ticket_id)
    if account is not None:
        where.append("account = ?")
        args.append(account)
    if domains is None:
        return db.execute(f"select count(*) from outbox where {' and '.join(where)}", args).fetchone()[0]
    where.append("(" + " or ".join("to_address like ?" for _ in domains) + ")")
    args += [f"%@{d}" for d in domains]
    return [to or "" for (to,) in db.execute(f"select to_address from outbox where {' and '.join(where)}", args)]


def failing_address(db: Database, address: str, now: str) -> dict | None:
    """The failing_addresses row of ``address`` while its hold lasts (a bounce said it fails)."""
    rows = list(db.query(
        "select * from failing_addresses where address = ? and hold_until > ?", [address.lower(), now],
    ))
    return rows[0] if rows else None


def sent_recipients(db: Database, message_id: str) -> list[str]:
    """The recipients of the mail we sent with ``message_id`` (none when it was not sent)."""
    out: list[str] = []
    for (value,) in db.execute("select recipients from outbox where message_id = ? and status = 'sent'", [message_id]):
        out += [a.lower() for a in json.loads(value or "[]") if isinstance(a, str)]
    return out


def is_failing(db: Database, address: str) -> bool:
    """Whether ``address`` is marked failing (whatever the hold)."""
    return db.execute("select 1 from failing_addresses where address = ?", [address]).fetchone() is not None


def mark_failing(db: Database, address: str, *, reason: str, failed_at: str, hold_until: str,
                 ticket_id: int | None, message: int | None) -> None:
    """A bounce said mail to ``address`` fails: no automatic mail to it until ``hold_until``."""
    db.execute(
        "insert into failing_addresses (address, reason, failed_at, hold_until, ticket_id, message) "
        "values (?, ?, ?, ?, ?, ?) on conflict(address) do update set reason = excluded.reason, "
        "failed_at = excluded.failed_at, hold_until = excluded.hold_until, "
        "ticket_id = excluded.ticket_id, message = excluded.message",
        [address, reason, failed_at, hold_until, ticket_id, message],
    )


def clear_failing_address(db: Database, address: str) -> int | None | bool:
    """Drop the failing mark of ``address``: the ticket of the bounce that set it (None when that
    had none), or False when the address was not marked."""
    row = db.execute("select ticket_id from failing_addresses where address = ?", [address]).fetchone()
    if row is None:
        return False
    db.execute("delete from failing_addresses where address = ?", [address])
    return row[0]
