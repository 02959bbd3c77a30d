"""Find and store account passwords: the OS keyring, systemd credentials, or a password command."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from pathlib import Path

from mail2ticket.config import Account
from mail2ticket.errors import SecretError

log = logging.getLogger(__name__)
SERVICE = "mail2ticket"
HEADLESS_HINT = (
    "no usable keyring backend on this machine (a headless server?): give the password through "
    "systemd credentials (LoadCredentialEncrypted=NAME, see README) or a password_command in the "
    "account, or choose a backend with PYTHON_KEYRING_BACKEND"
)


def _keyring():
    import keyring  # imported lazily: it is slow to import and not needed by most commands

    return keyring


def store_password(account_name: str, password: str) -> None:
    """Put the password in the keyring. Raises SecretError when no keyring can hold it."""
    keyring = _keyring()
    from keyring.errors import KeyringError, NoKeyringError

    try:
        keyring.set_password(SERVICE, account_name, password)
    except NoKeyringError:
        raise SecretError(f"cannot store the password of account {account_name!r}", HEADLESS_HINT) from None
    except KeyringError as exc:
        raise SecretError(
            f"the keyring refused to store the password of account {account_name!r}: {exc}",
            "unlock the keyring, or see README: Passwords on a headless server",
        ) from None


def delete_password(account_name: str) -> bool:
    """Remove the password from the keyring; False when there was none."""
    keyring = _keyring()
    from keyring.errors import KeyringError, PasswordDeleteError

    try:
        keyring.delete_password(SERVICE, account_name)
        return True
    except PasswordDeleteError:
        return False
    except KeyringError:
        return False


def _from_keyring(name: str) -> tuple[str | None, str]:
    keyring = _keyring()
    from keyring.errors import KeyringError, NoKeyringError

    try:
        value = keyring.get_password(SERVICE, name)
    except NoKeyringError:
        return None, "keyring (no backend available)"
    except KeyringError as exc:
        return None, f"keyring ({exc.__class__.__name__})"
    return value, "keyring"


def _from_credentials(name: str) -> tuple[str | None, str]:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None, "systemd credentials ($CREDENTIALS_DIRECTORY not set)"
    path = Path(directory) / name
    try:
        return path.read_text().rstrip("\r\n"), f"systemd credential {path}"
    except OSError:
        return None, f"systemd credential {path} (not found)"


def _from_command(account: Account) -> tuple[str | None, str]:
    if not account.password_command:
        return None, "password_command (not set)"
    try:
        proc = subprocess.run(
            account.password_command,
            shell=True,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SecretError(
            f"password_command of account {account.name!r} did not finish within 60 s",
            "check the command by running it by hand",
        ) from None
    if proc.returncode != 0:
        # stderr may say why; stdout might hold a secret and is never shown.
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SecretError(
            f"password_command of account {account.name!r} failed with exit code {proc.returncode}"
            + (f": {err[-1]}" if err else ""),
            f"run it by hand to check: {shlex.split(account.password_command)[0]}",
        )
    value = proc.stdout.decode().rstrip("\r\n")
    return (value or None), "password_command (printed nothing)" if not value else "password_command"


def get_password(account: Account) -> str:
    """The account's secret, looked up in the documented order; SecretError names every source tried."""
    tried = []
    for lookup in (_from_keyring, _from_credentials):
        value, where = lookup(account.name)
        if value:
            return value
        tried.append(where)
    value, where = _from_command(account)
    if value:
        return value
    tried.append(where)
    raise SecretError(
        f"no password found for account {account.name!r}; tried: " + "; ".join(tried),
        f"run 'mail2ticket accounts set-password {account.name}' or see README: Passwords",
    )
