"""Find and store account passwords: the OS keyring, systemd credentials, or a password command."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from mail2ticket.config.model import Account
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
    from keyring.errors import (  # keyring loads only when a secret is read or written (slow to import)
        KeyringError,
        NoKeyringError,
    )

    try:
        keyring.set_password(SERVICE, account_name, password)
    except NoKeyringError:
        raise SecretError(f"cannot store the password of account {account_name!r}", HEADLESS_HINT) from None
    except KeyringError as exc:
        raise SecretError(
            f"the keyring refused to store the password of account {account_name!r}: {exc}",
            "unlock the keyring, or see README: Passwords",
        ) from None


def delete_password(account_name: str) -> bool:
    """Remove the password from the keyring; False when there was none."""
    keyring = _keyring()
    from keyring.errors import (  # keyring loads only when a secret is read or written (slow to import)
        KeyringError,
        PasswordDeleteError,
    )

    try:
        keyring.delete_password(SERVICE, account_name)
        return True
    except PasswordDeleteError:
        return False
    except KeyringError:
        return False


# The keyring backends that never hold a secret, when PYTHON_KEYRING_BACKEND names one (as a
# headless server's unit does: examples/mail2ticket.service): what asking them would answer,
# known without importing keyring (15-50 ms of the start-up of every command on PostgreSQL,
# whose password is looked up first in the keyring). keyring itself takes this variable before
# any other setting (its load_env, then keyringrc.cfg, then the detection), so the answer is
# the same; once keyring is loaded (a backend set in code), it is asked as usual.
NO_SECRET_BACKENDS = {
    "keyring.backends.fail.Keyring": "keyring (no backend available)",  # NoKeyringError
    "keyring.backends.null.Keyring": "keyring",  # None
}


def _from_keyring(name: str) -> tuple[str | None, str]:
    if "keyring" not in sys.modules:
        nothing = NO_SECRET_BACKENDS.get(os.environ.get("PYTHON_KEYRING_BACKEND", ""))
        if nothing is not None:
            return None, nothing
    keyring = _keyring()
    from keyring.errors import (  # keyring loads only when a secret is read or written (slow to import)
        KeyringError,
        NoKeyringError,
    )

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
    return _run_command(account.password_command, f"password_command of account {account.name!r}")


def _run_command(command: str | None, what: str) -> tuple[str | None, str]:
    """What ``command`` prints (one secret), for the secret chain; ``what`` names it in errors."""
    label = what.split(" of ")[0]
    if not command:
        return None, f"{label} (not set)"
    try:
        proc = subprocess.run(
            command,
            shell=True,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SecretError(
            f"{what} did not finish within 60 s",
            "check the command by running it by hand",
        ) from None
    if proc.returncode != 0:
        # stderr may say why; stdout might hold a secret and is never shown.
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SecretError(
            f"{what} failed with exit code {proc.returncode}"
            + (f": {err[-1]}" if err else ""),
            f"run it by hand to check: {shlex.split(command)[0]}",
        )
    value = proc.stdout.decode().rstrip("\r\n")
    return (value or None), f"{label} (printed nothing)" if not value else label


def get_named_secret(name: str, command: str | None, what: str, command_key: str) -> str:
    """A secret that is not an account's (the S3 secret key of the attachment store): the keyring
    entry ``name`` (service "mail2ticket"), then $CREDENTIALS_DIRECTORY/``name``, then what
    ``command`` prints. SecretError names every source tried."""
    value, tried = _first_of(((_from_keyring, name), (_from_credentials, name)))
    if value:
        return value
    return _named_from_command(name, command, what, command_key, tried)


def find_named_secret(name: str, command: str | None, what: str, command_key: str) -> str | None:
    """get_named_secret, or None when none of its sources is set up (no keyring entry, no
    credential, no command); each source asked once (the PostgreSQL password, asked at each
    connection: libpq's own sources come after these)."""
    value, tried = _first_of(((_from_keyring, name), (_from_credentials, name)))
    if value:
        return value
    if not command:
        return None
    return _named_from_command(name, command, what, command_key, tried)


def _named_from_command(name: str, command: str | None, what: str, command_key: str, tried: list[str]) -> str:
    value, where = _run_command(command, f"{command_key} of {what}")
    if value:
        return value
    tried.append(where)
    raise SecretError(
        f"no secret found for {what}; tried: " + "; ".join(tried),
        f"run 'keyring set {SERVICE} {name}', or give it as systemd credential {name}, or set {command_key}",
    )


def _first_of(lookups) -> tuple[str | None, list[str]]:
    """The first secret found by the (lookup, key) pairs, and where each earlier one looked."""
    tried = []
    for lookup, key in lookups:
        value, where = lookup(key)
        if value:
            return value, tried
        tried.append(where)
    return None, tried


def named_secret_source(name: str, command: str | None) -> str | None:
    """Where get_named_secret would find the secret, or None. Never runs the command."""
    for lookup in (_from_keyring, _from_credentials):
        value, where = lookup(name)
        if value:
            return where
    return "command" if command else None


# --- OAuth2 refresh tokens: a second kind of secret, kept beside the password -----------------
# Keyring username "NAME:oauth2"; systemd credential "NAME.oauth2" (':' cannot appear in a
# LoadCredential= id).


def token_key(account_name: str) -> str:
    return f"{account_name}:oauth2"


def store_token(account_name: str, refresh_token: str) -> None:
    """Keep an OAuth2 refresh token in the keyring. Raises SecretError like store_password."""
    store_password(token_key(account_name), refresh_token)


def delete_token(account_name: str) -> bool:
    return delete_password(token_key(account_name))


def get_token(account: Account) -> str:
    """The account's OAuth2 refresh token: the keyring, then $CREDENTIALS_DIRECTORY/NAME.oauth2."""
    value, tried = _first_of(((_from_keyring, token_key(account.name)), (_from_credentials, f"{account.name}.oauth2")))
    if value:
        return value
    raise SecretError(
        f"no OAuth2 sign-in stored for account {account.name!r}; tried: " + "; ".join(tried),
        f"run 'mail2ticket accounts sign-in {account.name}'",
    )


def secret_source(account: Account) -> str | None:
    """Where the account's secret would come from ("keyring", "systemd credential ...",
    "password_command"), or None when there is none. Never runs the password_command."""
    if account.auth == "oauth2":
        keys = ((_from_keyring, token_key(account.name)), (_from_credentials, f"{account.name}.oauth2"))
    else:
        keys = ((_from_keyring, account.name), (_from_credentials, account.name))
    for lookup, key in keys:
        value, where = lookup(key)
        if value:
            return where
    if account.auth != "oauth2" and account.password_command:
        return "password_command"
    return None


def get_password(account: Account) -> str:
    """The account's password, looked up in the documented order; SecretError names every source
    tried. (What an account signs in with, OAuth2 tokens included: credentials.sign_in_secret.)"""
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
    hint = f"run 'mail2ticket accounts set-password {account.name}' or see README: Passwords"
    if "no backend" in tried[0]:  # a headless server: set-password cannot help
        hint = (f"put it in $CREDENTIALS_DIRECTORY/{account.name} (systemd LoadCredentialEncrypted="
                f"{account.name}:FILE, see examples/systemd.md) or set password_command for the account")
    raise SecretError(
        f"no password found for account {account.name!r}; tried: " + "; ".join(tried), hint
    )


# --- hook secrets: the key that signs a webhook's body ([[hooks]], docs/hooks.md) ---------------
# Keyring username "NAME:hook"; systemd credential "NAME.hook"; or the hook's secret_command.


def hook_key(hook_name: str) -> str:
    return f"{hook_name}:hook"


def store_hook_secret(hook_name: str, secret: str) -> None:
    """Keep a hook's signing secret in the keyring. Raises SecretError like store_password."""
    store_password(hook_key(hook_name), secret)


def hook_secret_source(hook_name: str) -> str | None:
    """Where a hook's secret would come from without its secret_command ("keyring", "systemd
    credential ..."), or None."""
    for lookup, key in ((_from_keyring, hook_key(hook_name)), (_from_credentials, f"{hook_name}.hook")):
        value, where = lookup(key)
        if value:
            return where
    return None


def get_hook_secret(hook_name: str, secret_command: tuple[str, ...] | None) -> str:
    """A hook's signing secret: the keyring, $CREDENTIALS_DIRECTORY/NAME.hook, then its
    secret_command (an argument list, no shell). SecretError names every source tried."""
    tried = []
    for lookup, key in ((_from_keyring, hook_key(hook_name)), (_from_credentials, f"{hook_name}.hook")):
        value, where = lookup(key)
        if value:
            return value
        tried.append(where)
    if secret_command:
        try:
            proc = subprocess.run(list(secret_command), capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SecretError(f"secret_command of hook {hook_name!r} could not run: {exc}",
                              "check the command by running it by hand") from None
        value = proc.stdout.decode(errors="replace").rstrip("\r\n")
        if proc.returncode == 0 and value:
            return value
        tried.append(f"secret_command (exit code {proc.returncode}{', printed nothing' if not value else ''})")
    else:
        tried.append("secret_command (not set)")
    raise SecretError(
        f"no signing secret for hook {hook_name!r}; tried: " + "; ".join(tried),
        f"run 'mail2ticket hooks set-secret {hook_name}' (see docs/hooks.md)",
    )


def move_secret(old_key: str, new_key: str) -> bool:
    """Move a keyring entry to a new name (an account renamed); False when there was none."""
    value, _where = _from_keyring(old_key)
    if not value:
        return False
    store_password(new_key, value)
    delete_password(old_key)
    return True
