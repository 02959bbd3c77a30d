"""Several daemons on one database: who is alive (daemons), which daemon holds each account
(account_leases, with an epoch for fencing) and which daemon runs a group-wide job this period
(group_jobs). The owner of those three tables.

Every time is the database's clock (seconds since the epoch, a float), never a host's: the hosts'
clocks may disagree, the database's is the one they share. Each change is one statement, so two
daemons asking at once never both win: SQLite's write lock, and on PostgreSQL the row's lock
(the loser's conditional UPDATE sees the winner's row and changes nothing). docs/scaling.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mail2ticket.errors import Mail2TicketError

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

# Plain SQL both engines run ("double precision" is a REAL on SQLite). The SQLite migration
# m1702_leases runs these; ensure_tables runs them on a database without them (PostgreSQL).
TABLES = (
    "create table if not exists daemons (id text primary key, host text not null, pid integer not null, "
    "started_at double precision not null, heartbeat_at double precision not null, "
    "stopping integer not null default 0)",
    "create table if not exists account_leases (account text primary key, daemon_id text not null, "
    "epoch integer not null, expires_at double precision not null)",
    "create table if not exists group_jobs (name text primary key, daemon_id text not null, "
    "token text not null, last_run_at double precision not null)",
)

# The database's clock, in seconds since 1970 (SQLite: milliseconds; PostgreSQL: microseconds,
# the time of the statement, not of the transaction's start).
_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "cast(extract(epoch from clock_timestamp()) as double precision)",
}
PRUNE_AFTER_SECONDS = 7 * 86400  # a daemon row whose heartbeat is this old is forgotten


class LeaseLost(Mail2TicketError):
    """A daemon's import found, inside its own write transaction, that it no longer holds the
    account's lease (another daemon took it over while this one was cut off): the batch is
    rolled back, nothing of it stored, and this daemon leaves the account to the new holder."""

    def __init__(self, account: str):
        self.account = account
        super().__init__(
            f"account {account}: this daemon's lease was taken over by another daemon; "
            "nothing of the batch was stored",
            "skipped: the daemon that holds the account now imports it",
        )


def now_sql(db: Database) -> str:
    """The SQL expression of the database's clock for ``db``'s engine."""
    return _NOW[getattr(db, "engine", "sqlite")]


def db_now(db: Database) -> float:
    """The database's clock now (seconds since 1970)."""
    return float(db.execute(f"select {now_sql(db)}").fetchone()[0])


def new_daemon_id() -> str:
    return secrets.token_hex(8)


def ensure_tables(db: Database) -> None:
    for sql in TABLES:
        db.execute(sql)


def register_daemon(db: Database, daemon_id: str, *, host: str, pid: int) -> None:
    """This daemon's row (call inside a write transaction); daemons silent for a week forgotten."""
    now = now_sql(db)
    db.execute(f"delete from daemons where heartbeat_at < {now} - ?", [PRUNE_AFTER_SECONDS])
    db.execute(f"insert into daemons (id, host, pid, started_at, heartbeat_at, stopping) "
               f"values (?, ?, ?, {now}, {now}, 0)", [daemon_id, host, pid])


def heartbeat(db: Database, daemon_id: str, *, host: str, pid: int) -> None:
    """The daemon's heartbeat (its row made again if it was pruned)."""
    now = now_sql(db)
    cursor = db.execute(f"update daemons set heartbeat_at = {now} where id = ?", [daemon_id])
    if not cursor.rowcount:
        register_daemon(db, daemon_id, host=host, pid=pid)


def forget_other_daemons(db: Database, daemon_id: str) -> None:
    """Only for a database one daemon at a time serves (SQLite, its lock file held): every other
    daemon row is a dead one's, its leases free now."""
    db.execute("update account_leases set expires_at = 0 where daemon_id != ?", [daemon_id])
    db.execute("delete from daemons where id != ?", [daemon_id])


def forget_daemon(db: Database, daemon_id: str) -> None:
    """A clean stop: the daemon's leases free at once, its row gone."""
    release(db, daemon_id)
    db.execute("delete from daemons where id = ?", [daemon_id])


