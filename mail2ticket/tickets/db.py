"""The SQLite store: opening it durably, transactions, and the queries the rest of the code needs."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import json
import os
import pwd
import re
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mail2ticket.config.fields import STATUSES
from mail2ticket.files import perms as fileperms
from mail2ticket.tickets import hookqueue
from mail2ticket.tickets.engine import (
    TRANSIENT_ERRORS,
    PgError,
    engine_of,
    is_postgres_url,
    savepoint_block,
)

if TYPE_CHECKING:  # imported where needed: 'import mail2ticket.tickets.db' stays cheap
    from sqlite_utils import Database

    from mail2ticket.config.model import Config

from mail2ticket.errors import ConfigError, NotFoundError, StoreError, TempFailError, WrongUserError

BUSY_TIMEOUT_MS = 30_000


_now: tuple[int, str] = (0, "")  # the last second now_iso formatted, and its text


def now_iso() -> str:
    """The current time as ISO 8601 UTC with a Z, to the second (formatted once per second: an
    import asks several times per message)."""
    global _now
    second = int(time.time())
    if second != _now[0]:
        _now = (second, datetime.fromtimestamp(second, UTC).isoformat().replace("+00:00", "Z"))
    return _now[1]


def current_user() -> str:
    """Who is at the keyboard, for the actor of a ticket event ('unknown' if the OS cannot say)."""
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def import_sqlite_utils() -> None:
    """Import sqlite-utils without pandas and numpy: it loads them, when installed, only to store
    their values, which we never do, and they cost 0.2-0.5 s of every command's start-up."""
    if "sqlite_utils" in sys.modules:
        return
    blocked = [name for name in ("numpy", "pandas") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # 'import numpy' raises ImportError
    try:
        import sqlite_utils  # noqa: F401
    finally:
        for name in blocked:
            del sys.modules[name]  # anyone else may still import them


def open_db(path: Path | str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS,
            password: str | Callable[[], str | None] | None = None) -> Database:
    """Open (creating if needed) the database: WAL, synchronous=FULL, foreign keys, migrations.

    ``path`` may also be a PostgreSQL URL (``postgresql://user@host/db``, tickets/pg.py): then
    ``password`` is its password, a function that gives it, or None (libpq's own sources)."""
    if is_postgres_url(path):
        from mail2ticket.tickets.pg import open_pg  # psycopg: optional, only for PostgreSQL

        return open_pg(str(path), busy_timeout_ms=busy_timeout_ms, password=password)  # type: ignore[return-value]
    import_sqlite_utils()
    from sqlite_utils import Database  # after import_sqlite_utils(): without numpy and pandas

    # Here, not at the top: the migrations import sqlite-utils, which must come after
    # import_sqlite_utils() (without numpy and pandas) for a fast start-up of every command.
    from mail2ticket.tickets.migrations import migrations

    path = Path(path)
    refuse_root_on_foreign_database(path)
    try:
        _create_private(path)
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot open database {path}: {exc}", "check that the directory exists and is writable"
        ) from None
    db = Database(conn)
    db.busy_timeout_ms = busy_timeout_ms  # type: ignore[attr-defined]
    db.engine = "sqlite"  # type: ignore[attr-defined]  # tickets/engine.py

    def setup() -> None:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.enable_wal()
        # FULL: a commit is on disk before we touch the server (WAL + NORMAL may lose the last commits).
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        if migrations.pending(db):
            _migrate(db, path, migrations)

    try:
        _retry_busy(setup, busy_timeout_ms)
    except sqlite3.OperationalError as exc:
        _raise_store_error(exc, path)
    return db


