"""Find, load and validate the TOML config; write accounts to their own files beside it."""

from __future__ import annotations

import glob
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from mail2ticket.errors import ConfigError

APP = "mail2ticket"
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SECURITY_MODES = ("tls", "starttls", "none")
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


# --- schema -------------------------------------------------------------------------------------
# Each key: (type or tuple of types, default, description). ``REQUIRED`` marks required keys.
REQUIRED = object()


def is_str(v):
    return isinstance(v, str)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_bool(v):
    return isinstance(v, bool)


def is_date(v):
    return isinstance(v, date) or (isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v))


def is_str_list(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


STORAGE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "database": (is_str, None, "a path to the SQLite file"),
    "attachments": (is_str, None, "a directory path"),
    "instance": (is_str, None, 'a name for a directory of its own in the default data directory, such as "demo"'),
}
SCHEDULE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "poll": (is_str, "*/5", 'a schedule such as "*/5", "0,30", "10m" or "30s"'),
    "overdue": (is_str, "*/15", 'a schedule such as "*/15" or "1h"'),
    "outbox": (is_str, "1m", 'a schedule such as "1m"'),
}
def is_str_or_list(v):
    return isinstance(v, str) or is_str_list(v)


def is_table(v):
    return isinstance(v, dict)


def is_hours_or_false(v):
    return isinstance(v, str) or v is False


def is_date_list(v):
    return isinstance(v, list) and all(is_date(x) for x in v)


def is_header_patterns(v):
    return isinstance(v, dict) and all(isinstance(k, str) and is_str_or_list(x) for k, x in v.items())