def set_stopping(db: Database, daemon_id: str) -> None:
    """The daemon is stopping: others no longer count it when they share out the accounts."""
    db.execute("update daemons set stopping = 1 where id = ?", [daemon_id])


def acquire(db: Database, daemon_id: str, account: str, ttl: float) -> int | None:
    """Take the lease of ``account`` for ``ttl`` seconds if it is free, expired or already ours;
    its epoch when we hold it, else None. One statement: of two daemons asking at once, one wins.
    Taking over from another daemon raises the epoch (the old holder's commits are refused)."""
    now = now_sql(db)
    db.execute(
        f"insert into account_leases (account, daemon_id, epoch, expires_at) values (?, ?, 1, {now} + ?) "
        "on conflict (account) do update set "
        "epoch = case when account_leases.daemon_id = excluded.daemon_id then account_leases.epoch "
        "else account_leases.epoch + 1 end, "
        "daemon_id = excluded.daemon_id, expires_at = excluded.expires_at "
        f"where account_leases.daemon_id = excluded.daemon_id or account_leases.expires_at <= {now}",
        [account, daemon_id, float(ttl)],
    )
    row = db.execute("select daemon_id, epoch from account_leases where account = ?", [account]).fetchone()
    return int(row[1]) if row and row[0] == daemon_id else None


def take_over(db: Database, daemon_id: str, account: str, ttl: float, from_id: str) -> int | None:
    """Take the lease of ``account`` from ``from_id`` although it has not expired (its holder is
    known dead: a 'poll' pass of this host whose process is gone); the new epoch, or None when
    ``from_id`` no longer holds it. The epoch rises, so a commit of the old holder is refused."""
    db.execute(
        f"update account_leases set daemon_id = ?, epoch = epoch + 1, expires_at = {now_sql(db)} + ? "
        "where account = ? and daemon_id = ?",
        [daemon_id, float(ttl), account, from_id],
    )
    row = db.execute("select daemon_id, epoch from account_leases where account = ?", [account]).fetchone()
    return int(row[1]) if row and row[0] == daemon_id else None


def renew(db: Database, daemon_id: str, ttl: float) -> dict[str, int]:
    """Extend every lease this daemon holds by ``ttl`` from now; {account: epoch} of those held.
    A lease of ours that expired but that nobody took is ours again (same epoch: nobody else
    held it in between)."""
    db.execute(f"update account_leases set expires_at = {now_sql(db)} + ? where daemon_id = ?",
               [float(ttl), daemon_id])
    return held(db, daemon_id)


def held(db: Database, daemon_id: str) -> dict[str, int]:
    return {name: int(epoch) for name, epoch in db.execute(
        "select account, epoch from account_leases where daemon_id = ? order by account", [daemon_id])}


def release(db: Database, daemon_id: str, accounts: Iterable[str] | None = None) -> None:
    """Give up our leases (all, or of ``accounts``): expired at once, so another daemon takes them
    at its next renew. The row stays, with its epoch, so epochs only ever grow."""
    if accounts is None:
        db.execute("update account_leases set expires_at = 0 where daemon_id = ?", [daemon_id])
        return
    for name in accounts:
        db.execute("update account_leases set expires_at = 0 where daemon_id = ? and account = ?",
                   [daemon_id, name])


def check_fence(db: Database, daemon_id: str, account: str, epoch: int, extend: float | None = None) -> None:
    """Inside the import's write transaction, before it commits: raise LeaseLost unless this
    daemon still holds ``account`` with ``epoch``. The UPDATE locks the lease row until the
    commit, so a takeover either came before (and this refuses) or waits until after.
    ``extend``: also renew the lease for that many seconds (a 'poll' pass, which has no renew
    thread, renews at each batch)."""
    renew = f"expires_at = {now_sql(db)} + ?" if extend is not None else "epoch = epoch"
    cursor = db.execute(
        f"update account_leases set {renew} where account = ? and daemon_id = ? and epoch = ?",
        [*([float(extend)] if extend is not None else []), account, daemon_id, int(epoch)],
    )
    if cursor.rowcount != 1:
        raise LeaseLost(account)


