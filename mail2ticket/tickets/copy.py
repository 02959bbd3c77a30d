"""Copying a whole SQLite database into a PostgreSQL one (``mail2ticket db copy``): the one module
of tickets/ that reads and writes every table, whoever owns it (docs/architecture.md).

What it guarantees (docs/storage.md "Moving to PostgreSQL"):

- **One snapshot.** The source is read in one read transaction: what is copied is the database as
  it was at one moment, whatever another process commits meanwhile (``source_changed`` then says
  so, and a second run copies what came after).
- **Ids kept.** Every row keeps its id; each identity sequence is set past the largest id (and past
  SQLite's AUTOINCREMENT counter), so the next ticket gets the number SQLite would have given it.
- **Batches, each a transaction, exactly once.** Rows go in batches in SQLite's rowid order; each
  batch commits together with the copy's progress (the table ``m2t_copy`` in the target), so a
  run killed at any point leaves whole batches and the next run continues after the last one:
  no row is copied twice, none is skipped.
- **Bounded memory.** Raw messages are streamed through COPY 1 MB at a time (never whole in
  memory); a batch of any other table holds at most about ``BATCH_BYTES`` of values (or one row).
- **Verified.** Rows per table on both sides; the values of every row of every table alike on
  both (a digest of each row, summed: no order needed, a row changed in the source since an
  interrupted run is found); the SHA-256 of every raw message as PostgreSQL stores it (computed
  by the server) against its key, and every source key present.
- **Only into an empty database** (or one this source was partly copied into): a target that
  holds other data is refused.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mail2ticket.errors import ConfigError, StoreError
from mail2ticket.tickets.db import now_iso, transaction
from mail2ticket.tickets.engine import PgError

PgDatabase = Any  # tickets/pg.py's PgDatabase

BATCH_ROWS = 500  # rows of an ordinary table per transaction
BATCH_BYTES = 32 * 1024 * 1024  # bytes of values per transaction (raw messages: sent, not held)
CHUNK = 1024 * 1024  # raw bytes read from SQLite and sent at a time

PROGRESS = "m2t_copy"  # the copy's own table in the target: how far each table got
# SQLite's own tables, the FTS5 index (PostgreSQL keeps its own, filled by a trigger as messages
# arrive: tickets/fts_pg.py) and the migrations' bookkeeping (m2t_schema on PostgreSQL).
_NOT_COPIED = ("sqlite_", "messages_fts", "_sqlite_migrations")
# Rows the target may hold before the copy: the config's [[hooks]], recorded by any command that
# opened it (tickets/hookqueue.py); the copy brings the source's.
_DERIVED = ("hook_subscriptions",)


@dataclass
class TableCopy:
    name: str
    source_rows: int = 0
    target_rows: int = 0
    copied: int = 0  # by this run
    same_content: bool = True  # every row's values alike on both (raw_messages: by their SHA-256)

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows and self.same_content


@dataclass
class CopyResult:
    source: str
    target: str
    resumed: bool = False
    tables: list[TableCopy] = field(default_factory=list)
    raw_checked: int = 0
    raw_mismatched: int = 0
    raw_missing: int = 0
    source_changed: bool = False

    @property
    def verified(self) -> bool:
        return all(t.ok for t in self.tables) and not self.raw_mismatched and not self.raw_missing

    def as_dict(self) -> dict:
        return {
            "source": self.source, "target": self.target, "resumed": self.resumed,
            "verified": self.verified, "source_changed": self.source_changed,
            "tables": [{"table": t.name, "source_rows": t.source_rows, "target_rows": t.target_rows,
                        "copied": t.copied, "same_content": t.same_content} for t in self.tables],
            "raw_messages": {"checked": self.raw_checked, "sha256_mismatched": self.raw_mismatched,
                             "missing": self.raw_missing},
        }


def open_snapshot(path: Path) -> sqlite3.Connection:
    """The source, read-only, inside one read transaction (a consistent snapshot until closed)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("begin")
        conn.execute("select count(*) from sqlite_master").fetchone()  # the snapshot starts here
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the database {path}: {exc}") from None
    return conn


