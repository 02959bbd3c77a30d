"""Network faults: connections cut mid-FETCH, stalled servers, and per-account backoff.

Every IMAP byte goes through the `tcp_relay` fixture (TLS end to end, verified against the test
CA), which cuts the connection at chosen byte offsets or stops forwarding. After each fault:
nothing partial is stored, nothing is flagged on the server that is not stored, the error is one
clear line, and the next poll resumes where the last commit ended and completes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from mail2ticket.accounts.secrets import store_password
from mail2ticket.cli import cli
from tests.helpers import (
    accounts_status,
    has_database,
    hashed_lines,
    numbered_mail,
    rows,
    sha256_hex,
    write_config,
)
from tests.servers import Dovecot, User

CUTS_SURVIVED: list[int] = []  # offsets of the connections cut in this module


@pytest.fixture(autouse=True, scope="module")
def _report_cuts():
    """Print the figure the closing note reports, once the module's tests have run (pytest -s)."""
    yield
    print(f"\nconnection cuts survived: {len(CUTS_SURVIVED)} (offsets {sorted(set(CUTS_SURVIVED))})")


def _message(n: int, size: int = 20_000) -> bytes:
    # Base64 lines of pseudo-random text: large enough that FETCH spans many TLS records.
    return numbered_mail(n, b"network fault test", b"<net-%d@example.org>" % n, text=hashed_lines(n, size))


def _poll(config: Path, *accounts: str) -> subprocess.CompletedProcess:
    """`mail2ticket poll` in its own process, as cron or systemd runs it.

    Not in-process: the parse workers it forks would inherit the relay's sockets, and a cut
    connection would then stay open in them."""
    return subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "poll", *accounts],
        capture_output=True, text=True, timeout=120,
    )


def _ledger(root: Path, account: str, uidvalidity: int) -> dict[int, str]:
    if not has_database(root):
        return {}
    return dict(rows(root, "select uid, raw_sha256 from sources where account = ? and uidvalidity = ?",
                     [account, uidvalidity]))


def check_consistent(dovecot: Dovecot, user: User, root: Path) -> dict[int, str]:
    """Nothing partial stored, nothing flagged without a row; returns the ledger {uid: sha256}.
    ``root``: the directory of the config (its database: m2t.db, or PostgreSQL's)."""
    server = {uid: sha256_hex(raw) for uid, raw in dovecot.fetch_raw(user).items()}
    ledger = _ledger(root, user.name, dovecot.uidvalidity(user))
    for uid, digest in ledger.items():
        assert server[uid] == digest, f"UID {uid} stored with other bytes than the server has"
    if has_database(root):
        for digest, raw in rows(root, "select sha256, raw from raw_messages"):
            assert sha256_hex(raw) == digest and digest in server.values(), "a partial message was stored"
        [(dup,)] = rows(root, "select count(*) from (select raw_sha256 from messages group by raw_sha256 "
                              "having count(*) > 1) as twice")
        assert dup == 0, "a message was imported twice"
    seen = {uid for uid, flags in dovecot.flags(user).items() if "\\Seen" in flags}
    assert seen <= set(ledger), f"flagged on the server but not stored: {sorted(seen - set(ledger))}"
    return ledger


@pytest.fixture
def mailbox(dovecot: Dovecot, imap_user: User) -> User:
    dovecot.append_many(imap_user, [_message(n) for n in range(30)])
    store_password(imap_user.name, imap_user.password)
    return imap_user


@pytest.mark.parametrize("offset", [9_000, 60_000, 150_000, 333_333, 520_000])
def test_a_connection_cut_mid_fetch_stores_nothing_partial_and_the_next_poll_completes(
    dovecot: Dovecot, mailbox: User, account_config, tcp_relay, tmp_path: Path, offset: int
) -> None:
    relay = tcp_relay(dovecot.host, dovecot.imaps_port)
    config = write_config(tmp_path, account_config(mailbox, imap_port=relay.port, batch_size=5, timeout=10))
    relay.cut_once_at(offset)

    cut = _poll(config)

    assert relay.cuts == 1, "the relay did not cut the connection: the offset is past the end"
    assert cut.returncode == 6  # a network failure (README: exit codes)
    error = [line for line in cut.stderr.splitlines() if line.startswith(f"{mailbox.name}: FAILED:")]
    assert len(error) == 1 and "Traceback" not in cut.stdout + cut.stderr, cut.stderr
    assert f"{dovecot.host}:{relay.port} was lost" in error[0], error
    partial = check_consistent(dovecot, mailbox, tmp_path)
    assert len(partial) < 30 and len(partial) % 5 == 0, "only whole committed batches are stored"

    done = _poll(config)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{30 - len(partial)} imported" in done.stdout
    ledger = check_consistent(dovecot, mailbox, tmp_path)
    assert len(ledger) == 30
    assert all("\\Seen" in f for f in dovecot.flags(mailbox).values())
    CUTS_SURVIVED.append(offset)