def open_store(cfg: Config, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Database:
    """open_db of the config's ``[storage] database``: the SQLite file, or the PostgreSQL URL with
    its password from the secret chain (accounts/storage.database_password)."""
    if cfg.database_url is None:
        return open_db(cfg.database, busy_timeout_ms=busy_timeout_ms)
    from mail2ticket.accounts.storage import (
        database_password,  # the secret chain: keyring, only here
    )

    return open_db(cfg.database_url, busy_timeout_ms=busy_timeout_ms, password=lambda: database_password(cfg))


def _create_private(path: Path) -> None:
    """The database's folder and file, created 0700/0600 (0750/0640 in a setgid folder) whatever
    the umask, before SQLite opens it: SQLite gives its WAL and SHM the database file's mode."""
    if str(path) == ":memory:":
        return
    fileperms.makedirs(path.parent)
    if not path.exists():
        try:
            os.close(fileperms.create(path, os.O_WRONLY | os.O_CREAT))
        except FileExistsError:
            pass
    fileperms.tighten([path, Path(f"{path}-wal"), Path(f"{path}-shm")])


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _command_line() -> str:
    """How this command was started, for 'sudo -u USER <this>' (shell-quoted)."""
    argv = sys.argv
    if argv and (os.path.basename(argv[0]) == "mail2ticket" or argv[0].endswith("mail2ticket/__main__.py")):
        return shlex.join(["mail2ticket", *argv[1:]])
    return "mail2ticket …"


def refuse_root_on_foreign_database(path: Path) -> None:
    """Root may not work on a database (or, before it exists, a database directory) that belongs
    to another user: the lock files, WAL and attachment folders root would create there would be
    root's, and the service user's next poll would fail on them. Raises WrongUserError (exit 77)
    saying how to run the command as that user."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    for candidate in (path, path.parent):
        try:
            owner = candidate.stat().st_uid
        except OSError:
            continue
        if owner == 0:
            return
        user = _owner_name(owner)
        raise WrongUserError(
            f"this command runs as root, but the database {path} is owned by {user}: files root "
            f"would create beside it would lock {user} out",
            f"run it as that user: sudo -u {user} {_command_line()}",
        )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _retry_busy(fn, busy_timeout_ms: int):
    """Run ``fn``; while SQLite answers 'locked'/'busy', try again until the busy timeout is spent.

    SQLite's own busy handler is bypassed in some cases (WAL recovery after another connection
    closed, a stale read snapshot), which then fail at once however long the timeout: retrying
    here keeps the promise of --lock-timeout / busy_timeout.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def _migrate(db, path: Path, migrations) -> None:
    """Apply pending migrations with a lock file held, so processes that open a new database at
    the same moment (parallel MTA deliveries, the daemon) never race to create the schema."""
    try:
        lock = fileperms.open_new(path.with_name(path.name + ".migrate-lock"), "a")
    except OSError as exc:
        raise StoreError(f"cannot create the migration lock beside {path}: {exc}",
                         "check that the directory is writable") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if migrations.pending(db):  # another process may have applied them meanwhile
                migrations.apply(db)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _raise_store_error(exc: sqlite3.Error | PgError, path: Any = None) -> None:
    text = str(exc)
    where = f"database {path}: " if path else "database: "
    if isinstance(exc, PgError):
        hint = "check the PostgreSQL server and the connection, then try again"
        if isinstance(exc, TRANSIENT_ERRORS):
            raise TempFailError(text, hint) from None
        raise StoreError(text) from None
    if "locked" in text or "busy" in text:
        raise TempFailError(where + text, "another process holds the database; try again") from None
    if "disk" in text or "full" in text or "readonly" in text or "I/O" in text:
        raise TempFailError(where + text, "free disk space or fix permissions, then try again") from None
    raise StoreError(where + text) from None


