"""Renaming an account everywhere its name is kept (its file, the keyring, the database), and removing one."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlite_utils import Database

from mail2ticket.config import (
    ACCOUNT_NAME_RE,
    Config,
    account_entries,
    account_file,
    comment_header,
    own_account_file,
    write_account_entries,
)
from mail2ticket.errors import ConfigError, SecretError
from mail2ticket.store import transaction

log = logging.getLogger(__name__)


def account_tables(db: Database) -> list[str]:
    """Every ordinary table with an ``account`` column (tickets, messages, sources, ...)."""
    out = []
    for row in db.query(
        "select name, sql from sqlite_master where type = 'table' and name not like 'sqlite_%'"
    ):
        if (row["sql"] or "").upper().startswith("CREATE VIRTUAL"):
            continue
        columns = [c[1] for c in db.execute(f'pragma table_info("{row["name"]}")').fetchall()]
        if "account" in columns:
            out.append(row["name"])
    return sorted(out)


def rename_in_db(db: Database, old: str, new: str) -> dict[str, int]:
    """Change the account name in every table, in one transaction. {table: rows changed}."""
    tables = account_tables(db)
    changed: dict[str, int] = {}
    with transaction(db):
        for table in tables:
            clash = db.execute(f'select count(*) from "{table}" where account = ?', [new]).fetchone()[0]
            if clash:
                raise ConfigError(
                    f"the database already holds {clash} row(s) of an account named {new!r} (table {table})",
                    "choose another name (that name was used by an account removed earlier)",
                )
            cursor = db.execute(f'update "{table}" set account = ? where account = ?', [new, old])
            changed[table] = cursor.rowcount
    return changed


def _move_secret(old_key: str, new_key: str) -> bool:
    from mail2ticket.secrets import _from_keyring, delete_password, store_password

    value, _where = _from_keyring(old_key)
    if not value:
        return False
    store_password(new_key, value)
    delete_password(old_key)
    return True


def rename_account(cfg: Config, db: Database, old: str, new: str) -> Path:
    """Rename ``old`` to ``new``; returns the new account file. Refuses before changing anything."""
    from mail2ticket.secrets import token_key

    cfg.account(old)  # an unknown account is refused first
    if not ACCOUNT_NAME_RE.match(new):
        raise ConfigError(f"{new!r} is not a valid account name", "use letters, digits, '.', '_' or '-' (at most 64)")
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
            _move_secret(old_key, new_key)
        except SecretError as exc:
            log.warning("account %s: could not move its secret in the keyring: %s", new, exc)
            raise SecretError(
                f"account renamed to {new!r}, but its secret could not be moved in the keyring: {exc}",
                f"store it again with 'mail2ticket accounts set-password {new}' (or sign-in)",
            ) from None
    return target


def remove_account(cfg: Config, name: str) -> bool:
    """Delete the account's own file and its secrets in the keyring (its tickets are kept).
    True when a secret was deleted."""
    from mail2ticket.secrets import delete_password, delete_token

    own_account_file(cfg, name, "remove").unlink()
    deleted = delete_password(name)
    return delete_token(name) or deleted