def test_connections_cut_again_and_again_still_import_everything_exactly_once(
    dovecot: Dovecot, mailbox: User, account_config, tcp_relay, tmp_path: Path
) -> None:
    relay = tcp_relay(dovecot.host, dovecot.imaps_port)
    config = write_config(tmp_path, account_config(mailbox, imap_port=relay.port, batch_size=3, timeout=10))
    relay.cut_after(140_000)  # every connection dies after ~140 kB: a couple of batches per poll
    stored = []
    for _ in range(20):
        result = _poll(config)
        stored.append(len(check_consistent(dovecot, mailbox, tmp_path)))
        if result.returncode == 0:
            break
    assert stored[-1] == 30, f"stored after each poll: {stored}"
    assert stored == sorted(stored) and len(set(stored)) == len(stored), f"each poll made progress: {stored}"
    assert relay.cuts == len(stored) - 1 >= 3
    CUTS_SURVIVED.extend([140_000] * relay.cuts)


@pytest.mark.parametrize("stall_after", [0, 80_000], ids=["before-the-greeting", "mid-fetch"])
def test_a_stalled_server_times_out_quickly_with_a_clear_error(
    dovecot: Dovecot, mailbox: User, account_config, tcp_relay, tmp_path: Path, stall_after: int
) -> None:
    relay = tcp_relay(dovecot.host, dovecot.imaps_port)
    config = write_config(tmp_path, account_config(mailbox, imap_port=relay.port, batch_size=5, timeout=2))
    relay.stall(after=stall_after)

    started = time.monotonic()
    result = _poll(config)
    finished = time.monotonic()

    assert result.returncode == 6  # a network failure
    # Counted from the connection, not from the start of the process: the interpreter's start-up
    # is not the behaviour, and on a busy machine (the suite's other worker) it alone can take
    # seconds (catalogue 111).
    elapsed = finished - relay.accepted_at[0]
    assert elapsed < 8, f"a 2 s timeout took {elapsed:.1f} s to report after the connection"
    assert finished - started < 60, "the poll stalled"
    assert "did not answer" in result.stderr and f"{relay.port}" in result.stderr, result.stderr
    check_consistent(dovecot, mailbox, tmp_path)
    relay.resume()
    assert _poll(config).returncode == 0
    assert len(check_consistent(dovecot, mailbox, tmp_path)) == 30


def _in_seconds(iso: str) -> float:
    return (datetime.fromisoformat(iso.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds()


def test_errors_back_off_per_account_and_show_in_status(
    dovecot: Dovecot, mailbox: User, account_config, tcp_relay, tmp_path: Path
) -> None:
    healthy = dovecot.add_user()
    dovecot.append_many(healthy, [_message(n, 500) for n in range(3)])
    store_password(healthy.name, healthy.password)
    relay = tcp_relay(dovecot.host, dovecot.imaps_port)
    config = write_config(
        tmp_path, account_config(mailbox, imap_port=relay.port, timeout=10), account_config(healthy)
    )
    relay.cut_after(60_000)

    first = _poll(config)
    status = accounts_status(config)

    assert first.returncode == 6  # a network failure
    assert f"{healthy.name}: 3 imported" in first.stdout, "the other account is polled all the same"
    broken = status[mailbox.name]
    assert broken["healthy"] is False and broken["failures"] == 1
    assert "lost" in broken["last_error"] or "TLS" in broken["last_error"]
    assert 50 <= _in_seconds(broken["next_attempt_at"]) <= 61
    assert status[healthy.name]["healthy"] and status[healthy.name]["next_attempt_at"] is None

    _poll(config)
    status = accounts_status(config)
    assert status[mailbox.name]["failures"] == 2
    assert 110 <= _in_seconds(status[mailbox.name]["next_attempt_at"]) <= 121, "the wait doubles"
    text = CliRunner().invoke(cli, ["--config", str(config), "status"])
    assert text.exit_code == 1 and mailbox.name in text.stdout and "lost" in text.stdout

    relay.resume()
    assert _poll(config).returncode == 0
    status = accounts_status(config)
    assert status[mailbox.name]["failures"] == 0 and status[mailbox.name]["last_error"] is None
    assert status[mailbox.name]["next_attempt_at"] is None
    CUTS_SURVIVED.extend([60_000] * relay.cuts)
