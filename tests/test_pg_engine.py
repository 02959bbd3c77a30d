"""The PostgreSQL engine (issue 17): the server the tests start, the engine behind open_db, the
schema of both engines, the password chain; against a real PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import pytest

from tests.postgres import TEST_PASSWORD, PostgresServer


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
