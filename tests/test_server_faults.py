"""Server faults of the failure catalogue (RELIABILITY §b items 2, 5, 6 and 9) against the real Dovecot.

Dovecot never misbehaves on its own, so every IMAP byte goes through `ImapMitm`: a man in the
middle on loopback that ends mail2ticket's TLS with the test CA's certificate, speaks TLS to
Dovecot, and sees each command and response in clear. It can rewrite one response (an empty or
missing body, a garbled FETCH answer, a NO), hold a command back while the test changes the
mailbox from a second session, or stall the session right after the answer to a command. `poll`
runs as its own process (as cron or systemd runs it), so it can be SIGKILLed at that moment.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.helpers import command, rows, sha256_hex, write_config
from tests.servers import LOOPBACK, Dovecot, User

TRIES = 3  # fetch failures of one UID before it is quarantined (mail2ticket.intake.poller.FETCH_TRIES)


# ------------------------------------------------------------------------ the man in the middle


def _read_response(f) -> bytes:
    """One whole IMAP response (or command): a line, and every literal it announces."""
    out = b""
    while True:
        line = f.readline()
        if not line:
            raise EOFError
        out += line
        literal = re.search(rb"\{(\d+)\+?\}\r\n$", line)
        if not literal:
            return out
        data = f.read(int(literal.group(1)))
        if len(data) != int(literal.group(1)):
            raise EOFError
        out += data


class ImapMitm:
    """mail2ticket <-TLS-> this relay <-TLS-> Dovecot, in lock-step (one command, then its answer).

    ``rewrite(command, response)`` returns the bytes sent to mail2ticket instead of a response.
    ``pause_on``: the first command matching it waits until ``resume`` is set (``paused`` tells
    the test it is waiting there). ``stall_after``: once the tagged answer to a command matching
    it has gone to mail2ticket, the session stops (nothing more reaches either side) and
    ``stalled`` is set.
    """

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.rewrite: Callable[[bytes, bytes], bytes] | None = None
        self.pause_on: re.Pattern[bytes] | None = None
        self.stall_after: re.Pattern[bytes] | None = None
        self.paused, self.resume, self.stalled = threading.Event(), threading.Event(), threading.Event()
        self.commands: list[bytes] = []
        self._closing = threading.Event()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="imap-mitm").start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._socks.append(sock)
            threading.Thread(target=self._session, args=(sock,), daemon=True).start()

    def _session(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError, EOFError, ssl_errors()):
            raw.settimeout(30)
            down = self.dovecot.certs.server_context().wrap_socket(raw, server_side=True)
            self._socks.append(down)
            up = self.dovecot.certs.client_context().wrap_socket(
                socket.create_connection((LOOPBACK, self.dovecot.imaps_port), timeout=30), server_hostname=LOOPBACK
            )
            self._socks.append(up)
            down_f, up_f = down.makefile("rb"), up.makefile("rb")
            down.sendall(_read_response(up_f))  # the greeting
            while not self._closing.is_set():
                command = _read_response(down_f)
                tag = command.split(b" ", 1)[0]
                self.commands.append(command)
                if self.pause_on is not None and self.pause_on.search(command) and not self.paused.is_set():
                    self.paused.set()
                    self.resume.wait(30)
                up.sendall(command)
                while True:
                    response = _read_response(up_f)
                    if response.startswith(b"+"):  # a continuation: the client's next line follows
                        down.sendall(response)
                        up.sendall(down_f.readline())
                        continue
                    down.sendall(self.rewrite(command, response) if self.rewrite else response)
                    if response.startswith(tag + b" "):
                        break
                if self.stall_after is not None and self.stall_after.search(command):
                    self.stalled.set()
                    self._closing.wait(60)  # the session hangs here: no EXPUNGE reaches Dovecot
                    return

    def close(self) -> None:
        self._closing.set()
        self.resume.set()
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


def ssl_errors() -> type[Exception]:
    import ssl

    return ssl.SSLError


def fetch_of(response: bytes) -> int | None:
    """The UID of an untagged FETCH response, or None."""
    first = response.split(b"\r\n", 1)[0]
    match = re.match(rb"\* \d+ FETCH \(.*?\bUID (\d+)\b", first)
    return int(match.group(1)) if match else None


def is_body_fetch(command: bytes) -> bool:
    return b" FETCH " in command.upper() and b"BODY.PEEK[]" in command.upper()


def without_body(response: bytes) -> bytes:
    """The FETCH response without its BODY[] item (iCloud's OK with no body)."""
    match = re.search(rb" ?BODY\[\] \{(\d+)\}\r\n", response)
    assert match, response[:200]
    return response[: match.start()] + response[match.end() + int(match.group(1)) :]


def with_empty_body(response: bytes, size: bytes | None = None) -> bytes:
    """The FETCH response with an empty BODY[] literal (and RFC822.SIZE set to *size*, if given)."""
    match = re.search(rb"BODY\[\] \{(\d+)\}\r\n", response)
    assert match, response[:200]
    out = response[: match.start()] + b"BODY[] {0}\r\n" + response[match.end() + int(match.group(1)) :]
    return re.sub(rb"RFC822\.SIZE \d+", b"RFC822.SIZE " + size, out, count=1) if size is not None else out


def garbled(response: bytes) -> bytes:
    """A FETCH answer imapclient cannot parse: an unterminated quoted string (a backslash before
    the closing quote, as in zammad#2754), framing intact."""
    assert response.endswith(b")\r\n"), response[-50:]
    return response[:-3] + b' X-SUBJECT "ends in a backslash\\")\r\n'


@pytest.fixture
def mitm(dovecot: Dovecot):
    relay = ImapMitm(dovecot)
    yield relay
    relay.close()


# ------------------------------------------------------------------------------------ helpers


def message(n: int) -> bytes:
    return (
        b"From: customer%d@example.org\r\nTo: support@example.test\r\nSubject: server fault %d\r\n"
        b"Message-ID: <fault-%d@example.org>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
        b"Body of message %d.\r\n" % (n, n, n, n)
    )


def setup_account(tmp_path: Path, account: dict) -> Path:
    return write_config(tmp_path, {**account, "acknowledge": False, "timeout": 10})


def poll(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command(config, "poll"), capture_output=True, text=True, timeout=60)


def query(tmp_path: Path, sql: str, *args) -> list[tuple]:
    return rows(tmp_path, sql, args)


def ledger(tmp_path: Path) -> dict[int, tuple]:
    """{uid: (raw_sha256, message, quarantine, action_state)}"""
    rows = query(tmp_path, "select uid, raw_sha256, message, quarantine, action_state from sources")
    return {uid: rest for uid, *rest in rows}


def stored_bodies(tmp_path: Path) -> list[bytes]:
    return [raw for (raw,) in query(tmp_path, "select raw from raw_messages")]


def seen(dovecot: Dovecot, user: User) -> set[int]:
    return {uid for uid, flags in dovecot.flags(user).items() if "\\Seen" in flags}


@pytest.fixture
def mailbox(dovecot: Dovecot, imap_user: User) -> User:
    store_password(imap_user.name, imap_user.password)
    return imap_user


def assert_imported_exactly(tmp_path: Path, dovecot: Dovecot, user: User, uids: set[int]) -> None:
    """The ledger holds exactly *uids*, each with the server's bytes, each once."""
    server = {uid: sha256_hex(raw) for uid, raw in dovecot.fetch_raw(user).items()}
    rows = ledger(tmp_path)
    assert set(rows) == uids
    for uid in uids:
        if rows[uid][0] is None:  # quarantined without bytes: nothing of it was stored
            assert rows[uid][2] is not None and rows[uid][3] == "done", rows[uid]
        elif uid in server:
            assert rows[uid][0] == server[uid], f"UID {uid} stored with other bytes than the server's"
    assert all(raw for raw in stored_bodies(tmp_path)), "an empty message was stored"
    dup = query(tmp_path, "select raw_sha256 from messages group by raw_sha256 having count(*) > 1")
    assert dup == [], "a message was imported twice"


# ----------------------------------------------------------------------- item 2: kill before EXPUNGE


def test_a_kill_between_uid_store_deleted_and_uid_expunge_imports_nothing_twice_and_another_clients_deleted_mail_is_imported(
    dovecot, mailbox, account_config, mitm, tmp_path
):
    uids = dovecot.append_many(mailbox, [message(n) for n in range(3)])
    # Another client marked this one \Deleted before we ever saw it: it must still become a ticket.
    [marked] = dovecot.append_many(mailbox, [message(3)], flags=[r"\Deleted"])
    config = setup_account(tmp_path, account_config(mailbox, imap_port=mitm.port, after_import="delete"))
    mitm.stall_after = re.compile(rb"^\S+ UID STORE .*\\Deleted", re.I)

    proc = subprocess.Popen(command(config, "poll"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert mitm.stalled.wait(30), "the poll never marked its mail \\Deleted"
        # The server has the \Deleted marks; no UID EXPUNGE has reached it. Now the kill.
        proc.send_signal(signal.SIGKILL)
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, out + err
    flags = dovecot.flags(mailbox)
    assert set(flags) == {*uids, marked} and all("\\Deleted" in f for f in flags.values())
    assert {uid: row[3] for uid, row in ledger(tmp_path).items()} == dict.fromkeys([*uids, marked], "pending")
    assert not any(b"EXPUNGE" in c.upper() for c in mitm.commands)

    mitm.stall_after = None
    again = poll(config)

    assert again.returncode == 0, again.stdout + again.stderr
    assert dovecot.uids(mailbox) == [], "the restarted poll finishes the UID EXPUNGE"
    rows = ledger(tmp_path)
    assert sorted(rows) == sorted([*uids, marked]) and {r[3] for r in rows.values()} == {"done"}
    ids = sorted(m for (m,) in query(tmp_path, "select message_id from messages"))
    assert ids == sorted(f"<fault-{n}@example.org>" for n in range(4)), "one entry each, none twice"
    assert query(tmp_path, "select count(*) from tickets") == [(4,)]


def test_mail_another_client_marked_deleted_is_imported_and_only_our_uids_are_expunged(
    dovecot, mailbox, account_config, tmp_path
):
    [ours] = dovecot.append_many(mailbox, [message(10)])
    [theirs] = dovecot.append_many(mailbox, [message(11)], flags=[r"\Deleted"])
    config = setup_account(tmp_path, account_config(mailbox))  # after_import = "seen"

    result = poll(config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert set(ledger(tmp_path)) == {ours, theirs}
    flags = dovecot.flags(mailbox)
    assert flags[theirs] >= {"\\Deleted", "\\Seen"} and flags[ours] == {"\\Seen"}


# --------------------------------------------------------------- item 5: OK without (or with empty) body

BODY_FAULTS = {
    "no BODY[] in the answer": without_body,
    "an empty BODY[] literal with the true RFC822.SIZE": with_empty_body,
    "an empty BODY[] literal and RFC822.SIZE 0": lambda r: with_empty_body(r, b"0"),
}


@pytest.mark.parametrize("fault", list(BODY_FAULTS))
def test_an_ok_answer_without_the_body_stores_nothing_flags_nothing_and_the_next_poll_imports_it(
    dovecot, mailbox, account_config, mitm, tmp_path, fault
):
    uids = dovecot.append_many(mailbox, [message(n) for n in range(4)])
    victim = uids[1]
    config = setup_account(tmp_path, account_config(mailbox, imap_port=mitm.port))
    mitm.rewrite = lambda c, r: BODY_FAULTS[fault](r) if is_body_fetch(c) and fetch_of(r) == victim else r

    first = poll(config)

    assert first.returncode == 1, first.stdout + first.stderr
    assert f"UID {victim}" in first.stderr and "Traceback" not in first.stderr, first.stderr
    assert_imported_exactly(tmp_path, dovecot, mailbox, set(uids) - {victim})
    assert seen(dovecot, mailbox) == set(uids) - {victim}, "the failed UID is never marked seen"
    assert query(tmp_path, "select count(*) from quarantine") == [(0,)]

    mitm.rewrite = None
    clean = poll(config)

    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert_imported_exactly(tmp_path, dovecot, mailbox, set(uids))
    assert seen(dovecot, mailbox) == set(uids)


# ------------------------------------------------------------- item 6: a UID gone between SEARCH and FETCH


def answered_no(verb: bytes) -> Callable[[bytes, bytes], bytes]:
    """The first command with *verb* gets the NO other servers give when some of its UIDs are
    gone (Dovecot itself answers OK and leaves the gone UIDs out)."""
    done = []

    def rewrite(command: bytes, response: bytes) -> bytes:
        tag = command.split(b" ", 1)[0]
        if not done and verb in command.upper() and response.startswith(tag + b" OK"):
            done.append(command)
            return tag + b" NO Some of the requested messages no longer exist\r\n"
        return response

    return rewrite


GONE = {  # where the other client's expunge lands, and how the server answers there
    "before the RFC822.SIZE fetch": (rb"UID FETCH \S+ \(RFC822\.SIZE\)", None),
    "before the BODY.PEEK[] fetch": (rb"BODY\.PEEK\[\]", None),
    "before the BODY.PEEK[] fetch, answered NO": (rb"BODY\.PEEK\[\]", lambda: answered_no(b"BODY.PEEK[]")),
    "before UID STORE, answered NO": (rb"UID STORE", lambda: answered_no(b" STORE ")),
}


@pytest.mark.parametrize("moment", list(GONE))
def test_a_uid_expunged_by_another_client_after_our_search_is_a_no_op_and_the_rest_is_imported(
    dovecot, mailbox, account_config, mitm, tmp_path, moment
):
    uids = dovecot.append_many(mailbox, [message(n) for n in range(5)])
    victim = uids[2]
    config = setup_account(tmp_path, account_config(mailbox, imap_port=mitm.port))
    pattern, rewrite = GONE[moment]
    mitm.pause_on, mitm.rewrite = re.compile(pattern, re.I), rewrite and rewrite()

    proc = subprocess.Popen(command(config, "poll"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert mitm.paused.wait(30), "the poll never got there"
        with dovecot.connect(mailbox) as other:  # the second client
            other.select_folder("INBOX")
            other.add_flags([victim], [b"\\Deleted"], silent=True)
            other.uid_expunge([victim])
        mitm.resume.set()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, out + err
    assert "Traceback" not in err
    rest = set(uids) - {victim}
    expected = set(uids) if moment.startswith("before UID STORE") else rest
    assert_imported_exactly(tmp_path, dovecot, mailbox, expected)
    assert seen(dovecot, mailbox) == rest
    assert {row[3] for row in ledger(tmp_path).values()} == {"done"}
    assert poll(config).returncode == 0


# ---------------------------------------------------------- item 9: a FETCH answer that cannot be parsed


def test_a_fetch_answer_imapclient_cannot_parse_is_quarantined_after_three_tries_and_never_blocks_the_rest(
    dovecot, mailbox, account_config, mitm, tmp_path
):
    uids = dovecot.append_many(mailbox, [message(n) for n in range(5)])
    victim = uids[1]
    config = setup_account(tmp_path, account_config(mailbox, imap_port=mitm.port, batch_size=3))
    mitm.rewrite = lambda c, r: garbled(r) if is_body_fetch(c) and fetch_of(r) == victim else r

    results = []
    for n in range(1, TRIES + 1):
        results.append(result := poll(config))
        assert "Traceback" not in result.stderr, result.stderr
        assert_imported_exactly(tmp_path, dovecot, mailbox, set(uids) - ({victim} if n < TRIES else set()))
    # Tries 1 and 2: the rest is imported, the UID is held back and the poll says why.
    assert [r.returncode for r in results] == [1] * (TRIES - 1) + [0], [r.stderr for r in results]
    assert f"UID {victim}" in results[0].stderr and f"try 1 of {TRIES}" in results[0].stderr, results[0].stderr
    # Try 3: quarantined without its bytes (there are none we can trust); left on the server unflagged.
    [(qid, reason, raw, uid, error)] = query(tmp_path, "select id, reason, raw_sha256, uid, error from quarantine")
    assert (reason, raw, uid) == ("unfetchable", None, victim) and "could not be read" in error, error
    assert ledger(tmp_path)[victim][2] == qid
    assert seen(dovecot, mailbox) == set(uids) - {victim}
    fetched_before = len(mitm.commands)
    assert poll(config).returncode == 0
    assert not any(is_body_fetch(c) for c in mitm.commands[fetched_before:]), "it is not fetched again"

    # Once the server answers properly, 'quarantine retry' imports it and only then flags it.
    mitm.rewrite = None
    retry = subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "quarantine", "retry", str(qid)],
        capture_output=True, text=True, timeout=60,
    )
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert query(tmp_path, "select count(*) from quarantine where resolved_at is null") == [(0,)]
    assert sorted(m for (m,) in query(tmp_path, "select message_id from messages")) == sorted(
        f"<fault-{n}@example.org>" for n in range(5)
    )
    assert seen(dovecot, mailbox) == set(uids)