SLA_KEYS: dict[str, tuple[Any, Any, str]] = {
    "response": (is_str, None, 'a duration such as "4h"'),
    "resolution": (is_str, None, 'a duration such as "3d"'),
    # Issue 7 (docs/triage.md): business hours, notices, per-priority and per-account targets.
    "business_hours": (is_str, None, 'a time range such as "09:00-17:00"'),
    "business_days": (is_str_list, None, 'a list of days such as ["mon", "tue", "wed", "thu", "fri"]'),
    "timezone": (is_str, None, 'an IANA time zone such as "Europe/Berlin"'),
    "holidays": (is_date_list, None, "a list of dates such as [2026-12-25]"),
    "notify": (is_str, None, "an e-mail address that gets a notice when targets are missed"),
    "notify_account": (is_str, None, "the account that sends the notice"),
    "priority": (is_table, None, "tables [sla.priority.NAME] with response and resolution"),
    "account": (is_table, None, "tables [sla.account.NAME] with response and resolution"),
}
# [sla.priority.NAME] and [sla.account.NAME].
SLA_TARGET_KEYS: dict[str, tuple[Any, Any, str]] = {
    "response": (is_str, None, 'a duration such as "30m"'),
    "resolution": (is_str, None, 'a duration such as "1d"'),
    "business_hours": (is_hours_or_false, None, 'a time range such as "09:00-17:00", or false for all hours'),
}
# [[rules]] (mail2ticket/tickets/rules.py, docs/triage.md): conditions, then actions.
RULE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (is_str, None, "a short name, shown in the ticket's history"),
    "match": (is_str, "substring", '"substring", "glob" or "regex"'),
    "account": (is_str_or_list, None, "an account name or a list of them"),
    "from": (is_str_or_list, None, "a pattern or a list of patterns"),
    "to": (is_str_or_list, None, "a pattern or a list of patterns"),
    "subject": (is_str_or_list, None, "a pattern or a list of patterns"),
    "body": (is_str_or_list, None, "a pattern or a list of patterns"),
    "headers": (is_header_patterns, None, 'a table of header = pattern, such as { "X-Spam-Flag" = "YES" }'),
    "priority": (is_str, None, '"low", "normal", "high" or "urgent"'),
    "tags": (is_str_or_list, None, "a tag or a list of tags"),
    "assignee": (is_str, None, "a name"),
    "queue": (is_str, None, "an account name"),
    "acknowledge": (is_bool, None, "true or false"),
    "ignore": (is_bool, False, "true or false"),
    "stop": (is_bool, False, "true or false"),
}
LIMIT_KEYS: dict[str, tuple[Any, Any, str]] = {
    "max_message_size": (is_str, "50MB", 'a size such as "50MB"'),
    "max_attachment_size": (is_str, "40MB", 'a size such as "25MB"'),
}
ACCOUNT_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (is_str, REQUIRED, "a short name of letters, digits, '.', '_' or '-'"),
    "email": (is_str, REQUIRED, "an e-mail address"),
    "username": (is_str, None, "the IMAP/SMTP login (defaults to email)"),
    "provider": (is_str, None, "a provider preset name (see 'mail2ticket providers')"),
    "source": (is_str, "imap", '"imap", "maildir" or "pipe" (mail arrives only by \'mail2ticket ingest\')'),
    "path": (is_str, None, "the Maildir path (source = \"maildir\")"),
    "imap_host": (is_str, None, "a host name"),
    "imap_port": (is_int, None, "a port number"),
    "imap_security": (is_str, None, '"tls", "starttls" or "none"'),
    "smtp_host": (is_str, None, "a host name"),
    "smtp_port": (is_int, None, "a port number"),
    "smtp_security": (is_str, None, '"tls", "starttls" or "none"'),
    "allow_insecure": (is_bool, False, "true or false"),
    "folder": (is_str, "INBOX", "an IMAP folder name"),
    "enabled": (is_bool, True, "true or false"),
    "ca_file": (is_str, None, "a path to a PEM CA bundle"),
    "since": (is_date, None, "a date such as 2026-01-31"),
    "after_import": (is_str, "seen", '"seen", "none", "delete", "archive" or "move:FOLDER"'),
    "poll": (is_str, None, 'a schedule such as "*/5" or "10m"'),
    "push": (is_bool, False, "true or false"),
    "password_command": (is_str, None, "a shell command that prints the password"),
    "acknowledge": (is_bool, True, "true or false"),
    "max_message_size": (is_str, None, 'a size such as "50MB"'),
    "timeout": (is_int, 60, "seconds"),
    "batch_size": (is_int, 100, "a number of messages"),
    "added_at": (is_str, None, "when the account was added (ISO 8601); older mail gets no acknowledgement"),
    # Sign-in (docs/providers.md): a password / app password, or OAuth2 with SASL XOAUTH2.
    "auth": (is_str, "password", '"password" or "oauth2"'),
    "smtp_username": (is_str, None, "the SMTP login, if not the IMAP one (iCloud: the full address)"),
    "oauth_client_id": (is_str, None, "the client (application) id registered with the provider"),
    "oauth_client_secret": (is_str, None, "the client secret, where the provider needs one (Google)"),
    "oauth_tenant": (is_str, None, 'a Microsoft Entra tenant: "organizations", "consumers" or an id'),
    "oauth_authorize_url": (is_str, None, "an OAuth2 authorization endpoint URL"),
    "oauth_token_url": (is_str, None, "an OAuth2 token endpoint URL"),
    "oauth_device_url": (is_str, None, "an OAuth2 device-authorization endpoint URL"),
    "oauth_scopes": (is_str, None, "space-separated OAuth2 scopes"),
    "oauth_redirect_uri": (is_str, None, 'the redirect URI registered for the app (default "http://localhost")'),
    # Threading and replies (docs/conversations.md).
    "allow_anyone_by_tag": (is_bool, False, "true or false"),
    "reopen_on_reply": (is_bool, True, "true or false"),
    # RELIABILITY 40: the authserv-id of OUR mail server, whose Authentication-Results are trusted.
    "authserv_id": (is_str_or_list, None, 'the authserv-id of your own mail server, such as "mx.example.com"'),
}
# [conversations]: threading, acknowledgements and notifications (docs/conversations.md).
# Templates left unset use the built-in texts of mail2ticket/outgoing/compose.py.
CONVERSATION_KEYS: dict[str, tuple[Any, Any, str]] = {
    "tag_format": (is_str, "[#{id}]", 'a subject tag containing {id}, such as "[#{id}]"'),
    "ack_subject": (is_str, None, 'a template such as "{tag} {subject}"'),
    "ack_body": (is_str, None, "a template using {ticket}, {tag}, {subject}, {requester}, {account}"),
    "close_subject": (is_str, None, "a template"),
    "close_body": (is_str, None, "a template"),
    "reopen_subject": (is_str, None, "a template"),
    "reopen_body": (is_str, None, "a template"),
    "reply_status": (is_str, "pending", '"open", "pending" or "closed"'),
    "auto_reply_limit": (is_int, 1, "a number of automatic mails per sender and period"),
    "auto_reply_period": (is_str, "24h", 'a duration such as "24h"'),
    # At most this many acknowledgements from one account per period, whoever they go to (item 56).
    "auto_reply_account_limit": (is_int, 100, "a number of acknowledgements per account and period"),
    "auto_reply_account_period": (is_str, "1h", 'a duration such as "1h"'),
    "outbox_expire": (is_str, "5d", 'a duration such as "5d"'),
    # Loop protection over all automatic mail (acks, notices), RELIABILITY 45 and 46.
    "auto_mail_ticket_limit": (is_int, 10, "a number of automatic mails per ticket and period"),
    "auto_mail_ticket_period": (is_str, "10m", 'a duration such as "10m"'),
    "auto_mail_address_limit": (is_int, 40, "a number of automatic mails per address and period"),
    "auto_mail_address_period": (is_str, "24h", 'a duration such as "24h"'),
    "failing_address_hold": (is_str, "60d", 'a duration such as "60d"'),
    # 'tickets reply --all' to more recipients than this asks for --yes (item 57).
    "reply_all_limit": (is_int, 20, "a number of recipients of one reply"),
}
# [performance]: how an import uses the machine (docs/performance.md).
PERFORMANCE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "workers": (is_int, None, "a number of parser processes, 0 to parse in the main process"),
    "parse_timeout": (is_int, 60, "seconds one message may take to parse before it is quarantined"),
    # The daemon's logins to one server per second (start-up, reloads, reconnects): docs/daemon.md.
    "logins_per_second": (lambda v: is_int(v) or isinstance(v, float), 5, "a number of logins per second"),
}
TOP_KEYS = {"include", "storage", "schedule", "sla", "limits", "accounts", "rules", "conversations", "performance"}


