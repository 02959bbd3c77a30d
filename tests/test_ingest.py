"""Pipe mode: 'mail2ticket ingest' takes one message on stdin, exit 0 once stored, 75 to retry."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from mail2ticket.cli import cli
from mail2ticket.errors import EXIT_TEMPFAIL
from tests.helpers import (
    all_tickets,
    database_url,
    engine_storage,
    has_database,
    request_mail,
    rows,
    sqlite_path,
)
from tests.postgres import TEST_PASSWORD

REPO = Path(__file__).resolve().parent.parent


def message(n: int, subject: str | None = None, **headers: str) -> bytes:
    return request_mail(n, subject, f"Customer {n} <customer{n}@example.org>", f"<pipe-{n}@example.org>", headers,
                        return_path=f"<customer{n}@example.org>")


def write_config(tmp_path: Path, *accounts: dict, **storage: str) -> Path:
    config = tmp_path / "config.toml"
    data = {
        "storage": engine_storage(tmp_path, {"database": "data/m2t.db", "attachments": "data/files", **storage}),
        "accounts": list(accounts)
        or [{"name": "support", "email": "support@example.com", "source": "pipe", "acknowledge": False}],
    }
    config.write_text(tomli_w.dumps(data))
    return config


def ingest(config: Path, raw: bytes, *args: str):
    """The real CLI in-process, the message on stdin."""
    return CliRunner().invoke(cli, ["--config", str(config), "ingest", *args], input=raw, catch_exceptions=False)


def ingest_process(config: Path, raw: bytes, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """As an MTA runs it: a fresh process, the message on a pipe."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "ingest", *args],
        input=raw, capture_output=True, env=env, timeout=timeout,
    )


def stored_copies(root: Path, raw: bytes) -> int:
    """How many incoming messages hold exactly these bytes (the database of root's config)."""
    digest = hashlib.sha256(raw).hexdigest()
    return rows(root, "select count(*) from messages m join raw_messages r on r.sha256 = m.raw_sha256 "
                      "where m.raw_sha256 = ? and m.direction = 'in' and r.raw = ?", [digest, raw])[0][0]


class WriteLock:
    """Another process's write transaction, held until release(): BEGIN EXCLUSIVE on the SQLite
    file, or on PostgreSQL the advisory lock every write transaction takes (tickets/pg.py)."""

    def __init__(self, root: Path) -> None:
        url = database_url(root)
        if url is None:
            self.conn = sqlite3.connect(sqlite_path(root), isolation_level=None, check_same_thread=False)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            from mail2ticket.tickets.pg import WRITE_LOCK

            self.conn = psycopg.connect(url, password=TEST_PASSWORD)
            self.conn.execute("select pg_advisory_xact_lock(%s)", [WRITE_LOCK])

    def release(self) -> None:
        self.conn.rollback() if not isinstance(self.conn, sqlite3.Connection) else self.conn.execute("ROLLBACK")
        self.conn.close()


