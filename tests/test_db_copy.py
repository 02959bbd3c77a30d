"""Moving a SQLite database to PostgreSQL: ``mail2ticket db copy --to postgresql://...`` (issue 17
point 4; catalogue 108-109).

One scenario, run once: a database made by real polls of the real Dovecot (mail with attachments,
a follow-up, a reply in the outbox, a quarantined message) is copied into the test's real
PostgreSQL; the copy is killed (SIGKILL) in the middle of a batch's transaction, run again, and
then every ticket reads the same on both (``tickets show --json``), the ids and the ledger carry
on (the next poll on PostgreSQL imports only the new mail, as the next ticket number).
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from mail2ticket.accounts.secrets import store_password
from mail2ticket.errors import EXIT_CONFIG, EXIT_TEMPFAIL, StoreError
from mail2ticket.service.daemon import acquire_lock
from mail2ticket.tickets.copy import copy_database, open_snapshot
from mail2ticket.tickets.db import open_db
from mail2ticket.tickets.pg import WRITE_LOCK
from tests.helpers import (
    Desk,
    MiB,
    command,
    make_mail,
    reply_to,
    run_cli,
    run_measured,
    write_config,
)
from tests.postgres import TEST_PASSWORD

pytestmark = pytest.mark.sqlite_only("the source of db copy is a SQLite file")


def _pg_config(desk: Desk, url: str) -> Path:
    """The desk's config with only [storage] database changed (what db copy tells the user to do)."""
    data = tomllib.loads(desk.config.read_text())
    data["storage"]["database"] = url
    path = desk.root / "pg.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _json(config: Path, *args: str):
    result = run_cli(config, *args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _views(config: Path) -> dict:
    """What a user reads: every ticket shown, the ticket list, the outbox, the quarantine."""
    tickets = _json(config, "tickets", "list", "--status", "all", "--sort", "id")
    return {
        "list": tickets,
        "shown": [_json(config, "tickets", "show", str(t["id"])) for t in tickets],
        "outbox": _json(config, "outbox", "list", "--all"),
        "quarantine": _json(config, "quarantine", "list"),
    }


def _copied_rows(admin) -> int:
    row = admin.execute("select to_regclass('m2t_copy') is not null").fetchone()
    return admin.execute("select coalesce(sum(rows), 0) from m2t_copy").fetchone()[0] if row[0] else 0


def test_a_polled_database_is_copied_to_postgresql_through_a_kill_and_reads_the_same_there(
    tmp_path: Path, dovecot, imap_user, smtp_server, account_config, postgres_server, pg_url: str
) -> None:
    desk = Desk(tmp_path / "desk", dovecot, imap_user, smtp_server, account_config, max_message_size="100KB")
    first = make_mail("Printer on fire", "Ann <ann@customer.test>", desk.email, attachment=b"%PDF-1.4 invoice 1")
    desk.deliver(first)
    for n in range(2, 6):
        desk.deliver(make_mail(f"Request {n}", f"C{n} <c{n}@customer.test>", desk.email,
                               attachment=b"%PDF-1.4 n" * n if n % 2 else None))
    desk.deliver(make_mail("Too big", "Big <big@customer.test>", desk.email, body="x" * 200_000))
    desk.poll()
    desk.deliver(reply_to(first, body="Still burning."))
    desk.poll()
    tickets = desk.tickets()
    assert len(tickets) == 5
    desk.ok("tickets", "reply", str(tickets[0]["id"]), "--message", "A technician is on the way.")
    desk.ok("tickets", "close", str(tickets[1]["id"]))
    assert _json(desk.config, "quarantine", "list"), "the over-size mail is in the quarantine"
    before = _views(desk.config)
    store_password("database", TEST_PASSWORD)  # the password chain: the keyring entry 'database'

    # Refused at once: a password on the command line, a running daemon, a database with other data.
    secret = run_cli(desk.config, "db", "copy", "--to", pg_url.replace("m2t@", f"m2t:{TEST_PASSWORD}@"))
    assert secret.exit_code == EXIT_CONFIG and "holds a password" in secret.stderr
    assert TEST_PASSWORD not in secret.stdout + secret.stderr
    lock = acquire_lock(desk.root / "m2t.db")  # what a running daemon holds
    try:
        busy = run_cli(desk.config, "db", "copy", "--to", pg_url)
    finally:
        lock.close()
    assert busy.exit_code == EXIT_TEMPFAIL and "daemon is running" in busy.stderr, busy.stderr
    foreign = postgres_server.new_database()
    db = open_db(foreign, password=TEST_PASSWORD)
    db.execute("insert into tickets (account, subject, created_at, updated_at) values ('x', 'theirs', 'now', 'now')")
    db.close()
    refused = run_cli(desk.config, "db", "copy", "--to", foreign)
    assert refused.exit_code == EXIT_CONFIG and "is not empty" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2, refused.stderr
    postgres_server.drop_database(foreign)

    # The first run, one row per transaction, killed while a batch waits inside its transaction.
    proc = subprocess.Popen(command(desk.config, "db", "copy", "--to", pg_url, "--batch-rows", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    admin = _target_conn(pg_url)
    try:
        deadline = time.monotonic() + 60
        while _copied_rows(admin) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        admin.execute("select pg_advisory_lock(%s)", [WRITE_LOCK])  # the copy's next batch waits for it
        while time.monotonic() < deadline and not admin.execute(
                "select 1 from pg_stat_activity where application_name = 'mail2ticket' and wait_event_type = 'Lock'"
        ).fetchone():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        copied = _copied_rows(admin)
        admin.execute("select pg_advisory_unlock(%s)", [WRITE_LOCK])
    finally:
        admin.close()
    assert 3 <= copied < _source_rows(desk.root / "m2t.db"), "killed mid-way"

    again = run_cli(desk.config, "db", "copy", "--to", pg_url, "--json")
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed"] and summary["verified"] and not summary["source_changed"]
    assert sum(t["copied"] for t in summary["tables"]) == _source_rows(desk.root / "m2t.db") - copied, \
        "the second run copies exactly what the first did not"
    raw_count = _source_rows(desk.root / "m2t.db", "raw_messages")
    assert raw_count >= 7  # six mails from customers, the reply we sent
    assert summary["raw_messages"] == {"checked": raw_count, "sha256_mismatched": 0, "missing": 0}
    assert summary["config_change"] == {"storage": {"database": pg_url}}

    pg_config = _pg_config(desk, pg_url)
    assert _views(pg_config) == before
    # A third run finds nothing to copy and verifies again; its summary says what to change.
    third = run_cli(desk.config, "db", "copy", "--to", pg_url)
    assert third.exit_code == 0, third.stderr
    assert f'database = "{pg_url}"' in third.stdout and "keyring set mail2ticket database" in third.stdout
    assert "Verified" in third.stdout and "attachments stay in" in third.stdout

    # The ledger and the ids carry on: the next poll on PostgreSQL imports only the new mail,
    # as the next ticket number.
    desk.deliver(make_mail("After the move", "Dan <dan@customer.test>", desk.email))
    assert run_cli(pg_config, "poll").exit_code == 0
    after = _json(pg_config, "tickets", "list", "--status", "all", "--sort", "id")
    assert [t["id"] for t in after] == [t["id"] for t in before["list"]] + [before["list"][-1]["id"] + 1]
    assert after[-1]["subject"] == "After the move"


def _target_conn(url: str):
    import psycopg  # the postgresql extra (installed for the tests)

    return psycopg.connect(url, password=TEST_PASSWORD, autocommit=True)


def _source_rows(path: Path, *only: str) -> int:
    """Rows in the SQLite database's tables (every table db copy copies, or ``only`` these)."""
    with sqlite3.connect(path) as conn:
        tables = only or [r[0] for r in conn.execute(
            "select name from sqlite_master where type = 'table' and sql not like 'CREATE VIRTUAL%' "
            "and name not like 'sqlite_%' and name not like 'messages_fts%' and name != '_sqlite_migrations'")]
        return sum(conn.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables)


def test_a_large_raw_message_is_copied_in_bounded_memory_and_a_row_changed_since_is_found(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path)
    size = 16 * MiB
    db = open_db(tmp_path / "m2t.db")
    db.execute("insert into raw_messages (sha256, size, stored_at, raw) values ('pending', ?, 'now', zeroblob(?))",
               [size, size])
    hasher = hashlib.sha256()
    with db.conn.blobopen("raw_messages", "raw", 1) as blob:
        for n in range(size // MiB):
            piece = hashlib.sha256(b"%d" % n).digest() * (MiB // 32)  # 1 MiB, different each time
            hasher.update(piece)
            blob.write(piece)
    digest = hasher.hexdigest()
    db.execute("update raw_messages set sha256 = ?", [digest])
    db.execute("insert into conversation_state (key, value) values ('note', 'before')")
    db.conn.commit()
    db.close()
    store_password("database", TEST_PASSWORD)

    big, peak = _measured_copy(config, pg_url)
    with sqlite3.connect(tmp_path / "m2t.db") as conn:  # a row changed after it was copied
        conn.execute("update conversation_state set value = 'after' where key = 'note'")
    again, baseline = _measured_copy(config, pg_url)  # the same command, with nothing left to copy

    assert big.returncode == 0, big.stderr
    summary = json.loads(big.stdout)
    assert summary["verified"] and summary["raw_messages"] == {"checked": 1, "sha256_mismatched": 0, "missing": 0}
    with _target_conn(pg_url) as conn:
        assert conn.execute("select sha256, octet_length(raw) from raw_messages").fetchall() == [(digest, size)]
    # Run again, it copies nothing; it finds the row changed since (the same number of rows).
    rerun = json.loads(again.stdout)
    assert sum(t["copied"] for t in rerun["tables"]) == 0 and not rerun["verified"]
    assert [t["table"] for t in rerun["tables"] if not t["same_content"]] == ["conversation_state"]
    assert again.returncode == 1 and "changed since an earlier run" in again.stderr
    print(f"\ndb copy: peak RSS {peak / 1024:.0f} MiB copying a 16 MiB message, {baseline / 1024:.0f} MiB "
          "run again with nothing to copy")
    assert peak - baseline < 16 * 1024, f"{(peak - baseline) / 1024:.0f} MiB more for a 16 MiB message"


def _measured_copy(config: Path, url: str) -> tuple[subprocess.CompletedProcess, int]:
    """``db copy --to URL --json`` as its own process: (its result, its peak RSS in KiB)."""
    result, hwm, _ = run_measured(command(config, "db", "copy", "--to", url, "--json"))
    return result, max(hwm.values(), default=0)


def test_two_copies_into_one_database_never_copy_a_row_twice(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "m2t.db"
    db = open_db(source)
    for n in range(4):  # a table without a primary key: nothing but the copy's progress stops a second row
        db.execute("insert into hook_subscriptions (hook, kind, event, account) values (?, 'created', "
                   "'ticket.created', null)", [f"hook{n}"])
    db.conn.commit()
    db.close()
    target = open_db(pg_url, password=TEST_PASSWORD)
    other = _target_conn(pg_url)

    with sqlite3.connect(source) as conn:
        rows = conn.execute("select rowid, hook from hook_subscriptions order by rowid").fetchall()
    keys = sorted(hook for _, hook in rows)

    def the_other_copy(table: str, done: int, total: int) -> None:  # commits the next row first
        if table == "hook_subscriptions" and done == 1:
            rowid, hook = rows[1]
            other.execute("insert into hook_subscriptions (hook, kind, event) values (%s, 'created', 'ticket.created')",
                          [hook])
            other.execute("update m2t_copy set last_rowid = %s where table_name = 'hook_subscriptions'", [rowid])

    src = open_snapshot(source)
    try:
        with pytest.raises(StoreError, match="another db copy is filling"):
            copy_database(src, str(source), target, batch_rows=1, progress=the_other_copy)
    finally:
        src.close()
    assert sorted(r[0] for r in target.execute("select hook from hook_subscriptions")) == keys[:2], "each row once"
    src = open_snapshot(source)
    try:
        result = copy_database(src, str(source), target, batch_rows=1)  # run again: it continues
    finally:
        src.close()
        other.close()
    assert result.verified and result.resumed
    assert sorted(r[0] for r in target.execute("select hook from hook_subscriptions")) == keys
    target.close()