@contextlib.contextmanager
def transaction(db: Database, *, writers_lock: bool = True) -> Iterator[Database]:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front (waiting up to busy_timeout).
    On PostgreSQL: BEGIN and the one advisory write lock (tickets/pg.py, the same guarantee);
    ``writers_lock=False`` (PostgreSQL only, SQLite ignores it): without that lock, for a
    transaction that takes row locks on what it changes (the outbox claim, tickets/mailqueue.py)."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    try:
        if engine_of(db) == "postgresql":
            db.begin_write(writers_lock=writers_lock)
        else:
            _retry_busy(lambda: db.execute("BEGIN IMMEDIATE"), getattr(db, "busy_timeout_ms", BUSY_TIMEOUT_MS))
    except (sqlite3.OperationalError, PgError) as exc:
        _raise_store_error(exc)
    try:
        # The kinds the hooks want, read once under the write lock (nobody can change them until
        # the commit): log_event queues nothing, at no cost, for the others.
        db.hook_kinds = hookqueue.subscribed_kinds(db)  # type: ignore[attr-defined]
        yield db
        _freeze_hook_payloads(db)
    except BaseException:
        db.hook_kinds = None  # type: ignore[attr-defined]
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.hook_kinds = None  # type: ignore[attr-defined]  # outside transaction(): log_event always asks
    try:
        db.conn.execute("COMMIT")
    except (sqlite3.OperationalError, PgError) as exc:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        _raise_store_error(exc)


@contextlib.contextmanager
def savepoint(db: Database) -> Iterator[Database]:
    """A savepoint inside the caller's transaction, as sqlite-utils' ``atomic()`` makes one, but
    under one constant name: its three statements are compiled once and then taken from
    sqlite3's statement cache (atomic()'s random name makes each one new SQL; the importer runs
    one per message). SQLite allows the same name nested: RELEASE and ROLLBACK TO name the
    innermost. Outside a transaction it is ``atomic()``."""
    conn = db.conn
    if not conn.in_transaction:
        with db.atomic():
            yield db
        return
    with savepoint_block(conn, "m2t_savepoint"):  # as in atomic()
        yield db


def log_event(
    db: Database,
    kind: str,
    detail: str = "",
    *,
    ticket_id: int | None = None,
    account: str | None = None,
    actor: str = "system",
) -> None:
    """One event in the history (of a ticket, or of an account); queued for the hooks that want
    it in the same transaction (tickets/hookqueue.py)."""
    # A plain INSERT: sqlite-utils' insert() looks the schema up on every call (several queries
    # of sqlite_master), paid for each imported message (docs/performance.md).
    sql = "insert into events (ticket_id, account, created_at, kind, actor, detail) values (?, ?, ?, ?, ?, ?)"
    now = now_iso()
    values = [ticket_id, account, now, kind, actor, detail]
    if db.conn.in_transaction:
        event_id = db.conn.execute(sql, values).lastrowid
        kinds = getattr(db, "hook_kinds", None)  # a set inside transaction(); None: ask the table
        if (kinds is None or kind in kinds) and hookqueue.enqueue(db, kind, event_id, ticket_id, account, now):
            db.hook_payloads_due = True  # type: ignore[attr-defined]  # frozen before the commit
    else:
        with db.conn:  # committed at once, as sqlite-utils' insert() did outside a transaction
            event_id = db.conn.execute(sql, values).lastrowid
            if hookqueue.enqueue(db, kind, event_id, ticket_id, account, now):
                hookqueue.freeze(db, functools.partial(get_tickets, db))


def _freeze_hook_payloads(db: Database) -> None:
    """Before a transaction that queued hook deliveries commits: their payloads, with each ticket
    as the whole transaction left it."""
    if getattr(db, "hook_payloads_due", False):
        hookqueue.freeze(db, functools.partial(get_tickets, db))
        db.hook_payloads_due = False  # type: ignore[attr-defined]


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
        before = db.execute("select last_error from account_status where account = ?", [account]).fetchone()
        db.execute(
            "insert into account_status (account, imported_total, failures) values (?, 0, 0) "
            "on conflict(account) do nothing",
            [account],
        )
        # Once per change of health ('status' calls an account failing while its last poll has
        # an error), never per failed poll: the events of the hooks account.failing/recovered.
        was_failing = before is not None and before[0] is not None
        if not ok and not was_failing:
            log_event(db, "account-failing", error or result, account=account)
        elif ok and was_failing:
            log_event(db, "account-recovered", f"{result} (the last failure: {before[0]})", account=account)
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

