"""Files no other local user can read, whatever the umask (issue 13, point 6; catalogue item 58).

The database holds all mail and the secret that signs our Message-IDs; the attachments are the
customers' files. Through the real daemon and the real poll against the real Dovecot, started
with umask 000: the database, its WAL and SHM, the poll's lock file and the attachment tree get
no permission for others (0600 files, 0700 folders). The one documented exception: in a data
directory with the setgid bit (group-owned by an admin group), the group may read (0640, 0750).
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from mail2ticket.intake.locks import lock_path
from tests.helpers import write_config

REPO = Path(__file__).resolve().parents[1]


def _mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = "ann@customer.test"
    msg["To"] = "desk@example.test"
    msg["Subject"] = "Invoice attached"
    msg["Message-ID"] = "<file-modes-1@customer.test>"
    msg.set_content("See the attachment.")
    msg.add_attachment(b"%PDF-1.4 private", maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg.as_bytes()


def _config(root: Path, account: dict) -> Path:
    var = root / "var"
    return write_config(root, account, storage={"database": str(var / "m2t.db"), "attachments": str(var / "files")},
                        schedule={"poll": "1h"})


def _umask_000() -> None:
    os.umask(0)


def _modes(root: Path) -> dict[str, int]:
    """{path relative to root: permission bits (setgid included)} of everything below root/var."""
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
        for path in [root / "var", *(root / "var").rglob("*")]
    }


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_with_umask_000_the_daemon_creates_nothing_others_can_read(
    dovecot, imap_user, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    root = tmp_path / "srv"
    root.mkdir()
    config = _config(root, account_config(imap_user))
    dovecot.append(imap_user, _mail())
    db = root / "var" / "m2t.db"
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "run"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_umask_000,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        # The daemon holds its connection open: the WAL and SHM it created are there to see.
        files = root / "var" / "files"
        _wait(lambda: any(p.is_file() and "tmp" not in p.relative_to(files).parts for p in files.rglob("*")), 60,
              "the attachment")
        _wait(lambda: Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists(), 10, "the WAL and SHM")
        modes = _modes(root)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
    print({name: oct(mode) for name, mode in sorted(modes.items())})
    assert lock_path(db, imap_user.name).exists()
    for name in ("var/m2t.db", "var/m2t.db-wal", "var/m2t.db-shm", f"var/m2t.db.poll-{imap_user.name}.lock"):
        assert modes[name] == 0o600, (name, oct(modes[name]))
    stored = [name for name in modes if name.startswith("var/files/") and (root / name).is_file()]
    assert stored, modes
    for name, mode in modes.items():
        path = root / name
        assert mode & 0o077 == 0, (name, oct(mode))  # nothing for the group or others
        assert mode == (0o700 if path.is_dir() else 0o600), (name, oct(mode))


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to another group needs root")
def test_in_a_setgid_data_directory_the_group_may_read_and_others_still_not(
    dovecot, imap_user, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    root = tmp_path / "srv"
    (root / "var").mkdir(parents=True)
    admins = grp.getgrnam("adm").gr_gid
    os.chown(root / "var", -1, admins)
    (root / "var").chmod(0o2770)  # what 'install -d -g adm -m 2770' makes
    config = _config(root, account_config(imap_user))
    dovecot.append(imap_user, _mail())
    polled = subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "poll"],
        capture_output=True, text=True, preexec_fn=_umask_000, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert polled.returncode == 0, polled.stderr
    modes = _modes(root)
    print({name: oct(mode) for name, mode in sorted(modes.items())})
    assert modes["var"] == 0o2770  # the sysadmin's directory is left as it was
    assert modes["var/m2t.db"] == 0o640
    assert modes[f"var/m2t.db.poll-{imap_user.name}.lock"] == 0o600
    for name, mode in modes.items():
        path = root / name
        assert mode & 0o007 == 0, (name, oct(mode))
        if name != "var" and name.startswith("var/files"):
            assert mode == (0o2750 if path.is_dir() else 0o640), (name, oct(mode))
            assert path.stat().st_gid == admins
