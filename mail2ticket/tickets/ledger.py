"""The import ledger: which server message (account, folder, UIDVALIDITY, UID) was imported as
which message or quarantine entry (sources), the raw bytes of every message (raw_messages), and
the quarantine rows. intake/importer.py decides; the SQL is here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mail2ticket.errors import TempFailError
from mail2ticket.files.spool import Spool
from mail2ticket.tickets import pg
from mail2ticket.tickets.db import insert_row
from mail2ticket.tickets.engine import engine_of

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database


def _row(cur) -> dict | None:
    row = cur.fetchone()
    return dict(zip([c[0] for c in cur.description], row, strict=True)) if row else None


def existing_source(db: Database, account: str, folder: str, uidvalidity: int, uid: int) -> dict | None:
    """The ledger row of one server message, or None when it was never imported."""
    return _row(db.execute(
        "select * from sources where account = ? and folder = ? and uidvalidity = ? and uid = ?",
        [account, folder, uidvalidity, uid],
    ))


def existing_sources(db: Database, account: str, folder: str, uidvalidity: int,
                     uids: Sequence[int]) -> dict[int, dict]:
    """{uid: its ledger row} for those of ``uids`` (one folder, one UIDVALIDITY) in the ledger:
    existing_source for a whole batch, in one query."""
    if not uids:
        return {}
    cur = db.conn.execute(
        "select * from sources where account = ? and folder = ? and uidvalidity = ? "
        f"and uid in ({','.join('?' * len(uids))})",
        [account, folder, uidvalidity, *uids],
    )
    names = [c[0] for c in cur.description]
    rows = [dict(zip(names, row, strict=True)) for row in cur]
    return {row["uid"]: row for row in rows}


def contents_in_use(db: Database, hashes: Sequence[str]) -> tuple[set[str], set[str]]:
    """Of the raw SHA-256 ``hashes``: (those imported as an incoming message, those of an open
    quarantine entry), two queries for a whole batch. A hash in neither needs no
    imported_message or open_quarantine_entry."""
    if not hashes:
        return set(), set()
    marks = ",".join("?" * len(hashes))
    quarantined = {
        row[0]
        for row in db.conn.execute(
            f"select raw_sha256 from quarantine where resolved_at is null and raw_sha256 in ({marks})",
            list(hashes),
        )
    }
    return known_contents(db, hashes), quarantined


def known_uids(db: Database, account: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> set[int]:
    """Which of ``uids`` (one folder, one UIDVALIDITY) are in the ledger: one query."""
    return {
        row[0]
        for row in db.execute(
            "select uid from sources where account = ? and folder = ? and uidvalidity = ? "
            f"and uid in ({','.join('?' * len(uids))})",
            [account, folder, uidvalidity, *uids],
        )
    }


def known_contents(db: Database, hashes: Sequence[str]) -> set[str]:
    """Which raw SHA-256 of ``hashes`` were imported as an incoming message: one query."""
    if not hashes:
        return set()
    return {
        row[0]
        for row in db.execute(
            f"select raw_sha256 from messages where direction = 'in' and raw_sha256 in ({','.join('?' * len(hashes))})",
            list(hashes),
        )
    }


def record_source(db: Database, row: dict[str, Any]) -> None:
    """A new ledger row (inside the import's transaction)."""
    insert_row(db, "sources", row)


def same_gmail_message(db: Database, gm_mailbox: str, gm_msgid: int) -> dict | None:
    """The ledger row of the same Gmail message (X-GM-MSGID) of the same mailbox, if imported
    (account, folder, message, quarantine, ticket_id)."""
    return _row(db.execute(
        "select s.account, s.folder, s.message, s.quarantine, m.ticket_id from sources s "
        "left join messages m on m.id = s.message where s.gm_mailbox = ? and s.gm_msgid = ? "
        "and (s.message is not null or s.quarantine is not null) order by s.id limit 1",
        [gm_mailbox, gm_msgid],
    ))


def imported_message(db: Database, sha256: str) -> dict | None:
    """The incoming message with these raw bytes ({id, ticket_id}), or None."""
    row = db.execute(
        "select id, ticket_id from messages where raw_sha256 = ? and direction = 'in' limit 1", [sha256],
    ).fetchone()
    return {"id": row[0], "ticket_id": row[1]} if row else None


def open_quarantine_entry(db: Database, sha256: str) -> int | None:
    """The unresolved quarantine entry of these raw bytes, or None."""
    row = db.execute(
        "select id from quarantine where raw_sha256 = ? and resolved_at is null limit 1", [sha256],
    ).fetchone()
    return row[0] if row else None


def insert_quarantine(db: Database, row: dict[str, Any]) -> int:
    return insert_row(db, "quarantine", row)


def store_raw_spool(db: Database, sha256: str, spool: Spool, now: str) -> None:
    """The raw bytes of a spooled (large) message into raw_messages, once per content, 1 MB at a
    time inside the caller's transaction: never whole in memory (SQLite: incremental blob I/O;
    PostgreSQL: COPY, tickets/pg.py)."""
    chunks = _SpoolChunks(spool)
    try:
        if engine_of(db) == "postgresql":
            stored = pg.copy_raw(db, sha256, spool.size, now, iter(chunks))
        else:
            stored = _write_blob(db, sha256, spool.size, now, chunks)
    except OSError as exc:
        raise TempFailError(f"cannot read the fetched message {spool.path}: {exc.strerror or exc}",
                            "the next poll fetches it again") from None
    if stored and (chunks.written != spool.size or chunks.digest.hexdigest() != sha256):
        raise TempFailError(f"the fetched message {spool.path} changed before it was stored",
                            "the next poll fetches it again")


def _write_blob(db: Database, sha256: str, size: int, now: str, chunks: Iterable[bytes]) -> bool:
    """SQLite: a zeroblob of ``size`` filled by incremental blob I/O; False when the same bytes
    are stored already."""
    conn = db.conn
    before = conn.total_changes
    db.execute(
        "insert into raw_messages (sha256, size, raw, stored_at) values (?, ?, zeroblob(?), ?) "
        "on conflict(sha256) do nothing",
        [sha256, size, size, now],
    )
    if conn.total_changes == before:
        return False
    rowid = db.execute("select rowid from raw_messages where sha256 = ?", [sha256]).fetchone()[0]
    with conn.blobopen("raw_messages", "raw", rowid) as blob:
        for chunk in chunks:
            blob.write(chunk)
    return True


class _SpoolChunks:
    """A spool file's bytes, 1 MB at a time, hashed and counted as they are read (never more
    than the spool's size: a file that grew is caught by the hash)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.digest = hashlib.sha256()
        self.written = 0

    def __iter__(self) -> Iterator[bytes]:
        with open(self.spool.path, "rb") as f:
            while chunk := f.read(1 << 20):
                if self.written + len(chunk) > self.spool.size:
                    break
                self.digest.update(chunk)
                self.written += len(chunk)
                yield chunk


# --- server actions after the commit (\Seen, move, delete; a Maildir file moved to cur/) ---------


def pending_actions(db: Database, account: str, folder: str, uidvalidity: int) -> list[dict]:
    """Ledger rows (id, uid, action) of stored messages whose server action has not run yet."""
    return list(db.query(
        "select id, uid, action from sources where account = ? and folder = ? and uidvalidity = ? "
        "and action_state = 'pending' order by uid",
        [account, folder, uidvalidity],
    ))


def has_pending_actions(db: Database, account: str, folder: str) -> bool:
    return db.execute(
        "select 1 from sources where account = ? and folder = ? and action_state = 'pending' limit 1",
        [account, folder],
    ).fetchone() is not None


def mark_actions_done(db: Database, ids: Sequence[int], action: str | None = None) -> None:
    """The server actions of ledger rows ``ids`` ran (``action``: the one run, when it differs
    from the one recorded at import: a changed after_import). Inside a transaction."""
    if not ids:
        return
    marks = ",".join("?" * len(ids))
    if action is None:
        db.execute(f"update sources set action_state = 'done' where id in ({marks})", list(ids))
    else:
        db.execute(f"update sources set action_state = 'done', action = ? where id in ({marks})", [action, *ids])


def mark_mailbox_checked(db: Database, account: str, folder: str, now: str) -> None:
    """A full check of the folder ended now (a later poll may stop at STATUS until it is old)."""
    db.execute("update mailboxes set checked_at = ? where account = ? and folder = ?", [now, account, folder])


def count_failure(db: Database, key: str) -> int:
    """One more failed fetch under ``key`` (conversation_state); the count so far."""
    row = db.execute("select value from conversation_state where key = ?", [key]).fetchone()
    tries = (int(row[0]) if row and row[0].isdigit() else 0) + 1
    db.execute(
        "insert into conversation_state (key, value) values (?, ?) "
        "on conflict(key) do update set value = excluded.value",
        [key, str(tries)],
    )
    return tries


def forget_failures(db: Database, prefix: str, keys: set[str]) -> None:
    """Drop the failure counts under ``prefix`` whose key is in ``keys``."""
    counted = [key for (key,) in db.execute(
        "select key from conversation_state where substr(key, 1, ?) = ?", [len(prefix), prefix])]
    for key in counted:
        if key in keys:
            db.execute("delete from conversation_state where key = ?", [key])


# --- Maildir: file names stand in for UIDs -------------------------------------------------------


def maildir_ids(db: Database, folder: str, names: Sequence[str], now: str) -> dict[str, int]:
    """{file name: its number} in ``folder``, new names numbered (in a transaction of its own)."""
    if names:
        db.conn.executemany(
            "insert into maildir_names (folder, name, created_at) values (?, ?, ?) "
            "on conflict(folder, name) do nothing",
            [(folder, name, now) for name in names],
        )
    wanted = set(names)
    return {
        row["name"]: row["id"]
        for row in db.query("select id, name from maildir_names where folder = ?", [folder])
        if row["name"] in wanted
    }


def maildir_names_imported(db: Database, account: str, folder: str, uidvalidity: int) -> set[str]:
    """The file names of ``folder`` that are in the ledger."""
    rows = db.query(
        "select n.name from maildir_names n join sources s on s.account = ? and s.folder = n.folder "
        "and s.uidvalidity = ? and s.uid = n.id where n.folder = ?",
        [account, uidvalidity, folder],
    )
    return {row["name"] for row in rows}


def maildir_pending_actions(db: Database, account: str, folder: str, uidvalidity: int) -> list[dict]:
    """(id, action, name) of stored Maildir messages whose file was not handled yet."""
    return list(db.query(
        "select s.id, s.action, n.name from sources s join maildir_names n on n.folder = s.folder "
        "and n.id = s.uid where s.account = ? and s.folder = ? and s.uidvalidity = ? "
        "and s.action_state = 'pending' order by s.uid",
        [account, folder, uidvalidity],
    ))


# --- the quarantine ------------------------------------------------------------------------------


QUARANTINE_COLUMNS = (
    "id, account, folder, uidvalidity, uid, raw_sha256, size, reason, error, created_at, "
    "retries, resolved_at, resolved_message, discarded_at, export_path"
)


def quarantine_entries(db: Database, *, include_resolved: bool = False) -> list[dict]:
    sql = f"select {QUARANTINE_COLUMNS} from quarantine"
    if not include_resolved:
        sql += " where resolved_at is null"
    return list(db.query(sql + " order by id"))


def quarantine_entry(db: Database, qid: int) -> dict | None:
    return next(iter(db.query("select * from quarantine where id = ?", [qid])), None)


def open_quarantine_count(db: Database) -> int:
    return db.execute("select count(*) from quarantine where resolved_at is null").fetchone()[0]


def open_quarantine_summary(db: Database) -> tuple[int, str | None]:
    """(entries waiting, the oldest one's created_at) of the quarantine, for the metrics."""
    n, oldest = db.execute("select count(*), min(created_at) from quarantine where resolved_at is null").fetchone()
    return n, oldest


def quarantine_retried(db: Database, qid: int, error: str | None) -> None:
    """One more retry of an entry that is still not a ticket, and why."""
    db.execute("update quarantine set retries = retries + 1, error = ? where id = ?", [error, qid])


def quarantine_resolved(db: Database, qid: int, message_row: int, sha256: str | None, now: str) -> None:
    """The entry became message ``message_row``: resolved, and the ledger rows point to it."""
    db.execute(
        "update quarantine set resolved_at = ?, resolved_message = ?, retries = retries + 1, "
        "raw_sha256 = coalesce(raw_sha256, ?) where id = ?",
        [now, message_row, sha256, qid],
    )
    db.execute(
        "update sources set message = ?, raw_sha256 = coalesce(raw_sha256, ?) where quarantine = ?",
        [message_row, sha256, qid],
    )


def quarantine_discarded(db: Database, qid: int, export_path: str | None, now: str, sha256: str | None) -> None:
    """The entry is discarded (its raw bytes exported first or not): the bytes are deleted
    unless a message, another entry or the outbox still holds the same ones."""
    db.execute(
        "update quarantine set discarded_at = ?, resolved_at = ?, export_path = ?, raw_sha256 = NULL where id = ?",
        [now, now, export_path, qid],
    )
    if sha256 and not any(
        db.execute(f"select 1 from {table} where raw_sha256 = ? limit 1", [sha256]).fetchone()
        for table in ("messages", "quarantine", "outbox")
    ):
        db.execute("delete from raw_messages where sha256 = ?", [sha256])


def supersede_quarantine(db: Database, account: str, folder: str, uidvalidity: int, now: str) -> None:
    """The folder's UIDVALIDITY changed: over-size entries of the old one name UIDs that no longer
    exist (never downloaded, no hash can match them); the re-scan makes fresh entries."""
    db.execute(
        "update quarantine set resolved_at = ?, error = error || ? where account = ? "
        "and folder = ? and uidvalidity != ? and raw_sha256 is null and resolved_at is null",
        [now, " (superseded: the folder's UIDVALIDITY changed; see the newer entry)", account, folder, uidvalidity],
    )