# "Not closed", written as the statuses that are not closed: the index on (status, updated_at)
# then serves it (with "!= 'closed'", SQLite walks all tickets in date order: 2 s at 1,000,000).
NOT_CLOSED_SQL = "t.status in ({})".format(", ".join(f"'{s}'" for s in STATUSES if s != "closed"))
# The next SLA deadline of a ticket: the response while none was given, then the resolution.
DUE_AT_SQL = (
    "case when t.first_response_at is null and t.due_response_at is not null "
    "then t.due_response_at else t.due_resolution_at end"
)
# When the ticket's first mail was written: its Date header, but never later than it arrived (a
# future Date is a wrong clock or spam). Old mail imported today keeps the date it was sent.
FIRST_MESSAGE_SQL = (
    "(select min(coalesce(m.date, m.received_at), m.received_at) from messages m "
    "where m.ticket_id = t.id order by m.id limit 1)"
)
# A table of tickets shows neither incoming_count nor first_message_at (but with --sort date):
# list_tickets(brief=True) leaves out their two lookups per ticket (the whole open queue of a
# million tickets, 16,000 rows, on PostgreSQL: 130 ms -> 55 ms; docs/scaling.md).
BRIEF_TICKET_COLUMNS = (
    "t.id, t.subject, t.requester, t.requester_name, t.status, t.priority, t.assignee, t.account, "
    "t.created_at, t.updated_at, t.closed_at, t.first_response_at, t.due_response_at, "
    f"t.due_resolution_at, {DUE_AT_SQL} as due_at, (t.overdue = 1 and t.status != 'closed') as overdue, "
    "(select count(*) from messages m where m.ticket_id = t.id) as message_count"
)
TICKET_COLUMNS = (
    f"{BRIEF_TICKET_COLUMNS}, "
    "(select count(*) from messages m where m.ticket_id = t.id and m.direction = 'in') as incoming_count, "
    f"{FIRST_MESSAGE_SQL} as first_message_at"
)
ORDERS = {
    "updated": "t.updated_at desc, t.id desc",
    "created": "t.created_at desc, t.id desc",
    "id": "t.id asc",
    "priority": "case t.priority when 'urgent' then 0 when 'high' then 1 when 'normal' then 2 "
    "when 'low' then 3 else 4 end asc, t.updated_at desc, t.id desc",
    "due": f"({DUE_AT_SQL}) is null asc, ({DUE_AT_SQL}) asc, t.id asc",
    # A ticket without messages (a date of NULL) last, then first when reversed, on both engines:
    # SQLite sorts NULL before any value, PostgreSQL after.
    "date": f"{FIRST_MESSAGE_SQL} desc nulls last, t.id desc",
}


def _ticket_obj(row: dict) -> dict:
    """A row of TICKET_COLUMNS (a dict of its own, as db.query yields) as a ticket object."""
    row["overdue"] = bool(row.get("overdue"))
    return row


def _with_tags(db: Database, tickets: list[dict]) -> list[dict]:
    """Add ``tags`` (a sorted list) and ``monitoring`` to each ticket object, one query each."""
    by_id = {t["id"]: t for t in tickets}
    for t in tickets:
        t["tags"] = []
        t["monitoring"] = None
    ids = list(by_id)
    # PostgreSQL takes the ids as one array (16,000 tickets: 2 queries, not 64), written as text
    # (psycopg's own adaptation of a list took 70 ms for 16,000 ids); SQLite 500 at a time.
    if engine_of(db) == "postgresql":
        array = "{" + ",".join(str(int(i)) for i in ids) + "}"
        chunks = [("= any(cast(? as bigint[]))", [array])] if ids else []
    else:
        chunks = [("in ({})".format(",".join("?" * len(ids[i : i + 500]))), ids[i : i + 500])
                  for i in range(0, len(ids), 500)]
    for match, values in chunks:
        for ticket_id, tag in db.execute(
            f"select ticket_id, tag from ticket_tags where ticket_id {match} order by tag", values
        ):
            by_id[ticket_id]["tags"].append(tag)
        cursor = db.execute(f"select {MONITORING_COLUMNS} from monitoring where ticket_id {match}", values)
        names = [c[0] for c in cursor.description]
        for row in cursor:
            facts = dict(zip(names, row, strict=True))
            by_id[facts.pop("ticket_id")]["monitoring"] = _monitoring_obj(facts)
    return tickets