def test_an_mta_piping_many_messages_in_parallel_gets_one_ticket_each_and_none_for_repeated_deliveries(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    mails = [message(n) for n in range(24)]
    # The MTA delivers four at a time; three mails are delivered twice at once (a retry racing
    # the first attempt), and three more again after everything (a retry after a lost answer).
    deliveries = mails[1:] + [mails[3], mails[10], mails[17]]
    # The first delivery creates the database alone (concurrent first opens race in the schema
    # migrations: one of them gets exit 75, which is safe but not what this test is about).
    results = [ingest_process(config, mails[0])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results += list(pool.map(lambda raw: ingest_process(config, raw), deliveries))
    results += [ingest_process(config, raw) for raw in (mails[0], mails[12], mails[23])]

    failures = [(r.returncode, r.stderr.decode()) for r in results if r.returncode != 0]
    assert failures == []
    listed = all_tickets(config)
    assert sorted(t["subject"] for t in listed) == sorted(f"Request number {n}" for n in range(24))
    assert all(t["message_count"] == 1 and t["account"] == "support" for t in listed)
    for raw in mails:
        assert stored_copies(tmp_path, raw) == 1
    said = [r.stdout.decode() for r in results]
    assert sum("stored as new ticket" in s for s in said) == 24
    assert sum("this delivery is a duplicate" in s for s in said) == 6


def test_a_reply_piped_in_joins_the_ticket_of_its_original(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert ingest(config, message(1, "Printer jams")).exit_code == 0
    # From the same customer: a stranger naming their Message-ID gets a ticket of its own (item 53).
    same_sender = message(2, "Re: Printer jams", In_Reply_To="<pipe-1@example.org>").replace(
        b"customer2@example.org", b"customer1@example.org")
    reply = ingest(config, same_sender)
    assert reply.exit_code == 0, reply.stderr
    assert "stored as a follow-up to ticket #1" in reply.stdout
    (ticket,) = all_tickets(config)
    assert ticket["message_count"] == 2


def test_a_locked_database_gives_exit_75_within_the_lock_timeout_and_nothing_is_lost(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert ingest(config, message(1)).exit_code == 0  # the database exists, fully migrated
    late = message(2, "Arrives while the database is locked")

    holder = WriteLock(tmp_path)
    try:
        started = time.monotonic()
        locked = ingest_process(config, late, "--lock-timeout", "0.5")
        elapsed = time.monotonic() - started
    finally:
        holder.release()
    assert locked.returncode == EXIT_TEMPFAIL == 75
    assert b"lock" in locked.stderr  # SQLite: "database is locked"; PostgreSQL: "lock timeout"
    assert elapsed < 15  # 0.5 s of waiting plus a Python start, not the default 30 s
    assert stored_copies(tmp_path, late) == 0

    # The MTA retries later: stored once; a further retry changes nothing.
    retried = ingest_process(config, late)
    assert retried.returncode == 0, retried.stderr
    assert ingest_process(config, late).returncode == 0
    assert stored_copies(tmp_path, late) == 1
    assert [t["subject"] for t in all_tickets(config)].count("Arrives while the database is locked") == 1


def test_a_lock_shorter_than_the_lock_timeout_is_waited_for(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert ingest(config, message(1)).exit_code == 0
    holder = WriteLock(tmp_path)
    release = threading.Timer(1.0, holder.release)
    release.start()
    try:
        result = ingest_process(config, message(2), "--lock-timeout", "20")
    finally:
        release.join()
    assert result.returncode == 0, result.stderr
    assert stored_copies(tmp_path, message(2)) == 1


@pytest.mark.sqlite_only("the SQLite file's directory is a file")
def test_a_store_that_cannot_be_written_gives_exit_75_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("a file where the data directory should be\n")
    config = write_config(tmp_path, database="not-a-directory/store.db")
    result = ingest(config, message(1))
    assert result.exit_code == 75
    assert "cannot open database" in result.stderr


def test_an_attachment_directory_that_cannot_be_written_gives_exit_75_and_stores_nothing(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the attachment directory should be\n")
    config = write_config(tmp_path, attachments="blocked/files")
    msg = EmailMessage()
    msg["From"] = "customer@example.org"
    msg["Subject"] = "With a file"
    msg.set_content("See the attachment.")
    msg.add_attachment(b"%PDF-1.4 not really", maintype="application", subtype="pdf", filename="a.pdf")
    result = ingest(config, bytes(msg))
    assert result.exit_code == 75
    assert "cannot write attachment" in result.stderr
    assert all_tickets(config) == []


def test_a_message_that_cannot_become_a_ticket_is_quarantined_with_exit_0_and_a_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"name": "support", "email": "support@example.com", "source": "pipe",
                                     "acknowledge": False, "max_message_size": "1KB"})
    big = message(1, "A scan far over the limit") + b"x" * 5000 + b"\n"
    result = ingest(config, big)
    assert result.exit_code == 0
    assert ("Warning: the message is over the size limit (max_message_size); it is stored in the quarantine "
            "as #1") in result.stderr
    shown = CliRunner().invoke(cli, ["--config", str(config), "quarantine", "show", "1", "--raw"])
    assert shown.stdout_bytes == big
    listed = json.loads(CliRunner().invoke(cli, ["--config", str(config), "quarantine", "list", "--json"]).stdout)
    assert [e["reason"] for e in listed] == ["too-large"]  # not "unparseable": it was never parsed
    assert all_tickets(config) == []
    again = ingest(config, big)
    assert again.exit_code == 0 and "already stored in the quarantine as #1" in again.stdout


def test_an_empty_message_is_refused_and_is_not_a_success(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for empty in (b"", b"\n\n"):
        result = ingest(config, empty)
        assert result.exit_code == 2
        assert "standard input was empty" in result.stderr
    assert not has_database(tmp_path) or all_tickets(config) == []


def test_an_unknown_account_gives_exit_75_so_the_mta_keeps_the_mail_and_names_the_known_ones(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    result = ingest(config, message(1), "--account", "sales")
    assert result.exit_code == 75
    assert "no account named 'sales'" in result.stderr and "known accounts: support" in result.stderr


def test_a_missing_config_gives_exit_75_not_a_bounce(tmp_path: Path) -> None:
    result = ingest(tmp_path / "nowhere.toml", message(1))
    assert result.exit_code == 75
    assert "config file not found" in result.stderr


def test_with_several_accounts_the_account_must_be_named(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"name": "support", "email": "support@example.com", "source": "pipe", "acknowledge": False},
        {"name": "sales", "email": "sales@example.com", "source": "pipe", "acknowledge": False},
    )
    unnamed = ingest(config, message(1))
    assert unnamed.exit_code == 75
    assert "needs --account NAME" in unnamed.stderr
    named = ingest(config, message(1), "--account", "sales")
    assert named.exit_code == 0, named.stderr
    assert [t["account"] for t in all_tickets(config)] == ["sales"]


def test_a_disabled_account_takes_no_mail_and_the_mta_keeps_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"name": "support", "email": "support@example.com", "source": "pipe", "enabled": False}
    )
    result = ingest(config, message(1))
    assert result.exit_code == 75
    assert "account support is disabled" in result.stderr


def test_a_pipe_account_needs_no_server_and_poll_passes_it_by(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    checked = CliRunner().invoke(cli, ["--config", str(config), "config", "check"])
    assert checked.exit_code == 0, checked.stderr
    polled = CliRunner().invoke(cli, ["--config", str(config), "poll"])
    assert polled.exit_code == 0, polled.stderr


def test_ingest_into_an_imap_account_works_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"name": "support", "email": "support@example.com",
                                     "imap_host": "imap.example.com", "acknowledge": False})
    result = ingest(config, message(1))
    assert result.exit_code == 0, result.stderr
    assert [t["subject"] for t in all_tickets(config)] == ["Request number 1"]
