"""Writing accounts: accounts.d/NAME.toml files, rewritten atomically, comments kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mail2ticket.config.accounts import ACCOUNT_KEYS
from mail2ticket.config.checks import accounts_array, read_toml
from mail2ticket.config.model import Config
from mail2ticket.errors import ConfigError

# --- writing ------------------------------------------------------------------------------------
MAIN_TEMPLATE = """\
# mail2ticket configuration. See config.example.toml for every key.
# Accounts added with 'mail2ticket add-account' are written to accounts.d/NAME.toml
# beside this file, so this file (and your comments in it) is never rewritten.

[schedule]
poll = "*/5"      # every 5 minutes, aligned to the clock
overdue = "*/15"
"""


def account_file(cfg: Config, name: str) -> Path:
    return cfg.accounts_dir / f"{name}.toml"


def write_account(cfg: Config, values: dict[str, Any]) -> Path:
    """Write one account to accounts.d/NAME.toml (atomically); create the main config if missing."""
    if not cfg.exists:
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cfg.path, MAIN_TEMPLATE.encode())
        cfg.exists = True
    clean = {k: v for k, v in values.items() if v is not None and k in ACCOUNT_KEYS}
    target = account_file(cfg, clean["name"])
    target.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Account {clean['name']!r}, written by 'mail2ticket'. Edit freely; the password is not\n"
        "# here but in the keyring (or see README: Passwords).\n"
    )
    write_account_entries(target, [clean], header)
    return target


def own_account_file(cfg: Config, name: str, action: str) -> Path:
    """The file account ``name`` is defined in, if it is not the main config: mail2ticket never
    rewrites that one (to keep its comments), so there ``action`` is left to be done by hand."""
    src = Path(cfg.account(name).defined_in)
    if src == cfg.path:
        raise ConfigError(
            f"account {name!r} is defined in the main config {src}",
            f"{action} it there by hand (mail2ticket never rewrites that file, to keep your comments)",
        )
    return src


def account_entries(path: Path) -> list[dict[str, Any]]:
    """The [[accounts]] tables of an account file."""
    return accounts_array(path, read_toml(path).get("accounts", []))


def write_account_entries(path: Path, entries: list[dict[str, Any]], header: str) -> None:
    """Write [[accounts]] tables to ``path`` atomically, after the comment lines ``header``."""
    import tomli_w  # tomli-w loads only when an account file is written

    atomic_write(path, (header + tomli_w.dumps({"accounts": entries})).encode())


def comment_header(path: Path) -> str:
    """The comment lines of a file, to keep them when it is rewritten."""
    return "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))


def update_account(cfg: Config, name: str, changes: dict[str, Any]) -> Path:
    """Change keys of an account that lives in its own file; refuse to rewrite the main file."""
    src = own_account_file(cfg, name, "edit")
    entries = account_entries(src)
    for entry in entries:
        if entry.get("name") == name:
            for key, value in changes.items():
                if value is None:
                    entry.pop(key, None)
                else:
                    entry[key] = value
    write_account_entries(src, entries, comment_header(src))
    return src


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)
