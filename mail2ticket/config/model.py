"""What a loaded config is: Account (one mailbox) and Config (the whole file, validated)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

from mail2ticket.errors import NotFoundError


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
    monitoring: bool | None = None  # recognise monitoring mail; None: as [monitoring] enabled says
    monitoring_on_recovery: str | None = None  # "close" or "mark"; None: as [monitoring] on_recovery says
    defined_in: str = ""  # the file the account was read from

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "defined_in"}
        out["since"] = self.since.isoformat() if self.since else None
        out["defined_in"] = self.defined_in
        return out


@dataclass
class Config:
    """The whole configuration, validated."""

    path: Path
    database: Path
    attachments: Path  # the attachment directory; with object_store, the local staging directory
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
    monitoring: Any = None  # monitoring.MonitoringConfig, validated ([monitoring], docs/monitoring.md)
    metrics_textfile: Path | None = None  # [metrics] textfile: written by the daemon (docs/metrics.md)
    object_store: Any = None  # storage.S3Location when [storage] attachments is s3:// (docs/storage.md)
    hooks: list[Any] = field(default_factory=list)  # hooks.Hook, validated ([[hooks]], docs/hooks.md)
    daemon: Any = None  # daemon.DaemonSettings: [daemon] lease_renew, lease_ttl (docs/scaling.md)
    # [storage] database as a PostgreSQL URL (without a password), and the command that prints its
    # password; ``database`` is then where the local lock files go (docs/storage.md).
    database_url: str | None = None
    database_password_command: str | None = None
    # PostgreSQL without [storage] attachments: attachments in the table attachment_blobs
    # (tickets/blobs.py); ``attachments`` is then the local staging directory.
    attachments_in_database: bool = False
    attachments_given: bool = True  # [storage] attachments set in the config (db copy: where they go)

    @property
    def store(self) -> Path | str:
        """What open_db opens: the PostgreSQL URL, else the SQLite file."""
        return self.database_url or self.database

    def account(self, name: str) -> Account:
        for account in self.accounts:
            if account.name == name:
                return account

        known = ", ".join(a.name for a in self.accounts) or "none"
        raise NotFoundError(
            f"no account named {name!r} in {self.path}",
            f"known accounts: {known}; add one with 'mail2ticket add-account'",
        )

    @property
    def accounts_dir(self) -> Path:
        return self.path.parent / "accounts.d"