def source_tables(src: sqlite3.Connection) -> list[str]:
    """The tables to copy, each after the tables its foreign keys name."""
    names = sorted(r[0] for r in src.execute(
        "select name from sqlite_master where type = 'table' and sql not like 'CREATE VIRTUAL%'"
    ) if not r[0].startswith(_NOT_COPIED))
    deps = {t: {r[2] for r in src.execute(f'pragma foreign_key_list("{t}")')} - {t} for t in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [t for t in names if t not in ordered and deps[t] <= set(ordered) | (deps[t] - set(names))]
        if not ready:  # a cycle (none in the schema): the rest in name order
            ready = [t for t in names if t not in ordered]
        ordered.extend(ready)
    return ordered


def _columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in src.execute(f'pragma table_info("{table}")')]


def _target_tables(db: PgDatabase) -> set[str]:
    return {r[0] for r in db.execute(
        "select table_name from information_schema.tables where table_schema = current_schema()")}


def _progress(db: PgDatabase) -> dict[str, tuple[str, int]]:
    """{table: (source, last rowid copied)} of an earlier run ({} before the first)."""
    if PROGRESS not in _target_tables(db):
        return {}
    return {r[0]: (r[1], r[2]) for r in db.execute(f"select table_name, source, last_rowid from {PROGRESS}")}


def check_target(db: PgDatabase, source: str, tables: list[str]) -> bool:
    """Refuse a target that holds other data (ConfigError); True when this source was copied
    into it before (this run continues), False when it is empty."""
    progress = _progress(db)
    others = sorted({s for s, _ in progress.values()} - {source})
    if others:
        raise ConfigError(f"the PostgreSQL database {db.url} holds a copy of another database ({others[0]})",
                          "give the URL of a new, empty database (createdb --owner USER NAME)")
    if progress:
        return True
    present = _target_tables(db)
    missing = [t for t in tables if t not in present]
    if missing:
        raise StoreError(f"the PostgreSQL database {db.url} has no table {missing[0]} of the SQLite schema",
                         "upgrade mail2ticket where you run db copy (both schemas come from it)")
    for table in tables:
        if table in _DERIVED:
            continue
        if db.execute(f'select 1 from "{table}" limit 1').fetchone():
            count = db.execute(f'select count(*) from "{table}"').fetchone()[0]
            raise ConfigError(
                f"the PostgreSQL database {db.url} is not empty ({count} row(s) in {table}): db copy fills "
                "only a new database",
                "give the URL of a new, empty database (createdb --owner USER NAME)")
    return False


def copy_database(src: sqlite3.Connection, source: str, db: PgDatabase, *, batch_rows: int = BATCH_ROWS,
                  batch_bytes: int = BATCH_BYTES, progress: Callable[[str, int, int], None] | None = None,
                  ) -> CopyResult:
    """Copy every table of the snapshot ``src`` (read by open_snapshot) into ``db`` (opened by
    open_db on a postgresql:// URL), continue an interrupted copy, set the sequences, verify.
    ``progress(table, rows copied so far, rows in the source)`` after each committed batch."""
    tables = source_tables(src)
    result = CopyResult(source=source, target=db.url)
    version = src.execute("pragma data_version").fetchone()[0]
    result.resumed = check_target(db, source, tables)
    db.execute(f"create table if not exists {PROGRESS} (table_name text primary key, source text not null, "
               "last_rowid bigint not null, rows bigint not null, started_at text not null, updated_at text)")
    if not result.resumed:
        with transaction(db):
            for table in _DERIVED:
                db.execute(f'delete from "{table}"')
    done = _progress(db)
    for table in tables:
        total = src.execute(f'select count(*) from "{table}"').fetchone()[0]
        if table not in done:
            db.execute(f"insert into {PROGRESS} (table_name, source, last_rowid, rows, started_at) "
                       "values (?, ?, 0, 0, ?)", [table, source, now_iso()])
        last = done.get(table, (source, 0))[1]
        entry = TableCopy(table, source_rows=total)
        copy_table = _copy_raw_batch if table == "raw_messages" else _copy_batch
        while True:
            n, last = copy_table(src, db, table, last, batch_rows, batch_bytes)
            if not n:
                break
            entry.copied += n
            if progress:
                progress(table, entry.copied, total)
        result.tables.append(entry)
    _set_sequences(src, db)
    for entry in result.tables:
        entry.target_rows = db.execute(f'select count(*) from "{entry.name}"').fetchone()[0]
        if entry.name != "raw_messages" and entry.source_rows == entry.target_rows:
            entry.same_content = _same_rows(src, db, entry.name)
    if "raw_messages" in tables:
        _verify_raw(src, db, result)
    src.execute("commit")  # the snapshot ends: did anyone write to the source meanwhile?
    result.source_changed = src.execute("pragma data_version").fetchone()[0] != version
    return result


