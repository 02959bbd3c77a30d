"""The outbox sent by several processes on one real PostgreSQL (issue 17.2): claims with row locks
(FOR UPDATE SKIP LOCKED), taken over from a dead daemon as soon as its heartbeat is stale, never
from a live one. Real parts: the suite's PostgreSQL, aiosmtpd with STARTTLS and AUTH, real
processes and real daemons ('another host' is a daemon whose socket.gethostname() says so).
tickets/mailqueue.py says why a mail goes at most once more after a crash, never twice otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import keyring
import pytest
import tomli_w

from mail2ticket.outgoing.compose import Draft
from mail2ticket.outgoing.outbox import queue
from mail2ticket.outgoing.sender import CLAIM_LEASE, parse_claimer
from mail2ticket.tickets.db import open_db, transaction
from mail2ticket.tickets.pg import WRITE_LOCK
from tests.helpers import run_cli, wait_until
from tests.postgres import TEST_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
# [daemon] lease_renew and lease_ttl of these tests, in seconds; MAIL2TICKET_LEASE_DEFAULTS=1 runs
# them with the defaults (10 s, 30 s) for the figure of docs/scaling.md.
RENEW, TTL = (10, 30) if os.environ.get("MAIL2TICKET_LEASE_DEFAULTS") else (1, 3)
OTHER_HOST = "elsewhere.test"

SENDER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from mail2ticket.config.load import load_config
    from mail2ticket.outgoing.sender import send_pending
    from mail2ticket.tickets.db import open_store
    cfg = load_config(sys.argv[1])
    db = open_store(cfg)
    go = Path(sys.argv[2])
    while not go.exists():  # every sender starts at once
        time.sleep(0.01)
    report = send_pending(cfg, db)
    print(json.dumps({"sent": report.sent, "deferred": report.deferred, "failed": report.failed}))
""")

# A daemon on "another host": its daemons row, its claims say OTHER_HOST (this host's pid check
# cannot see it). AFTER_ACCEPT runs after the server's 250 and before the update.
OTHER_DAEMON = textwrap.dedent("""
    import os, signal, socket, sys, threading
    socket.gethostname = lambda: {host!r}
    from mail2ticket.outgoing import sender
    def after_accept(row):
        {after_accept}
    sender.after_accept = after_accept
    from mail2ticket.cli import main
    sys.argv = ["mail2ticket", "--config", sys.argv[1], "run"]
    main()
""")


@pytest.fixture
def shared(tmp_path, pg_url, dovecot, imap_user, smtp_server, account_config, monkeypatch):
    """``shared.config(name)``: a config on one PostgreSQL database and one account sending through
    the test SMTP server (STARTTLS + AUTH); ``shared.queue(n)`` puts n mails in the outbox."""
    monkeypatch.setenv("PGPASSWORD", TEST_PASSWORD)  # libpq's own source, for every process
    keyring.set_password("mail2ticket", imap_user.name, imap_user.password)
    account = account_config(imap_user, smtp_server)

    class Shared:
        url = pg_url
        smtp = smtp_server
        user = imap_user

        @staticmethod
        def config(name: str) -> Path:
            main = tmp_path / name / "config.toml"
            main.parent.mkdir(parents=True, exist_ok=True)
            main.write_text(tomli_w.dumps({
                "storage": {"database": pg_url, "attachments": str(tmp_path / "att"), "instance": name},
                "schedule": {"poll": "1h", "outbox": "1s", "overdue": "1h"},
                "daemon": {"lease_renew": f"{RENEW}s", "lease_ttl": f"{TTL}s"},
                "accounts": [account],
            }))
            return main

        @staticmethod
        def queue(n: int) -> list[str]:
            db = open_db(pg_url, password=TEST_PASSWORD)
            try:
                with transaction(db):
                    return [queue(db, Draft(imap_user.email, [f"customer{i}@customer.test"], f"Reply {i}", f"Hello {i}"),
                                  account=imap_user.name, kind="reply", ticket_id=None)["message_id"]
                            for i in range(n)]
            finally:
                db.close()

        @staticmethod
        def outbox() -> list[tuple]:
            return _sql(pg_url, "select id, status, claimed_by, claimed_at from outbox order by id")

    return Shared


