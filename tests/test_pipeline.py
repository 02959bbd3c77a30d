"""Parsing in worker processes: the same tickets as in-process, crashes and hangs quarantined, order kept.

The import pipeline (mail2ticket/intake/pipeline.py) parses in forked workers while the main process
fetches the next batch and commits in UID order. These tests pin its behaviour against the real
Dovecot; how fast it is, is the benchmark's business (benchmarks/bench_import.py), never a timer here.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from email.message import EmailMessage
from functools import partial
from pathlib import Path

import pytest
import tomli_w

import mail2ticket.parse
from mail2ticket.accounts.secrets import store_password
from mail2ticket.errors import TempFailError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.intake.pipeline import ParsePool, ahead, prefetch, size_batches
from mail2ticket.parse.prepare import prepare
from tests.helpers import engine_storage, rows, run_cli
from tests.servers import Dovecot, User


def _mail(n: int, *, attachment: int = 0, extra: str = "", charset: str = "utf-8") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@example.org>"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"pipeline test {n}"
    msg["Message-ID"] = f"<pipe-{n}@example.org>"
    msg["Date"] = f"Tue, 03 Mar 2026 10:{n % 60:02d}:00 +0100"
    if extra:
        msg["X-Test"] = extra
    msg.set_content(f"Request number {n}: the printer on floor {n % 4} is jammed. Grüße.\n", charset=charset)
    if attachment:
        msg.add_attachment(bytes(range(256)) * (attachment // 256), maintype="application",
                           subtype="octet-stream", filename=f"scan-{n}.bin")
    return bytes(msg)


def _mailbox(count: int) -> list[bytes]:
    out = []
    for n in range(1, count + 1):
        if n % 5 == 0:
            out.append(_mail(n, attachment=4096 * n))
        elif n % 7 == 0:
            out.append(_mail(n, charset="iso-8859-1"))
        else:
            out.append(_mail(n))
    return out


def _setup(tmp_path: Path, name: str, account: dict, **performance: int) -> Path:
    # "m2t" is tmp_path's config.toml, the one tests/helpers rows reads; each name its own database
    # (on PostgreSQL, with MAIL2TICKET_TEST_ENGINE, a database of its own).
    config = tmp_path / ("config.toml" if name == "m2t" else f"{name}.toml")
    database = str(tmp_path / f"{name}.db")
    data: dict = {
        "storage": engine_storage(tmp_path, {"database": database, "attachments": str(tmp_path / f"{name}-files")},
                                  replaces=database),
        "accounts": [account],
    }
    if performance:
        data["performance"] = performance
    config.write_text(tomli_w.dumps(data))
    return config


_cli = partial(run_cli, catch_exceptions=False)  # an exception in the CLI fails with its traceback


def _content(config: Path) -> list[dict]:
    """Every ticket with its messages, minus what differs between two imports (ids, times)."""
    tickets = json.loads(_cli(config, "tickets", "list", "--status", "all", "--json").stdout)
    out = []
    for ticket in sorted(tickets, key=lambda t: t["subject"]):
        shown = json.loads(_cli(config, "tickets", "show", str(ticket["id"]), "--json").stdout)
        for message in shown["messages"]:
            for att in message["attachments"]:
                att.pop("id", None)
                att["path"] = Path(att["path"]).name if att.get("path") else None  # each config's own root
            for key in ("id", "ticket_id", "received_at", "created_at"):
                message.pop(key, None)
        out.append({
            "subject": shown["subject"],
            "requester": shown["requester"],
            "status": shown["status"],
            "messages": shown["messages"],
        })
    return out


@pytest.fixture
def mailbox(dovecot: Dovecot, imap_user: User) -> User:
    dovecot.append_many(imap_user, _mailbox(23))
    store_password(imap_user.name, imap_user.password)
    return imap_user


def test_parsing_in_worker_processes_gives_the_same_tickets_as_parsing_in_process(
    mailbox: User, account_config, tmp_path: Path
) -> None:
    # No acknowledgements: whether one is due depends on when each config first saw the account.
    account = account_config(mailbox, batch_size=4, after_import="none", acknowledge=False)
    inline = _setup(tmp_path, "inline", account, workers=0)
    workers = _setup(tmp_path, "workers", account, workers=2)

    assert _cli(inline, "poll").exit_code == 0
    assert _cli(workers, "poll").exit_code == 0

    in_process, in_workers = _content(inline), _content(workers)
    assert len(in_workers) == 23
    assert in_workers == in_process
    with_files = [a for t in in_workers for m in t["messages"] for a in m["attachments"]]
    assert len(with_files) == 4
    for att in with_files:  # written by a worker, readable and whole
        assert AttachmentStore(tmp_path / "workers-files").verify(att["sha256"])


def test_a_message_that_crashes_or_hangs_its_parser_is_quarantined_and_the_rest_imported(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path, monkeypatch
) -> None:
    real = mail2ticket.parse.message.parse_message

    def parse(raw: bytes, **kwargs):
        if b"X-Test: crash" in raw:
            os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, or a C extension gone wrong
        if b"X-Test: hang" in raw:
            time.sleep(3600)  # a pathological regular expression
        return real(raw, **kwargs)

    monkeypatch.setattr(mail2ticket.parse.message, "parse_message", parse)
    mail = [_mail(1), _mail(2, extra="crash"), _mail(3), _mail(4, extra="hang"), _mail(5), _mail(6)]
    dovecot.append_many(imap_user, mail)
    store_password(imap_user.name, imap_user.password)
    config = _setup(tmp_path, "m2t", account_config(imap_user, batch_size=3), workers=2, parse_timeout=2)

    result = _cli(config, "poll")

    assert result.exit_code == 0, result.output
    assert f"{imap_user.name}: 4 imported" in result.stdout and "2 quarantined" in result.stdout
    tickets = json.loads(_cli(config, "tickets", "list", "--status", "all", "--json").stdout)
    assert sorted(t["subject"] for t in tickets) == [f"pipeline test {n}" for n in (1, 3, 5, 6)]
    entries = {e["uid"]: e for e in json.loads(_cli(config, "quarantine", "list", "--json").stdout)}
    assert set(entries) == {2, 4}
    assert "SIGKILL" in entries[2]["error"]
    assert "longer than 2 s" in entries[4]["error"]
    # Accounted for, so all are marked read: the poison is not fetched again by the next poll.
    assert all("\\Seen" in f for f in dovecot.flags(imap_user).values())
    assert _cli(config, "poll").stdout.startswith(f"{imap_user.name}: 0 imported")
    assert multiprocessing.active_children() == [], "the poll left parser processes behind"


def test_batches_are_committed_in_uid_order_and_the_watermark_follows(
    mailbox: User, account_config, tmp_path: Path
) -> None:
    config = _setup(tmp_path, "m2t", account_config(mailbox, batch_size=2), workers=2)

    assert _cli(config, "poll").exit_code == 0

    ledger = [uid for (uid,) in rows(tmp_path, "select uid from sources order by id")]
    messages = [s for (s,) in rows(tmp_path, "select subject from messages order by id")]
    [(last_uid,)] = rows(tmp_path, "select last_uid from mailboxes")
    assert ledger == list(range(1, 24))
    assert messages == [f"pipeline test {n}" for n in range(1, 24)]
    assert last_uid == 23
    assert multiprocessing.active_children() == []
    assert not [t for t in threading.enumerate() if t.name == "mail2ticket-fetch"], "the fetch thread outlived the poll"


# ----------------------------------------------------------------------------- the pool itself


def _parse_or_misbehave(raw: bytes):
    if raw.startswith(b"crash"):
        os._exit(7)
    if raw.startswith(b"hang"):
        time.sleep(3600)
    if raw.startswith(b"bug"):
        raise KeyError("a parser bug")
    return mail2ticket.parse.message.parse_message(raw)


def test_the_pool_replaces_a_dead_or_stuck_worker_and_keeps_serving(tmp_path: Path) -> None:
    with ParsePool(_parse_or_misbehave, tmp_path / "files", workers=2, timeout=1.5) as pool:
        first_pids = set(pool.pids)
        futures = [pool.submit(raw) for raw in
                   [_mail(1), b"crash", _mail(2), b"hang", b"bug", _mail(3, attachment=10_000)]]
        answers = [f.result(timeout=30) for f in futures]

        assert [a.error is None for a in answers] == [True, False, True, False, False, True]
        assert "exit code 7" in answers[1].error
        assert "longer than 1.5 s" in answers[3].error
        assert "KeyError" in answers[4].error
        parsed, stored = answers[5].parsed, answers[5].stored
        assert parsed.subject == "pipeline test 3" and len(stored) == 1
        assert parsed.attachments[0].size == 10_000 - 10_000 % 256
        assert parsed.attachments[0].data == bytes(range(256)) * (10_000 // 256), "readable from the store"
        assert pool.crashed == 2
        assert set(pool.pids) != first_pids, "the dead and the stuck worker were replaced"
        pids = pool.pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # exited and reaped


def test_a_message_for_a_worker_that_died_idle_goes_to_another_worker_not_to_the_quarantine(tmp_path: Path) -> None:
    """Catalogue 110: a worker killed between two messages (the OOM killer) had the next message
    sent to it, and that message was quarantined "killed by SIGKILL while reading this message"."""
    with ParsePool(_parse_or_misbehave, tmp_path / "files", workers=1, timeout=30) as pool:
        assert pool.submit(_mail(1)).result(timeout=30).error is None
        (pid,) = pool.pids
        os.kill(pid, signal.SIGKILL)  # idle: no message in hand
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # dead (a zombie until the pool reaps it)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                break
            if state == "Z":
                break
            time.sleep(0.01)

        answer = pool.submit(_mail(2)).result(timeout=30)

        assert answer.error is None, answer.error
        assert answer.parsed.subject == "pipeline test 2"
        assert pool.crashed == 0, "no message was blamed for the death"
        assert pool.pids != [pid], "the dead worker was replaced"


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # dead (a zombie until the pool reaps it)
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)


def test_closing_the_pool_ends_a_message_that_a_dead_idle_worker_never_got(tmp_path: Path) -> None:
    """Catalogue 110: the message sent in vain to a worker that died idle was already running;
    put back in line (here behind a hang), closing the pool could not cancel it and left its
    future unresolved: a poll stopping then would have waited forever."""
    pool = ParsePool(_parse_or_misbehave, tmp_path / "files", workers=2, timeout=60)
    busy = pool.submit(b"hang")  # the first worker has it in hand
    deadline = time.monotonic() + 10
    while not busy.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    idle = pool.pids[1]
    os.kill(idle, signal.SIGKILL)
    _wait_dead(idle)
    resent, queued = pool.submit_many([(_mail(1), None), (_mail(2), None)])
    deadline = time.monotonic() + 10
    while pool.pids[1] == idle and time.monotonic() < deadline:  # the dead one was found and replaced
        time.sleep(0.01)

    pool.close(timeout=1)

    for future in (busy, resent, queued):
        assert future.done(), "a future left unresolved"
        assert future.cancelled() or isinstance(future.exception(timeout=0), TempFailError) \
            or future.exception(timeout=0) is None
    assert multiprocessing.active_children() == []


def test_closing_the_pool_cancels_what_is_queued_and_stops_every_worker(tmp_path: Path) -> None:
    pool = ParsePool(_parse_or_misbehave, tmp_path / "files", workers=1, timeout=60)
    busy = pool.submit(b"hang")
    queued = pool.submit(_mail(1))
    pids = pool.pids
    deadline = time.monotonic() + 10
    while not busy.running() and time.monotonic() < deadline:  # the worker has it in hand
        time.sleep(0.01)
    assert busy.running()

    pool.close(timeout=1)

    assert queued.cancelled()
    # A message in hand cannot be cancelled: its future ends with an error, never hangs a caller.
    assert busy.done() and isinstance(busy.exception(timeout=0), TempFailError)
    assert multiprocessing.active_children() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_writes_attachments_and_hands_back_only_their_metadata(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path / "files")
    done = prepare(mail2ticket.parse.message.parse_message, store, _mail(9, attachment=300_000))
    parsed, stored = done.parsed, done.stored

    assert done.error is None
    (index, sha, rel), = stored
    assert (tmp_path / "files" / rel).stat().st_size == parsed.attachments[0].size
    assert "data" not in vars(parsed.attachments[0]), "the bytes are on disk, not in the answer"
    assert parsed.attachments[0].sha256 == sha


def test_batches_are_bounded_by_count_and_by_announced_size() -> None:
    sizes = {1: 10, 2: 10, 3: 500, 4: 10, 5: 10, 6: 10, 7: 10_000}
    batches = list(size_batches(list(sizes), sizes, count=3, max_bytes=100, limit=1000))
    # 3 alone is over max_bytes: alone in its batch; 7 is over the size limit: never downloaded.
    assert batches == [[1, 2], [3], [4, 5, 6], [7]]


def test_a_batch_already_fetched_is_handed_over_before_a_later_fetch_error() -> None:
    def batches():
        yield "k"
        raise ConnectionResetError("cut")

    seen = []
    with pytest.raises(ConnectionResetError):
        for batch, job in ahead(batches(), lambda b: b.upper()):
            seen.append((batch, job))
    assert seen == [("k", "K")]


# ----------------------------------------------------------------------------- the fetch thread


def test_the_next_batch_is_fetched_while_this_one_is_used_never_more_than_one_ahead() -> None:
    # Issue 19.6: the poll fetches batch k+1 in a thread while the main thread commits batch k.
    made: list[int] = []
    started = {n: threading.Event() for n in range(6)}

    def produce():
        for n in range(5):
            started[n].set()
            made.append(n)
            yield n

    taken = []
    for item in prefetch(produce()):
        # While the consumer holds item k, item k+1 is made (overlap) ...
        if item < 4:
            assert started[item + 1].wait(10), f"item {item + 1} was not made while {item} was in use"
        # ... but never k+2: at most one item made and not yet taken (bounded memory).
        assert max(made) <= item + 1
        taken.append(item)
    assert taken == [0, 1, 2, 3, 4]
    assert not [t for t in threading.enumerate() if t.name == "mail2ticket-fetch"]


def test_a_fetch_error_comes_after_the_batches_fetched_before_it_and_closing_stops_the_thread() -> None:
    def failing():
        yield "k"
        yield "k+1"
        raise ConnectionResetError("cut")

    seen = []
    with pytest.raises(ConnectionResetError):
        for batch, job in ahead(prefetch(failing()), lambda b: b.upper()):
            seen.append((batch, job))
    assert seen == [("k", "K"), ("k+1", "K+1")], "batches fetched before the error are committed first"

    made: list[int] = []

    def endless():
        n = 0
        while True:
            made.append(n)
            yield n
            n += 1

    fetching = prefetch(endless())
    assert next(fetching) == 0
    fetching.close()  # the poll stops (SIGTERM, an error): the thread ends before the poll goes on
    assert not [t for t in threading.enumerate() if t.name == "mail2ticket-fetch"]
    assert len(made) <= 2, "the thread kept fetching after the poll stopped"
