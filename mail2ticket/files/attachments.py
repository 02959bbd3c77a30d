"""The attachment store: files named by their SHA-256, written durably (temp, fsync, rename).

The parser workers of a poll write a batch's files as temp files without fsync (``put_pending``);
the main process makes them all durable at once before the batch's commit (``make_durable``: one
``syncfs`` for the data, the renames to their content addresses, one ``syncfs`` for the renames),
so a file is at its content address only once its bytes are on disk.

An S3-compatible bucket (files/objectstore.py) has the same interface: callers get one or the
other from accounts/storage.py and never ask which it is."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from mail2ticket.errors import StoreError, TempFailError
from mail2ticket.files.perms import makedirs, open_new

log = logging.getLogger(__name__)


class AttachmentStore:
    """Content-addressed files under ``root``: ``ab/cd/abcd…`` (the name from the mail is never a path)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def relpath(self, sha256: str) -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def path(self, sha256: str) -> Path:
        return self.root / self.relpath(sha256)

    def location(self, rel: str) -> str:
        """Where the attachment at ``rel`` (its relative path) is, as shown to the user."""
        return str(self.root / rel)

    def put(self, data: bytes, sha256: str | None = None) -> tuple[str, str]:
        """Store ``data`` durably; returns (sha256, relative path). Same content is stored once."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        rel = self.relpath(sha256)
        target = self.root / rel
        if target.exists() and target.stat().st_size == len(data):
            return sha256, rel
        tmpdir = self.root / "tmp"
        try:
            makedirs(target.parent)
            makedirs(tmpdir)
            tmp = tmpdir / f"{sha256}.{os.getpid()}.tmp"
            with open_new(tmp) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)  # type: ignore[possibly-undefined]
            except (OSError, UnboundLocalError):
                pass
            raise self._write_error(exc) from None
        return sha256, rel

    def put_pending(self, data: bytes, owner: int, sha256: str | None = None) -> tuple[str, str, Path | None]:
        """Write ``data`` to a temp file without fsync; returns (sha256, relative path, temp file).

        The temp file is None when the content is already stored. Nothing is at the content
        address until ``make_durable`` of the temp file: a crash before it leaves only a temp file
        (named after ``owner``, the process that will make it durable, so ``sweep_temp`` leaves
        it alone while that process lives), never an incomplete file where an import would reuse
        it."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        rel = self.relpath(sha256)
        target = self.root / rel
        if target.exists() and target.stat().st_size == len(data):
            return sha256, rel, None
        tmpdir = self.root / "tmp"
        tmp = tmpdir / f"{sha256}.{owner}.{os.urandom(4).hex()}.tmp"
        try:
            makedirs(tmpdir)
            with open_new(tmp) as f:
                f.write(data)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise self._write_error(exc) from None
        return sha256, rel, tmp

    def make_durable(self, pending: list[tuple[Path, str]], stored: Iterable[tuple[Path, str]] = ()) -> None:
        """Move the temp files of ``put_pending`` ((temp file, sha256) pairs) to their content
        addresses durably: their bytes are synced first, then renamed, then the renames synced.
        ``stored``: the batch's other files, already durable at their address (nothing to do here;
        the object store uploads them).

        On Linux that is two ``syncfs`` calls for any number of files; elsewhere an fsync per file
        and per directory. Raises TempFailError (the batch must not commit) when the disk fails."""
        if not pending:
            return
        tmpdir = self.root / "tmp"
        try:
            batch_sync = _syncfs(tmpdir)
            if not batch_sync:
                for tmp, _sha in pending:
                    _fsync_file(tmp)
            directories = set()
            for tmp, sha256 in pending:
                target = self.path(sha256)
                makedirs(target.parent)
                os.replace(tmp, target)
                directories.add(target.parent)
            if not batch_sync or not _syncfs(tmpdir):
                for directory in sorted(directories):
                    fsync_dir(directory)
        except OSError as exc:
            raise self._write_error(exc) from None

    def put_stream(self, chunks, max_bytes: int | None = None) -> tuple[str, str, int]:
        """Store the bytes of the iterable ``chunks`` durably without holding them together:
        written to a temp file while hashing, fsynced, renamed to their content address.

        Returns (sha256, relative path, size). ``max_bytes``: more than that raises ValueError
        (nothing stored). Same content is stored once."""
        tmp, sha256, size = self.write_temp(chunks, max_bytes, sync=True)
        rel = self.relpath(sha256)
        target = self.root / rel
        try:
            if target.exists() and target.stat().st_size == size:
                tmp.unlink()
                return sha256, rel, size
            makedirs(target.parent)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._write_error(exc) from None
        return sha256, rel, size

    def write_temp(self, chunks: Iterable[bytes], max_bytes: int | None = None, *,
                   sync: bool = False) -> tuple[Path, str, int]:
        """Write ``chunks`` to a new temp file under ``tmp/`` while hashing them; returns (temp
        file, sha256, size). ``max_bytes``: more raises ValueError (the temp file removed)."""
        tmpdir = self.root / "tmp"
        tmp = tmpdir / f"stream-{os.urandom(6).hex()}.{os.getpid()}.tmp"
        digest = hashlib.sha256()
        size = 0
        try:
            makedirs(tmpdir)
            with open_new(tmp) as f:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise ValueError(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    f.write(chunk)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._write_error(exc) from None
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise
        return tmp, digest.hexdigest(), size

    def _write_error(self, exc: OSError) -> TempFailError:
        return TempFailError(
            f"cannot write attachment to {self.root}: {exc.strerror or exc}",
            "free disk space or fix the attachment directory's permissions",
        )

    def sweep_temp(self, max_age: float = 24 * 3600) -> int:
        """Remove temp files left by a crash mid-write; returns how many.

        A temp file is named ``<sha256>.<pid>[.<random>].tmp`` (or ``stream-<random>.<pid>.tmp``;
        the pid of ``put_pending``'s files is the main process's): it is removed when that process is gone, or
        when it is older than ``max_age`` (a reused pid), so a sweep never pulls a file from under
        another process that is writing right now. Complete files that no row references (a crash
        between the rename and the commit) are kept: they are content-addressed, so the retried
        import reuses them, and deleting them could race with an import about to commit.
        """
        tmpdir = self.root / "tmp"
        count = 0
        if not tmpdir.is_dir():
            return count
        now = time.time()
        for item in tmpdir.iterdir():
            try:
                pid = int(item.name.split(".")[1])
            except (IndexError, ValueError):
                pid = 0
            try:
                if _alive(pid) and now - item.stat().st_mtime < max_age:
                    continue
                item.unlink()
                count += 1
            except OSError:
                pass
        if count:
            log.info("removed %d temp files left in %s by an interrupted run", count, tmpdir)
        return count

    def verify(self, sha256: str) -> bool:
        """Whether the attachment is there and its bytes match ``sha256``."""
        try:
            with self.open_verified(sha256):
                return True
        except StoreError:
            return False

    @contextlib.contextmanager
    def open_verified(self, sha256: str) -> Iterator[BinaryIO]:
        """The attachment's bytes as a file open for reading, once their SHA-256 is checked.

        StoreError (one line: which attachment, what to do) when it is missing or does not
        match: never bytes that are not the attachment's."""
        path = self.path(sha256)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise missing_error(sha256, str(path)) from None
        except OSError as exc:
            raise StoreError(f"cannot read attachment {sha256} at {path}: {exc.strerror or exc}",
                             "check the attachment directory's owner and mode") from None
        with f:
            if file_sha256(f) != sha256:
                raise damaged_error(sha256, str(path))
            f.seek(0)
            yield f

    def read(self, sha256: str) -> bytes:
        """The attachment's bytes, checked against ``sha256`` (StoreError otherwise)."""
        with self.open_verified(sha256) as f:
            return f.read()


def file_sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def missing_error(sha256: str, where: str) -> StoreError:
    return StoreError(f"attachment {sha256} is missing from the store ({where})",
                      "restore it from a backup of the attachment store; the raw message is kept in the database")


def damaged_error(sha256: str, where: str) -> StoreError:
    return StoreError(f"attachment {sha256} at {where} does not match its SHA-256: it was changed or damaged",
                      "restore it from a backup of the attachment store; the raw message is kept in the database")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


_libc = None


def _syncfs(path: Path) -> bool:
    """syncfs(2) the file system that holds ``path`` (Linux): every file's data and metadata
    written there is durable when it returns. False where syncfs is not available."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        syncfs = _libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
