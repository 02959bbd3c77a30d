"""Who may read what mail2ticket writes, whatever the umask.

The database holds all mail and the secret that signs our Message-IDs; the attachment tree holds
the customers' files. Everything mail2ticket creates (the database and its WAL and SHM, lock
files, the attachment tree, temp files) gets no permission for other users: files 0600, folders
0700. One rule opens it to a group: in a directory with the setgid bit (``install -d -g adm -m
2750 /var/lib/mail2ticket``), files are 0640 and folders 0750 (they inherit the setgid bit and the
group), so members of that group may read. Lock files stay 0600. Existing files are not changed,
except that the database, WAL and SHM lose any permission for others when mail2ticket opens them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE = (0o600, 0o700)
GROUP_READ = (0o640, 0o750)


def _nearest(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def modes_in(directory: str | os.PathLike) -> tuple[int, int]:
    """(file mode, folder mode) for what is created in ``directory`` (or where it will be)."""
    try:
        setgid = _nearest(Path(directory)).stat().st_mode & stat.S_ISGID
    except OSError:
        setgid = 0
    return GROUP_READ if setgid else PRIVATE


def makedirs(directory: str | os.PathLike) -> None:
    """``mkdir -p`` with each new folder 0700 (0750 below a setgid folder), whatever the umask."""
    directory = Path(directory)
    missing = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it meanwhile
        parent_setgid = folder.parent.stat().st_mode & stat.S_ISGID
        mode = (GROUP_READ if parent_setgid else PRIVATE)[1] | parent_setgid
        os.chmod(folder, mode)


def create(path: str | os.PathLike, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, *, mode: int | None = None) -> int:
    """os.open a file to write, created 0600 (0640 in a setgid folder) whatever the umask."""
    path = Path(path)
    wanted = mode if mode is not None else modes_in(path.parent)[0]
    fd = os.open(path, flags, wanted)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o777 != wanted and st.st_size == 0:
            os.fchmod(fd, wanted)  # just created: the umask may have taken or left other bits
    except OSError:
        os.close(fd)
        raise
    return fd


def open_new(path: str | os.PathLike, mode: str = "wb"):
    """Like ``open(path, mode)`` for writing, with the file created 0600 (0640: setgid folder)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    return os.fdopen(create(path, flags), mode)


def tighten(paths: list[Path]) -> None:
    """Take any permission for others from files of ours that exist (an older version's)."""
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            if st.st_uid == os.geteuid() and st.st_mode & 0o007:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o007)
