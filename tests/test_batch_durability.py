"""Attachment files made durable once per batch (issue 19.6, catalogue 90).

The parser workers write a batch's attachment files as temp files without fsync; the main process
syncs them all at once, moves them to their content addresses, syncs again, and only then
commits. These tests kill `mail2ticket poll` (SIGKILL, a real subprocess against the real Dovecot)
at the moment the temp files are written and not yet made durable, and check that no file sits at
a content address unless it is complete, and that the next poll stores every message once with
attachment files that match their hash.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from mail2ticket.accounts.secrets import store_password
from mail2ticket.files.attachments import AttachmentStore
from tests.helpers import command, sha256_hex
from tests.servers import Dovecot, User
from tests.test_exactly_once import (
    _write_config,
    audit,
    check_nothing_flagged_without_a_durable_row,
    survivors,
)

# Run `poll` in a real process that kills itself (SIGKILL) when the main process is about to make a
# batch's attachment files durable: the workers have written them as temp files, nothing more.
KILLED_BEFORE_DURABLE = """
import os, signal, sys
from pathlib import Path
from mail2ticket.files import attachments

def stop_here(self, pending, stored=()):
    Path(sys.argv[1]).write_text("".join(f"{tmp} {sha}\\n" for tmp, sha in pending))
    os.kill(os.getpid(), signal.SIGKILL)

attachments.AttachmentStore.make_durable = stop_here
from mail2ticket.cli import cli
cli(["--config", sys.argv[2], "poll"])
"""


def _mail(rng: random.Random, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"user{n}@customer.example"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Request {n} with files"
    msg["Message-ID"] = f"<durable-{n}-{rng.randrange(1 << 30)}@customer.example>"
    msg.set_content(f"Request {n}: see the attached files.\n")
    for size in (3_000, 40_000):
        msg.add_attachment(rng.randbytes(size), maintype="application", subtype="octet-stream",
                           filename=f"file-{n}-{size}.bin")
    return msg.as_bytes()


def _content_files(files: Path) -> list[Path]:
    """Every file at a content address (``ab/cd/abcd...``), the temp directory aside."""
    return [p for p in files.rglob("*") if p.is_file() and p.relative_to(files).parts[0] != "tmp"]


def test_sigkill_before_a_batch_is_made_durable_leaves_no_file_at_a_content_address_and_the_next_poll_stores_once(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
) -> None:
    rng = random.Random(19)
    config = _write_config(tmp_path, account_config(imap_user, batch_size=10, timeout=20))
    store_password(imap_user.name, imap_user.password)
    files = tmp_path / "data" / "files"
    mails = [_mail(rng, n) for n in range(25)]
    dovecot.append_many(imap_user, mails)
    wanted = {sha256_hex(part.get_payload(decode=True))
              for raw in mails
              for part in __import__("email").message_from_bytes(raw).walk()
              if part.get_filename()}

    marker = tmp_path / "pending.txt"
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_DURABLE, str(marker), str(config)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = survivors(config)
    for line in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert not left, f"processes of the killed poll still run: {left}"

    # The first batch's files were written (as temp files) and nothing else happened.
    pending = [line.split(" ") for line in marker.read_text().splitlines()]
    assert len(pending) == 20, pending  # 10 messages, 2 attachments each
    for tmp, sha in pending:
        assert Path(tmp).parent == files / "tmp"
        assert Path(tmp).is_file(), f"{tmp}: the worker's temp file is missing"
        assert sha in wanted
        assert not AttachmentStore(files).path(sha).exists(), f"{sha} at its content address before it was durable"
    assert _content_files(files) == [], "a file at a content address before the batch was made durable"
    assert check_nothing_flagged_without_a_durable_row(dovecot, imap_user, tmp_path) == 0

    final = subprocess.run(command(config, "poll"),
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    figures = audit(dovecot, imap_user, tmp_path, files)  # each once, files match their hash
    assert figures["messages"] == 25 and figures["duplicated"] == 0
    assert figures["attachments"] == 50
    for path in _content_files(files):
        assert sha256_hex(path.read_bytes()) == path.name, f"{path} does not hold the content it is named after"
    assert {p.name for p in _content_files(files)} == wanted
    assert not any(Path(tmp).exists() for tmp, _ in pending), "the killed poll's temp files were not swept"


def test_pending_files_appear_at_their_content_address_only_once_made_durable(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path / "files")
    data = os.urandom(5000)
    sha, rel, tmp = store.put_pending(data, owner=os.getpid())
    assert tmp is not None and tmp.is_file() and not store.path(sha).exists()
    assert rel == store.relpath(sha)
    # The owner (this process) is alive: a sweep by another poll leaves the file alone.
    assert store.sweep_temp() == 0 and tmp.is_file()
    store.make_durable([(tmp, sha)])
    assert store.verify(sha) and not tmp.exists()
    # Stored already: nothing is written again.
    assert store.put_pending(data, owner=os.getpid()) == (sha, rel, None)


def test_pending_files_of_a_process_that_is_gone_are_swept(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path / "files")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    _sha256, _rel, tmp = store.put_pending(b"half a batch", owner=dead)
    assert tmp is not None and tmp.is_file()
    assert store.sweep_temp() == 1
    assert not tmp.exists()
