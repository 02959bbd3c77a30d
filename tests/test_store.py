"""The SQLite store: durable settings, migrations fresh and upgraded, concurrent first opens (on
both engines; PostgreSQL's own schema tests are in tests/test_pg_engine.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mail2ticket.cli.output import display_width
from mail2ticket.tickets.db import open_db
from mail2ticket.tickets.migrations import migrations
from tests.postgres import TEST_PASSWORD, engine_under_test, fresh_database


@pytest.mark.sqlite_only("the pragmas of the SQLite file (PostgreSQL: test_pg_engine.py's schema tests)")
def test_a_new_database_is_wal_synchronous_full_with_every_migration(tmp_path):
    db = open_db(tmp_path / "t.db")
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert db.execute("pragma synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("pragma foreign_keys").fetchone()[0] == 1
    assert migrations.pending(db) == []
    for table in ("tickets", "messages", "raw_messages", "attachments", "sources", "quarantine", "events"):
        assert db[table].exists(), table


@pytest.mark.sqlite_only("SQLite's own migrations (PostgreSQL's steps: tickets/pg_schema.py)")
def test_an_old_database_is_upgraded_and_keeps_its_rows(tmp_path):
    from sqlite_utils import Database

    path = tmp_path / "old.db"
    old = Database(path)
    first = migrations._migrations[0].name
    migrations.apply(old, stop_before=migrations._migrations[1].name)
    assert [m.name for m in migrations.applied(old)] == [first]
    old["tickets"].insert({"account": "a", "subject": "kept", "status": "open", "priority": "normal",
                           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
    old.close()
    db = open_db(path)
    assert migrations.pending(db) == []
    assert [r["subject"] for r in db.query("select subject from tickets")] == ["kept"]


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    if engine_under_test() == "postgresql":  # the password from libpq's own PGPASSWORD
        target, env = fresh_database(migrated=False), {**os.environ, "PGPASSWORD": TEST_PASSWORD}
    else:
        target, env = str(tmp_path / "race.db"), None
    code = f"from mail2ticket.tickets.db import open_db; open_db({target!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, env=env) for _ in range(6)]
    errors = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    db = open_db(target, password=TEST_PASSWORD)
    if engine_under_test() == "postgresql":
        from mail2ticket.tickets import pg_schema

        assert pg_schema.pending(db) == []
    else:
        assert migrations.pending(db) == []
    db.close()


def test_wide_characters_count_twice_in_plain_tables():
    assert display_width("abc") == 3
    assert display_width("パスワード") == 10
    assert display_width("für") == 3


def test_a_busy_answer_that_skips_sqlites_busy_handler_is_retried_within_the_timeout():
    import sqlite3

    import pytest

    from mail2ticket.tickets.db import _retry_busy

    answers = iter([sqlite3.OperationalError("database is locked")] * 3 + ["done"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert _retry_busy(flaky, 2000) == "done"

    def always_locked():
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        _retry_busy(always_locked, 50)

    def other_error():
        raise sqlite3.OperationalError("no such table: x")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _retry_busy(other_error, 2000)