# A monitoring ticket's facts in a ticket object (INTERFACE.md: tool, host, service, state).
MONITORING_COLUMNS = ("ticket_id, tool, host, service, state, severity, event_id, phase, started_at, "
                      "recovered_at, last_at, mails")


def _monitoring_obj(facts: dict) -> dict:
    """The ``monitoring`` object: the facts, and the problem's duration once it recovered (else
    how long it has lasted so far, up to its latest mail), in seconds and as text."""
    end = facts["recovered_at"] if facts["phase"] == "recovered" else facts["last_at"]
    seconds = None
    if facts["started_at"] and end:
        start_dt = datetime.fromisoformat(facts["started_at"].replace("Z", "+00:00"))
        seconds = max(0, int((datetime.fromisoformat(end.replace("Z", "+00:00")) - start_dt).total_seconds()))
    facts["duration_seconds"] = seconds
    facts["duration"] = human_duration(seconds)
    return facts


def human_duration(seconds: int | None) -> str | None:
    """3900 -> '1h 5m', 720 -> '12m', 93784 -> '1d 2h 3m', 42 -> '42s'."""
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else [v for v in value if v]


def ticket_filters(
    *,
    status: str | None = None,
    account: str | Sequence[str] | None = None,
    overdue: bool = False,
    requester: str | None = None,
    priority: str | Sequence[str] | None = None,
    assignee: str | Sequence[str] | None = None,
    unassigned: bool = False,
    tags: Sequence[str] = (),
    created_since: str | None = None,
    created_until: str | None = None,
    updated_since: str | None = None,
    updated_until: str | None = None,
    before: str | None = None,
    after: str | None = None,
    monitoring: str | None = None,
    host: str | Sequence[str] | None = None,
    service: str | Sequence[str] | None = None,
    engine: str = "sqlite",
) -> tuple[list[str], list[Any]]:
    """The SQL conditions (on ``tickets t``) and parameters of a listing's filters.

    ``status``: None (every ticket that is not closed), "all", or one status. ``requester``: an
    address, or "@domain" for everyone at that domain. Times are ISO 8601 UTC; "until" is exclusive.
    ``before``/``after``: the date of the first mail (FIRST_MESSAGE_SQL), before it (exclusive),
    or at or after it. ``monitoring``: "only" (monitoring tickets), "none" (the others), or None;
    ``host``/``service``: a monitoring ticket's host or service (any of them, without case).
    ``engine``: the database's (tickets/engine.py), for conditions its indexes serve differently.
    """
    where: list[str] = []
    params: list[Any] = []

    def one_of(column: str, values: list[str]) -> None:
        if len(values) == 1:
            where.append(f"{column} = ?")
        else:
            where.append(f"{column} in ({','.join('?' * len(values))})")
        params.extend(values)

    if status in (None, "", "active"):
        where.append(NOT_CLOSED_SQL)
    elif status != "all":
        one_of("t.status", [status])
    if _as_list(account):
        one_of("t.account", _as_list(account))
    if overdue:
        where.append("t.overdue = 1 and t.status != 'closed'")
    if requester:
        requester = requester.strip().lower()
        if requester.startswith("@") and engine == "postgresql":
            # The domain as the prefix of the reversed address: idx_tickets_requester_reversed
            # (a LIKE '%@domain' reads every ticket: 0.6 s at a million).
            where.append("starts_with(reverse(lower(t.requester)), ?)")
            params.append(requester[::-1])
        elif requester.startswith("@"):
            where.append("t.requester like ? escape '\\'")
            params.append("%" + requester.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"))
        else:
            where.append("t.requester = ?")
            params.append(requester)
    if _as_list(priority):
        one_of("t.priority", _as_list(priority))
    if unassigned:
        where.append("t.assignee is null")
    elif _as_list(assignee):
        one_of("t.assignee", _as_list(assignee))
    for tag in tags:
        where.append("t.id in (select ticket_id from ticket_tags where tag = ?)")
        params.append(tag)
    for column, op, value in (
        ("created_at", ">=", created_since),
        ("created_at", "<", created_until),
        ("updated_at", ">=", updated_since),
        ("updated_at", "<", updated_until),
    ):
        if value:
            where.append(f"t.{column} {op} ?")
            params.append(value)
    for op, value in (("<", before), (">=", after)):
        if value:
            where.append(f"{FIRST_MESSAGE_SQL} {op} ?")
            params.append(value)
    # The monitoring table (tickets/monitoring.py owns it): one row per monitoring ticket.
    if monitoring == "only":
        where.append("t.id in (select ticket_id from monitoring)")
    elif monitoring == "none":
        where.append("t.id not in (select ticket_id from monitoring)")
    for column, values in (("host", _as_list(host)), ("service", _as_list(service))):
        if values:
            marks = " or ".join(f"{column} = ? collate nocase" for _ in values)
            where.append(f"t.id in (select ticket_id from monitoring where {marks})")
            params.extend(values)
    return where, params


def list_tickets(
    db: Database,
    *,
    status: str | None = None,
    account: str | Sequence[str] | None = None,
    overdue: bool = False,
    requester: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    order: str = "updated",
    reverse: bool = False,
    brief: bool = False,
    **filters: Any,
) -> list[dict]:
    """Ticket objects (INTERFACE.md) matching the filters of ``ticket_filters``, in ``order``;
    ``brief``: without ``incoming_count`` and ``first_message_at`` (what a table shows)."""
    where, params = ticket_filters(
        status=status, account=account, overdue=overdue, requester=requester, engine=engine_of(db), **filters
    )
    clause = (" where " + " and ".join(where)) if where else ""
    order_sql = ORDERS.get(order, ORDERS["updated"])
    if reverse:
        order_sql = _reverse(order_sql)
    columns = BRIEF_TICKET_COLUMNS if brief else TICKET_COLUMNS
    if limit is None and not offset:
        sql = f"select {columns} from tickets t{clause} order by {order_sql}"
    else:
        # A page: its ids first (the filters and the sort key only, an index scan), then the
        # columns of those rows alone. In one query, PostgreSQL computes every column, with
        # its three subqueries of messages, for each row the offset skips: the page at offset
        # 500,000 of a million tickets took 4.8 s; now an index-only scan (docs/scaling.md).
        page = f"select t.id from tickets t{clause} order by {order_sql}"
        if limit is not None:
            page += " limit ? offset ?"
            params += [limit, offset]
        else:
            page += " limit -1 offset ?"
            params.append(offset)
        sql = f"select {columns} from tickets t where t.id in ({page}) order by {order_sql}"
    return _with_tags(db, [_ticket_obj(r) for r in db.query(sql, params)])


def _reverse(order_sql: str) -> str:
    swap = {"asc": "desc", "desc": "asc", "nulls first": "nulls last", "nulls last": "nulls first"}
    return re.sub(r"(?<= )(asc|desc|nulls first|nulls last)\b", lambda m: swap[m.group(1)], order_sql)


def count_tickets(db: Database, *, by: str | None = None, **filters: Any) -> int | dict[str, int]:
    """How many tickets match the filters; with ``by`` (status, priority, account, assignee),
    a dict of counts per value (None for tickets without one)."""
    where, params = ticket_filters(engine=engine_of(db), **filters)
    clause = (" where " + " and ".join(where)) if where else ""
    if by is None:
        return db.execute(f"select count(*) from tickets t{clause}", params).fetchone()[0]
    if by not in ("status", "priority", "account", "assignee"):
        raise ValueError(f"cannot count by {by!r}")
    rows = db.execute(
        # Ties in the order of the value (none first), the same on both engines.
        f"select t.{by}, count(*) from tickets t{clause} group by t.{by} "
        f"order by count(*) desc, t.{by} asc nulls first", params
    ).fetchall()
    return {key: n for key, n in rows}


def get_tickets(db: Database, ids: Sequence[int]) -> list[dict]:
    """The ticket objects of ``ids`` (those that exist), in no particular order."""
    out: list[dict] = []
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        out += [_ticket_obj(r) for r in db.query(f"select {TICKET_COLUMNS} from tickets t where t.id in ({marks})", chunk)]
    return _with_tags(db, out)


def get_ticket(db: Database, ticket_id: int) -> dict:
    rows = list(db.query(f"select {TICKET_COLUMNS} from tickets t where t.id = ?", [ticket_id]))
    if not rows:
        raise NotFoundError(f"no ticket #{ticket_id}", "see 'mail2ticket tickets list --status all'")
    return _with_tags(db, [_ticket_obj(rows[0])])[0]


# --- managing tickets: each change is an event in the ticket's history -------------------------


def message_obj(row: dict, attachments: list[dict], locate: Callable[[str], str] | None = None) -> dict:
    """A message object (INTERFACE.md); ``locate`` turns an attachment's relative path into where it
    is (a file, or an s3:// object: the attachment store's ``location``)."""
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
                "path": locate(a["path"]) if locate and a["path"] else a["path"],
                "content_id": a["content_id"],
                "disposition": a["disposition"],
            }
            for a in attachments
        ],
    }


