"""Exactly-once import, proved by SIGKILL: kill `mail2ticket poll` at random moments, then count.

The mailbox in the real Dovecot holds at least 500 mixed messages (plain text, HTML, attachments of
a few sizes, non-UTF-8 charsets, byte-identical copies, messages a parser may choke on). `poll`
runs as a real subprocess and is killed with SIGKILL after a random delay, again and again; after
every kill no message may be flagged on the server without a durable row. A final clean poll must
then leave every message on the server in the database exactly once, byte for byte.

MAIL2TICKET_KILLS sets the number of kills (default 25, for CI); MAIL2TICKET_SEED replays a run.
When the mailbox is all imported before the kills are used up, new mail "arrives" (more messages
are appended), so every kill can still land in the middle of an import.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.helpers import command, connect, has_database, sha256_hex, write_config
from tests.parallel import HEAVY
from tests.servers import Dovecot, User

KILLS = int(os.environ.get("MAIL2TICKET_KILLS", "25"))
SEED = int(os.environ.get("MAIL2TICKET_SEED", str(random.randrange(1 << 30))))
FIRST_MAILBOX = 500
MORE_MAIL = 80  # appended whenever everything has been imported and kills remain


# ----------------------------------------------------------------------------- the mailbox


CHARSETS = [
    ("iso-8859-1", "Größe der Bestellung: café, naïve, façade"),
    ("windows-1252", "“Smart quotes” – and a euro sign €"),
    ("koi8-r", "Привет, принтер снова не работает"),
    ("shift_jis", "プリンターが壊れました"),
    ("iso-2022-jp", "請求書について"),
    ("gb2312", "打印机坏了"),
    ("iso-8859-7", "Καλημέρα, ο εκτυπωτής"),
]


def _attachment(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _mixed_message(rng: random.Random, n: int) -> bytes:
    """Message number *n* of the mailbox: one of several shapes, chosen by the seeded rng."""
    kind = rng.choices(
        ["text", "html", "alternative", "attach", "charset", "eightbit", "poison"],
        weights=[30, 10, 10, 25, 12, 8, 5],
    )[0]
    sender = f"user{rng.randrange(60)}@customer{rng.randrange(5)}.example"
    if kind == "eightbit":
        # Raw 8-bit headers and body with a charset label that is wrong or missing.
        label = rng.choice([b"", b"; charset=unknown-8bit", b"; charset=utf-8"])
        return (
            b"From: =?iso-8859-1?q?J=FCrgen?= <" + sender.encode() + b">\r\n"
            b"To: support@example.test\r\n"
            b"Subject: Rechnung \xfcber \xe4\xf6 " + str(n).encode() + b"\r\n"
            b"Message-ID: <eightbit-" + str(n).encode() + b"@example.test>\r\n"
            b"Content-Type: text/plain" + label + b"\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            b"Gr\xfc\xdfe, die Rechnung " + str(n).encode() + b" ist falsch.\r\n"
        )
    if kind == "poison":
        return _poison(rng, n, sender)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Request {n}: {rng.choice(['printer', 'VPN', 'invoice', 'login'])}"
    msg["Message-ID"] = f"<req-{n}-{rng.randrange(1 << 30)}@customer.example>"
    msg["Date"] = f"Tue, 03 Mar 2026 10:{n % 60:02d}:00 +0100"
    text = f"Hello, this is request number {n}.\n" + "Some details. " * rng.randrange(1, 80)
    if kind == "text":
        msg.set_content(text)
    elif kind == "html":
        msg.set_content(
            f"<html><body><p>Request <b>{n}</b></p><p>{text}</p></body></html>", subtype="html"
        )
    elif kind == "alternative":
        msg.set_content(text)
        msg.add_alternative(f"<p>Request <i>{n}</i></p>", subtype="html")
    elif kind == "charset":
        charset, words = rng.choice(CHARSETS)
        msg.replace_header("Subject", f"{words[:12]} {n}")
        msg.set_content(
            f"{words}\n{text}",
            charset=charset,
            cte=rng.choice(["8bit", "base64", "quoted-printable"]),
        )
    else:  # attach: a few sizes, from a tiny text file to a 1.5 MB binary
        msg.set_content(text)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            size = rng.choice([200, 3_000, 40_000, 40_000, 300_000, 1_500_000])
            ext, ctype = rng.choice(
                [
                    ("pdf", "application/pdf"),
                    ("png", "image/png"),
                    ("bin", "application/octet-stream"),
                ]
            )
            maintype, subtype = ctype.split("/")
            msg.add_attachment(
                _attachment(rng, size),
                maintype=maintype,
                subtype=subtype,
                filename=f"file-{n}.{ext}",
            )
    return bytes(msg)


def _poison(rng: random.Random, n: int, sender: str) -> bytes:
    """Messages that parsers choke on: each must still end up stored once (ticket or quarantine)."""
    shape = rng.randrange(5)
    head = f"From: {sender}\r\nSubject: odd {n}\r\nMessage-ID: <odd-{n}@example.test>\r\n".encode()
    if shape == 0:  # 1,200 nested multiparts
        depth = 1200
        body = b"".join(
            b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
            for i in range(depth)
        )
        return (
            head
            + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
            + body
            + b"--b%d--\r\n" % depth
        )
    if shape == 1:  # no header at all, just bytes
        return (
            b"this is not a mail at all "
            + str(n).encode()
            + b"\r\n"
            + bytes(rng.randrange(1, 255) for _ in range(200))
        )
    if shape == 2:  # broken base64 and a boundary that never closes
        return head + (
            b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: application/pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64 at all===\r\n--XX\r\n"
        )
    if shape == 3:  # garbage charset, encoded words that decode to CR/LF, a bare-LF body
        return head.replace(b"\r\n", b"\n") + (
            b'Content-Type: text/plain; charset="utf-8 euao6y69zh2w"\n'
            b"X-Odd: =?UTF-8?Q?=0A?=\n\nbody\xff\xfe with junk\n"
        )
    # a huge single header line
    return head + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\nbody\r\n"


def build_mailbox(rng: random.Random, start: int, count: int) -> list[bytes]:
    messages = [_mixed_message(rng, n) for n in range(start, start + count)]
    # A few byte-identical copies (a mail delivered twice): one ticket entry, two ledger rows.
    for i in rng.sample(range(1, count), k=min(3, count - 1)):
        messages[i] = messages[i - 1]
    return messages


# ----------------------------------------------------------------------------- the database


def _write_config(tmp_path: Path, account: dict) -> Path:
    """A config whose database and attachments live in tmp_path/data (created by the first poll)."""
    data = tmp_path / "data"
    return write_config(tmp_path, account, storage={"database": str(data / "m2t.db"), "attachments": str(data / "files")})


def check_nothing_flagged_without_a_durable_row(dovecot: Dovecot, user: User, root: Path) -> int:
    """After a kill: every \\Seen message on the server has a row in the committed ledger."""
    uidvalidity = dovecot.uidvalidity(user)
    seen = {uid for uid, flags in dovecot.flags(user).items() if "\\Seen" in flags}
    if not has_database(root):
        assert not seen, f"{len(seen)} messages flagged \\Seen and no database at all"
        return 0
    with connect(root, by_name=True) as conn:
        stored = {
            row["uid"]
            for row in conn.execute(
                "select uid from sources where account = ? and folder = 'INBOX' and uidvalidity = ?",
                [user.name, uidvalidity],
            )
        }
    flagged_unstored = sorted(seen - stored)
    assert not flagged_unstored, (
        f"flagged \\Seen on the server but not stored: UIDs {flagged_unstored[:20]}"
    )
    return len(stored)


def audit(dovecot: Dovecot, user: User, root: Path, attachments: Path) -> dict[str, int]:
    """Compare the server with the database of ``root``'s config: returns the figures (lost,
    duplicated, ...)."""
    with connect(root, by_name=True) as conn:
        return _audit(conn, dovecot, user, attachments)


def _audit(conn, dovecot: Dovecot, user: User, attachments: Path) -> dict[str, int]:
    server = dovecot.fetch_raw(user)
    uidvalidity = dovecot.uidvalidity(user)
    flags = dovecot.flags(user)
    sources = {}
    for row in conn.execute(
        "select * from sources where account = ? and folder = 'INBOX' and uidvalidity = ?",
        [user.name, uidvalidity],
    ):
        assert row["uid"] not in sources, f"UID {row['uid']} has two ledger rows"
        sources[row["uid"]] = row
    lost, problems = [], []
    for uid, raw in server.items():
        digest = sha256_hex(raw)
        src = sources.get(uid)
        if src is None:
            lost.append(uid)
            continue
        if src["raw_sha256"] != digest:
            problems.append(f"UID {uid}: ledger hash {src['raw_sha256']} != server {digest}")
        stored = conn.execute(
            "select raw, size from raw_messages where sha256 = ?", [digest]
        ).fetchone()
        if stored is None or sha256_hex(stored["raw"]) != digest or stored["size"] != len(raw):
            problems.append(f"UID {uid}: raw bytes not stored byte-identical")
        if src["message"] is not None:
            m = conn.execute(
                "select raw_sha256 from messages where id = ?", [src["message"]]
            ).fetchone()
            if m is None or m["raw_sha256"] != digest:
                problems.append(
                    f"UID {uid}: ledger points at message {src['message']} of other bytes"
                )
        elif src["quarantine"] is not None:
            q = conn.execute(
                "select raw_sha256 from quarantine where id = ?", [src["quarantine"]]
            ).fetchone()
            if q is None or q["raw_sha256"] != digest:
                problems.append(
                    f"UID {uid}: ledger points at quarantine {src['quarantine']} of other bytes"
                )
        else:
            problems.append(
                f"UID {uid}: in the ledger but neither a message nor a quarantine entry"
            )
        if "\\Seen" not in flags.get(uid, frozenset()):
            problems.append(f"UID {uid}: stored but not flagged \\Seen after the clean poll")
        if src["action_state"] != "done":
            problems.append(f"UID {uid}: server action still {src['action_state']}")
    extra = sorted(set(sources) - set(server))
    problems += [f"UID {uid}: in the ledger but not on the server" for uid in extra]
    # Exactly one ticket entry per distinct content, and no entry from nowhere.
    dup_messages = conn.execute(
        "select coalesce(sum(n - 1), 0) from (select count(*) as n from messages "
        "where direction = 'in' group by raw_sha256 having count(*) > 1) as twice"
    ).fetchone()[0]
    dup_quarantine = conn.execute(
        "select coalesce(sum(n - 1), 0) from (select count(*) as n from quarantine "
        "where raw_sha256 is not null group by raw_sha256 having count(*) > 1) as twice"
    ).fetchone()[0]
    hashes = {sha256_hex(raw) for raw in server.values()}
    in_db = {r[0] for r in conn.execute("select raw_sha256 from messages where direction = 'in'")}
    in_q = {
        r[0] for r in conn.execute("select raw_sha256 from quarantine where resolved_at is null")
    }
    problems += [f"message of unknown bytes {h}" for h in in_db - hashes]
    unaccounted = hashes - in_db - in_q
    problems += [f"content {h} is neither a message nor in quarantine" for h in unaccounted]
    empty_tickets = conn.execute(
        "select count(*) from tickets t where not exists (select 1 from messages m where m.ticket_id = t.id)"
    ).fetchone()[0]
    if empty_tickets:
        problems.append(f"{empty_tickets} tickets without a message")
    bad_files = []
    for att in conn.execute("select sha256, size, path from attachments"):
        path = attachments / att["path"]
        if not path.is_file():
            bad_files.append(f"missing attachment file {path}")
            continue
        data = path.read_bytes()
        if sha256_hex(data) != att["sha256"] or len(data) != att["size"]:
            bad_files.append(f"attachment file {path} does not match its recorded hash")
    problems += bad_files
    integrity = "ok" if getattr(conn, "engine", None) == "postgresql" else \
        conn.execute("pragma integrity_check").fetchone()[0]
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    figures = {
        "messages": len(server),
        "distinct": len(hashes),
        "lost": len(lost),
        "duplicated": dup_messages + dup_quarantine,
        "quarantined": len(in_q & hashes),
        "attachments": conn.execute("select count(*) from attachments").fetchone()[0],
    }
    assert not lost, f"lost (on the server, not in the database): UIDs {lost[:20]}"
    assert not problems, "\n".join(problems[:30])
    return figures


# ----------------------------------------------------------------------------- the test


def survivors(config: Path, timeout: float = 3.0) -> list[str]:
    """Processes still running with *config* on their command line (helpers of a killed poll)."""
    deadline = time.monotonic() + timeout
    marker = str(config).encode()
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                args = cmdline.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {args}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.xdist_group(HEAVY)  # never beside the other SIGKILL loop: it counts kills mid-import
def test_sigkill_at_random_moments_loses_nothing_and_imports_nothing_twice(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    print(f"\nseed {SEED} (MAIL2TICKET_SEED={SEED} replays this run), kills {KILLS}")
    config = _write_config(tmp_path, account_config(imap_user, batch_size=20, timeout=20))
    store_password(imap_user.name, imap_user.password)
    files = tmp_path / "data" / "files"
    env = dict(os.environ)

    # How long a poll takes to reach the server and find nothing to do: kills before that are
    # cheap; the delays are drawn so most kills land in the import (fetch, files, commit, flags).
    started = time.monotonic()
    subprocess.run(command(config, "poll"), env=env, check=True, capture_output=True, timeout=60)
    startup = time.monotonic() - started

    mailbox = build_mailbox(rng, 0, FIRST_MAILBOX)
    dovecot.append_many(imap_user, mailbox)
    next_number = FIRST_MAILBOX

    kills = interrupted = pending_after_kill = temp_files_after_kill = finished_early = 0
    progressed = previous = 0
    patience = 0.0  # grows while kills land before the first commit (a slow or busy machine)
    log = tmp_path / "poll-stderr.log"
    while kills < KILLS:
        with log.open("ab") as err:
            proc = subprocess.Popen(
                command(config, "poll"), env=env, stdout=subprocess.DEVNULL, stderr=err
            )
        delay = startup * rng.uniform(0.5, 1.0) + patience + rng.expovariate(1 / 0.35)
        try:
            proc.wait(delay)
            finished_early += 1  # the poll finished before its kill: it was a short one
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            # A power cut takes every process with it; a kill of `poll` must too, or a helper
            # left running could go on changing the database or the server unseen.
            left = survivors(config)
            for line in left:  # do not leave them running after the test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
            assert not left, f"processes of the killed poll still run: {left}"
        assert proc.returncode in (0, -signal.SIGKILL), (
            f"poll failed with {proc.returncode}; see {log}"
        )
        stored = check_nothing_flagged_without_a_durable_row(dovecot, imap_user, tmp_path)
        if proc.returncode == -signal.SIGKILL:
            total = len(dovecot.uids(imap_user))
            interrupted += stored < total
            progressed += stored > previous
            patience = patience / 2 if stored > previous else patience + 0.15
            with connect(tmp_path) as conn:
                pending_after_kill += conn.execute(
                    "select count(*) > 0 from sources where action_state = 'pending'"
                ).fetchone()[0]
            temp_files_after_kill += (
                any((files / "tmp").glob("*")) if (files / "tmp").is_dir() else 0
            )
        previous = stored
        if stored >= len(dovecot.uids(imap_user)) and kills < KILLS:
            dovecot.append_many(
                imap_user, build_mailbox(rng, next_number, MORE_MAIL)
            )  # new mail arrives
            next_number += MORE_MAIL

    final = subprocess.run(command(config, "poll"), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    figures = audit(dovecot, imap_user, tmp_path, files)
    print(
        f"kills: {kills} (mid-import: {interrupted}, after a commit: {progressed}, leaving server actions pending: "
        f"{pending_after_kill}, leaving a temp attachment file: {temp_files_after_kill}; "
        f"polls that finished before their kill: {finished_early})\n"
        f"messages: {figures['messages']} ({figures['distinct']} distinct, "
        f"{figures['quarantined']} quarantined, {figures['attachments']} attachments), "
        f"lost: {figures['lost']}, duplicated: {figures['duplicated']}"
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    assert figures["messages"] >= FIRST_MAILBOX
    assert interrupted >= kills // 2, "most kills should land in the middle of an import"
