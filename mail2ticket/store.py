"""The SQLite store: opening it durably, transactions, and the queries the rest of the code needs."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from mail2ticket.errors import NotFoundError, StoreError, TempFailError

BUSY_TIMEOUT_MS = 30_000


def now_iso() -> str:
    """The current time as ISO 8601 UTC with a Z, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def open_db(path: Path | str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Database:
    """Open (creating if needed) the database: WAL, synchronous=FULL, foreign keys, migrations."""
    from mail2ticket.migrations import migrations

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot open database {path}: {exc}", "check that the directory exists and is writable"
        ) from None
    db = Database(conn)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.enable_wal()
        # FULL: a commit is on disk before we touch the server (WAL + NORMAL may lose the last commits).
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        if migrations.pending(db):
            migrations.apply(db)
    except sqlite3.OperationalError as exc:
        _raise_store_error(exc, path)
    return db


def _raise_store_error(exc: sqlite3.Error, path: Any = None) -> None:
    text = str(exc)
    where = f"database {path}: " if path else "database: "
    if "locked" in text or "busy" in text:
        raise TempFailError(where + text, "another process holds the database; try again") from None
    if "disk" in text or "full" in text or "readonly" in text or "I/O" in text:
        raise TempFailError(where + text, "free disk space or fix permissions, then try again") from None
    raise StoreError(where + text) from None


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front (waiting up to busy_timeout)."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        _raise_store_error(exc)
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    try:
        db.conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        _raise_store_error(exc)


def log_event(
    db: Database,
    kind: str,
    detail: str = "",
    *,
    ticket_id: int | None = None,
    account: str | None = None,
    actor: str = "system",
) -> None:
    db["events"].insert(
        {
            "ticket_id": ticket_id,
            "account": account,
            "created_at": now_iso(),
            "kind": kind,
            "actor": actor,
            "detail": detail,
        }
    )


# --- mailbox sync state -----------------------------------------------------------------------


def get_mailbox(db: Database, account: str, folder: str) -> dict | None:
    rows = list(db.query("select * from mailboxes where account = ? and folder = ?", [account, folder]))
    return rows[0] if rows else None


def set_mailbox(db: Database, account: str, folder: str, uidvalidity: int, last_uid: int) -> None:
    db.execute(
        "insert into mailboxes (account, folder, uidvalidity, last_uid, updated_at) values (?, ?, ?, ?, ?) "
        "on conflict(account, folder) do update set uidvalidity = excluded.uidvalidity, "
        "last_uid = excluded.last_uid, updated_at = excluded.updated_at",
        [account, folder, uidvalidity, last_uid, now_iso()],
    )


def record_poll(
    db: Database, account: str, *, ok: bool, imported: int, result: str, error: str | None = None,
    next_attempt_at: str | None = None,
) -> None:
    now = now_iso()
    with transaction(db):
        db.execute(
            "insert into account_status (account, imported_total, failures) values (?, 0, 0) "
            "on conflict(account) do nothing",
            [account],
        )
        if ok:
            db.execute(
                "update account_status set last_poll_at = ?, last_result = ?, last_error = null, "
                "last_success_at = ?, imported_total = imported_total + ?, last_imported = ?, "
                "failures = 0, next_attempt_at = null where account = ?",
                [now, result, now, imported, imported, account],
            )
        else:
            db.execute(
                "update account_status set last_poll_at = ?, last_result = ?, last_error = ?, "
                "imported_total = imported_total + ?, last_imported = ?, failures = failures + 1, "
                "next_attempt_at = ? where account = ?",
                [now, result, error, imported, imported, next_attempt_at, account],
            )


def account_status(db: Database) -> dict[str, dict]:
    return {row["account"]: row for row in db.query("select * from account_status")}


# --- tickets ----------------------------------------------------------------------------------

