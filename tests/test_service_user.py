"""Root and the service user (issue 13, point 7; catalogue item 59).

One 'mail2ticket poll' by root on the service's database used to leave root-owned lock files and
attachment folders behind, and every later poll by the service user failed, while 'status' still
said healthy. Root is refused with one line saying how to run the command; and every failure of a
poll, the lock file's included, reaches 'status'. These tests run as root (as CI does) and use
the unprivileged user 'nobody' as the service user.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from mail2ticket.accounts.secrets import store_password
from mail2ticket.intake.locks import lock_path
from tests.helpers import run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _mail(n: int) -> bytes:
    return (
        f"From: customer{n}@example.org\r\nTo: desk@example.test\r\nSubject: service user {n}\r\n"
        f"Message-ID: <service-user-{n}@example.org>\r\n\r\nHello.\r\n"
    ).encode()


NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def service_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory for the service user 'nobody' (pytest's tmp_path is root's, mode 0700), with
    the keyring in it."""
    home = Path(tempfile.mkdtemp(prefix="mail2ticket-service-"))
    home.chmod(0o755)
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _give_to_nobody(home: Path) -> None:
    for path in [home, *home.rglob("*")]:
        os.lchown(path, NOBODY.pw_uid, NOBODY.pw_gid)


@contextlib.contextmanager
def _nobody() -> Iterator[None]:
    """Run the block with the effective ids of 'nobody' (as the service would), then root again.

    In this process rather than a child: the child could not read this checkout (root's). The
    commands run as nobody ran once as root before, so nothing is imported as nobody."""
    groups = os.getgroups()
    os.setgroups([NOBODY.pw_gid])
    os.setegid(NOBODY.pw_gid)
    os.seteuid(NOBODY.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def _as_nobody(config: Path, *args: str):
    with _nobody():
        return run_cli(config, *args)


def _setup(home: Path, dovecot, user, account_config) -> Path:
    """A config, the password in the keyring, one poll and 'status' run as root (to load every
    module), then the whole tree given to nobody, as a package's postinst would."""
    config = home / "config.toml"
    ca_file = home / "ca.pem"  # the test CA's own copy is in root's tmp_path
    shutil.copy(dovecot.ca_file, ca_file)
    config.write_text(
        tomli_w.dumps(
            {
                "storage": {"database": str(home / "var" / "m2t.db"), "attachments": str(home / "var" / "files")},
                "accounts": [account_config(user, ca_file=str(ca_file))],
            }
        )
    )
    store_password(user.name, user.password)
    dovecot.append(user, _mail(0))
    assert run_cli(config, "poll").exit_code == 0
    assert run_cli(config, "status", "--json").exit_code in (0, 1)
    _give_to_nobody(home)
    return config


def test_root_is_refused_on_a_database_owned_by_the_service_user_and_leaves_nothing_behind(
    service_home, dovecot, imap_user, account_config
) -> None:
    config = _setup(service_home, dovecot, imap_user, account_config)
    dovecot.append(imap_user, _mail(1))
    first = _as_nobody(config, "poll")
    assert first.exit_code == 0, first.output
    before = {p: p.stat().st_uid for p in (service_home / "var").rglob("*")}
    dovecot.append(imap_user, _mail(2))

    as_root = run_cli(config, "poll")

    assert as_root.exit_code == 77, as_root.output
    lines = as_root.stderr.strip().splitlines()
    print(lines[0])
    assert len(lines) == 1, lines
    assert "owned by nobody" in lines[0] and "sudo -u nobody mail2ticket" in lines[0]
    # Nothing created or taken over by root: the service user's next poll works.
    after = {p: p.stat().st_uid for p in (service_home / "var").rglob("*")}
    assert after == before
    assert all(uid == NOBODY.pw_uid for uid in after.values())
    second = _as_nobody(config, "poll")
    assert second.exit_code == 0, second.output
    assert "1 imported" in second.stdout


def test_a_lock_file_the_service_user_cannot_open_fails_the_poll_and_shows_in_status(
    service_home, dovecot, imap_user, account_config
) -> None:
    config = _setup(service_home, dovecot, imap_user, account_config)
    dovecot.append(imap_user, _mail(1))
    assert _as_nobody(config, "poll").exit_code == 0
    healthy = json.loads(_as_nobody(config, "status", "--json").stdout)
    assert healthy["accounts"][0]["healthy"] is True

    # What a poll by root used to leave behind: a lock file only root can open.
    lock = lock_path(service_home / "var" / "m2t.db", imap_user.name)
    lock.write_text("")
    os.chown(lock, 0, 0)
    lock.chmod(0o600)
    dovecot.append(imap_user, _mail(2))

    polled = _as_nobody(config, "poll")
    assert polled.exit_code != 0
    assert str(lock) in polled.stderr

    status = _as_nobody(config, "status", "--json")
    report = json.loads(status.stdout)
    (acct,) = report["accounts"]
    print(acct["last_error"])
    assert status.exit_code == 1 and report["healthy"] is False
    assert acct["healthy"] is False and str(lock) in acct["last_error"] and "owned by root" in acct["last_error"]
    assert any(str(lock) in alert for alert in report["alerts"])