@dataclass
class Account:
    """One mailbox: where to read mail, where to send it, and how to treat what was read."""

    name: str
    email: str
    username: str
    provider: str | None = None
    source: str = "imap"
    path: str | None = None
    imap_host: str | None = None
    imap_port: int | None = None
    imap_security: str = "tls"
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str = "starttls"
    allow_insecure: bool = False
    folder: str = "INBOX"
    enabled: bool = True
    ca_file: str | None = None
    since: date | None = None
    after_import: str = "seen"
    poll: str | None = None
    push: bool = False
    password_command: str | None = None
    acknowledge: bool = True
    max_message_size: int | None = None
    timeout: int = 60
    batch_size: int = 100
    added_at: str | None = None
    auth: str = "password"
    smtp_username: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = None
    oauth_tenant: str | None = None
    oauth_authorize_url: str | None = None
    oauth_token_url: str | None = None
    oauth_device_url: str | None = None
    oauth_scopes: str | None = None
    oauth_redirect_uri: str | None = None
    allow_anyone_by_tag: bool = False
    reopen_on_reply: bool = True
    authserv_id: str | list[str] | None = None
    defined_in: str = ""  # the file the account was read from

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ACCOUNT_KEYS}
        out["since"] = self.since.isoformat() if self.since else None
        out["defined_in"] = self.defined_in
        return out


@dataclass
class Config:
    """The whole configuration, validated."""

    path: Path
    database: Path
    attachments: Path
    schedule: dict[str, str]
    sla: dict[str, str | None]
    max_message_size: int
    max_attachment_size: int
    accounts: list[Account] = field(default_factory=list)
    rules: list[Any] = field(default_factory=list)  # rules.Rule, validated
    conversations: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    exists: bool = True
    workers: int | None = None  # parser processes; None: one per core, at most 4 (mail2ticket.intake.pipeline)
    parse_timeout: int = 60
    logins_per_second: float = 5  # the daemon's logins to one server per second (mail2ticket.intake.push)

    def account(self, name: str) -> Account:
        for account in self.accounts:
            if account.name == name:
                return account
        from mail2ticket.errors import NotFoundError

        known = ", ".join(a.name for a in self.accounts) or "none"
        raise NotFoundError(
            f"no account named {name!r} in {self.path}",
            f"known accounts: {known}; add one with 'mail2ticket add-account'",
        )

    @property
    def accounts_dir(self) -> Path:
        return self.path.parent / "accounts.d"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*$", re.I)