def _copy_batch(src: sqlite3.Connection, db: PgDatabase, table: str, after: int, rows: int,
                max_bytes: int) -> tuple[int, int]:
    """The next batch of ``table`` after rowid ``after`` (at most ``rows``, and at most about
    ``max_bytes`` of values unless one row is larger: an outbox mail holds its raw bytes), in one
    transaction with its progress."""
    columns = _columns(src, table)
    names = ", ".join(f'"{c}"' for c in columns)
    sizes = " + ".join(f'coalesce(length("{c}"), 0)' for c in columns)
    last, total = after, 0
    for rowid, size in src.execute(f'select rowid, {sizes} from "{table}" where rowid > ? order by rowid limit ?',
                                   [after, rows]):
        if last != after and total + size > max_bytes:
            break
        last, total = rowid, total + size
    if last == after:
        return 0, after
    batch = src.execute(f'select {names} from "{table}" where rowid > ? and rowid <= ? order by rowid',
                        [after, last]).fetchall()
    try:
        with transaction(db):
            db.conn.executemany(f'insert into "{table}" ({names}) values ({", ".join("?" * len(columns))})', batch)
            _advance(db, table, after, last, len(batch))
    except (StoreError, PgError) as exc:
        raise StoreError(f"copying {table} (rows after rowid {after}): {exc}",
                         getattr(exc, "hint", None) or "run db copy again: it continues where it stopped") from None
    return len(batch), last


def _copy_raw_batch(src: sqlite3.Connection, db: PgDatabase, table: str, after: int, rows: int,
                    max_bytes: int) -> tuple[int, int]:
    """The next raw messages after rowid ``after`` (at most ``rows``, at most ``max_bytes`` unless
    one message is larger), streamed into COPY ``CHUNK`` bytes at a time."""
    columns = set(_columns(src, table))
    if columns != {"sha256", "size", "stored_at", "raw"}:
        raise StoreError(f"raw_messages has the columns {sorted(columns)}, which db copy does not know",
                         "upgrade mail2ticket")
    batch: list[tuple] = []
    size_sum = 0
    for row in src.execute("select rowid, sha256, length(raw), stored_at from raw_messages where rowid > ? "
                           "order by rowid limit ?", [after, rows]):
        if batch and size_sum + row[2] > max_bytes:
            break
        batch.append(row)
        size_sum += row[2]
    if not batch:
        return 0, after
    import psycopg  # the optional library of the PostgreSQL engine (loaded with it already)

    try:
        with transaction(db):
            with db.conn.raw.cursor().copy("copy raw_messages (sha256, size, stored_at, raw) from stdin") as copy:
                for rowid, sha256, size, stored_at in batch:
                    copy.write(f"{sha256}\t{int(size)}\t{stored_at}\t\\\\x".encode())
                    for chunk in _blob_chunks(src, rowid, size):
                        copy.write(chunk.hex().encode())
                    copy.write(b"\n")
            _advance(db, table, after, batch[-1][0], len(batch))
    except psycopg.Error as exc:
        raise StoreError(f"copying raw_messages (rows after rowid {after}): {str(exc).strip().splitlines()[0]}",
                         "check the PostgreSQL server, then run db copy again: it continues") from None
    return len(batch), batch[-1][0]


def _blob_chunks(src: sqlite3.Connection, rowid: int, size: int) -> Iterator[bytes]:
    with src.blobopen("raw_messages", "raw", rowid, readonly=True) as blob:
        while chunk := blob.read(CHUNK):
            yield chunk