def ticket_messages(db: Database, ticket_id: int, locate: Callable[[str], str] | None = None) -> list[dict]:
    rows = list(db.query("select * from messages where ticket_id = ? order by id", [ticket_id]))
    atts: dict[int, list[dict]] = {}
    if rows:
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        for a in db.query(
            f"select * from attachments where message in ({marks}) order by message, position", ids
        ):
            atts.setdefault(a["message"], []).append(a)
    return [message_obj(r, atts.get(r["id"], []), locate) for r in rows]


def ticket_events(db: Database, ticket_id: int) -> list[dict]:
    return list(db.query("select * from events where ticket_id = ? order by id", [ticket_id]))


def get_raw(db: Database, sha256: str) -> bytes | None:
    rows = list(db.query("select raw from raw_messages where sha256 = ?", [sha256]))
    return rows[0]["raw"] if rows else None


def next_attempt_at(db: Database, account: str) -> str | None:
    """When an account in backoff after failed polls may be polled again (ISO 8601 UTC), or None."""
    row = db.execute("select next_attempt_at from account_status where account = ?", [account]).fetchone()
    return row[0] if row else None


def tables_with_account(db: Database) -> list[str]:
    """Every ordinary table with an ``account`` column (tickets, messages, sources, ...)."""
    if engine_of(db) == "postgresql":
        return sorted(r[0] for r in db.execute(
            "select c.table_name from information_schema.columns c join information_schema.tables t "
            "on t.table_schema = c.table_schema and t.table_name = c.table_name "
            "where c.table_schema = current_schema() and c.column_name = 'account' and t.table_type = 'BASE TABLE'"))
    out = []
    for row in db.query(
        "select name, sql from sqlite_master where type = 'table' and name not like 'sqlite_%'"
    ):
        if (row["sql"] or "").upper().startswith("CREATE VIRTUAL"):
            continue
        columns = [c[1] for c in db.execute(f'pragma table_info("{row["name"]}")').fetchall()]
        if "account" in columns:
            out.append(row["name"])
    return sorted(out)