def _sql(pg_url: str, sql: str, params=()) -> list[tuple]:
    import psycopg  # the test reads the database as an administrator would (psql)

    with psycopg.connect(pg_url, password=TEST_PASSWORD, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def message_ids(smtp) -> Counter:
    return Counter(m.message["Message-ID"] for m in smtp.messages)


def test_three_processes_send_one_outbox_at_once_each_mail_exactly_once_without_the_writers_lock(shared, tmp_path):
    n, senders = 300, 3
    queued = shared.queue(n)
    main = shared.config("senders")
    go = tmp_path / "go"
    import psycopg

    importer = psycopg.connect(shared.url, password=TEST_PASSWORD, autocommit=True)
    importer.execute("select pg_advisory_lock(%s)", [WRITE_LOCK])  # a long import holds the writers' lock
    procs = [subprocess.Popen([sys.executable, "-c", SENDER, str(main), str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(senders)]
    try:
        go.touch()
        # Claiming takes no writers' lock: each sender claims and sends its first mail while the
        # import holds it (recording the answer waits for it: that write logs an event).
        wait_until(lambda: len(shared.smtp.messages) >= senders, 30,
                   "a mail from each sender while the writers' lock is held")
    finally:
        importer.execute("select pg_advisory_unlock(%s)", [WRITE_LOCK])
        importer.close()
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-3000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    sent = [r["sent"] for r in reports]
    print(f"\n{n} mails, {senders} senders at once: {[len(s) for s in sent]} sent by each")
    assert all(s for s in sent), sent  # they overlapped: each sent some
    assert sum(len(s) for s in sent) == n and len(set().union(*map(set, sent))) == n
    assert all(not r["deferred"] and not r["failed"] for r in reports)
    counts = message_ids(shared.smtp)
    assert sorted(counts) == sorted(queued) and set(counts.values()) == {1}  # each reached the server once
    assert {status for _, status, by, _ in shared.outbox() if by is None} == {"sent"}


def _other_daemon(shared, name: str, after_accept: str) -> subprocess.Popen:
    main = shared.config(name)
    log = open(main.parent / "daemon.log", "wb")  # noqa: SIM115 - the process keeps it
    script = OTHER_DAEMON.format(host=OTHER_HOST, after_accept=after_accept)
    proc = subprocess.Popen([sys.executable, "-c", script, str(main)], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.log_path = main.parent / "daemon.log"
    return proc


def test_a_daemon_killed_after_the_servers_250_has_its_mail_sent_once_more_as_soon_as_its_heartbeat_expires(
        shared, start_daemon, capsys):
    [message_id] = shared.queue(1)
    dead = _other_daemon(shared, "a", "os.kill(os.getpid(), signal.SIGKILL)")
    try:
        assert dead.wait(timeout=60) == -9, dead.log_path.read_text()[-3000:]
    finally:
        if dead.poll() is None:
            dead.kill()
    killed = time.monotonic()
    assert message_ids(shared.smtp) == {message_id: 1}
    [(_, status, claimed_by, _)] = shared.outbox()
    host, pid, daemon_id = parse_claimer(claimed_by)
    assert status == "sending" and host == OTHER_HOST and pid == str(dead.pid)
    [listed] = json.loads(run_cli(shared.config("b"), "outbox", "list", "--json").stdout)
    assert listed["status"] == "sending" and listed["claimed_by"] == claimed_by  # who sends it, for a person

    survivor = start_daemon(shared.config("b"), env={"PGPASSWORD": TEST_PASSWORD})
    survivor.notify.wait_for("READY", "1", timeout=30)
    ready = time.monotonic()
    wait_until(lambda: len(shared.smtp.messages) == 2, TTL + RENEW + 30, "the mail sent again by the survivor")
    took, after_ready = time.monotonic() - killed, time.monotonic() - ready
    with capsys.disabled():
        print(f"\nmail of a daemon SIGKILLed after the 250 sent again {took:.1f} s after the kill, "
              f"{after_ready:.1f} s after the survivor was ready (lease_ttl {TTL} s; before: CLAIM_LEASE "
              f"{CLAIM_LEASE} s)")
    # As soon as the dead daemon's heartbeat is older than lease_ttl: at most the ttl after the
    # survivor is ready, plus its outbox timer (1 s); 10 s for a loaded machine (CI runs in parallel).
    assert after_ready <= TTL + 10
    first, again = shared.smtp.messages
    assert first.data == again.data  # byte for byte: the same Message-ID
    time.sleep(2)
    assert len(shared.smtp.messages) == 2  # once more, not more
    assert [row[1:3] for row in shared.outbox()] == [("sent", None)]
    assert survivor.stop()[0] == 0
    # The claim named the daemon by its row in the daemons table (host:pid/id).
    assert _sql(shared.url, "select host, pid from daemons where id = %s", [daemon_id]) == [(OTHER_HOST, dead.pid)]


def test_a_live_daemons_claim_is_never_taken_however_old(shared, start_daemon):
    [message_id] = shared.queue(1)
    hung = _other_daemon(shared, "a", "threading.Event().wait()")  # after the 250, before the update: hangs
    try:
        wait_until(lambda: len(shared.smtp.messages) == 1, 60, "the first send")
        wait_until(lambda: shared.outbox()[0][1] == "sending", 10, "the claim")
        # Older than CLAIM_LEASE: a claim by a process that is not a daemon would be stale now.
        _sql(shared.url, "update outbox set claimed_at = to_char((now() at time zone 'utc') - interval '25 minutes', "
                         "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
        other = start_daemon(shared.config("b"), env={"PGPASSWORD": TEST_PASSWORD})
        other.notify.wait_for("READY", "1", timeout=30)
        time.sleep(3 * TTL)  # the other daemon's outbox job runs every second meanwhile
        assert message_ids(shared.smtp) == {message_id: 1}, other.log()[-3000:]
        [(_, status, claimed_by, _)] = shared.outbox()
        assert status == "sending" and parse_claimer(claimed_by)[:2] == (OTHER_HOST, str(hung.pid))
        assert hung.poll() is None  # alive all along, its heartbeat fresh
        hung.kill()
        hung.wait()
        wait_until(lambda: len(shared.smtp.messages) == 2, TTL + RENEW + 30, "sent again once the daemon died")
        assert other.stop()[0] == 0
    finally:
        if hung.poll() is None:
            hung.kill()
            hung.wait()


def test_a_sender_taken_for_dead_never_overwrites_the_new_claim_but_a_send_it_made_is_recorded(shared):
    """Two claimers in one process, as two hosts would be: a daemon whose row is gone is dead;
    what it records afterwards touches the row only when it is the truth (sent)."""
    from datetime import UTC, datetime

    from mail2ticket.config.load import load_config
    from mail2ticket.outgoing import sender
    from mail2ticket.tickets.leases import ensure_tables, register_daemon

    shared.queue(2)
    cfg = load_config(shared.config("unit"))
    db = open_db(shared.url, password=TEST_PASSWORD)
    try:
        with transaction(db):
            ensure_tables(db)
            register_daemon(db, "alive0000000000", host=OTHER_HOST, pid=1)
        now = datetime.now(UTC)
        ttl = cfg.daemon.lease_ttl
        gone = sender.Claimer(f"{OTHER_HOST}:1/gone00000000000")  # no daemons row: dead at once
        live = sender.Claimer(f"{OTHER_HOST}:1/alive0000000000")
        me = sender.Claimer.this_process()
        rows = [sender._claim(db, i, now, force=False, claimer=gone, ttl=ttl) for i in (1, 2)]
        assert [r["claimed_by"] for r in rows] == [gone.name, gone.name]
        taken = [sender._claim(db, i, now, force=False, claimer=me, ttl=ttl) for i in (1, 2)]
        assert [t["attempts"] for t in taken] == [2, 2]  # taken over at once: its daemon is gone
        sender._finish(db, rows[0], status="queued", error="4xx")  # the old claimer: not its claim any more
        assert shared.outbox()[0][1:3] == ("sending", me.name)
        sender._finish(db, rows[1], status="sent", reply="250 ok")  # it did go: recorded whoever holds it
        assert shared.outbox()[1][1:3] == ("sent", None)
        sender._finish(db, taken[1], status="queued", error="4xx")  # the new claimer's failure: the mail went
        assert shared.outbox()[1][1] == "sent"
        # A live daemon's claim: never taken, whoever asks.
        sender._finish(db, taken[0], status="queued", error=None)
        assert sender._claim(db, 1, now, force=True, claimer=live, ttl=ttl)["claimed_by"] == live.name
        assert sender._claim(db, 1, now, force=True, claimer=me, ttl=ttl) is None
    finally:
        db.close()
