"""Large messages in bounded memory (issue 9): a 71 MB message with a 50 MB attachment.

A message over bigmessage.BIG_MESSAGE is fetched in pieces (BODY.PEEK[]<offset.length>) into a
temp file, stored into SQLite with incremental blob I/O and parsed from the file, its large
bodies decoded in chunks straight into the attachment store. Checked here as a user sees it:
`mail2ticket poll` in its own process against the real Dovecot, its peak RSS (and its parser
workers') read from the kernel (/proc/PID/status VmHWM); the stored attachment and raw bytes
compared with the originals; a connection cut mid-fetch and a SIGKILL mid-import lose nothing
and import nothing twice.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.parse import bigmessage
from mail2ticket.parse.message import ParseLimits, parse_message
from tests.helpers import (
    PEAK_LIMIT_KIB,
    MiB,
    command,
    connect,
    database_url,
    file_sha256,
    numbered_mail,
    open_store,
    process_tree,
    raw_sha,
    run_measured,
    sha256_hex,
    write_config,
)
from tests.servers import Dovecot, User

ATTACHMENT = 50 * MiB


@pytest.fixture(scope="module")
def big() -> dict:
    """A 71 MB message: a short text part and a 50 MB random attachment (base64, CRLF lines)."""
    data = random.Random(9).randbytes(ATTACHMENT)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    raw = (
        b"From: Big Customer <big@example.org>\r\nTo: support@example.test\r\n"
        b"Subject: the scans you asked for\r\nMessage-ID: <big-1@example.org>\r\n"
        b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="==b=="\r\n\r\n'
        b"--==b==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Please find the scans attached.\r\n\r\n"
        b"--==b==\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="scans.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"\r\n--==b==--\r\n"
    )
    return {"raw": raw, "sha": sha256_hex(raw), "attachment_sha": sha256_hex(data), "size": len(raw)}


def _small(n: int) -> bytes:
    return numbered_mail(n, b"small", b"<small-%d@example.org>" % n, text=b"hello %d" % n)


def _setup(tmp_path: Path, account: dict) -> Path:
    return write_config(tmp_path, account, limits={"max_message_size": "100MB", "max_attachment_size": "60MB"},
                        performance={"workers": 2})


def _measured_poll(config: Path) -> tuple[subprocess.CompletedProcess, dict[int, int], int]:
    """Run `mail2ticket poll`, sampling the peak RSS (VmHWM, KiB) of it and its children."""
    return run_measured(command(config, "poll"))


def _check_consistent(dovecot: Dovecot, user: User, db_path: Path) -> dict[int, str]:
    """No \\Seen without a committed ledger row; every stored raw is whole. Returns {uid: sha}."""
    if not db_path.exists() and database_url(db_path.parent) is None:
        ledger = {}
    else:
        with connect(db_path.parent) as conn:
            ledger = dict(conn.execute("select uid, raw_sha256 from sources").fetchall())
            for (sha,) in conn.execute("select sha256 from raw_messages").fetchall():
                assert raw_sha(conn, sha) == sha, "a partial raw message was stored"
            dup = conn.execute(
                "select count(*) from (select raw_sha256 from messages group by raw_sha256 having count(*) > 1) d"
            ).fetchone()[0]
            assert dup == 0, "a message was imported twice"
    seen = {uid for uid, flags in dovecot.flags(user).items() if "\\Seen" in flags}
    assert seen <= set(ledger), (
        f"flagged on the server but not stored: {sorted(seen - set(ledger))}"
    )
    return ledger


@pytest.fixture
def big_mailbox(dovecot: Dovecot, imap_user: User, big: dict) -> User:
    dovecot.append(imap_user, _small(1))
    dovecot.append(imap_user, big["raw"])
    dovecot.append(imap_user, _small(2))
    store_password(imap_user.name, imap_user.password)
    return imap_user


def _check_imported(dovecot: Dovecot, user: User, tmp_path: Path, big: dict) -> None:
    """Everything imported once; the big message's raw and attachment are byte-identical."""
    db_path = tmp_path / "m2t.db"
    ledger = _check_consistent(dovecot, user, db_path)
    assert len(ledger) == 3
    server = dovecot.fetch_raw(user)
    big_uid = next(uid for uid, raw in server.items() if len(raw) == big["size"])
    assert sha256_hex(server[big_uid]) == big["sha"] == ledger[big_uid]
    del server
    with connect(db_path.parent) as conn:
        assert raw_sha(conn, big["sha"]) == big["sha"], (
            "the stored raw differs from the server's copy"
        )
        assert conn.execute("select count(*) from messages").fetchone()[0] == 3
        assert conn.execute("select count(*) from quarantine").fetchone()[0] == 0
        rows = conn.execute(
            "select a.filename, a.size, a.sha256, a.path, m.body_text, m.subject from attachments a "
            "join messages m on m.id = a.message"
        ).fetchall()
        states = {row[0] for row in conn.execute("select action_state from sources")}
    assert len(rows) == 1
    filename, size, sha, rel, body, subject = rows[0]
    assert (filename, size, sha) == ("scans.bin", ATTACHMENT, big["attachment_sha"])
    assert file_sha256(tmp_path / "files" / rel) == big["attachment_sha"], "the stored attachment file differs"
    assert (
        body.strip() == "Please find the scans attached." and subject == "the scans you asked for"
    )
    assert states == {"done"}
    assert all("\\Seen" in flags for flags in dovecot.flags(user).values())
    assert not list((tmp_path / "files" / "tmp").glob("*")), "temp files left behind"


