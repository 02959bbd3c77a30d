"""Hostile and pathological mail through the real import (RELIABILITY items 23-25, 33, 34 and
figures 6 and 10).

Mail is put in the real Dovecot and imported by ``python -m mail2ticket poll`` running as its own
process in a working directory of its own, so a name like ``../../x`` would land somewhere the
audit sees. The audit lists every path under the test's directory before and after.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import tomli_w

from mail2ticket.accounts.secrets import store_password
from tests.helpers import database_url, engine_storage, rows

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ hostile names


def hostile_names(outside: Path) -> list[str]:
    """File names an attacker would try: traversal, absolute, Windows devices, controls, RTL..."""
    names = [
        "../../x", "../../../../../../etc/passwd", "..\\..\\x.txt", "/etc/passwd", "/tmp/m2t-pwned",
        f"{outside}/abs-pwned", f"{outside}/../outside-sibling", "C:\\x", "C:\\Windows\\evil.dll",
        "\\\\server\\share\\x", "con.txt", "CON", "nul", "aux.c", "COM1", "LPT1.txt", "prn.",
        "a\x00b.txt", "\x00", "evil\u202egpj.exe", "x" * 300, "\u00e9" * 200 + ".pdf", ".", "..",
        "...", " ", ".htaccess", "~/.bashrc", "$HOME/x", "file:///etc/passwd", "a/b/c.txt",
        "a\\b\\c.txt", "%2e%2e%2fx", "name\ttab", "x\r\nContent-Type: text/html", "trailing.dot.",
        "trailing space ", "-rf", "*", "?", "|cmd", ">out", "<in", "`id`", "$(id)", "x;rm -rf ~",
        "\u2215fake-slash", "\uff0e\uff0e\uff0fx", "..\u2215..\u2215x", "\u0000../x", "emoji\U0001F600.txt",
        "\x1b[31mred.txt", "line\nbreak.txt", "/", "//", "./", "../", "attachments/../../x",
        "tmp/../../x", "ab/cd/evil",
    ]
    return names


def rfc2231(name: str) -> str:
    return "filename*=utf-8''" + urllib.parse.quote(name.encode("utf-8", "surrogatepass"), safe="")


def quoted(name: str) -> str:
    return 'filename="' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def message_with_parts(n: int, parts: list[tuple[str, str]]) -> bytes:
    """A message whose attachments carry the given (Content-Disposition params, Content-ID)."""
    lines = [
        "From: Mallory <mallory@evil.test>", "To: support@example.test", f"Subject: hostile names {n}",
        f"Message-ID: <hostile-{n}@evil.test>", "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="B"', "", "--B", "Content-Type: text/plain", "",
        "See the files.",
    ]
    for i, (params, cid) in enumerate(parts):
        lines += [
            "--B", f"Content-Type: application/octet-stream; name=\"part{i}\"",
            f"Content-Disposition: attachment; {params}", f"Content-ID: {cid}", "", f"content {n}.{i}",
        ]
    lines.append("--B--")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


class Desk:
    """A config whose storage, working directory and keyring all live under ``root``."""

    def __init__(self, root: Path, dovecot, user, account_config, **account) -> None:
        self.root, self.dovecot, self.user = root, dovecot, user
        self.cwd = root / "cwd"
        self.cwd.mkdir(parents=True)
        self.config = root / "etc" / "config.toml"
        self.config.parent.mkdir()
        acc = account_config(user, added_at="2000-01-01T00:00:00Z", acknowledge=False, **account)
        storage = engine_storage(self.config.parent, {"database": "../var/m2t.db", "attachments": "../var/att"})
        self.config.write_text(tomli_w.dumps({"storage": storage, "accounts": [acc]}))
        store_password(acc["name"], user.password)
        self.attachments = root / "var" / "att"

    def poll(self, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mail2ticket", "--config", str(self.config), "poll"],
            cwd=self.cwd, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def rows(self, sql: str) -> list[tuple]:
        return rows(self.config.parent, sql)


def test_a_hundred_hostile_file_names_and_content_ids_create_no_file_outside_the_attachment_root(
    tmp_path, dovecot, imap_user, account_config
):
    outside = tmp_path / "outside"
    names = hostile_names(outside)
    parts = [(quoted(name), f"<{name}>") for name in names if "\r" not in name and "\n" not in name]
    parts += [(rfc2231(name), f"<../../cid-{i}@evil.test>") for i, name in enumerate(names)]
    assert len(parts) >= 100
    desk = Desk(tmp_path / "desk", dovecot, imap_user, account_config)
    per_message = 30
    batches = [parts[i : i + per_message] for i in range(0, len(parts), per_message)]
    dovecot.append_many(imap_user, [message_with_parts(n, b) for n, b in enumerate(batches)])
    before = tree(tmp_path)

    result = desk.poll()

    assert result.returncode == 0, result.stderr
    created = tree(tmp_path) - before
    storage = ("desk/var/att", "desk/var/m2t.db")
    # On PostgreSQL there is no database file to put the poll's lock beside: it is in the data directory.
    lock = r"xdg-data/mail2ticket(/[^/]*\.lock)?" if database_url(desk.config.parent) else r"(?!)"
    escaped = sorted(p for p in created if not p.startswith(storage) and p != "desk/var" and not re.fullmatch(lock, p))
    print(f"hostile names: {len(parts)} attachments, {len(created)} new paths, {len(escaped)} outside")
    assert escaped == []
    assert not outside.exists() and not Path("/tmp/m2t-pwned").exists()
    assert tree(desk.cwd) == set()  # nothing relative to the working directory either
    rows = desk.rows("select filename, path, sha256, content_id from attachments")
    assert len(rows) == len(parts)  # every part kept, none dropped for its name
    for filename, path, sha256, _cid in rows:
        stored = (desk.attachments / path).resolve()
        assert stored.is_relative_to(desk.attachments.resolve()) and stored.name == sha256
        assert "/" not in filename and "\\" not in filename and "\x00" not in filename
        assert filename not in (".", "..", "") and not filename.startswith(".")
        assert "\u202e" not in filename and len(filename.encode()) <= 255
    tickets = desk.rows("select count(*) from tickets")[0][0]
    assert tickets == len(batches)


# --------------------------------------------------------------------------- pathological mail


def nested(depth: int) -> bytes:
    head = b"From: a@customer.test\r\nTo: support@example.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
    body = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)
    )
    body += b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    body += b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return head + body


def many_parts(count: int) -> bytes:
    head = (
        b"From: a@customer.test\r\nTo: support@example.test\r\nSubject: many parts\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n'
    )
    return head + b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" * count + b"--p--\r\n"


def huge_address_list(count: int) -> bytes:
    to = ", ".join(f'"=?utf-8?q?N=C3=A4me_{i}?=" <user{i}@customer.test>' for i in range(count))
    return (
        f"From: a@customer.test\r\nTo: {to}\r\nSubject: "
        + " ".join(f"=?utf-8?b?w6TDtsO8?= {i}" for i in range(count // 4))
        + "\r\n\r\nbody\r\n"
    ).encode()


def link_bomb(links: int) -> bytes:
    html = "<html><body>" + "".join(
        f'<a href="https://x.test/{i}">&amp;&amp;&lt;{i}&gt;</a><img src="https://tracker.test/{i}.gif">'
        for i in range(links)
    ) + "&" * 10000 + "<b>" * 5000 + "</body></html>"
    return (
        "From: a@customer.test\r\nTo: support@example.test\r\nSubject: link bomb\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n"
    ).encode()


PATHOLOGICAL = {
    "23: 1,000-level nested multipart": lambda: nested(1000),
    "24: 100,000 tiny parts": lambda: many_parts(100_000),
    "25: 20,000 encoded addresses and words": lambda: huge_address_list(20_000),
    "33: 5,000-link HTML with nested entities": lambda: link_bomb(5000),
}


def test_pathological_mail_through_poll_ends_as_a_ticket_or_quarantined_within_bounds(
    tmp_path, dovecot, imap_user, account_config
):
    desk = Desk(tmp_path / "desk", dovecot, imap_user, account_config)
    raws = [make() for make in PATHOLOGICAL.values()]
    good = b"From: b@customer.test\r\nTo: support@example.test\r\nSubject: the good mail behind\r\n\r\nhi\r\n"
    uids = dovecot.append_many(imap_user, [*raws, good])

    started = time.monotonic()
    result = desk.poll(timeout=150)
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    print(f"pathological: {len(raws)} messages polled in {elapsed:.1f} s")
    assert elapsed < 60  # figure 6 allows 30 s per message; all of them together stay well under
    ledger = dict(desk.rows("select uid, coalesce(message, 0) + coalesce(quarantine, 0) from sources"))
    assert sorted(ledger) == sorted(uids) and all(ledger.values()), ledger
    subjects = {s for (s,) in desk.rows("select subject from tickets")}
    assert "the good mail behind" in subjects
    stored = {sha for (sha,) in desk.rows("select sha256 from raw_messages")}
    quarantined = desk.rows("select count(*) from quarantine")[0][0]
    assert len(stored) + quarantined >= len(raws) + 1
    assert set(dovecot.flags(imap_user).values()) == {frozenset({"\\Seen"})}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_mail_through_ingest_exits_0_within_the_bound(name, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({
        "storage": engine_storage(tmp_path, {"database": "m2t.db", "attachments": "att"}),
        "accounts": [{"name": "pipe", "email": "support@example.test", "source": "pipe", "acknowledge": False}],
    }))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "ingest"],
        input=PATHOLOGICAL[name](), capture_output=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    entries = rows(tmp_path, "select count(*) from messages")[0][0]
    entries += rows(tmp_path, "select count(*) from quarantine")[0][0]
    assert entries == 1
