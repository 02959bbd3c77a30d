"""Helpers for the triage tests (issue 7): a config in tmp_path, mail built as bytes, delivered
through the real importer (rules, SLA, acknowledgement hook included), and the real CLI."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from pathlib import Path

from click.testing import CliRunner

from mail2ticket.accounts.secrets import store_password
from tests.postgres import TEST_PASSWORD, engine_under_test, fresh_database

BASE_CONFIG = """\
[storage]
database = "tickets.db"
attachments = "attachments"

[[accounts]]
name = "support"
email = "support@example.com"
source = "pipe"
smtp_host = "127.0.0.1"
smtp_port = 2525
added_at = "2020-01-01T00:00:00Z"  # all test mail is newer: it is acknowledged

[[accounts]]
name = "sales"
email = "sales@example.com"
source = "pipe"
"""


def write_config(tmp_path: Path, extra: str = "") -> Path:
    """A config with two accounts (support, sales) and ``extra`` TOML appended; with
    MAIL2TICKET_TEST_ENGINE=postgresql its database is a fresh PostgreSQL database."""
    path = tmp_path / "config.toml"
    base = BASE_CONFIG
    if engine_under_test() == "postgresql":
        store_password("database", TEST_PASSWORD)  # where a real installation keeps it
        base = base.replace('database = "tickets.db"', f'database = "{fresh_database()}"')
    path.write_text(base + "\n" + textwrap.dedent(extra))
    return path


def mail(
    subject: str = "Printer broken",
    body: str = "The printer on floor 2 does not print.",
    sender: str = "Bob Example <bob@example.com>",
    to: str = "support@example.com",
    *,
    cc: str | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    """A plain-text mail as the bytes a mailbox would hold."""
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime.now(UTC))}",
        f"Message-ID: {message_id or make_msgid(domain='customer.example')}",
    ]
    if cc:
        lines.append(f"Cc: {cc}")
    if in_reply_to:
        lines += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode("utf-8")


def load(cfg_path: Path):
    from mail2ticket.config.load import load_config
    from mail2ticket.tickets.db import open_store

    cfg = load_config(cfg_path)
    return cfg, open_store(cfg)


def deliver(cfg_path: Path, *raws: bytes, account: str = "support") -> list:
    """Import the mails as the poller does (with the config: rules, SLA, acknowledgements)."""
    from mail2ticket.accounts.storage import attachment_store
    from mail2ticket.intake.importer import ImportContext, Incoming, import_batch

    cfg, db = load(cfg_path)
    try:
        ctx = ImportContext(db=db, attachments=attachment_store(cfg), config=cfg)
        return import_batch(ctx, [Incoming(account, raw) for raw in raws])
    finally:
        db.close()


def run(cfg_path: Path, *args: str, input: str | None = None):
    """The real CLI, as a user runs it (stdout and stderr apart)."""
    from mail2ticket.cli import cli

    return CliRunner().invoke(cli, ["--config", str(cfg_path), *args], input=input, catch_exceptions=False)


def run_json(cfg_path: Path, *args: str):
    result = run(cfg_path, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def sql(cfg_path: Path, statement: str, params=()) -> list[tuple]:
    """Arrange or read data directly (e.g. age a ticket), as a sysadmin could with sqlite3."""
    cfg, db = load(cfg_path)
    try:
        with db.conn:
            return db.execute(statement, list(params)).fetchall()
    finally:
        db.close()
