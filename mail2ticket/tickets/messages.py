"""The rows of the messages and raw_messages tables that are not an import: a reply typed in the
shell is stored as a message of its ticket, with its raw bytes, before it is queued."""

from __future__ import annotations

from typing import Any

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
