"""The rows of messages, attachments and raw_messages: a message stored by an import or typed as a
reply, its attachments, its raw bytes (read back whole, or into a spool file when large)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mail2ticket.errors import TempFailError
from mail2ticket.files.spool import MiB, Spool, spool_chunks
from mail2ticket.parse.bigmessage import BIG_MESSAGE, too_many_lines
from mail2ticket.tickets import pg
from mail2ticket.tickets.db import insert_row
from mail2ticket.tickets.engine import engine_of

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database


def store_raw(db: Database, sha256: str, raw: bytes, now: str) -> None:
    """Keep ``raw`` under its SHA-256 (once: the same bytes are stored one time)."""
    db.execute(
        "insert into raw_messages (sha256, size, raw, stored_at) values (?, ?, ?, ?) "
        "on conflict(sha256) do nothing",
        [sha256, len(raw), raw, now],
    )


def insert_message(db: Database, row: dict[str, Any]) -> int:
    """A new row of messages (the caller's transaction); its id."""
    return db["messages"].insert(row).last_pk


def insert_incoming(db: Database, row: dict[str, Any]) -> int:
    """A new row of messages during an import (a prepared INSERT, no schema look-ups); its id."""
    return insert_row(db, "messages", row)


def insert_attachment(db: Database, row: dict[str, Any]) -> int:
    return insert_row(db, "attachments", row)


def incoming_messages(db: Database, ticket_ids: Sequence[int] | None = None) -> list[dict]:
    """Every incoming message with raw bytes (of ``ticket_ids`` only, when given), in id order."""
    sql = "select * from messages where direction = 'in' and raw_sha256 is not null"
    params: list = []
    if ticket_ids:
        sql += f" and ticket_id in ({','.join('?' * len(ticket_ids))})"
        params = list(ticket_ids)
    return list(db.query(sql + " order by id", params))


def attachment_rows(db: Database, message: int) -> list[dict]:
    return list(db.query("select * from attachments where message = ? order by position", [message]))


def update_derived(db: Database, message: int, values: dict[str, Any]) -> None:
    """Set the columns of a message that are derived from its raw bytes (reparse)."""
    db.execute(f"update messages set {', '.join(f'{k} = ?' for k in values)} where id = ?", [*values.values(), message])


def replace_attachments(db: Database, message: int, rows: Sequence[dict[str, Any]]) -> None:
    db.execute("delete from attachments where message = ?", [message])
    for row in rows:
        insert_row(db, "attachments", {"message": message, **row})


def first_incoming(db: Database, ticket_id: int) -> int | None:
    """The id of the ticket's first incoming message (the one its own fields came from)."""
    return db.execute("select min(id) from messages where ticket_id = ? and direction = 'in'", [ticket_id]).fetchone()[0]


def take_stored(db: Any, sha256: str, directory: str | os.PathLike, threshold: int = BIG_MESSAGE
                ) -> tuple[bytes | None, Spool | None] | None:
    """A stored raw message (raw_messages): ``(raw, None)`` when it is at most ``threshold`` bytes,
    else ``(None, spool)``: copied into a temp file 1 MB at a time with incremental blob I/O.
    None when no raw message has that hash. ``db``: a sqlite_utils Database (or tickets/pg.py's)."""
    postgres = engine_of(db) == "postgresql"
    key = "sha256" if postgres else "rowid"
    row = db.execute(f"select {key}, length(raw) from raw_messages where sha256 = ?", [sha256]).fetchone()
    if row is None:
        return None
    rowid, size = row
    if (size or 0) <= threshold:
        raw = db.execute(f"select raw from raw_messages where {key} = ?", [rowid]).fetchone()[0]
        raw = bytes(raw) if raw is not None else None
        if raw is None or not too_many_lines(raw):
            return raw, None
        return None, spool_chunks([raw], directory)
    if postgres:
        spool = spool_chunks(pg.read_raw(db, sha256, MiB), directory)
    else:
        with db.conn.blobopen("raw_messages", "raw", rowid, readonly=True) as blob:
            spool = spool_chunks(iter(lambda: blob.read(MiB), b""), directory)
    if spool.sha256 != sha256:
        spool.unlink()
        raise TempFailError(f"the stored raw message {sha256} does not match its hash",
                            "check the database with 'sqlite3 FILE \"pragma integrity_check\"'")
    return None, spool


def set_ack_reason(db: Database, message: int, reason: str) -> None:
    """Why the message was or was not acknowledged ('tickets show' says so)."""
    db.execute("update messages set ack_reason = ? where id = ?", [reason, message])