def rename_in_db(db: Database, old: str, new: str) -> dict[str, int]:
    """Change the account name in every table, in one transaction. {table: rows changed}."""
    tables = tables_with_account(db)
    changed: dict[str, int] = {}
    with transaction(db):
        for table in tables:
            clash = db.execute(f'select count(*) from "{table}" where account = ?', [new]).fetchone()[0]
            if clash:
                raise ConfigError(
                    f"the database already holds {clash} row(s) of an account named {new!r} (table {table})",
                    "choose another name (that name was used by an account removed earlier)",
                )
            cursor = db.execute(f'update "{table}" set account = ? where account = ?', [new, old])
            changed[table] = cursor.rowcount
    return changed


def recent_events(db: Database, kind: str, limit: int) -> list[dict]:
    """The newest ``limit`` events of ``kind`` (account, created_at, detail), newest first."""
    return list(db.query(
        "select account, created_at, detail from events where kind = ? order by id desc limit ?", [kind, limit]
    ))


def ticket_counts(db: Database) -> dict[str, int]:
    """Tickets by status, and "overdue": those marked overdue that are not closed."""
    counts = {row["status"]: row["n"] for row in db.query("select status, count(*) as n from tickets group by status")}
    counts["overdue"] = db.execute("select count(*) from tickets where overdue = 1 and status != 'closed'").fetchone()[0]
    return counts


