"""Leases (issue 17.2, tickets/leases.py, service/sharing.py): several daemons on one database,
each account held by exactly one, taken over when its holder stops renewing, and a stale
holder's import refused inside its own transaction (fencing). Here two (or eight) daemons are
connections to one real SQLite file; the daemon-level tests on PostgreSQL are in
tests/test_daemons_shared.py."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from mail2ticket.config.daemon import DaemonSettings, check_daemon
from mail2ticket.errors import ConfigError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.intake.importer import ImportContext, Incoming, Source, import_batch
from mail2ticket.service.sharing import AccountShare
from mail2ticket.tickets import leases
from mail2ticket.tickets.db import open_db, transaction


@pytest.fixture(params=["sqlite", "postgresql"])
def connect(request, tmp_path):
    """``connect()``: one more connection (one more daemon) to one database of this test: a
    SQLite file, or a fresh database on the tests' PostgreSQL."""
    if request.param == "sqlite":
        return lambda: open_db(tmp_path / "m.db")
    from tests.postgres import TEST_PASSWORD

    url = request.getfixturevalue("pg_url")
    return lambda: open_db(url, password=TEST_PASSWORD)


def _db(path: Path):
    return open_db(path)


def _acquire(db, daemon_id: str, account: str, ttl: float):
    with transaction(db):
        return leases.acquire(db, daemon_id, account, ttl)


def test_a_lease_is_held_by_one_daemon_until_it_expires_then_taken_over_with_a_new_epoch(connect):
    a, b = connect(), connect()
    assert _acquire(a, "A", "desk", 0.5) == 1
    assert _acquire(b, "B", "desk", 0.5) is None  # held, not expired
    assert _acquire(a, "A", "desk", 0.5) == 1  # ours already: same epoch
    time.sleep(0.6)
    assert _acquire(b, "B", "desk", 30) == 2  # expired: taken over, epoch raised
    with transaction(a):
        assert leases.renew(a, "A", 30) == {}  # A renews nothing: it no longer holds it
    with transaction(b):
        leases.release(b, "B")
    assert _acquire(a, "A", "desk", 30) == 3  # released: free at once