def test_a_50_mb_attachment_is_imported_in_bounded_memory_byte_for_byte(
    dovecot: Dovecot, big_mailbox: User, account_config, tmp_path: Path, big: dict
) -> None:
    config = _setup(tmp_path, account_config(big_mailbox, timeout=60))

    result, hwm, main = _measured_poll(config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{big_mailbox.name}: 3 imported" in result.stdout, result.stdout
    workers = {p: v for p, v in hwm.items() if p != main}
    print(
        f"\npeak RSS: main {hwm[main] / 1024:.0f} MiB, workers "
        f"{', '.join(f'{v / 1024:.0f} MiB' for v in workers.values()) or 'none'}"
    )
    assert workers, "the message was parsed by a worker process"
    assert hwm[main] < PEAK_LIMIT_KIB, f"main process peaked at {hwm[main] / 1024:.0f} MiB"
    assert max(workers.values()) < PEAK_LIMIT_KIB, (
        f"a parser worker peaked at {max(workers.values()) / 1024:.0f} MiB"
    )
    _check_imported(dovecot, big_mailbox, tmp_path, big)


def test_a_connection_cut_mid_partial_fetch_stores_nothing_and_the_next_poll_completes(
    dovecot: Dovecot, big_mailbox: User, account_config, tcp_relay, tmp_path: Path, big: dict
) -> None:
    relay = tcp_relay(dovecot.host, dovecot.imaps_port)
    config = _setup(
        tmp_path, account_config(big_mailbox, imap_port=relay.port, timeout=20, batch_size=1)
    )
    relay.cut_once_at(30 * MiB)  # in the middle of the big message's pieces

    cut = subprocess.run(command(config, "poll"), capture_output=True, text=True, timeout=300)

    assert relay.cuts == 1
    assert cut.returncode == 6 and "Traceback" not in cut.stderr, cut.stderr  # a network failure (README: exit codes)
    assert "was lost" in cut.stderr, cut.stderr
    ledger = _check_consistent(dovecot, big_mailbox, tmp_path / "m2t.db")
    assert big["sha"] not in ledger.values(), "the cut message was recorded"
    assert len(ledger) == 1, "only the batch before the cut is stored"
    with connect(tmp_path) as conn:
        assert (
            conn.execute(
                "select count(*) from raw_messages where sha256 = ?", [big["sha"]]
            ).fetchone()[0]
            == 0
        )
    assert not list((tmp_path / "files" / "tmp").glob("*")), "the partial temp file was left behind"

    done = subprocess.run(command(config, "poll"), capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 imported" in done.stdout
    _check_imported(dovecot, big_mailbox, tmp_path, big)


def _survivors(config: Path) -> list[int]:
    marker = str(config).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


def _kill_when(config: Path, ready, what: str, timeout: float = 120) -> None:
    """Start `poll`, SIGKILL it as soon as ``ready()`` is true; check that nothing of it survives."""
    proc = subprocess.Popen(command(config, "poll"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, (
            f"the poll ended before {what}: {proc.stderr.read().decode()[-2000:]}"
        )
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.005)
    tree = process_tree(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while (left := _survivors(config)) and time.monotonic() < deadline:
        time.sleep(0.05)
    while any(Path(f"/proc/{p}").exists() for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)  # dying (no command line any more) but not gone yet
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed poll still run: {left}"


def test_sigkill_mid_import_then_a_fresh_poll_imports_it_exactly_once(
    dovecot: Dovecot, big_mailbox: User, account_config, tmp_path: Path, big: dict
) -> None:
    config = _setup(tmp_path, account_config(big_mailbox, timeout=60))
    tmp = tmp_path / "files" / "tmp"
    db_path = tmp_path / "m2t.db"

    def fetching() -> bool:  # the big message's temp file is half written
        return (
            any(
                p.name.startswith("raw-") and p.stat().st_size > 30 * MiB
                for p in list(tmp.glob("raw-*"))
                if p.exists()
            )
            if tmp.is_dir()
            else False
        )

    def decoding() -> bool:  # the worker is writing the attachment into the store
        return any(True for _ in tmp.glob("stream-*")) if tmp.is_dir() else False

    _kill_when(config, fetching, "the partial fetch")
    ledger = _check_consistent(dovecot, big_mailbox, db_path)
    assert big["sha"] not in ledger.values()

    _kill_when(config, decoding, "the attachment's decoding")
    ledger = _check_consistent(dovecot, big_mailbox, db_path)
    assert big["sha"] not in ledger.values()

    final = subprocess.run(command(config, "poll"), capture_output=True, text=True, timeout=300)

    assert final.returncode == 0, final.stdout + final.stderr
    _check_imported(dovecot, big_mailbox, tmp_path, big)


# ------------------------------------------------------------------ the parser, without a server


def _message(*parts: tuple[bytes, bytes]) -> bytes:
    body = b"".join(
        b"--XyZ\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts
    )
    return (
        b"From: a@example.org\r\nTo: b@example.test\r\nSubject: parts\r\nMessage-ID: <p@x>\r\n"
        b'Content-Type: multipart/mixed; boundary="XyZ"\r\n\r\n' + body + b"--XyZ--\r\n"
    )


LIMITS = ParseLimits(max_message_bytes=200 * MiB, max_attachment_bytes=200 * MiB)


def _parse_file(tmp_path: Path, raw: bytes, limits: ParseLimits = LIMITS):
    path = tmp_path / "message.eml"
    path.write_bytes(raw)
    store = AttachmentStore(tmp_path / "files")
    return bigmessage.parse_file(
        lambda b: parse_message(b, limits=limits), store, str(path), limits
    )


def test_the_file_parser_gives_what_parse_message_gives(tmp_path: Path) -> None:
    rng = random.Random(3)
    binary = rng.randbytes(3 * MiB)
    text = ("une ligne de texte accentuée\n" * 80_000).encode("latin-1")
    import binascii

    raw = _message(
        (b"Content-Type: text/plain; charset=utf-8", b"Hello, the files."),
        (
            b'Content-Type: application/pdf; name="a.pdf"\r\nContent-Transfer-Encoding: base64',
            base64.encodebytes(binary).replace(b"\n", b"\r\n").rstrip(),
        ),
        (
            b'Content-Type: text/csv; charset=latin-1\r\nContent-Disposition: attachment; filename="t.csv"\r\n'
            b"Content-Transfer-Encoding: quoted-printable",
            binascii.b2a_qp(text),
        ),
        (
            b'Content-Type: application/octet-stream; name="small.bin"\r\nContent-Transfer-Encoding: base64',
            base64.b64encode(b"tiny"),
        ),
    )
    answer = _parse_file(tmp_path, raw)
    reference = parse_message(raw, limits=LIMITS)

    assert answer.error is None, answer
    parsed = answer.parsed
    assert parsed.body_text == reference.body_text and parsed.subject == reference.subject
    assert parsed.defects == reference.defects
    assert [(a.filename, a.content_type, a.size, a.sha256) for a in parsed.attachments] == [
        (a.filename, a.content_type, a.size, a.sha256) for a in reference.attachments
    ]
    for att, ref in zip(parsed.attachments, reference.attachments, strict=True):
        assert att.path.read_bytes() == ref.data


def test_a_huge_text_body_is_shown_cut_with_a_defect(tmp_path: Path) -> None:
    text = "Grüße, eine Zeile\n" * 300_000
    raw = _message(
        (
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64",
            base64.encodebytes(text.encode()).rstrip(),
        )
    )

    answer = _parse_file(tmp_path, raw)

    assert answer.error is None, answer
    parsed = answer.parsed
    assert text.startswith(parsed.body_text) and 0.9 * MiB < len(parsed.body_text.encode()) <= MiB
    assert any("too long to show" in d for d in parsed.defects)


def test_what_the_file_parser_cannot_reduce_is_an_error_not_a_crash(
    tmp_path: Path, monkeypatch
) -> None:
    inner = (
        b"From: x@example.org\r\nSubject: inner\r\n\r\n"
        + b"line of a forwarded message\r\n" * 100_000
    )
    raw = _message((b"Content-Type: message/rfc822", inner))
    monkeypatch.setattr(bigmessage, "SKELETON_MAX", 1 * MiB)

    answer = _parse_file(tmp_path, raw)

    assert answer.parsed is None and "cannot be streamed" in answer.error
    limited = _parse_file(
        tmp_path,
        _message(
            (
                b'Content-Type: application/zip; name="z.zip"\r\nContent-Transfer-Encoding: base64',
                base64.encodebytes(os.urandom(2 * MiB)),
            )
        ),
        ParseLimits(max_message_bytes=200 * MiB, max_attachment_bytes=MiB),
    )
    assert limited.parsed is None and "max_attachment_bytes" in limited.error
    assert not list((tmp_path / "files" / "tmp").glob("*"))


def test_an_unparseable_large_message_is_quarantined_with_its_raw_bytes(
    tmp_path: Path, monkeypatch
) -> None:
    from mail2ticket.files.spool import Spool
    from mail2ticket.intake.importer import ImportContext, Incoming, Source, import_batch

    inner = (
        b"From: x@example.org\r\nSubject: inner\r\n\r\n"
        + b"line of a forwarded message\r\n" * 100_000
    )
    raw = _message((b"Content-Type: message/rfc822", inner))
    monkeypatch.setattr(bigmessage, "SKELETON_MAX", 1 * MiB)
    path = tmp_path / "spool.tmp"
    path.write_bytes(raw)
    db = open_store(tmp_path)
    ctx = ImportContext(db=db, attachments=AttachmentStore(tmp_path / "files"))
    item = Incoming(
        "acct",
        None,
        Source("acct", "INBOX", 1, 7),
        action="seen",
        spool=Spool(str(path), len(raw), sha256_hex(raw)),
        size=len(raw),
    )

    [outcome] = import_batch(ctx, [item])

    assert outcome.status == "quarantined" and outcome.flag_on_server
    stored = db.execute("select raw from raw_messages where sha256 = ?", [sha256_hex(raw)]).fetchone()[0]
    assert stored == raw
    assert db.execute("select size, reason from quarantine").fetchone() == (len(raw), "unparseable")
