"""What 'config check' finds that loading a config cannot: files that are missing, passwords that
are nowhere, directories that cannot be written. Each problem is one line saying what to do."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

from mail2ticket.accounts.secrets import hook_secret_source, secret_source
from mail2ticket.accounts.storage import storage_problems
from mail2ticket.config.hooks import Hook
from mail2ticket.config.model import Account, Config


def problems(cfg: Config) -> list[str]:
    """Every problem of the config, one line each (empty when it can work)."""
    found = []
    found += _storage_problems(cfg)
    found += storage_problems(cfg)
    for account in cfg.accounts:
        found += account_problems(account)
    for hook in cfg.hooks:
        found += hook_problems(cfg, hook)
    return found


def hook_problems(cfg: Config, hook: Hook) -> list[str]:
    """A [[hooks]] entry that cannot deliver: its program is not there, a webhook has no signing
    secret, its ca_file is missing (docs/hooks.md). Nothing is run or sent."""
    where = f"{cfg.path}: hook {hook.name}"
    found = []
    if hook.command:
        problem = _command_problem(shlex.join(hook.command))
        if problem:
            found.append(f"{where}: command {problem} (fix 'command': an argument list, the program first)")
    problem = _command_problem(shlex.join(hook.secret_command)) if hook.secret_command else None
    if problem:
        found.append(f"{where}: secret_command {problem} (fix the command; it must print the secret)")
    if hook.url and not hook.secret_command and hook_secret_source(hook.name) is None:
        found.append(f"{where}: no signing secret in the keyring or in $CREDENTIALS_DIRECTORY/{hook.name}.hook "
                     f"(run 'mail2ticket hooks set-secret {hook.name}')")
    if hook.ca_file and not Path(hook.ca_file).is_file():
        found.append(f"{where}: ca_file {hook.ca_file} does not exist (fix the path, or remove the key to "
                     "trust the system's CAs only)")
    return found


def needs_secret(account: Account) -> bool:
    """An IMAP account signs in to read; any account with an SMTP server signs in to send."""
    return account.source == "imap" or bool(account.smtp_host)


def account_problems(account: Account) -> list[str]:
    where = f"{account.defined_in}: account {account.name}"
    found = []
    if account.ca_file and not Path(account.ca_file).is_file():
        found.append(f"{where}: ca_file {account.ca_file} does not exist (fix the path, or remove the "
                     "key to trust the system's CAs only)")
    if account.source == "maildir":
        root = Path(account.path or "")
        if not root.is_dir():
            found.append(f"{where}: the Maildir {root} does not exist (fix 'path', or create it with "
                         "its new/, cur/ and tmp/ directories)")
        elif not ((root / "new").is_dir() and (root / "cur").is_dir()):
            found.append(f"{where}: {root} is not a Maildir (no new/ or cur/ in it; fix 'path')")
    if account.password_command:
        problem = _command_problem(account.password_command)
        if problem:
            found.append(f"{where}: password_command {problem} (fix the command; it must print the password)")
    if account.enabled and needs_secret(account):

        if secret_source(account) is None:
            if account.auth == "oauth2":
                found.append(f"{where}: no OAuth2 sign-in stored (run 'mail2ticket accounts sign-in "
                             f"{account.name}')")
            else:
                found.append(f"{where}: no password in the keyring, in $CREDENTIALS_DIRECTORY or from a "
                             f"password_command (run 'mail2ticket accounts set-password {account.name}', "
                             "or see README: Passwords)")
    return found


def _command_problem(command: str) -> str | None:
    """Why the command's program cannot run, or None. The command itself is never run here."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"cannot be read as a command ({exc})"
    while words and "=" in words[0] and "/" not in words[0].split("=")[0]:
        words = words[1:]  # VAR=value before the program
    if not words:
        return "is empty"
    program = words[0]
    if "/" in program:
        path = Path(os.path.expanduser(program))
        if not path.exists():
            return f"{program} does not exist"
        if not path.is_file() or not os.access(path, os.X_OK):
            return f"{program} is not an executable file"
        return None
    if shutil.which(program) is None and program not in _SHELL_BUILTINS:
        return f"{program} is not found on $PATH ({os.environ.get('PATH', '')})"
    return None


_SHELL_BUILTINS = {"echo", "printf", "test", "[", "eval", "exec", "command", "read", ":"}


def _storage_problems(cfg: Config) -> list[str]:
    found = []
    local = "s3.staging" if cfg.object_store is not None else "attachments"  # the bucket: storage_problems
    for what, path, is_dir in (("database", cfg.database, False), (local, cfg.attachments, True)):
        if "://" in str(path):
            continue  # a server URL (PostgreSQL, S3): checked by connecting, not here
        directory = path if is_dir else path.parent
        problem = _unwritable(directory)
        if problem:
            found.append(f"{cfg.path}: [storage] {what} = {path}: {problem} (fix the path, or the "
                         "directory's owner and mode for the user that runs mail2ticket)")
        elif not is_dir and path.exists() and not os.access(path, os.W_OK):
            found.append(f"{cfg.path}: [storage] database {path} is not writable (check its owner and mode)")
    return found


def _unwritable(directory: Path) -> str | None:
    """Why a file cannot be created in ``directory`` (or in the nearest existing parent, where it
    would be created), or None. Tried for real: permission bits do not tell for root or a
    read-only mount."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            return f"no part of {directory} exists"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".mail2ticket-check-")
    except OSError as exc:
        return f"the directory {probe} is not writable ({exc.strerror})"
    os.close(fd)
    os.unlink(name)
    return None
