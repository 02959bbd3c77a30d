"""One poll per account at a time, across threads and processes: a lock file beside the database."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from mail2ticket.errors import Mail2TicketError
from mail2ticket.files import perms as fileperms


class AccountBusy(Mail2TicketError):
    """Raised by ``account_lock`` when another poll (this process or another) holds the account:
    providers limit simultaneous IMAP connections, so the second poll is skipped, not failed."""

    def __init__(self, account: str, pid: int | None):
        self.account, self.pid = account, pid
        if pid == os.getpid():
            who = "this process"
        else:
            who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"account {account} is being polled by {who}", "skipped: that poll imports its mail"
        )


def lock_path(database: str | os.PathLike, account: str) -> Path:
    """``<database>.poll-<account>.lock``: beside the database, so every process on it sees it."""
    return Path(f"{database}.poll-{account}.lock")


# The lock files held right now. A process forked meanwhile (the parser workers of another
# account's poll) gets copies of these descriptors, and an flock lasts until every copy is closed:
# without closing them in the child, the account would stay locked until that child exits.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@contextlib.contextmanager
def account_lock(database: str | os.PathLike, account: str) -> Iterator[None]:
    """Hold the poll lock of ``account`` (non-blocking flock) for the ``with`` block.

    Raises AccountBusy at once when it is held. flock belongs to the open file, so two threads of
    one process exclude each other too; the kernel drops the lock when its holder dies."""
    path = lock_path(database, account)

    fileperms.makedirs(path.parent)
    fd = fileperms.create(path, os.O_RDWR | os.O_CREAT, mode=0o600)  # 0600 whatever the umask
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise AccountBusy(account, int(text) if text.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD.add(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a stale pid is never read: the file is empty while unlocked
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the flock