def holder(db: Database, account: str) -> dict | None:
    """Who holds the lease of ``account`` now (not expired): daemon_id, and the host and pid of
    its daemons row (None when it has none: a 'poll' pass); None when nobody holds it."""
    rows = list(db.query(
        "select l.daemon_id, d.host, d.pid from account_leases l left join daemons d on d.id = l.daemon_id "
        f"where l.account = ? and l.expires_at > {now_sql(db)}", [account]))
    return rows[0] if rows else None


def forget_accounts(db: Database, keep: Iterable[str]) -> None:
    """Drop the lease rows of accounts no longer in the config (none of them is polled)."""
    names = sorted(set(keep))
    if not names:
        db.execute("delete from account_leases where expires_at <= " + now_sql(db))
        return
    marks = ", ".join("?" * len(names))
    db.execute(f"delete from account_leases where account not in ({marks}) and expires_at <= {now_sql(db)}",
               names)


def daemons(db: Database, *, stale_after: float) -> list[dict]:
    """Every known daemon: id, host, pid, started_at and heartbeat_at (database clock), the age of
    its heartbeat in seconds, whether it is stopping, whether it is stale (no heartbeat for
    ``stale_after`` seconds) and the accounts it holds (leases not expired), oldest first."""
    if not db["daemons"].exists():
        return []  # no daemon ever started on this database
    now = now_sql(db)
    rows = list(db.query(
        f"select id, host, pid, started_at, heartbeat_at, stopping, {now} - heartbeat_at as age "
        "from daemons order by started_at, id"))
    leases = {}
    for name, holder in db.execute(
            f"select account, daemon_id from account_leases where expires_at > {now} order by account"):
        leases.setdefault(holder, []).append(name)
    for row in rows:
        row["stopping"] = bool(row["stopping"])
        row["age"] = float(row["age"])
        row["stale"] = row["age"] > stale_after
        row["accounts"] = leases.get(row["id"], [])
    return rows


def heartbeat_age(db: Database, daemon_id: str) -> float | None:
    """Seconds since the daemon ``daemon_id`` last beat (the database's clock), None when it has no
    row (stopped cleanly, pruned, or never ran here): who holds an outbox claim (outgoing/sender.py)."""
    if not db["daemons"].exists():
        return None
    row = db.execute(f"select {now_sql(db)} - heartbeat_at from daemons where id = ?", [daemon_id]).fetchone()
    return None if row is None else float(row[0])


def live_ids(db: Database, *, stale_after: float) -> list[str]:
    """The daemons that share the accounts, by id: a heartbeat within ``stale_after`` s, not stopping."""
    now = now_sql(db)
    return [row[0] for row in db.execute(
        f"select id from daemons where stopping = 0 and heartbeat_at > {now} - ? order by id",
        [float(stale_after)])]


def lease_rows(db: Database) -> list[dict]:
    """Every lease: account, daemon_id, epoch, seconds left (negative: expired)."""
    return list(db.query(f"select account, daemon_id, epoch, expires_at - {now_sql(db)} as left_seconds "
                         "from account_leases order by account"))


def claim_group_run(db: Database, name: str, daemon_id: str, min_gap: float) -> bool:
    """Whether this daemon runs the group-wide job ``name`` now: True for the one daemon whose
    conditional UPDATE finds the last run at least ``min_gap`` seconds ago (one statement)."""
    token = secrets.token_hex(8)
    now = now_sql(db)
    db.execute(
        f"insert into group_jobs (name, daemon_id, token, last_run_at) values (?, ?, ?, {now}) "
        "on conflict (name) do update set daemon_id = excluded.daemon_id, token = excluded.token, "
        f"last_run_at = excluded.last_run_at where group_jobs.last_run_at <= {now} - ?",
        [name, daemon_id, token, float(min_gap)],
    )
    row = db.execute("select token from group_jobs where name = ?", [name]).fetchone()
    return bool(row) and row[0] == token