def _advance(db: PgDatabase, table: str, after: int, last: int, n: int) -> None:
    """The progress of ``table`` from rowid ``after`` to ``last``, in the batch's transaction; a
    progress that is no longer ``after`` (another db copy into the same database) rolls it back."""
    moved = db.execute(f"update {PROGRESS} set last_rowid = ?, rows = rows + ?, updated_at = ? "
                       "where table_name = ? and last_rowid = ?", [last, n, now_iso(), table, after]).rowcount
    if moved != 1:
        raise StoreError(f"another db copy is filling {db.url} at the same time (table {table})",
                         "let one run alone; run it again afterwards: it continues")


def _set_sequences(src: sqlite3.Connection, db: PgDatabase) -> None:
    """Each identity column's sequence past the largest id copied and SQLite's AUTOINCREMENT
    counter: the next row gets the id SQLite would have given it."""
    counters: dict[str, int] = {}
    if src.execute("select 1 from sqlite_master where name = 'sqlite_sequence'").fetchone():
        counters = {name: seq for name, seq in src.execute("select name, seq from sqlite_sequence")}
    identities = db.execute("select table_name, column_name from information_schema.columns "
                            "where table_schema = current_schema() and is_identity = 'YES'").fetchall()
    with transaction(db):
        for table, column in identities:
            top = max(db.execute(f'select coalesce(max("{column}"), 0) from "{table}"').fetchone()[0],
                      counters.get(table, 0))
            if top > 0:
                db.execute("select setval(pg_get_serial_sequence(?, ?), ?)", [f'"{table}"', column, top])


def _row_digest(row: tuple) -> int:
    """A digest of one row's values, alike for SQLite's and psycopg's types of the same values
    (a number in a SQLite text column comes back from PostgreSQL as text: compared as text)."""
    values: list[bytes | str | None] = []
    for v in row:
        if isinstance(v, (bytes, memoryview)):
            values.append(bytes(v))
        elif v is None:
            values.append(None)
        elif isinstance(v, float) and v.is_integer():
            values.append(str(int(v)))
        else:
            values.append(str(v))
    return int.from_bytes(hashlib.sha256(repr(values).encode()).digest()[:16], "big")


def _same_rows(src: sqlite3.Connection, db: PgDatabase, table: str, batch: int = 1000) -> bool:
    """Whether ``table`` holds the same rows on both sides: the sums of their rows' digests (order
    does not matter), each side read in batches (PostgreSQL's through a server-side cursor)."""
    columns = ", ".join(f'"{c}"' for c in _columns(src, table))
    mask = (1 << 128) - 1
    ours = 0
    rows = src.execute(f'select {columns} from "{table}"')
    while part := rows.fetchmany(batch):
        ours = (ours + sum(_row_digest(r) for r in part)) & mask
    theirs = 0
    raw = db.conn.raw
    with raw.transaction(), raw.cursor(name="m2t_copy_verify") as cursor:
        cursor.itersize = batch
        cursor.execute(f'select {columns} from "{table}"')
        while part := cursor.fetchmany(batch):
            theirs = (theirs + sum(_row_digest(r) for r in part)) & mask
    return ours == theirs


def _verify_raw(src: sqlite3.Connection, db: PgDatabase, result: CopyResult, batch: int = 1000) -> None:
    """Every raw message's SHA-256 as PostgreSQL stores it (computed by the server, nothing read
    here) against its key, and every key of the source present in the target."""
    result.raw_mismatched = db.execute(
        "select count(*) from raw_messages where encode(sha256(raw), 'hex') != sha256").fetchone()[0]
    result.raw_checked = db.execute("select count(*) from raw_messages").fetchone()[0]
    keys = src.execute("select sha256 from raw_messages order by rowid")
    while part := [r[0] for r in keys.fetchmany(batch)]:
        found = db.execute("select count(*) from raw_messages where sha256 = any(?)", [part]).fetchone()[0]
        result.raw_missing += len(part) - found


def attachment_files(src: sqlite3.Connection) -> list[tuple[str, int]]:
    """(sha256, size) of every attachment the source's rows name, once each (db copy
    --attachments into-database copies their files into the target's attachment_blobs)."""
    return [(r[0], r[1]) for r in src.execute("select sha256, max(size) from attachments group by sha256 order by sha256")]