def open_ticket_counts(db: Database) -> list[tuple[str, str, bool, int]]:
    """(status, priority, overdue, tickets) of the tickets that are not closed, for the metrics:
    one pass over the index on (status, updated_at), however many tickets are closed."""
    return [
        (status, priority, bool(overdue), n)
        for status, priority, overdue, n in db.execute(
            f"select t.status, t.priority, t.overdue, count(*) from tickets t where {NOT_CLOSED_SQL} "
            "group by t.status, t.priority, t.overdue"
        )
    ]


def ticket_accounts(db: Database) -> set[str]:
    """Every account that has tickets (also one renamed or removed since)."""
    return {r[0] for r in db.execute("select distinct account from tickets where account is not null")}


def account_has_tickets(db: Database, account: str) -> bool:
    """Whether ``account`` has tickets: one index lookup (ticket_accounts reads every ticket)."""
    return db.execute("select 1 from tickets where account = ? limit 1", [account]).fetchone() is not None


def ever_assigned(db: Database, name: str) -> bool:
    """Whether ``name`` has, or ever had, a ticket assigned: index lookups, where known_assignees
    reads every ticket and every 'assigned' event (0.6 s at a million tickets)."""
    if db.execute("select 1 from tickets where assignee = ? limit 1", [name]).fetchone():
        return True
    return db.execute("select 1 from events where kind = 'assigned' and detail = ? limit 1",
                      ["to " + name]).fetchone() is not None


def known_assignees(db: Database) -> set[str]:
    """Everyone who has, or ever had, a ticket assigned."""
    names = {r[0] for r in db.execute("select distinct assignee from tickets where assignee is not null")}
    names.update(r[0][3:] for r in db.execute(
        "select distinct detail from events where kind = 'assigned' and detail like 'to %'"))
    return names


def insert_row(db: Database, table: str, row: dict) -> int:
    """INSERT one row, return its rowid: sqlite-utils' insert() runs schema queries on every call,
    a cost paid several times per imported message (see docs/performance.md)."""
    return db.conn.execute(_insert_statement(table, tuple(row)), list(row.values())).lastrowid


@functools.lru_cache(maxsize=64)
def _insert_statement(table: str, columns: tuple[str, ...]) -> str:
    """The INSERT statement for ``columns`` of ``table``, built once (run several times per message)."""
    names = ", ".join(f'"{name}"' for name in columns)
    return f'insert into "{table}" ({names}) values ({", ".join("?" * len(columns))})'


def poll_failures(db: Database, account: str) -> int:
    """Failed polls of ``account`` in a row so far (0 after a good one)."""
    row = db.execute("select failures from account_status where account = ?", [account]).fetchone()
    return (row[0] or 0) if row else 0


def state_value(db: Database, key: str) -> str | None:
    """A value of conversation_state (the installation's small key-value state), or None."""
    row = db.execute("select value from conversation_state where key = ?", [key]).fetchone()
    return row[0] if row else None


def set_state_value(db: Database, key: str, value: str) -> None:
    db.execute("insert into conversation_state (key, value) values (?, ?) "
               "on conflict(key) do update set value = excluded.value", [key, value])
