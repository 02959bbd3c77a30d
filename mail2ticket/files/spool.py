"""A message on its way in, written to a temp file while hashed: the Spool (large messages, pipes)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mail2ticket.errors import TempFailError

MiB = 1024 * 1024
PIECE = 4 * MiB  # bytes per partial fetch (BODY.PEEK[]<offset.length>)


@dataclass
class Spool:
    """A message fetched into a temp file: where, how many bytes, their SHA-256."""

    path: str
    size: int
    sha256: str

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def spool_chunks(chunks: Iterable[bytes], directory: str | os.PathLike) -> Spool:
    """Write ``chunks`` to a new temp file in ``directory`` while hashing them: a Spool.

    The file is named ``raw-<random>.<pid>.tmp``, so AttachmentStore.sweep_temp removes it when
    the process that wrote it was killed. A failure removes the file: TempFailError when the
    disk or directory is at fault, the reader's exception otherwise."""
    directory = Path(directory)
    path = directory / f"raw-{os.urandom(6).hex()}.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    size = 0
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            out = open(path, "wb")  # noqa: SIM115 (closed below, write errors told apart)
        except OSError as exc:
            raise _unwritable(directory, exc) from None
        with out:
            for chunk in chunks:  # the reader's own errors go up as they are
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _unwritable(directory, exc) from None
                digest.update(chunk)
                size += len(chunk)
            try:
                out.flush()
            except OSError as exc:
                raise _unwritable(directory, exc) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Spool(str(path), size, digest.hexdigest())


def _unwritable(directory: Path, exc: OSError) -> TempFailError:
    return TempFailError(
        f"cannot write the message to a temp file in {directory}: {exc.strerror or exc}",
        "free disk space or fix the attachment directory's permissions",
    )
