"""Renaming an account everywhere its name is kept (its file, the keyring, the database), and removing one."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from mail2ticket.accounts.secrets import delete_password, delete_token, move_secret, token_key
from mail2ticket.config.accounts import account_name_problem
from mail2ticket.config.files import (
    account_entries,
    account_file,
    atomic_write,
    comment_header,
    own_account_file,
    write_account_entries,
)
from mail2ticket.config.model import Config
from mail2ticket.errors import ConfigError, SecretError
from mail2ticket.tickets.db import rename_in_db

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)


def rename_account(cfg: Config, db: Database, old: str, new: str) -> Path:
    """Rename ``old`` to ``new``; returns the new account file. Refuses before changing anything."""

    cfg.account(old)  # an unknown account is refused first
    problem = account_name_problem(new)
    if problem:
        raise ConfigError(*problem)
    if any(a.name == new for a in cfg.accounts):
        raise ConfigError(f"an account named {new!r} exists already", "choose another name")
    src = own_account_file(cfg, old, "rename")
    entries = account_entries(src)
    if len(entries) != 1:
        raise ConfigError(f"{src} holds {len(entries)} accounts", "rename the account there by hand")
    entries[0]["name"] = new
    target = account_file(cfg, new)
    if target.exists():
        raise ConfigError(f"{target} exists already", "move it away or choose another name")
    header = comment_header(src).replace(f"Account {old!r}", f"Account {new!r}")
    write_account_entries(target, entries, header)
    try:
        rename_in_db(db, old, new)
    except BaseException:
        target.unlink()
        raise
    src.unlink()
    for old_key, new_key in ((old, new), (token_key(old), token_key(new))):
        try:
            move_secret(old_key, new_key)
        except SecretError as exc:
            log.warning("account %s: could not move its secret in the keyring: %s", new, exc)
            raise SecretError(
                f"account renamed to {new!r}, but its secret could not be moved in the keyring: {exc}",
                f"store it again with 'mail2ticket accounts set-password {new}' (or sign-in)",
            ) from None
    return target


def remove_account(cfg: Config, name: str) -> bool:
    """Remove the account's entry from its file (the file itself when it held only that one) and
    its secrets in the keyring; its tickets are kept. True when a secret was deleted.

    In a file with several [[accounts]], only that entry goes: the others, and every comment not
    attached to it, stay as written (the file is edited as text, then checked by parsing it)."""

    src = own_account_file(cfg, name, "remove")
    entries = account_entries(src)
    if len(entries) <= 1:
        src.unlink()
    else:
        atomic_write(src, without_entry(src, entries, name).encode())
    deleted = delete_password(name)
    return delete_token(name) or deleted


_ENTRY = re.compile(r"^\s*\[\[\s*accounts\s*\]\]\s*(#.*)?$")
_TABLE = re.compile(r"^\s*\[")


def without_entry(path: Path, entries: list[dict], name: str) -> str:
    """The text of ``path`` without the [[accounts]] table named ``name`` and the comment lines
    right above it. Refuses (ConfigError) when the result would not hold exactly the others."""

    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _ENTRY.match(line)]
    keep = [e for e in entries if e.get("name") != name]
    index = next((i for i, e in enumerate(entries) if e.get("name") == name), None)
    if index is None or len(starts) != len(entries):
        raise ConfigError(f"{path} holds {len(entries)} accounts", "remove the account there by hand")
    begin = starts[index]
    while begin > 0 and lines[begin - 1].lstrip().startswith("#"):
        begin -= 1  # the comment that introduces this entry goes with it
    end = len(lines)
    for i in range(starts[index] + 1, len(lines)):
        if _TABLE.match(lines[i]) and not lines[i].lstrip().startswith("[accounts."):
            end = i
            break
    while end > begin and lines[end - 1].lstrip().startswith("#") and end < len(lines):
        end -= 1  # ... but the next entry's comment stays with the next entry
    text = "".join(lines[:begin] + lines[end:])
    try:
        left = tomllib.loads(text).get("accounts", [])
    except tomllib.TOMLDecodeError:
        left = None
    if left != keep:
        raise ConfigError(
            f"{path} holds {len(entries)} accounts and the entry of {name!r} could not be cut out cleanly",
            "remove the account there by hand",
        )
    return text