def test_eight_daemons_asking_at_once_never_both_win(connect):
    connect().close()  # the schema, once
    accounts = [f"acct{i}" for i in range(8)]
    won: dict[str, list[str]] = {a: [] for a in accounts}
    start = threading.Barrier(8)

    def daemon(me: str) -> None:
        db = connect()
        start.wait()
        for account in accounts:
            if _acquire(db, me, account, 30) is not None:
                won[account].append(me)
        db.close()

    threads = [threading.Thread(target=daemon, args=(f"D{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(holders) == 1 for holders in won.values()), won
    db = connect()
    rows = {r["account"]: r["daemon_id"] for r in leases.lease_rows(db)}
    assert rows == {a: holders[0] for a, holders in won.items()}


def _mail(n: int) -> bytes:
    return (f"From: c{n}@example.org\r\nTo: desk@example.com\r\nSubject: case {n}\r\n"
            f"Message-ID: <case-{n}@example.org>\r\n\r\nbody {n}\r\n").encode()


def _incoming(uid: int) -> Incoming:
    return Incoming("desk", _mail(uid), Source("desk", "INBOX", 7, uid), action="seen")


def test_a_stale_holders_batch_is_refused_inside_its_transaction_and_nothing_is_stored_twice(connect, tmp_path):
    """Catalogue 113: daemon A was cut off (it still thinks it holds 'desk'), B took the account
    over; A's batch reaches the database: the fence in its write transaction refuses it."""
    a, b = connect(), connect()
    store = AttachmentStore(tmp_path / "att")
    share_a = AccountShare("A", host="h", pid=1, settings=DaemonSettings(1, 2), shared=True)
    share_b = AccountShare("B", host="h", pid=2, settings=DaemonSettings(1, 2), shared=True)
    share_a.start(a)
    share_b.start(b)
    share_a.renew(a, ["desk"])
    assert share_a.held == {"desk": 1}
    fence_a = share_a.fence("desk")  # taken when the poll started
    with transaction(a):  # A's heartbeat and lease age in the database (A is cut off)
        a.execute("update account_leases set expires_at = 0")
        a.execute("update daemons set heartbeat_at = 0 where id = 'A'")
    share_b.renew(b, ["desk"])
    assert share_b.held == {"desk": 2}
    ctx_a = ImportContext(db=a, attachments=store, fence=fence_a)
    with pytest.raises(leases.LeaseLost, match="taken over by another daemon"):
        import_batch(ctx_a, [_incoming(1), _incoming(2)])
    assert a.execute("select count(*) from messages").fetchone()[0] == 0
    assert a.execute("select count(*) from sources").fetchone()[0] == 0
    ctx_b = ImportContext(db=b, attachments=store, fence=share_b.fence("desk"))
    outcomes = import_batch(ctx_b, [_incoming(1), _incoming(2)])
    assert [o.status for o in outcomes] == ["imported", "imported"]
    assert b.execute("select count(*) from messages").fetchone()[0] == 2
    with pytest.raises(leases.LeaseLost):
        share_a.fence("other")(a)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_daemon_that_cannot_renew_stops_touching_its_accounts_before_they_may_expire(tmp_path):
    """Catalogue 114: the database unreachable (a partition): the daemon's own monotonic clock
    decides; it stops lease_renew before the ttl, so before any other daemon may take over."""
    db = _db(tmp_path / "m.db")
    clock = _Clock()
    share = AccountShare("A", host="h", pid=1, settings=DaemonSettings(10, 30), shared=True, clock=clock)
    share.start(db)
    gained, lost = share.renew(db, ["desk", "sales"])
    assert gained == {"desk", "sales"} and lost == set()
    db.close()  # the database is gone: every renew fails from now on
    clock.now += 10
    assert share.renew(db, ["desk", "sales"]) == (set(), set())
    assert share.may_touch("desk")  # 10 s after the last renew: still certainly ours
    clock.now += 9.9
    assert share.may_touch("desk")
    clock.now += 0.1  # ttl - renew after the last good renew: another may take it 10 s from now
    assert not share.may_touch("desk")
    assert share.renew(db, ["desk", "sales"]) == (set(), {"desk", "sales"})
    assert share.fence("desk") is not None
    with pytest.raises(leases.LeaseLost):
        share.fence("desk")(db)


def test_accounts_spread_over_the_live_daemons_and_a_dead_ones_are_taken_over(connect):
    accounts = ["a1", "a2", "a3", "a4"]
    conns = [connect() for _ in range(3)]
    shares = [AccountShare(n, host="h", pid=i, settings=DaemonSettings(0.2, 0.5), shared=True)
              for i, n in enumerate("ABC")]
    for share, db in zip(shares[:2], conns, strict=False):
        share.start(db)
    for _ in range(3):  # A takes all, then gives back above its share of 2; B takes them
        for share, db in zip(shares[:2], conns, strict=False):
            share.renew(db, accounts)
    assert sorted(len(s.held) for s in shares[:2]) == [2, 2]
    assert set(shares[0].held).isdisjoint(shares[1].held)
    shares[2].start(conns[2])  # a third daemon: shares of 2, 1, 1 (never two holders)
    for _ in range(3):
        for share, db in zip(shares, conns, strict=True):
            share.renew(db, accounts)
            held = [a for s in shares for a in s.held]
            assert len(held) == len(set(held))
    assert sorted(len(s.held) for s in shares) == [1, 1, 2]
    dead = shares[0]  # A stops renewing (killed): after the ttl the others hold everything
    time.sleep(0.6)
    for share, db in zip(shares[1:], conns[1:], strict=True):
        share.renew(db, accounts)
    assert sorted(a for s in shares[1:] for a in s.held) == accounts
    rows = {r["id"]: r for r in leases.daemons(conns[1], stale_after=0.5)}
    assert rows[dead.daemon_id]["stale"] and rows[dead.daemon_id]["accounts"] == []
    shares[1].stop(conns[1])  # a clean stop gives everything back at once
    shares[2].renew(conns[2], accounts)
    assert sorted(shares[2].held) == accounts


def test_a_group_wide_job_runs_once_per_period_whichever_daemon_asks(connect):
    """Catalogue 115: the overdue check of a group: one claim per period, for all daemons."""
    a, b = connect(), connect()

    def claim(db, me):
        with transaction(db):
            return leases.claim_group_run(db, "overdue", me, 0.5)

    assert [claim(a, "A"), claim(b, "B"), claim(a, "A")] == [True, False, False]
    time.sleep(0.6)
    assert [claim(b, "B"), claim(a, "A")] == [True, False]


def test_lease_settings_are_checked(tmp_path):
    cfg = tmp_path / "c.toml"
    assert check_daemon(cfg, {}) == DaemonSettings(10, 30)
    assert check_daemon(cfg, {"lease_renew": "5s", "lease_ttl": 12}) == DaemonSettings(5, 12)
    with pytest.raises(ConfigError, match="at least twice"):
        check_daemon(cfg, {"lease_renew": "20s"})
    with pytest.raises(ConfigError, match="unknown key 'daemon.ttl'"):
        check_daemon(cfg, {"ttl": "20s"})


def test_status_lists_the_daemon_with_the_accounts_it_holds_and_a_clean_stop_gives_them_back(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    """A real daemon on SQLite (one daemon: its leases recorded for 'status'): the daemons list of
    'status --json' (host, pid, heartbeat, accounts held); after SIGTERM its row is gone and its
    leases are free for the next daemon."""
    from tests.test_daemon import add_account, status, write_config

    main = write_config(tmp_path, poll="1h")
    add_account(main, account_config(imap_user), imap_user.password)
    daemon = start_daemon(main)
    daemon.notify.wait_for("READY", "1")
    code, report = status(main)
    [me] = report["daemons"]
    assert code == 0 and me["pid"] == daemon.proc.pid and me["accounts"] == [imap_user.name]
    assert me["stale"] is False and me["heartbeat_age_seconds"] < 30 and me["heartbeat_at"].endswith("Z")
    assert daemon.stop()[0] == 0
    code, report = status(main)
    assert report["daemons"] == []
    db = open_db(main.parent.parent / "var" / "m2t.db")
    assert [(r["account"], r["left_seconds"] < 0) for r in leases.lease_rows(db)] == [(imap_user.name, True)]


def test_a_session_the_server_ends_mid_transaction_never_lets_later_statements_commit_alone(pg_url):
    """Found by the paused-daemon test: the server ended a frozen daemon's session
    (idle_in_transaction_session_timeout, SQLSTATE 25P03, not an OperationalError); the importer's
    savepoint caught the error and went on, and its next statements ran on a new connection in
    autocommit: a quarantine row committed alone from a batch that was refused."""
    from mail2ticket.tickets.engine import PgTransientError
    from tests.postgres import TEST_PASSWORD

    db = open_db(pg_url, password=TEST_PASSWORD)
    with pytest.raises(PgTransientError), transaction(db):
        db.execute("set local idle_in_transaction_session_timeout = 200")
        db.execute("insert into group_jobs (name, daemon_id, token, last_run_at) values ('a', 'A', 't', 0)")
        time.sleep(0.6)  # the server ends the session
        with contextlib.suppress(PgTransientError):
            db.execute("insert into group_jobs (name, daemon_id, token, last_run_at) values ('b', 'A', 't', 0)")
        db.execute("insert into group_jobs (name, daemon_id, token, last_run_at) values ('c', 'A', 't', 0)")
    assert db.execute("select count(*) from group_jobs").fetchone()[0] == 0
