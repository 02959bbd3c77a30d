"""The rows the running daemon keeps for 'status': its heartbeat (daemon), its timetable
(daemon_jobs) and the state of each push session (push_sessions)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database


STALE_AFTER_SECONDS = 60  # a heartbeat older than this means the daemon is not running

PUSH_SESSIONS_TABLE = (
    "create table if not exists push_sessions (account text primary key, state text, since text, "
    "error text, failures integer, retry_at text)"
)


def latest_daemon(db: Database) -> dict | None:
    """The newest row of daemon (the running or last daemon), or None."""
    if not db["daemon"].exists():
        return None
    return next(iter(db.query("select * from daemon order by id desc limit 1")), None)


def _iso_age(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    try:
        then = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (under any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def daemon_state(db: Database, now: datetime | None = None) -> dict:
    """Whether a daemon is running on this database, from its heartbeat row (for 'status'; here, not in
    service/daemon.py, so that 'status' does not import the whole daemon: 0.13 s of its start)."""
    now = now or datetime.now(UTC)
    row = latest_daemon(db)
    if row is None:
        return {"running": False, "state": "never started", "pid": None, "host": None,
                "version": None, "started_at": None, "heartbeat_at": None, "stopped_at": None,
                "status": None}
    age = _iso_age(row["heartbeat_at"], now)
    fresh = age is not None and age < STALE_AFTER_SECONDS
    alive = row["host"] != socket.gethostname() or pid_alive(row["pid"])
    if row["stopped_at"]:
        state = "stopped"
    elif fresh and alive:
        state = "running"
    else:
        state = "dead"  # no clean stop and no heartbeat: killed, crashed or hung
    return {
        "running": state == "running",
        "state": state,
        "pid": row["pid"],
        "host": row["host"],
        "version": row["version"],
        "started_at": row["started_at"],
        "heartbeat_at": row["heartbeat_at"],
        "stopped_at": row["stopped_at"],
        "status": row["status"],
    }


def next_polls(db: Database) -> dict[str, str]:
    """{account: the running daemon's next scheduled poll (ISO 8601 UTC)}."""
    if not db["daemon_jobs"].exists():
        return {}
    return {
        row["account"]: row["next_run_at"]
        for row in db.query(
            "select account, min(next_run_at) as next_run_at from daemon_jobs "
            "where account is not null group by account"
        )
    }


def push_session_rows(db: Database) -> list[dict]:
    """Every push_sessions row (none before a daemon made the table)."""
    if not db["push_sessions"].exists():
        return []
    return list(db.query("select * from push_sessions order by account"))


def record_start(db: Database, *, pid: int, host: str, version: str, config: str, now: str,
                 clear: bool = True) -> int:
    """A new daemon row (the 19 before it kept as history); the timetable and push sessions of an
    earlier daemon cleared (unless ``clear`` is False: several daemons share the database, the
    others' rows stay). Call inside a transaction; returns the row id."""
    db.execute("delete from daemon where id not in (select id from daemon order by id desc limit 19)")
    db.execute(PUSH_SESSIONS_TABLE)
    if clear:
        db.execute("delete from daemon_jobs")
        db.execute("delete from push_sessions")
    cursor = db.execute(
        "insert into daemon (pid, host, version, config, started_at, heartbeat_at, status) "
        "values (?, ?, ?, ?, ?, ?, ?)",
        [pid, host, version, config, now, now, "starting"],
    )
    return cursor.lastrowid


def record_heartbeat(db: Database, daemon_id: int, now: str, status: str) -> None:
    db.execute("update daemon set heartbeat_at = ?, status = ? where id = ?", [now, status, daemon_id])


def record_stop(db: Database, daemon_id: int, now: str, status: str, *, clear: bool = True) -> None:
    """The clean stop of a daemon; its push sessions are gone (``clear`` False: the caller
    removes its own, publish_push_sessions)."""
    db.execute("update daemon set stopped_at = ?, heartbeat_at = ?, status = ? where id = ?",
               [now, now, status, daemon_id])
    if clear and db["push_sessions"].exists():
        db.execute("delete from push_sessions")


def publish_push_sessions(db: Database, gone: Iterable[str], changed: Iterable[dict]) -> None:
    for name in gone:
        db.execute("delete from push_sessions where account = ?", [name])
    for row in changed:
        db.execute(
            "insert into push_sessions (account, state, since, error, failures, retry_at) "
            "values (?, ?, ?, ?, ?, ?) on conflict(account) do update set state = excluded.state, "
            "since = excluded.since, error = excluded.error, failures = excluded.failures, "
            "retry_at = excluded.retry_at",
            [row["account"], row["state"], row["since"], row["error"], row["failures"], row["retry_at"]],
        )


def publish_jobs(db: Database, gone: Iterable[str], changed: list[dict], *, first: bool) -> None:
    """The timetable: each job's next run (``first``: replace what an earlier daemon left)."""
    if first:
        db.execute("delete from daemon_jobs")
    for name in gone:
        db.execute("delete from daemon_jobs where name = ?", [name])
    if changed:
        db["daemon_jobs"].upsert_all(changed, pk="name")
