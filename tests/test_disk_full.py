"""A full disk: a clear error, nothing flagged on the server that was not stored, then recovery.

The test mounts a 2 MB tmpfs (root only), fills it almost to the brim, and puts the attachment
store or the database on it. Outside CI, where mounting is not possible, the tests are skipped
with the reason; in CI (CI=true) they fail instead, so the guarantee is never silently unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.helpers import connect, run_cli, sha256_hex, write_config
from tests.servers import Dovecot, User


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted for this test (and unmounted after)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "mounting a small tmpfs needs root"
    else:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mountpoint)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            why = f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}"
    if why:
        if _in_ci():
            pytest.fail(f"disk-full tests cannot run in CI: {why}", pytrace=False)
        print(f"skipping the disk-full tests: {why}")
        pytest.skip(why)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of *directory* until only about *leave* bytes are free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    filler = directory / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def _message(n: int, attachment: int = 0) -> bytes:
    head = b"From: customer%d@example.org\r\nSubject: disk full %d\r\nMessage-ID: <df-%d@example.org>\r\n" % (n, n, n)
    if not attachment:
        return head + b"\r\n" + (b"line of text %d\r\n" % n) * 3_600  # ~60 kB in the database
    data = hashlib.sha256(b"%d" % n).digest() * (attachment // 32)
    import base64

    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return head + (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee file\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=f.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--B--\r\n"
    )


def check_exactly_once(dovecot: Dovecot, user: User, database: Path, attachments: Path) -> int:
    """Nothing flagged without a row; each stored message byte-identical, once; files intact.
    ``database``: DIR/m2t.db, or on PostgreSQL the database of DIR's config (tests/helpers connect)."""
    server = {uid: sha256_hex(raw) for uid, raw in dovecot.fetch_raw(user).items()}
    seen = {uid for uid, flags in dovecot.flags(user).items() if "\\Seen" in flags}
    with connect(database.parent) as conn:
        ledger = dict(conn.execute("select uid, raw_sha256 from sources").fetchall())
        for digest, raw in conn.execute("select sha256, raw from raw_messages"):
            assert sha256_hex(raw) == digest
        per_content = conn.execute("select raw_sha256, count(*) from messages group by raw_sha256").fetchall()
        for sha, size, path in conn.execute("select sha256, size, path from attachments"):
            data = (attachments / path).read_bytes()
            assert sha256_hex(data) == sha and len(data) == size
        if getattr(conn, "engine", None) != "postgresql":
            assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert seen <= set(ledger), f"flagged but not stored: {sorted(seen - set(ledger))}"
    assert all(server[uid] == digest for uid, digest in ledger.items())
    assert all(n == 1 for _, n in per_content), "imported twice"
    return len(ledger)


@pytest.mark.parametrize("full", ["attachments", pytest.param("database", marks=pytest.mark.sqlite_only(
    "the SQLite file on a full file system (a PostgreSQL server's disk is the server's)"))])
def test_a_full_disk_fails_clearly_flags_nothing_unstored_and_recovers_once_space_is_freed(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path, small_fs: Path, full: str
) -> None:
    store_password(imap_user.name, imap_user.password)
    database = (small_fs if full == "database" else tmp_path) / "m2t.db"
    attachments = (small_fs if full == "attachments" else tmp_path) / "files"
    config = write_config(tmp_path, account_config(imap_user, batch_size=2),
                          storage={"database": str(database), "attachments": str(attachments)})
    assert run_cli(config, "poll").exit_code == 0  # the database exists, the mailbox is empty
    attachment = 300_000 if full == "attachments" else 0
    dovecot.append_many(imap_user, [_message(n, attachment) for n in range(6)])
    filler = fill(small_fs, leave=100_000)

    failed = run_cli(config, "poll")

    assert failed.exit_code == 75  # could not store now: EX_TEMPFAIL, as ingest (README: exit codes)
    line = [x for x in failed.stderr.splitlines() if x.startswith(f"{imap_user.name}: FAILED:")]
    assert len(line) == 1 and "Traceback" not in failed.output, failed.output
    assert "space" in line[0] or "full" in line[0], line[0]
    stored = check_exactly_once(dovecot, imap_user, database, attachments)
    assert stored < 6
    status = json.loads(run_cli(config, "status", "--json").stdout)["accounts"][0]
    assert status["healthy"] is False and status["next_attempt_at"]

    filler.unlink()
    recovered = run_cli(config, "poll")

    assert recovered.exit_code == 0, recovered.output
    assert check_exactly_once(dovecot, imap_user, database, attachments) == 6
    assert all("\\Seen" in f for f in dovecot.flags(imap_user).values())
    assert not any((attachments / "tmp").glob("*")), "no temp file left behind"
