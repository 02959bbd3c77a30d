"""Large messages in bounded memory on every path, not only the IMAP poll (issue 15, point 8).

`mail2ticket ingest`, a Maildir poll, `quarantine retry` and `reparse` take the poll's
large-message path (mail2ticket.parse.bigmessage): the message is copied into a temp file (from
standard input, the Maildir file or the database blob), parsed from there with its large bodies
streamed, the attachments written as they are decoded, and the raw bytes stored with incremental
blob I/O. Each path runs here as a user runs it, as its own process, its peak RSS (and its parser
workers') read from the kernel (VmHWM) as tests/test_big_messages.py does for `poll`; the stored
raw message and attachment are compared with the originals.
"""

from __future__ import annotations

import base64
import random
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from tests.helpers import (
    PEAK_LIMIT_KIB,
    MiB,
    command,
    connect,
    engine_storage,
    file_sha256,
    raw_sha,
    run_measured,
    sha256_hex,
    write_config,
)

ATTACHMENT = 50 * MiB


def _head(subject: bytes, mid: bytes) -> bytes:
    return (
        b"From: Big Customer <big@example.org>\r\nTo: support@example.test\r\nSubject: " + subject + b"\r\n"
        b"Message-ID: <" + mid + b"@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("big-local")


@pytest.fixture(scope="module")
def attachment_eml(files: Path) -> dict:
    """A 71 MB message: a short text part and a 50 MB random attachment (base64, CRLF lines)."""
    data = random.Random(15).randbytes(ATTACHMENT)
    raw = (
        _head(b"the scans you asked for", b"big-local-1")
        + b'Content-Type: multipart/mixed; boundary="==b=="\r\n\r\n'
        b"--==b==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease find the scans attached.\r\n\r\n"
        b"--==b==\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="scans.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(data).replace(b"\n", b"\r\n")
        + b"\r\n--==b==--\r\n"
    )
    path = files / "attachment.eml"
    path.write_bytes(raw)
    return {"path": path, "sha": sha256_hex(raw), "size": len(raw), "attachment_sha": sha256_hex(data)}


def _qp_soft_breaks() -> bytes:
    """50 MB of quoted-printable soft line breaks: the body decodes to one short line."""
    return (
        _head(b"soft line breaks", b"big-local-qp")
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Hello,=\r\n" + b"=\r\n" * (ATTACHMENT // 3) + b" the end.\r\n"
    )


def _junk_base64() -> bytes:
    """A 50 MB "base64" attachment of junk: printable characters, most outside the alphabet."""
    rng = random.Random(7)
    block = b"".join(bytes(rng.choices(range(0x21, 0x7F), k=76)) + b"\r\n" for _ in range(4096))
    body = block * (ATTACHMENT // len(block) + 1)
    return (
        _head(b"junk base64", b"big-local-junk")
        + b'Content-Type: multipart/mixed; boundary="==j=="\r\n\r\n'
        b"--==j==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the file.\r\n\r\n"
        b"--==j==\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="junk.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--==j==--\r\n"
    )


def _config(tmp_path: Path, max_message_size: str = "100MB") -> Path:
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    return write_config(
        tmp_path,
        {"name": "pipe", "email": "pipe@example.test", "source": "pipe", "acknowledge": False},
        {"name": "local", "email": "local@example.test", "source": "maildir", "path": str(maildir),
         "acknowledge": False},
        limits={"max_message_size": max_message_size, "max_attachment_size": "60MB"},
        performance={"workers": 2},
    )


def _measured(config: Path, *args: str, stdin: Path | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``mail2ticket ARGS`` (standard input from ``stdin``); the largest VmHWM (KiB) of the
    process and its parser workers, sampled every 20 ms."""
    result, hwm, _ = run_measured(command(config, *args), stdin)
    peak = max(hwm.values(), default=0)
    print(f"\n{' '.join(args)}: peak RSS {peak / 1024:.0f} MiB")
    return result, peak


def _assert_bounded(result: subprocess.CompletedProcess, peak: int) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert 0 < peak < PEAK_LIMIT_KIB, f"peaked at {peak / 1024:.0f} MiB, over 150 MB"


def _check_stored(tmp_path: Path, eml: dict) -> None:
    """One message, byte-identical raw, its 50 MB attachment with the right hash on disk."""
    with connect(tmp_path) as conn:
        assert raw_sha(conn, eml["sha"]) == eml["sha"], "the stored raw differs from the original"
        assert conn.execute("select count(*) from messages").fetchone()[0] == 1
        assert conn.execute("select count(*) from quarantine where resolved_at is null").fetchone()[0] == 0
        rows = conn.execute(
            "select a.filename, a.size, a.sha256, a.path, m.body_text, m.subject from attachments a "
            "join messages m on m.id = a.message"
        ).fetchall()
    assert len(rows) == 1
    filename, size, sha, rel, body, subject = rows[0]
    assert (filename, size, sha) == ("scans.bin", ATTACHMENT, eml["attachment_sha"])
    assert file_sha256(tmp_path / "files" / rel) == eml["attachment_sha"], "the stored attachment file differs"
    assert body.strip() == "Please find the scans attached." and subject == "the scans you asked for"
    assert not list((tmp_path / "files" / "tmp").glob("*")), "temp files left behind"


# ------------------------------------------------------------------------------------ ingest


@pytest.mark.parametrize("build", [_qp_soft_breaks, _junk_base64], ids=["qp-soft-breaks", "junk-base64"])
def test_ingest_of_a_50_mb_pathological_message_stays_under_150_mb(tmp_path: Path, files: Path, build) -> None:
    raw = build()
    eml = files / f"{build.__name__}.eml"
    eml.write_bytes(raw)
    sha = sha256_hex(raw)
    del raw
    config = _config(tmp_path)

    result, peak = _measured(config, "ingest", "--account", "pipe", stdin=eml)

    _assert_bounded(result, peak)
    assert "stored as new ticket #1" in result.stdout, result.stdout
    with connect(tmp_path) as conn:
        assert raw_sha(conn, sha) == sha, "the stored raw differs from the original"
        [(subject, body)] = conn.execute("select subject, body_text from messages").fetchall()
    if build is _qp_soft_breaks:
        assert subject == "soft line breaks" and body.strip() == "Hello, the end."
    else:
        assert subject == "junk base64" and body.strip() == "See the file."
    assert not list((tmp_path / "files" / "tmp").glob("*")), "temp files left behind"


def test_a_small_message_of_millions_of_short_lines_is_parsed_in_bounded_memory_too(tmp_path: Path) -> None:
    """Under the 8 MB of the large-message path, but 2.6 million soft line breaks: the email
    package alone spent about 240 MiB on its lines. Parsed from a file like a large message."""
    raw = (
        _head(b"short lines", b"big-local-lines")
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Hello,=\r\n" + b"=\r\n" * (2_600_000) + b" the end.\r\n"
    )
    assert len(raw) < 8 * MiB
    eml = tmp_path / "lines.eml"
    eml.write_bytes(raw)
    config = _config(tmp_path)

    result, peak = _measured(config, "ingest", "--account", "pipe", stdin=eml)

    _assert_bounded(result, peak)
    with connect(tmp_path) as conn:
        assert raw_sha(conn, sha256_hex(raw)) == sha256_hex(raw)
        [(subject, body)] = conn.execute("select subject, body_text from messages").fetchall()
    assert subject == "short lines" and body.strip() == "Hello, the end."
    assert not list((tmp_path / "files" / "tmp").glob("*")), "temp files left behind"


def test_ingest_of_a_50_mb_attachment_stores_it_byte_for_byte(tmp_path: Path, attachment_eml: dict) -> None:
    config = _config(tmp_path)

    result, peak = _measured(config, "ingest", "--account", "pipe", stdin=attachment_eml["path"])

    _assert_bounded(result, peak)
    _check_stored(tmp_path, attachment_eml)


# ------------------------------------------------------------------------- the other paths


def test_a_maildir_poll_of_a_50_mb_attachment_is_bounded_and_byte_for_byte(
    tmp_path: Path, attachment_eml: dict
) -> None:
    config = _config(tmp_path)
    (tmp_path / "Maildir" / "new" / "1764583200.big.host").write_bytes(attachment_eml["path"].read_bytes())

    result, peak = _measured(config, "poll", "local")

    _assert_bounded(result, peak)
    assert "local: 1 imported" in result.stdout, result.stdout
    _check_stored(tmp_path, attachment_eml)
    assert [p.name for p in (tmp_path / "Maildir" / "cur").iterdir()] == ["1764583200.big.host:2,S"]


def test_quarantine_retry_of_a_50_mb_message_is_bounded_and_byte_for_byte(
    tmp_path: Path, attachment_eml: dict
) -> None:
    small = _config(tmp_path, max_message_size="1MB")
    kept, _ = _measured(small, "ingest", "--account", "pipe", stdin=attachment_eml["path"])
    assert kept.returncode == 0 and "quarantine as #1" in kept.stderr, kept.stderr
    assert "over the size limit" in kept.stderr
    with connect(tmp_path) as conn:
        assert raw_sha(conn, attachment_eml["sha"]) == attachment_eml["sha"], "the quarantine keeps the raw"
    config = _config(tmp_path)  # the limit raised

    result, peak = _measured(config, "quarantine", "retry", "1")

    _assert_bounded(result, peak)
    assert "#1: imported as message 1" in result.stdout, result.stdout
    _check_stored(tmp_path, attachment_eml)


def test_reparse_of_a_50_mb_message_is_bounded_and_restores_the_attachment(
    tmp_path: Path, attachment_eml: dict
) -> None:
    config = _config(tmp_path)
    stored = subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "ingest", "--account", "pipe"],
        stdin=open(attachment_eml["path"], "rb"), capture_output=True, text=True, timeout=300,
    )
    assert stored.returncode == 0, stored.stderr
    # As if an older parser had missed the attachment: reparse must find it and write it again.
    with connect(tmp_path) as conn:
        [rel] = conn.execute("select path from attachments").fetchone()
        conn.execute("delete from attachments")
    (tmp_path / "files" / rel).unlink()

    dry, dry_peak = _measured(config, "reparse", "--all", "--dry-run")
    _assert_bounded(dry, dry_peak)
    assert "1 would change" in dry.stdout, dry.stdout
    assert not (tmp_path / "files" / rel).exists(), "a dry run wrote the attachment"

    result, peak = _measured(config, "reparse", "--all")

    _assert_bounded(result, peak)
    assert "1 changed" in result.stdout, result.stdout
    _check_stored(tmp_path, attachment_eml)
    again, _ = _measured(config, "reparse", "--all")
    assert again.returncode == 0 and "0 changed" in again.stdout, again.stdout


def test_quarantine_retry_fetches_a_large_message_left_on_the_server_in_pieces(
    dovecot, imap_user, account_config, tmp_path: Path
) -> None:
    """Over max_message_size, a message stays on the server (quarantined, not downloaded); once
    the limit is raised, 'quarantine retry' fetches it as poll fetches a large one: in pieces into
    a temp file, stored with blob I/O, parsed from the file; flagged only once stored."""
    from mail2ticket.accounts.secrets import store_password

    data = random.Random(16).randbytes(10 * MiB)
    raw = (
        _head(b"the server copy", b"big-local-server")
        + b'Content-Type: multipart/mixed; boundary="==s=="\r\n\r\n'
        b"--==s==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLeft on the server.\r\n\r\n"
        b'--==s==\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="s.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data).replace(b"\n", b"\r\n")
        + b"\r\n--==s==--\r\n"
    )
    dovecot.append(imap_user, raw)
    store_password(imap_user.name, imap_user.password)
    config = tmp_path / "config.toml"

    def write(limit: str) -> None:
        config.write_text(tomli_w.dumps({
            "storage": engine_storage(tmp_path, {"database": str(tmp_path / "m2t.db"),
                                                 "attachments": str(tmp_path / "files")}),
            "limits": {"max_attachment_size": "60MB"},
            "performance": {"workers": 2},
            "accounts": [account_config(imap_user, max_message_size=limit, timeout=60)],
        }))

    write("1MB")
    left, _ = _measured(config, "poll")
    assert left.returncode == 0 and "1 quarantined" in left.stdout, left.stdout + left.stderr
    assert "\\Seen" not in dovecot.flags(imap_user)[1]
    write("100MB")

    result, peak = _measured(config, "quarantine", "retry", "1")

    _assert_bounded(result, peak)
    assert "#1: imported as message 1" in result.stdout, result.stdout
    with connect(tmp_path) as conn:
        assert raw_sha(conn, sha256_hex(raw)) == sha256_hex(raw), "the stored raw differs from the server's copy"
        [(size, sha, rel)] = conn.execute("select size, sha256, path from attachments").fetchall()
    assert (size, sha) == (len(data), sha256_hex(data)) and (tmp_path / "files" / rel).read_bytes() == data
    assert "\\Seen" in dovecot.flags(imap_user)[1], "flagged once stored"
    assert not list((tmp_path / "files" / "tmp").glob("*")), "temp files left behind"
