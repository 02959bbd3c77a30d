"""The rows of the outbox and failing_addresses tables: queued mail, its claims and results, and
addresses that bounced. outgoing/ decides what to queue, holds and sends; the SQL is here.

Sending at most once more after a crash, never twice otherwise (docs/scaling.md, "The outbox"):
a mail goes to the SMTP server only after a **claim** (``claim_entry``) moved its row to
'sending' with the claimer's name, and the claimer records the outcome (``mark_finished``) after
the server's answer. Every writer of an outbox row, and why two never send the same mail:

- **queue** (``insert_entry``): a new row, in the transaction that caused it; no one sees it
  before the commit.
- **claim** (``claim_entry``), the only way into 'sending': on PostgreSQL the row is read with
  ``FOR UPDATE SKIP LOCKED`` and updated in the same transaction, so the decision (status, who
  holds it, due) and the update are about one row version: of two claimers at once one gets the
  row, the other skips it (it never waits), and whoever reads it after the commit finds it
  'sending' by a live claimer. That transaction takes no writers' lock (tickets/pg.py
  WRITE_LOCK): senders wait neither for each other nor for the importer. On SQLite the claim
  is a BEGIN IMMEDIATE transaction, one writer at a time: the same guarantee.
- **finish** (``mark_finished``), only by the claimer, after the send: out of 'sending' only
  while the claim is still its own; 'sent' is recorded whoever holds it then, unless it is sent
  already (the mail did go). It runs in a writers' transaction (it logs an event) and locks the
  row after the writers' lock; the claim holds the row lock only for its few statements and
  never asks for the writers' lock, so the two never wait for each other in a circle.
- **outbox retry** (one id, or --all) claims through ``claim_entry`` too: it lifts the backoff
  and sends failed and held mail again, never a live claim; so do ``reply`` and ``close
  --notify``, which send their own mail at once. ``outbox list`` only reads.
- **db copy** writes a new PostgreSQL database while the daemons are stopped (its documented
  use); a 'sending' row copied over is the claim of a stopped process, taken over as below.
- **taking a claim over**: only a dead claimer's (outgoing/sender.py decides): a process on this
  host whose pid is gone; a daemon whose row in ``daemons`` is gone or whose heartbeat is older
  than ``lease_ttl``; a process that is not a daemon, on another host, after CLAIM_LEASE
  (20 min). A daemon's own clock stops it claiming and sending before the others can find its
  heartbeat stale (``lease_ttl - lease_renew`` after its last renew), and at a stop before its
  row goes. So a claim is taken over only from a claimer that died, or was frozen or cut off
  from the database, between its check and recording the answer: if that was before the
  server's 250 the mail goes once; after it, once more - the one repeat. A live claimer's claim
  is never taken.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mail2ticket.errors import NotFoundError
from mail2ticket.tickets.db import transaction
from mail2ticket.tickets.engine import engine_of

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

ENTRY_COLUMNS = (
    "id, ticket_id, message, account, kind, mail_from, recipients, to_address, message_id, subject, "
    "status, attempts, created_at, next_attempt_at, sent_at, last_error, smtp_reply, claimed_by, claimed_at"
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


def claim_entry(db: Database, entry_id: int, *, claimed_by: str, claimed_at: str,
                may_take: Callable[[dict], bool]) -> dict | None:
    """Claim entry ``entry_id`` for sending in a transaction of its own: the whole row (raw bytes,
    attempts counted with this one) when ``may_take(row)`` agrees, else None; None too, at
    once, when another process is claiming it on PostgreSQL (the row is locked: skipped, not
    waited for). ``may_take`` runs inside the transaction, the row locked (it may read the
    daemons table). The module docstring says why a mail is never claimed twice."""
    rows_only = engine_of(db) == "postgresql"
    with transaction(db, writers_lock=not rows_only):
        if rows_only:
            row = next(iter(db.query("select * from outbox where id = ? for update skip locked", [entry_id])), None)
        else:
            row = entry_row(db, entry_id)
        if row is None or not may_take(row):
            return None
        db.execute(
            "update outbox set status = 'sending', claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
            "where id = ?",
            [claimed_by, claimed_at, entry_id],
        )
        row.update(status="sending", claimed_by=claimed_by, claimed_at=claimed_at, attempts=row["attempts"] + 1)
        return row


def mark_finished(db: Database, entry_id: int, *, claimed_by: str, status: str, error: str | None,
                  reply: str | None, next_attempt_at: str | None, now: str) -> bool:
    """Release ``claimed_by``'s claim with the outcome: sent (with the server's reply), queued
    again, or failed. False when the claim was no longer ours and nothing changed: another sender
    took it over (we were taken for dead), or, for 'sent', the mail is recorded sent already."""
    if status == "sent":
        condition = "(claimed_by = ? or status != 'sent')"
    else:
        condition = "status = 'sending' and claimed_by = ?"
    cursor = db.execute(
        "update outbox set status = ?, claimed_by = null, claimed_at = null, last_error = ?, "
        "smtp_reply = coalesce(?, smtp_reply), next_attempt_at = ?, "
        f"sent_at = case when ? = 'sent' then ? else sent_at end where id = ? and {condition}",
        [status, error, reply, next_attempt_at, status, now, entry_id, claimed_by],
    )
    return cursor.rowcount == 1


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
