"""Find and load the TOML config and the account files it includes; check every table (config/*.py)."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from mail2ticket.config.accounts import build_account
from mail2ticket.config.checks import (
    accounts_array,
    check_schedule,
    check_table,
    is_int,
    is_str,
    is_str_list,
    is_table,
    parse_size,
    read_toml,
)
from mail2ticket.config.conversations import CONVERSATION_KEYS, check_conversations
from mail2ticket.config.daemon import check_daemon
from mail2ticket.config.hooks import check_hooks
from mail2ticket.config.metrics import check_metrics
from mail2ticket.config.model import Account, Config
from mail2ticket.config.monitoring import check_monitoring
from mail2ticket.config.rules import compile_rules
from mail2ticket.config.sla import SLA_KEYS
from mail2ticket.config.sla import check_config as check_sla
from mail2ticket.config.storage import check_database_url, check_s3, is_postgres, is_s3, no_s3_table
from mail2ticket.errors import ConfigError

APP = "mail2ticket"
DEFAULT_INCLUDE = ["accounts.d/*.toml"]


def default_config_path() -> Path:
    """The config used when neither --config nor MAIL2TICKET_CONFIG names one (INTERFACE.md)."""
    env = os.environ.get("MAIL2TICKET_CONFIG")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = Path(xdg) / APP / "config.toml"
    system = Path("/etc") / APP / "config.toml"
    if user.exists() or not system.exists():
        return user
    return system


def default_data_dir() -> Path:
    """Where the database and attachments go when the config does not say."""
    state = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
    if state:
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / APP


STORAGE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "database": (is_str, None, "a path to the SQLite file, or a PostgreSQL URL postgresql://user@host:5432/dbname"),
    "password_command": (is_str, None, "a command that prints the PostgreSQL database's password"),
    "attachments": (is_str, None, 'a directory path, or an S3 location "s3://bucket/prefix"'),
    "s3": (is_table, {}, "a table: the endpoint and credentials of an s3:// attachments location"),
    "instance": (is_str, None, 'a name for a directory of its own in the default data directory, such as "demo"'),
}
SCHEDULE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "poll": (is_str, "*/5", 'a schedule such as "*/5", "0,30", "10m" or "30s"'),
    "overdue": (is_str, "*/15", 'a schedule such as "*/15" or "1h"'),
    "outbox": (is_str, "1m", 'a schedule such as "1m"'),
    "metrics": (is_str, "1m", 'a schedule such as "1m" (how often the [metrics] textfile is written)'),
    "hooks": (is_str, "15s", 'a schedule such as "15s" (the daemon also delivers right after a poll)'),
}


LIMIT_KEYS: dict[str, tuple[Any, Any, str]] = {
    "max_message_size": (is_str, "50MB", 'a size such as "50MB"'),
    "max_attachment_size": (is_str, "40MB", 'a size such as "25MB"'),
}
# [performance]: how an import uses the machine (docs/performance.md).
PERFORMANCE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "workers": (is_int, None, "a number of parser processes, 0 to parse in the main process"),
    "parse_timeout": (is_int, 60, "seconds one message may take to parse before it is quarantined"),
    # The daemon's logins to one server per second (start-up, reloads, reconnects): docs/daemon.md.
    "logins_per_second": (lambda v: is_int(v) or isinstance(v, float), 5, "a number of logins per second"),
}
TOP_KEYS = {"include", "storage", "schedule", "sla", "limits", "accounts", "rules", "conversations", "performance", "monitoring",
            "metrics", "hooks", "daemon"}


def load_config(path: str | os.PathLike | None = None, *, must_exist: bool = True) -> Config:
    """Load and validate the config at ``path`` (or the default one) and the files it includes."""
    cfg_path = Path(path) if path else default_config_path()
    cfg_path = Path(os.path.abspath(os.path.expanduser(cfg_path)))
    if not cfg_path.exists() and not must_exist:
        data: dict[str, Any] = {}
        exists = False
    else:
        data = read_toml(cfg_path)
        exists = True
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(
                f"{cfg_path}: unknown key '{key}'", f"expected one of: {', '.join(sorted(TOP_KEYS))}"
            )
    include = data.get("include", DEFAULT_INCLUDE)
    if not is_str_list(include):
        raise ConfigError(f"{cfg_path}: 'include' must be a list of file patterns")
    storage = check_table(cfg_path, "storage", data.get("storage", {}), STORAGE_KEYS)
    schedule = check_table(cfg_path, "schedule", data.get("schedule", {}), SCHEDULE_KEYS)
    for key, value in schedule.items():
        check_schedule(cfg_path, f"schedule.{key}", value)
    sla = check_table(cfg_path, "sla", data.get("sla", {}), SLA_KEYS)
    limits = check_table(cfg_path, "limits", data.get("limits", {}), LIMIT_KEYS)
    sizes = {}
    for key, value in limits.items():
        try:
            sizes[key] = parse_size(value)
        except ValueError:
            raise ConfigError(f"{cfg_path}: 'limits.{key}' = {value!r} is not a size", 'expected e.g. "50MB"') from None
    base = cfg_path.parent
    data_dir = default_data_dir()
    instance = storage.get("instance")
    if instance is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", instance):
            raise ConfigError(
                f"{cfg_path}: 'storage.instance' = {instance!r} is not a plain name",
                'expected letters, digits, ".", "_" or "-", such as "demo"',
            )
        data_dir = data_dir / instance

    def resolve(value: str | None, default: Path) -> Path:
        if value is None:
            return default
        return (base / os.path.expanduser(value)).resolve()

    accounts: list[Account] = []
    files = [cfg_path] if exists else []
    raw_accounts: list[tuple[Path, Any]] = [(cfg_path, a) for a in accounts_array(cfg_path, data.get("accounts", []))]
    for pattern in include:
        for name in sorted(glob.glob(str(base / os.path.expanduser(pattern)))):
            inc_path = Path(name)
            inc = read_toml(inc_path)
            for key in inc:
                if key != "accounts":
                    raise ConfigError(
                        f"{inc_path}: unknown key '{key}'", "an included file holds only [[accounts]]"
                    )
            files.append(inc_path)
            raw_accounts.extend((inc_path, a) for a in accounts_array(inc_path, inc.get("accounts", [])))
    seen: dict[str, Path] = {}
    for index, (src, raw) in enumerate(raw_accounts):
        account = build_account(src, index, raw)
        if account.name in seen:
            raise ConfigError(
                f"{src}: account {account.name!r} is defined twice (also in {seen[account.name]})",
                "give each account a unique name",
            )
        seen[account.name] = src
        accounts.append(account)
    conversations = check_table(cfg_path, "conversations", data.get("conversations", {}), CONVERSATION_KEYS)
    performance = check_table(cfg_path, "performance", data.get("performance", {}), PERFORMANCE_KEYS)
    for key, low in (("workers", 0), ("parse_timeout", 1), ("logins_per_second", 0.01)):
        if performance[key] is not None and performance[key] < low:
            raise ConfigError(f"{cfg_path}: 'performance.{key}' must be at least {low}")
    check_conversations(cfg_path, conversations)

    account_names = [a.name for a in accounts]
    sla = check_sla(cfg_path, sla, account_names)
    rules = compile_rules(cfg_path, data.get("rules", []), account_names)
    monitoring = check_monitoring(cfg_path, data.get("monitoring", {}))
    metrics_textfile = check_metrics(cfg_path, data.get("metrics", {}))
    object_store = None
    if is_s3(storage["attachments"]):
        object_store, staging = check_s3(cfg_path, storage["attachments"], storage["s3"],
                                         lambda v: resolve(v, data_dir))
        attachments = staging or data_dir / "staging"  # temp files and files on their way to the bucket
    else:
        no_s3_table(cfg_path, storage["s3"])
        attachments = resolve(storage["attachments"], data_dir / "attachments")
    hooks = check_hooks(cfg_path, data.get("hooks", []), account_names)
    daemon = check_daemon(cfg_path, data.get("daemon", {}))
    database_url = None
    if is_postgres(storage["database"]):
        database_url = check_database_url(cfg_path, storage["database"])
        database = data_dir / "postgresql"  # the local lock files: postgresql.daemon.lock, ...
    else:
        if storage["password_command"] is not None:
            raise ConfigError(f"{cfg_path}: 'storage.password_command' is for a PostgreSQL database",
                              "remove it, or set storage.database to a postgresql:// URL")
        database = resolve(storage["database"], data_dir / "mail2ticket.db")
    # PostgreSQL and no attachments location: attachments go into the database (tickets/blobs.py),
    # so a second host needs nothing shared but the database; staged locally on their way there.
    attachments_in_database = database_url is not None and storage["attachments"] is None
    if attachments_in_database:
        attachments = data_dir / "staging"
    return Config(
        path=cfg_path,
        database=database,
        database_url=database_url,
        database_password_command=storage["password_command"],
        attachments=attachments,
        object_store=object_store,
        attachments_in_database=attachments_in_database,
        attachments_given=storage["attachments"] is not None,
        schedule=schedule,
        sla=sla,
        max_message_size=sizes["max_message_size"],
        max_attachment_size=sizes["max_attachment_size"],
        accounts=accounts,
        rules=rules,
        conversations=conversations,
        files=files,
        exists=exists,
        workers=performance["workers"],
        parse_timeout=performance["parse_timeout"],
        logins_per_second=performance["logins_per_second"],
        monitoring=monitoring,
        metrics_textfile=metrics_textfile,
        hooks=hooks,
        daemon=daemon,
    )


