"""Which storage engine a ``[storage] database`` names, and the errors of both engines that the
layers above may catch without knowing which one is in use.

SQLite (a file path, the default) or PostgreSQL (a libpq URL, ``postgresql://`` or
``postgres://``; tickets/pg.py). The PostgreSQL engine raises ``PgError`` and ``PgTransientError``
(its wrapper turns psycopg's errors into them), so ``except STORE_ERRORS`` and
``except TRANSIENT_ERRORS`` mean the same on both engines.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from mail2ticket.config.storage import is_postgres as is_postgres_url  # noqa: F401  # a URL, not a file


class PgError(Exception):
    """An error PostgreSQL (or psycopg) reported for a statement: the engine's sqlite3.Error."""


class PgTransientError(PgError):
    """The database cannot be used for now (the connection was lost, the server is shutting
    down, a lock timed out, the disk is full): the engine's sqlite3.OperationalError. Whatever
    the transaction had done is rolled back by the server; the next use connects again."""


# 'except TRANSIENT_ERRORS': the whole batch fails and is retried later (locked, disk full,
# connection lost); 'except STORE_ERRORS': any error of the store.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (sqlite3.OperationalError, PgTransientError)
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, PgError)


def engine_of(db: Any) -> str:
    """'sqlite' or 'postgresql': the engine of an open database."""
    return getattr(db, "engine", "sqlite")


@contextlib.contextmanager
def savepoint_block(conn: Any, name: str) -> Iterator[None]:
    """SAVEPOINT ``name`` ... RELEASE on ``conn`` (sqlite3's or tickets/pg.py's), rolled back to
    on an error; an error that ended the whole transaction leaves no savepoint to undo."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            conn.execute(f"RELEASE SAVEPOINT {name}")
        raise
    conn.execute(f"RELEASE SAVEPOINT {name}")
