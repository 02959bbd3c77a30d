"""The PostgreSQL engine (issue 17): the server the tests start, the translation of the SQLite
dialect, the schema of both engines (parity, versions, two processes creating it at once), the
database password's chain (never in the config or the command line), and a connection lost in
the middle of an import's transaction; against a real PostgreSQL (tests/postgres.py).

The other storage tests run on PostgreSQL too with MAIL2TICKET_TEST_ENGINE=postgresql (.ci/run).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from mail2ticket.errors import EXIT_CONFIG, EXIT_TEMPFAIL
from mail2ticket.tickets import pg_schema
from mail2ticket.tickets.db import open_db
from mail2ticket.tickets.pg import translate
from tests.helpers import numbered_mail, run_cli, write_config
from tests.postgres import TEST_PASSWORD, PostgresServer

# ------------------------------------------------------------------------------ the server


def test_the_test_server_signs_in_with_a_password_over_tcp_and_gives_each_test_its_own_database(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_url, password="not-the-password", connect_timeout=5)
    with psycopg.connect(pg_url, password=TEST_PASSWORD) as conn:
        conn.execute("create table t (x int)")
        assert conn.execute("select current_user").fetchone() == ("m2t",)
    other = postgres_server.new_database()
    assert other != pg_url
    with psycopg.connect(other, password=TEST_PASSWORD) as conn:
        assert conn.execute("select count(*) from pg_tables where tablename = 't'").fetchone() == (0,)
    postgres_server.drop_database(other)


def _database_oid(url: str) -> int:
    import psycopg

    with psycopg.connect(url, password=TEST_PASSWORD) as conn:
        return conn.execute("select oid from pg_database where datname = current_database()").fetchone()[0]


def test_a_test_database_used_again_has_no_row_of_the_last_test_and_no_client_of_it(
    postgres_server: PostgresServer,
) -> None:
    import psycopg

    first = postgres_server.new_database(migrated=True)
    db = open_db(first, password=TEST_PASSWORD)
    assert pg_schema.pending(db) == []  # a copy of the migrated template
    db.execute("insert into tickets (account, subject, created_at, updated_at) values ('a', 'old', 'x', 'x')")
    db.execute("insert into raw_messages (sha256, size, stored_at, raw) values ('ab', 1, 'x', 'x')")
    db.execute("insert into messages (ticket_id, direction, account, raw_sha256, received_at, subject) "
               "values (1, 'in', 'a', 'ab', 'x', 'old')")  # the full-text trigger fills messages_fts
    db.execute("insert into events (ticket_id, created_at, kind) values (1, 'x', 'created')")
    db.close()
    oid = _database_oid(first)
    leftover = psycopg.connect(first, password=TEST_PASSWORD, autocommit=True)  # a process the test left running

    postgres_server.recycle_database(first)
    second = postgres_server.new_database(migrated=True)

    assert second != first and _database_oid(second) == oid  # the same database, renamed
    with pytest.raises(psycopg.OperationalError):
        leftover.execute("select 1")  # disconnected
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(first, password=TEST_PASSWORD, connect_timeout=5)  # and cannot come back
    db = open_db(second, password=TEST_PASSWORD)
    tables = [r[0] for r in db.execute("select tablename from pg_tables where schemaname = 'public'")]
    assert {"tickets", "messages", "messages_fts", "raw_messages", "events", "m2t_schema"} <= set(tables)
    assert {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in tables if t != "m2t_schema"} == \
        dict.fromkeys([t for t in tables if t != "m2t_schema"], 0)
    assert pg_schema.pending(db) == []
    db.execute("insert into tickets (account, subject, created_at, updated_at) values ('a', 'new', 'x', 'x')")
    assert db.execute("select id from tickets").fetchall() == [(1,)]  # the identities start again
    db.close()
    postgres_server.recycle_database(second)


def test_a_test_database_whose_schema_a_test_changed_is_dropped_not_used_again(
    postgres_server: PostgresServer,
) -> None:
    import psycopg

    first = postgres_server.new_database(migrated=True)
    with psycopg.connect(first, password=TEST_PASSWORD) as conn:
        conn.execute("alter table tickets add column extra text")
    oid = _database_oid(first)
    postgres_server.recycle_database(first)
    second = postgres_server.new_database(migrated=True)
    with postgres_server.admin() as conn:
        assert conn.execute("select count(*) from pg_database where oid = %s", [oid]).fetchone() == (0,)
    with psycopg.connect(second, password=TEST_PASSWORD) as conn:
        assert conn.execute("select count(*) from information_schema.columns "
                            "where table_name = 'tickets' and column_name = 'extra'").fetchone() == (0,)
    postgres_server.recycle_database(second)


# ------------------------------------------------------------------------ the SQL dialect


def test_the_sqlite_dialect_is_translated_outside_string_literals_only() -> None:
    assert translate("select * from t where a = ? and b like ? and c = 'x?%'") == (
        "select * from t where a = %s and b ilike %s and c = 'x?%%'", False)
    assert translate("select s.hook, ?1, ?2 from s where k = ?5 or a = ?1") == (
        "select s.hook, %(p1)s, %(p2)s from s where k = %(p5)s or a = %(p1)s", True)
    assert translate("insert or ignore into ticket_tags (ticket_id, tag) values (?, ?)")[0] == (
        "insert into ticket_tags (ticket_id, tag) values (%s, %s) on conflict do nothing")
    # An INSERT into a table with an id returns it (cursor.lastrowid); others do not.
    assert translate('insert into "events" (kind) values (?)')[0] == 'insert into "events" (kind) values (%s) returning id'
    assert translate("insert into mailboxes (account) values (?) on conflict(account) do nothing")[0].endswith(
        "do nothing")
    assert translate("update t set a = :r where id = :id and b = ':x' and c = '::'")[0] == (
        "update t set a = %(r)s where id = %(id)s and b = ':x' and c = '::'")
    assert translate("select x from t limit -1 offset ?")[0] == "select x from t limit all offset %s"
    assert translate("select ifnull(a, 1) % 2 from t")[0] == "select coalesce(a, 1) %% 2 from t"


def test_sqlite_only_functions_and_case_rules_behave_alike_on_postgresql(pg_url: str) -> None:
    db = open_db(pg_url, password=TEST_PASSWORD)
    try:
        # Scalar min of two values (db.FIRST_MESSAGE_SQL), NULL when one is NULL, as in SQLite.
        assert db.execute("select min('b', 'a'), min(null, 'a'), max('b', 'c')").fetchone() == ("a", None, "c")
        # LIKE ignores the case of ASCII letters; 'collate nocase' compares without case.
        assert db.execute("select 'ABC' like 'a%', 'Host1' = 'host1' collate nocase").fetchone() == (True, True)
        # Text sorts byte by byte (ISO times, 'Z' after digits), whatever the database's locale.
        db.execute("insert into conversation_state (key, value) values ('a', 'x'), ('B', 'y'), ('_', 'z')")
        assert [r[0] for r in db.execute("select key from conversation_state order by key")] == ["B", "_", "a"]
        # A % in a string literal, with parameters or without.
        assert db.execute("select 'a%b' like 'a%', ? like '5%'", ["50"]).fetchone() == (True, True)
        assert db.execute("select 'a%b'").fetchone() == ("a%b",)
        # Python's True is stored as 1 in an integer column, as sqlite3 stores it.
        db.execute("insert into account_status (account, failures) values (?, ?)", ["acc", True])
        assert db.execute("select failures from account_status").fetchone() == (1,)
    finally:
        db.close()


# ------------------------------------------------------------------------------ the schema


def _sqlite_columns(path: Path) -> dict[str, set[str]]:
    db = open_db(path)
    tables = [r[0] for r in db.execute(
        "select name from sqlite_master where type in ('table', 'view') and name not like 'sqlite_%' "
        "and name not like 'messages_fts%' and name != '_sqlite_migrations'")]
    out = {t: {c[1] for c in db.execute(f'pragma table_info("{t}")')} for t in tables}
    db.close()
    return out


def _pg_columns(url: str) -> dict[str, set[str]]:
    db = open_db(url, password=TEST_PASSWORD)
    out: dict[str, set[str]] = {}
    for table, column in db.execute(
        "select table_name, column_name from information_schema.columns where table_schema = current_schema()"
    ):
        out.setdefault(table, set()).add(column)
    db.close()
    out.pop("m2t_schema")
    out.pop("messages_fts")  # the search index: FTS5's tables on SQLite, a tsvector here (test_search_query.py)
    return out


def test_a_new_postgresql_database_has_every_table_and_column_of_a_new_sqlite_one(tmp_path: Path, pg_url: str) -> None:
    sqlite_side = _sqlite_columns(tmp_path / "new.db")
    pg_side = _pg_columns(pg_url)
    # push_sessions: SQLite makes it when a daemon starts (tickets/daemon_state.py), PostgreSQL at once.
    pg_side.pop("push_sessions")
    # attachment_blobs: PostgreSQL only (attachments in the database, tickets/blobs.py; SQLite keeps a directory).
    pg_side.pop("attachment_blobs")
    missing_tables = sorted(set(sqlite_side) - set(pg_side))
    assert not missing_tables, (
        f"tables of the SQLite schema missing on PostgreSQL: {missing_tables}: every migration in "
        "tickets/migrations.py needs its twin in tickets/pg_schema.py PG_MIGRATIONS")
    missing_columns = sorted(f"{t}.{c}" for t in sqlite_side for c in sqlite_side[t] - pg_side[t])
    assert not missing_columns, (
        f"columns of the SQLite schema missing on PostgreSQL: {missing_columns}: add them in a new step "
        "of tickets/pg_schema.py PG_MIGRATIONS")
    extra = sorted(set(pg_side) - set(sqlite_side))
    assert not extra, f"tables only on PostgreSQL: {extra}"


def test_processes_creating_the_schema_at_the_same_moment_all_succeed_and_it_is_made_once(pg_url: str) -> None:
    start_at = time.time() + 1.5  # every process connects first, then all open at this moment
    code = (
        "import time, sys; import psycopg\n"
        f"time.sleep(max(0, {start_at} - time.time()))\n"
        "from mail2ticket.tickets.db import open_db\n"
        f"db = open_db({pg_url!r}); db.close()\n"
    )
    env = {**os.environ, "PGPASSWORD": TEST_PASSWORD}  # libpq's own source of the password
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, env=env) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    db = open_db(pg_url, password=TEST_PASSWORD)
    assert [r[0] for r in db.execute("select name from m2t_schema")] == [name for name, _ in pg_schema.PG_MIGRATIONS]
    assert pg_schema.pending(db) == []
    db.close()


def test_the_schema_check_at_every_open_is_one_round_trip(tmp_path: Path, pg_url: str) -> None:
    """Every command opens the database and checks its schema (issue 17.7: the fixed cost of a
    command): on a current schema that is one statement, counted in libpq's own trace of what
    this client sends, not two (whether m2t_schema exists, then its rows). A new database still
    gets its schema (the missing table is the answer), and inside a transaction the check asks
    first, so the transaction goes on."""
    import psycopg
    from psycopg import pq

    from mail2ticket.tickets.pg import PgConnection, PgDatabase

    open_db(pg_url, password=TEST_PASSWORD).close()  # a new database: its schema is made
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as out:

        def connect():
            conn = psycopg.connect(pg_url, password=TEST_PASSWORD, autocommit=True)
            conn.pgconn.trace(out.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            return conn

        db = PgDatabase(PgConnection(connect), "test", 5000)
        assert pg_schema.ensure(db) == []
        db.conn.raw.pgconn.untrace()
    sent = [line.split("\t") for line in trace.read_text().splitlines() if line.startswith("F")]
    statements = [m for m in sent if m[2] in ("Query", "Sync")]  # one per round trip
    assert len(statements) == 1, sent
    db.execute("begin")
    db.execute("select count(*) from tickets")
    assert pg_schema.applied(db) == {name for name, _ in pg_schema.PG_MIGRATIONS}
    assert db.execute("select count(*) from tickets").fetchone() == (0,)
    db.execute("rollback")
    db.close()


# --------------------------------------------------------------- the password and its chain


def test_a_password_in_the_database_url_is_refused_without_being_repeated(tmp_path: Path, pg_url: str) -> None:
    secret_url = pg_url.replace("m2t@", f"m2t:{TEST_PASSWORD}@")
    config = write_config(tmp_path, storage={"database": secret_url, "attachments": str(tmp_path / "files")})
    result = run_cli(config, "tickets", "list")
    assert result.exit_code == EXIT_CONFIG
    assert "holds a password" in result.stderr and "keyring set mail2ticket database" in result.stderr
    assert TEST_PASSWORD not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 2  # the error and its hint


def test_the_database_password_comes_from_the_keyring_or_the_password_command_and_a_wrong_one_says_where_it_goes(
    tmp_path: Path, pg_url: str
) -> None:
    config = write_config(tmp_path, storage={"database": pg_url, "attachments": str(tmp_path / "files")})
    # No password anywhere (and none for libpq): a one-line error saying where the password goes.
    result = run_cli(config, "tickets", "list", env={"PGPASSWORD": None, "PGPASSFILE": str(tmp_path / "none")})
    assert result.exit_code == EXIT_CONFIG, result.stderr
    assert "cannot sign in to the PostgreSQL database" in result.stderr and "keyring entry 'database'" in result.stderr

    store_password("database", TEST_PASSWORD)
    result = run_cli(config, "tickets", "list", "--status", "all", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "[]"

    store_password("database", "wrong")  # the keyring comes first; a command is only asked without it
    script = tmp_path / "pw.sh"
    script.write_text(f"#!/bin/sh\necho {TEST_PASSWORD}\n")
    script.chmod(0o700)
    with_command = write_config(tmp_path, storage={"database": pg_url, "attachments": str(tmp_path / "files"),
                                                   "password_command": str(script)})
    result = run_cli(with_command, "tickets", "list", env={"PGPASSFILE": str(tmp_path / "none")})
    assert result.exit_code == EXIT_CONFIG and "password authentication failed" in result.stderr
    from keyring import delete_password

    delete_password("mail2ticket", "database")
    assert run_cli(with_command, "tickets", "list").exit_code == 0


def test_libpqs_own_password_file_is_used_when_mail2ticket_has_none(tmp_path: Path, pg_url: str, monkeypatch) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:m2t:{TEST_PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    config = write_config(tmp_path, storage={"database": pg_url, "attachments": str(tmp_path / "files")})
    result = run_cli(config, "tickets", "list")
    assert result.exit_code == 0, result.stderr


# ------------------------------------------------------------ a connection lost mid-transaction


def test_a_connection_lost_in_the_middle_of_an_import_stores_nothing_and_the_next_poll_imports_each_once(
    tmp_path: Path, pg_url: str, postgres_server: PostgresServer
) -> None:
    maildir = tmp_path / "maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n in range(1, 4):
        (maildir / "new" / f"{n}.mail").write_bytes(numbered_mail(n, b"lost connection", None))
    store_password("database", TEST_PASSWORD)
    config = write_config(tmp_path, {"name": "local", "email": "local@example.test", "source": "maildir",
                                      "path": str(maildir), "acknowledge": False},
                          storage={"database": pg_url, "attachments": str(tmp_path / "files")})
    assert run_cli(config, "tickets", "list").exit_code == 0  # the schema
    # The server ends the session (as a failover or a network cut does) while the second message
    # of the batch is being stored: a sequence is not transactional, so it fires once.
    dbname = pg_url.rsplit("/", 1)[1]
    with postgres_server.admin() as admin:
        admin.execute(f'alter database "{dbname}" set search_path = public')
    import psycopg

    with psycopg.connect(pg_url, password=TEST_PASSWORD, autocommit=True) as conn:
        conn.execute("create sequence cut_once")
        conn.execute(
            "create function cut_second() returns trigger language plpgsql as $$ begin "
            "if nextval('cut_once') = 2 then perform pg_terminate_backend(pg_backend_pid()); "
            "perform pg_sleep(5); end if; return new; end $$")
        conn.execute("create trigger cut_second before insert on messages for each row execute function cut_second()")
    result = run_cli(config, "poll")
    assert result.exit_code == EXIT_TEMPFAIL, (result.stdout, result.stderr)
    assert "database" in result.stderr and len(result.stderr.strip().splitlines()) <= 3, result.stderr
    with psycopg.connect(pg_url, password=TEST_PASSWORD) as conn:
        counts = [conn.execute(f"select count(*) from {t}").fetchone()[0]
                  for t in ("tickets", "messages", "sources", "raw_messages", "quarantine")]
    assert counts == [0, 0, 0, 0, 0]  # nothing half-stored
    assert sorted(p.name for p in (maildir / "new").iterdir()) == ["1.mail", "2.mail", "3.mail"]  # nothing moved

    result = run_cli(config, "poll")
    assert result.exit_code == 0, result.stderr
    with psycopg.connect(pg_url, password=TEST_PASSWORD) as conn:
        subjects = sorted(r[0] for r in conn.execute("select subject from tickets"))
        assert conn.execute("select count(*) from sources").fetchone()[0] == 3
    assert len(subjects) == 3 and len(set(subjects)) == 3
    assert run_cli(config, "poll").exit_code == 0  # and again: nothing new
    with psycopg.connect(pg_url, password=TEST_PASSWORD) as conn:
        assert conn.execute("select count(*) from messages").fetchone()[0] == 3


def test_the_sqlite_engine_needs_nothing_new(tmp_path: Path) -> None:
    db = open_db(tmp_path / "plain.db")
    assert db.engine == "sqlite" and isinstance(db.conn, sqlite3.Connection)
    db.close()


# ------------------------------------------------------------------ large raw messages in pieces


def test_a_large_raw_message_goes_in_and_comes_back_in_pieces_byte_identical(tmp_path: Path, pg_url: str) -> None:
    import hashlib

    from mail2ticket.errors import TempFailError
    from mail2ticket.files.spool import spool_chunks
    from mail2ticket.tickets.db import transaction
    from mail2ticket.tickets.ledger import store_raw_spool
    from mail2ticket.tickets.messages import take_stored

    piece = bytes(range(256)) * 4096  # 1 MiB that no compression would shrink much: 0..255 repeated
    data = b"Subject: big\r\n\r\n" + piece * 3 + b"tail\r\n"
    spool = spool_chunks([data[i:i + 65536] for i in range(0, len(data), 65536)], tmp_path)
    db = open_db(pg_url, password=TEST_PASSWORD)
    try:
        with transaction(db):
            store_raw_spool(db, spool.sha256, spool, "2026-01-01T00:00:00Z")
            store_raw_spool(db, spool.sha256, spool, "2026-01-01T00:00:00Z")  # the same bytes: kept once
        assert db.execute("select count(*), sum(size) from raw_messages").fetchone() == (1, len(data))
        raw, back = take_stored(db, spool.sha256, tmp_path, threshold=1024 * 1024)
        assert raw is None and back.size == len(data) and back.sha256 == spool.sha256
        assert hashlib.sha256(Path(back.path).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        # A spool that changed after it was fetched is refused, and nothing of it is stored.
        Path(spool.path).write_bytes(data[:-3] + b"xx\n")
        other = type(spool)(spool.path, spool.size, "0" * 64)
        with pytest.raises(TempFailError, match="changed before it was stored"), transaction(db):
            store_raw_spool(db, other.sha256, other, "2026-01-01T00:00:00Z")
        assert db.execute("select count(*) from raw_messages").fetchone() == (1,)
    finally:
        db.close()


def test_an_older_postgresql_schema_is_upgraded_step_by_step_and_keeps_its_rows(pg_url: str) -> None:
    import psycopg

    first_name, first_sql = pg_schema.PG_MIGRATIONS[0]
    with psycopg.connect(pg_url, password=TEST_PASSWORD, autocommit=True) as conn:
        conn.execute("create table m2t_schema (name text primary key, applied_at text not null)")
        conn.execute(first_sql)
        conn.execute("insert into m2t_schema values (%s, '2026-01-01T00:00:00Z')", [first_name])
        conn.execute("insert into tickets (account, subject, created_at, updated_at) "
                     "values ('a', 'kept', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
    db = open_db(pg_url, password=TEST_PASSWORD)
    try:
        assert pg_schema.pending(db) == []
        assert [r[0] for r in db.execute("select name from m2t_schema order by name")] == [
            name for name, _ in pg_schema.PG_MIGRATIONS]
        assert db.execute("select subject from tickets").fetchall() == [("kept",)]
    finally:
        db.close()


def test_write_transactions_wait_for_each_other_as_on_sqlite_and_a_timeout_is_a_temporary_failure(pg_url: str) -> None:
    import threading

    from mail2ticket.errors import TempFailError
    from mail2ticket.tickets.db import transaction

    first = open_db(pg_url, password=TEST_PASSWORD)
    second = open_db(pg_url, password=TEST_PASSWORD, busy_timeout_ms=300)
    try:
        with transaction(first):
            first.execute("insert into conversation_state (key, value) values ('k', 'first')")
            # Another writer waits for the lock (BEGIN IMMEDIATE's promise), up to its busy timeout.
            with pytest.raises(TempFailError):
                with transaction(second):
                    pass
            # A reader does not wait, and sees only what is committed.
            assert second.execute("select count(*) from conversation_state").fetchone() == (0,)
        done = threading.Event()
        third = open_db(pg_url, password=TEST_PASSWORD)  # the default busy timeout: 30 s

        def write() -> None:
            with transaction(third):
                third.execute("update conversation_state set value = 'third' where key = 'k'")
            done.set()

        with transaction(first):
            thread = threading.Thread(target=write)
            thread.start()
            assert not done.wait(0.2)  # waiting for the first writer's commit
        thread.join(30)
        third.close()
        assert done.is_set()
        assert first.execute("select value from conversation_state").fetchone() == ("third",)
    finally:
        first.close()
        second.close()
