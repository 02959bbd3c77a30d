"""Renaming an account everywhere its name is kept: its file, the keyring and the database."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlite_utils import Database

from mail2ticket.config import ACCOUNT_NAME_RE, Config, _atomic_write, _read_toml, account_file
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
    import tomli_w

    from mail2ticket.secrets import token_key

    account = cfg.account(old)
    if not ACCOUNT_NAME_RE.match(new):
        raise ConfigError(f"{new!r} is not a valid account name", "use letters, digits, '.', '_' or '-' (at most 64)")
    if any(a.name == new for a in cfg.accounts):
        raise ConfigError(f"an account named {new!r} exists already", "choose another name")
    src = Path(account.defined_in)
    if src == cfg.path:
        raise ConfigError(
            f"account {old!r} is defined in the main config {src}",
            "rename it there by hand (mail2ticket never rewrites that file, to keep your comments)",
        )
    data = _read_toml(src)
    entries = data.get("accounts", [])
    entries = [entries] if isinstance(entries, dict) else entries
    if len(entries) != 1:
        raise ConfigError(f"{src} holds {len(entries)} accounts", "rename the account there by hand")
    entries[0]["name"] = new
    target = account_file(cfg, new)
    if target.exists():
        raise ConfigError(f"{target} exists already", "move it away or choose another name")
    text = src.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    header = header.replace(f"Account {old!r}", f"Account {new!r}")
    _atomic_write(target, (header + tomli_w.dumps({"accounts": entries})).encode())
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
