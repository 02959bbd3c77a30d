"""Reading what a command wrote to a pseudo-terminal (shared by the tests that run the CLI on one)."""

from __future__ import annotations

import os


def read_all(master: int) -> bytes:
    """Everything written to the pseudo-terminal until its other side is closed (Linux reports that
    as EIO), then close our side."""
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks)
