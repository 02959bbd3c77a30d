"""The PostgreSQL engine: a connection (psycopg 3) behind the small interface the tickets/ modules
use of sqlite-utils' Database (``execute``, ``query``, ``conn.execute``, ``conn.in_transaction``,
savepoints, ``atomic()``, ``cursor.lastrowid``, ``db[table].insert/exists/upsert_all``), and
the translation of the SQLite dialect those modules write (``translate``).

Transactions are explicit (the connection is in autocommit mode, as sqlite3 is outside BEGIN).
A write transaction (tickets/db.transaction) takes ``pg_advisory_xact_lock(WRITE_LOCK)`` right
after BEGIN: writers are serialised as SQLite's BEGIN IMMEDIATE serialises them, so every
read-then-write of the importer, the outbox and the ticket commands sees the same world it did
on SQLite, across processes and hosts (docs/storage.md). The outbox's claim alone locks its row
instead (``begin_write(writers_lock=False)``, tickets/mailqueue.claim_entry). A connection lost in the middle of a
transaction leaves nothing half-stored (the server rolls it back); every statement then raises
PgTransientError until the caller's ROLLBACK, and the next statement after it connects again.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mail2ticket.tickets.engine import PgError, PgTransientError, savepoint_block

# The key of the one advisory lock that serialises write transactions (and, as a session
# lock, the creation of the schema: pg_schema.SCHEMA_LOCK). Arbitrary, fixed, documented.
WRITE_LOCK = 0x6D327401  # 'm2t' 0x01
# How long a session may sit idle inside a transaction before the server ends it: a daemon frozen
# in the middle of one never holds the others up for longer (docs/scaling.md).
IDLE_IN_TRANSACTION_MS = 5000

# The tables whose rows have an ``id`` (the INSERT of one returns it: cursor.lastrowid).
ID_TABLES = frozenset({
    "attachments", "daemon", "events", "hook_deliveries", "maildir_names", "messages", "outbox",
    "quarantine", "sources", "tickets",
})

_TOKENS = re.compile(
    r"""'(?:[^']|'')*'          # a string literal: left alone
      | "[^"]*"                 # a quoted name: left alone
      | \?(\d+)                 # ?N: a numbered parameter
      | (?<![:\w]):([A-Za-z_]\w*) # :name: a named parameter
      | \?                      # a parameter
      | %                       # a percent sign (psycopg's placeholders use %)
      | \binsert\s+or\s+ignore\b
      | \blimit\s+-1\b
      | \blike\b
      | \bifnull\s*\(
    """,
    re.IGNORECASE | re.VERBOSE,
)
_INSERT_INTO = re.compile(r'\s*insert\s+into\s+"?(\w+)"?', re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> tuple[str, bool]:
    """SQLite's dialect as the tickets/ modules write it -> PostgreSQL's, and whether it uses
    numbered parameters (``?1``: then the parameters go by name, ``%(p1)s``).

    Every ``%`` -> ``%%`` (the statement always goes with parameters, so psycopg undoes it); outside
    string literals: ``?`` -> ``%s``, ``?N`` -> ``%(pN)s``, ``:name`` -> ``%(name)s``, ``INSERT OR
    IGNORE`` -> ``INSERT ... ON CONFLICT DO NOTHING``, ``LIMIT -1`` -> ``LIMIT ALL``, ``LIKE`` ->
    ``ILIKE`` (SQLite's LIKE ignores the case of ASCII letters), ``ifnull(`` -> ``coalesce(``;
    and an INSERT into a table with an id gets ``RETURNING id`` (for ``lastrowid``).
    """
    numbered = False
    ignore = False

    def sub(match: re.Match[str]) -> str:
        nonlocal numbered, ignore
        token = match.group(0)
        first = token[0]
        if first in "'\"":
            return token.replace("%", "%%")  # psycopg reads every % of the statement (params always given)
        if match.group(1):
            numbered = True
            return f"%(p{match.group(1)})s"
        if match.group(2):
            return f"%({match.group(2)})s"
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        lower = token.lower()
        if lower.startswith("insert"):
            ignore = True
            return "insert"
        if lower.startswith("limit"):
            return "limit all"
        if lower == "like":
            return "ilike"
        return "coalesce("

    out = _TOKENS.sub(sub, sql).rstrip().rstrip(";")
    if ignore and "on conflict" not in out.lower():
        out += " on conflict do nothing"
    match = _INSERT_INTO.match(out)
    if match and match.group(1).lower() in ID_TABLES and " returning " not in out.lower():
        out += " returning id"
    return out, numbered


def _params(params: Sequence[Any] | dict | None, numbered: bool) -> Any:
    if params is None:
        return {} if numbered else []  # always some: then psycopg turns %% back into %
    if isinstance(params, dict):
        return {k: (int(v) if isinstance(v, bool) else v) for k, v in params.items()}
    values = [int(v) if isinstance(v, bool) else v for v in params]  # SQLite keeps True as 1
    if numbered:
        return {f"p{i}": v for i, v in enumerate(values, 1)}
    return values


class PgCursor:
    """The result of a statement, as much of sqlite3.Cursor as the tickets/ modules use."""

    def __init__(self, cursor: Any, returning_id: bool) -> None:
        self._cursor = cursor
        self.lastrowid: int | None = None
        self.rowcount = cursor.rowcount
        if returning_id:
            row = cursor.fetchone() if cursor.description else None
            self.lastrowid = row[0] if row else None

    @property
    def description(self) -> Any:
        return self._cursor.description

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[tuple]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


class PgConnection:
    """The connection, with sqlite3.Connection's ``execute``, ``executemany``,
    ``in_transaction``, ``commit``, ``rollback``, ``close`` and ``with conn:`` (a transaction)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._conn: Any = None
        self._lost = False  # the connection died inside a transaction: only ROLLBACK ends it
        self._conn = self._open()

    def _open(self) -> Any:
        return self._connect()

    @property
    def raw(self) -> Any:
        """The psycopg connection (connecting again if the last one was lost)."""
        if self._lost:
            raise PgTransientError("database: the connection was lost in the middle of a transaction; "
                                   "nothing of it was stored")
        if self._conn is None or self._conn.closed:
            self._conn = self._open()
        return self._conn

    @property
    def in_transaction(self) -> bool:
        if self._lost:
            return True  # until the caller's ROLLBACK: as SQLite, the transaction is still 'open'
        conn = self._conn
        if conn is None or conn.closed:
            return False
        from psycopg.pq import (
            TransactionStatus,  # psycopg: an optional library, loaded with the engine
        )

        return conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def _run(self, fn: Callable[[Any], Any], sql: str) -> Any:
        import psycopg  # an optional library, loaded with the engine (already imported by then)

        if self._lost:
            if re.match(r"\s*rollback\s*$", sql, re.IGNORECASE):
                self._lost = False
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
                return None
            self.raw  # raises PgTransientError  # noqa: B018
        was_in_transaction = self.in_transaction
        conn = self.raw
        try:
            return fn(conn)
        except psycopg.OperationalError as exc:
            if conn.closed or conn.broken:
                self._lost = was_in_transaction
                if not was_in_transaction:
                    self._conn = None
            raise PgTransientError(f"database: {_one_line(exc)}") from exc
        except psycopg.Error as exc:
            if conn.closed or conn.broken:  # the server ended the session (idle-in-transaction timeout: 25P03)
                self._lost = was_in_transaction  # never a silent reconnect in autocommit mid-transaction
                if not was_in_transaction:
                    self._conn = None
                raise PgTransientError(f"database: {_one_line(exc)}") from exc
            raise PgError(f"database: {_one_line(exc)}") from exc

    def execute(self, sql: str, params: Sequence[Any] | dict | None = None) -> PgCursor:
        pg_sql, numbered = translate(sql)
        values = _params(params, numbered)
        returning = pg_sql.endswith(" returning id")

        def run(conn: Any) -> PgCursor:
            cursor = conn.cursor()
            cursor.execute(pg_sql, values)
            return PgCursor(cursor, returning)

        return self._run(run, sql)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> PgCursor:
        pg_sql, numbered = translate(sql)
        if pg_sql.endswith(" returning id"):
            pg_sql = pg_sql[: -len(" returning id")]
        values = [_params(row, numbered) for row in rows]

        def run(conn: Any) -> PgCursor:
            cursor = conn.cursor()
            cursor.executemany(pg_sql, values)
            return PgCursor(cursor, False)

        return self._run(run, sql)

    def commit(self) -> None:
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._lost = False

    def __enter__(self) -> PgConnection:
        if not self.in_transaction:
            self.execute("BEGIN")
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


class _Inserted:
    def __init__(self, last_pk: int | None) -> None:
        self.last_pk = last_pk


class PgTable:
    """``db[name]``: the few sqlite-utils Table methods the tickets/ modules use at run time."""

    def __init__(self, db: PgDatabase, name: str) -> None:
        self.db, self.name = db, name

    def exists(self) -> bool:
        return self.db.execute("select to_regclass(?) is not null", [self.name]).fetchone()[0]

    def insert(self, row: dict) -> _Inserted:
        names = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" * len(row))
        cursor = self.db.execute(f'insert into "{self.name}" ({names}) values ({marks})', list(row.values()))
        return _Inserted(cursor.lastrowid)

    def upsert_all(self, rows: Sequence[dict], pk: str) -> None:
        for row in rows:
            names = ", ".join(f'"{c}"' for c in row)
            marks = ", ".join("?" * len(row))
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in row if c != pk) or f'"{pk}" = excluded."{pk}"'
            self.db.execute(f'insert into "{self.name}" ({names}) values ({marks}) '
                            f'on conflict ("{pk}") do update set {updates}', list(row.values()))


class PgDatabase:
    """An open PostgreSQL database, used by the tickets/ modules as they use sqlite-utils' Database."""

    engine = "postgresql"

    def __init__(self, conn: PgConnection, url: str, busy_timeout_ms: int) -> None:
        self.conn = conn
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms

    def __repr__(self) -> str:
        return f"<PgDatabase {self.url}>"

    def execute(self, sql: str, params: Sequence[Any] | dict | None = None) -> PgCursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> Iterator[dict]:
        cursor = self.conn.execute(sql, params)
        names = [c[0] for c in cursor.description or ()]
        for row in cursor.fetchall():
            yield dict(zip(names, row, strict=True))

    def __getitem__(self, name: str) -> PgTable:
        return PgTable(self, name)

    def begin_write(self, *, writers_lock: bool = True) -> None:
        """BEGIN, then the write lock (waiting up to the busy timeout, as SQLite's BEGIN IMMEDIATE).
        ``writers_lock=False``: no writers' lock, only the busy timeout for row locks (a transaction
        that locks the rows it changes itself: the outbox claim, tickets/mailqueue.claim_entry)."""
        self.conn.execute("BEGIN")
        try:
            self.conn.execute(f"set local lock_timeout = {int(self.busy_timeout_ms)}")
            if writers_lock:
                self.conn.execute("select pg_advisory_xact_lock(?)", [WRITE_LOCK])
        except BaseException:
            self.conn.rollback()
            raise

    @contextlib.contextmanager
    def atomic(self) -> Iterator[PgDatabase]:
        """A savepoint inside a transaction, else a transaction of its own (sqlite-utils' atomic())."""
        conn = self.conn
        if conn.in_transaction:
            with savepoint_block(conn, "m2t_atomic"):
                yield self
            return
        conn.execute("BEGIN")
        try:
            yield self
        except BaseException:
            conn.rollback()
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PgDatabase:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def open_pg(url: str, *, busy_timeout_ms: int, password: str | Callable[[], str | None] | None = None,
            ensure_schema: bool = True) -> PgDatabase:
    """Connect to the PostgreSQL database of ``url`` (libpq syntax) and create or upgrade its
    schema (not with ``ensure_schema=False``: 'config check --online' only looks). ``password``:
    the password, or a function that gives it (asked at each connection), or None: libpq finds
    it itself (PGPASSWORD, PGPASSFILE, PGSERVICE) or needs none."""
    from mail2ticket.errors import ConfigError, StoreError, TempFailError
    from mail2ticket.tickets import pg_schema

    try:
        import psycopg  # an optional library (the postgresql extra), only for a postgresql:// database
    except ImportError:
        raise StoreError("the database is a PostgreSQL URL, but psycopg is not installed",
                         "pip install 'mail2ticket[postgresql]' into mail2ticket's environment") from None
    where = redact(url)

    def connect() -> Any:
        secret = password() if callable(password) else password
        extra: dict[str, Any] = {"autocommit": True, "application_name": "mail2ticket"}
        params = psycopg.conninfo.conninfo_to_dict(url)
        params.setdefault("connect_timeout", "10")
        for key, value in (("keepalives", "1"), ("keepalives_idle", "30"), ("keepalives_interval", "10"),
                           ("keepalives_count", "3")):
            params.setdefault(key, value)
        # A process frozen inside a write transaction (SIGSTOP, a paused VM, a partition) would
        # hold the write lock, and so every other daemon, for ever: the server ends such a session
        # after IDLE_IN_TRANSACTION_MS (its transaction rolled back, nothing of it stored).
        params["options"] = (params.get("options", "") +
                             f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
                             # No JIT: compiling a triage query took longer than running it (0.3-0.6 s
                             # of 'tickets list' at a million tickets; docs/scaling.md).
                             " -c jit=off").strip()
        if secret is not None:
            extra["password"] = secret
        try:
            return psycopg.connect(**params, **extra)
        except psycopg.OperationalError as exc:
            text = _one_line(exc)
            if "password" in text:
                raise ConfigError(
                    f"cannot sign in to the PostgreSQL database {where}: {text}",
                    "give it as the keyring entry 'database' ('keyring set mail2ticket database'), the systemd "
                    "credential 'database', [storage] password_command, or libpq's PGPASSFILE (docs/storage.md)",
                ) from None
            raise TempFailError(f"cannot connect to the PostgreSQL database {where}: {text}",
                                "check that the server runs and the URL is right, then try again") from None

    try:
        db = PgDatabase(PgConnection(connect), where, busy_timeout_ms)
    except psycopg.Error as exc:
        raise StoreError(f"cannot open the PostgreSQL database {where}: {_one_line(exc)}") from None
    try:
        if ensure_schema:
            pg_schema.ensure(db)
    except (psycopg.Error, PgError) as exc:
        db.close()
        raise StoreError(f"cannot create the schema in the PostgreSQL database {where}: {_one_line(exc)}",
                         "the user of the URL must own the database (createdb --owner USER NAME)") from None
    return db


def redact(url: str) -> str:
    """The URL without a password (for messages and logs)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def copy_raw(db: PgDatabase, sha256: str, size: int, now: str, chunks: Iterator[bytes]) -> bool:
    """Store raw bytes given in pieces (a large message) with COPY, never whole in this process's
    memory; False when these bytes are stored already. Inside the caller's write transaction."""
    if db.execute("select 1 from raw_messages where sha256 = ?", [sha256]).fetchone():
        return False

    def run(conn: Any) -> None:
        with conn.cursor().copy("copy raw_messages (sha256, size, stored_at, raw) from stdin") as copy:
            copy.write(f"{sha256}\t{int(size)}\t{now}\t\\\\x".encode())
            for chunk in chunks:
                copy.write(chunk.hex().encode())
            copy.write(b"\n")

    db.conn._run(run, "copy")
    return True


def read_raw(db: PgDatabase, sha256: str, chunk: int) -> Iterator[bytes]:
    """The stored raw bytes of ``sha256``, ``chunk`` bytes at a time (raw_messages.raw is stored
    uncompressed, so each piece is read without reading the value before it)."""
    offset = 1
    while True:
        row = db.execute("select substring(raw from ? for ?) from raw_messages where sha256 = ?",
                         [offset, chunk, sha256]).fetchone()
        if not row or not row[0]:
            return
        yield bytes(row[0])
        offset += chunk