def parse_size(text: str) -> int:
    """'50MB' -> bytes. Raises ValueError."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
    return int(float(m.group(1)) * factor)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found",
            "create it from config.example.toml or run 'mail2ticket add-account'",
        ) from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied", "check the file's owner and mode") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", "fix the syntax at that line") from None


def check_table(path: Path, where: str, data: Any, schema: dict) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{where}] must be a table")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(
                f"{path}: unknown key '{where}.{key}'", f"expected one of: {known}"
            )
        check, _default, expected = schema[key]
        if not check(value):
            raise ConfigError(
                f"{path}: '{where}.{key}' has the wrong type ({type(value).__name__})",
                f"expected {expected}",
            )
        out[key] = value
    for key, (_check, default, expected) in schema.items():
        if key not in out:
            if default is REQUIRED:
                raise ConfigError(f"{path}: '{where}.{key}' is required", f"expected {expected}")
            out[key] = default
    return out


def build_account(path: Path, index: int, data: Any) -> Account:
    from mail2ticket.config.providers import get_preset

    label = f"accounts[{index}]"
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        label = f"accounts.{data['name']}"
    values = check_table(path, label, data, ACCOUNT_KEYS)
    name = values["name"]
    if not ACCOUNT_NAME_RE.match(name):
        raise ConfigError(
            f"{path}: '{label}.name' = {name!r} is not a valid account name",
            "use letters, digits, '.', '_' or '-' (at most 64)",
        )
    if "@" not in values["email"]:
        raise ConfigError(f"{path}: '{label}.email' = {values['email']!r} is not an e-mail address")
    if values["provider"]:
        try:
            preset = get_preset(values["provider"])
        except KeyError:
            from mail2ticket.config.providers import PRESETS

            raise ConfigError(
                f"{path}: '{label}.provider' = {values['provider']!r} is not a known provider",
                f"expected one of: {', '.join(PRESETS)}",
            ) from None
        for key in ("imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security"):
            if values[key] is None:
                values[key] = getattr(preset, key)
    values["imap_security"] = values["imap_security"] or "tls"
    values["smtp_security"] = values["smtp_security"] or "starttls"
    for key in ("imap_security", "smtp_security"):
        if values[key] not in SECURITY_MODES:
            raise ConfigError(
                f"{path}: '{label}.{key}' = {values[key]!r} is not valid",
                'expected "tls" or "starttls" ("none" only with allow_insecure = true)',
            )
        if values[key] == "none" and not values["allow_insecure"]:
            raise ConfigError(
                f"{path}: '{label}.{key}' = \"none\" sends the password in clear text",
                'use "tls" or "starttls", or set allow_insecure = true for this account if you really must',
            )
    if values["source"] not in ("imap", "maildir", "pipe"):
        raise ConfigError(f"{path}: '{label}.source' must be \"imap\", \"maildir\" or \"pipe\"")
    if values["source"] == "maildir":
        if not values["path"]:
            raise ConfigError(f"{path}: '{label}.path' is required when source = \"maildir\"")
        values["path"] = str((path.parent / os.path.expanduser(values["path"])).resolve())
    elif values["source"] == "imap":
        if not values["imap_host"]:
            raise ConfigError(
                f"{path}: '{label}.imap_host' is required",
                "set imap_host (and imap_port), or a provider preset",
            )
        if values["imap_port"] is None:
            values["imap_port"] = 993 if values["imap_security"] == "tls" else 143
    if values["smtp_host"] and values["smtp_port"] is None:
        values["smtp_port"] = 465 if values["smtp_security"] == "tls" else 587
    after = values["after_import"]
    if after not in ("seen", "none", "delete", "archive") and not (
        after.startswith("move:") and len(after) > 5
    ):
        raise ConfigError(
            f"{path}: '{label}.after_import' = {after!r} is not valid",
            'expected "seen", "none", "delete", "archive" or "move:FOLDER"',
        )
    if after == "archive" and values["source"] != "imap":
        raise ConfigError(  # archive asks an IMAP server for its \Archive or \All folder
            f"{path}: '{label}.after_import' = \"archive\" needs an IMAP account",
            'use "move:Archive" for a Maildir',
        )
    if isinstance(values["since"], str):
        values["since"] = date.fromisoformat(values["since"])
    if values["max_message_size"] is not None:
        try:
            values["max_message_size"] = parse_size(values["max_message_size"])
        except ValueError:
            raise ConfigError(
                f"{path}: '{label}.max_message_size' = {values['max_message_size']!r} is not a size",
                'expected a size such as "50MB"',
            ) from None
    if values["ca_file"]:
        values["ca_file"] = str((path.parent / os.path.expanduser(values["ca_file"])).resolve())
    for key in ("poll",):
        if values[key]:
            check_schedule(path, f"{label}.{key}", values[key])
    if not values["username"] and values["provider"]:
        values["username"] = get_preset(values["provider"]).imap_username(values["email"])
        values["smtp_username"] = values["smtp_username"] or values["email"]
    values["username"] = values["username"] or values["email"]
    if values["auth"] not in ("password", "oauth2"):
        raise ConfigError(
            f"{path}: '{label}.auth' = {values['auth']!r} is not valid", 'expected "password" or "oauth2"'
        )
    if values["auth"] == "oauth2":
        from mail2ticket.accounts.oauth import check_oauth_config

        check_oauth_config(path, label, values)
    return Account(**values, defined_in=str(path))


def check_schedule(path: Path, key: str, value: str) -> None:
    from mail2ticket.config.periods import parse_schedule

    try:
        parse_schedule(value)
    except ValueError as exc:
        raise ConfigError(f"{path}: '{key}' = {value!r} is not a schedule: {exc}",
                          'expected a cron minute field such as "*/5" or "0,30", or an interval such as "10m"') from None


def check_conversations(path: Path, values: dict[str, Any]) -> None:
    from mail2ticket.outgoing.compose import check_conversation_settings

    for key in ("auto_reply_period", "auto_reply_account_period", "outbox_expire", "auto_mail_ticket_period", "auto_mail_address_period",
                "failing_address_hold"):
        check_duration(path, f"conversations.{key}", values[key])
    try:
        check_conversation_settings(values)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_duration(path: Path, key: str, value: str | None) -> None:
    if value is None:
        return
    from mail2ticket.config.periods import parse_duration

    try:
        parse_duration(value)
    except ValueError:
        raise ConfigError(f"{path}: '{key}' = {value!r} is not a duration", 'expected e.g. "30m", "4h" or "3d"') from None


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
    raw_accounts: list[tuple[Path, Any]] = [(cfg_path, a) for a in _as_list(cfg_path, data.get("accounts", []))]
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
            raw_accounts.extend((inc_path, a) for a in _as_list(inc_path, inc.get("accounts", [])))
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
    from mail2ticket.tickets.rules import compile_rules
    from mail2ticket.tickets.sla import check_config as check_sla

    account_names = [a.name for a in accounts]
    sla = check_sla(cfg_path, sla, account_names)
    rules = compile_rules(cfg_path, data.get("rules", []), account_names)
    return Config(
        path=cfg_path,
        database=resolve(storage["database"], data_dir / "mail2ticket.db"),
        attachments=resolve(storage["attachments"], data_dir / "attachments"),
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
    )


def _as_list(path: Path, value: Any) -> list:
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: 'accounts' must be an array of tables ([[accounts]])")
    return value


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
    return _as_list(path, read_toml(path).get("accounts", []))


def write_account_entries(path: Path, entries: list[dict[str, Any]], header: str) -> None:
    """Write [[accounts]] tables to ``path`` atomically, after the comment lines ``header``."""
    import tomli_w

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