TICKET_COLUMNS = (
    "t.id, t.subject, t.requester, t.requester_name, t.status, t.priority, t.assignee, t.account, "
    "t.created_at, t.updated_at, t.closed_at, t.due_response_at, t.due_resolution_at, t.overdue, "
    "(select count(*) from messages m where m.ticket_id = t.id) as message_count, "
    "(select count(*) from messages m where m.ticket_id = t.id and m.direction = 'in') as incoming_count"
)


def _ticket_obj(row: dict) -> dict:
    row = dict(row)
    row["overdue"] = bool(row.get("overdue"))
    return row


def list_tickets(
    db: Database,
    *,
    status: str | None = None,
    account: str | None = None,
    overdue: bool = False,
    requester: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    order: str = "updated",
) -> list[dict]:
    where, params = [], []
    if status in (None, "", "active"):
        where.append("t.status != 'closed'")
    elif status != "all":
        where.append("t.status = ?")
        params.append(status)
    if account:
        where.append("t.account = ?")
        params.append(account)
    if overdue:
        where.append("t.overdue = 1")
    if requester:
        where.append("t.requester = ?")
        params.append(requester.lower())
    sql = f"select {TICKET_COLUMNS} from tickets t"
    if where:
        sql += " where " + " and ".join(where)
    order_sql = {
        "updated": "t.updated_at desc, t.id desc",
        "created": "t.created_at desc, t.id desc",
        "id": "t.id asc",
    }.get(order, "t.updated_at desc, t.id desc")
    sql += f" order by {order_sql}"
    if limit is not None:
        sql += " limit ? offset ?"
        params += [limit, offset]
    return [_ticket_obj(r) for r in db.query(sql, params)]


def get_ticket(db: Database, ticket_id: int) -> dict:
    rows = list(db.query(f"select {TICKET_COLUMNS} from tickets t where t.id = ?", [ticket_id]))
    if not rows:
        raise NotFoundError(f"no ticket #{ticket_id}", "see 'mail2ticket tickets list --status all'")
    return _ticket_obj(rows[0])


def message_obj(row: dict, attachments: list[dict], attachment_root: Path | None = None) -> dict:
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "direction": row["direction"],
        "account": row["account"],
        "from_address": row["from_address"],
        "from_name": row["from_name"],
        "to": json.loads(row["to_addrs"] or "[]"),
        "cc": json.loads(row["cc_addrs"] or "[]"),
        "subject": row["subject"],
        "date": row["date"],
        "received_at": row["received_at"],
        "in_reply_to": row["in_reply_to"],
        "references": json.loads(row["refs"] or "[]"),
        "body_text": row["body_text"],
        "auto_reply": row["auto_reply"],
        "defects": json.loads(row["defects"] or "[]"),
        "thread_reason": row["thread_reason"],
        "ack_reason": row["ack_reason"],
        "raw_sha256": row["raw_sha256"],
        "attachments": [
            {
                "filename": a["filename"],
                "content_type": a["content_type"],
                "size": a["size"],
                "sha256": a["sha256"],
                "path": str(attachment_root / a["path"]) if attachment_root and a["path"] else a["path"],
                "content_id": a["content_id"],
                "disposition": a["disposition"],
            }
            for a in attachments
        ],
    }


def ticket_messages(db: Database, ticket_id: int, attachment_root: Path | None = None) -> list[dict]:
    rows = list(db.query("select * from messages where ticket_id = ? order by id", [ticket_id]))
    atts: dict[int, list[dict]] = {}
    if rows:
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        for a in db.query(
            f"select * from attachments where message in ({marks}) order by message, position", ids
        ):
            atts.setdefault(a["message"], []).append(a)
    return [message_obj(r, atts.get(r["id"], []), attachment_root) for r in rows]


def ticket_events(db: Database, ticket_id: int) -> list[dict]:
    return list(db.query("select * from events where ticket_id = ? order by id", [ticket_id]))


def get_raw(db: Database, sha256: str) -> bytes | None:
    rows = list(db.query("select raw from raw_messages where sha256 = ?", [sha256]))
    return rows[0]["raw"] if rows else None
