"""The [limits] of the config: what is over them is quarantined with its raw bytes, never dropped."""

from __future__ import annotations

import json
from email.message import EmailMessage

from click.testing import CliRunner

from mail2ticket.cli import cli
from tests.helpers import run_cli, storage_toml


def _config(tmp_path, attachment_limit: str):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        storage_toml(tmp_path, "t.db", attachments="files") +
        f'[limits]\nmax_message_size = "10MB"\nmax_attachment_size = "{attachment_limit}"\n'
        '[[accounts]]\nname = "desk"\nemail = "desk@example.test"\nsource = "pipe"\nacknowledge = false\n'
    )
    return cfg


def _mail(size: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "ann@example.net"
    msg["To"] = "desk@example.test"
    msg["Subject"] = "scan attached"
    msg.set_content("see attachment")
    msg.add_attachment(b"x" * size, maintype="application", subtype="octet-stream", filename="scan.bin")
    return msg.as_bytes()


def test_an_attachment_over_the_configured_limit_sends_the_message_to_the_quarantine(tmp_path):
    cfg = _config(tmp_path, "100KB")
    raw = _mail(200 * 1024)
    result = run_cli(cfg, "ingest", "--account", "desk", input=raw)
    assert result.exit_code == 0, result.output
    [entry] = json.loads(run_cli(cfg, "quarantine", "list", "--json").stdout)
    assert "max_attachment_bytes" in entry["error"] or "attachment" in entry["error"]
    kept = CliRunner().invoke(cli, ["--config", str(cfg), "quarantine", "show", str(entry["id"]), "--raw"])
    assert kept.stdout_bytes == raw
    assert json.loads(run_cli(cfg, "tickets", "list", "--json").stdout) == []


def test_the_same_attachment_under_a_raised_limit_becomes_a_ticket(tmp_path):
    cfg = _config(tmp_path, "1MB")
    result = run_cli(cfg, "ingest", "--account", "desk", input=_mail(200 * 1024))
    assert result.exit_code == 0, result.output
    [ticket] = json.loads(run_cli(cfg, "tickets", "list", "--json").stdout)
    shown = json.loads(run_cli(cfg, "tickets", "show", str(ticket["id"]), "--json").stdout)
    assert shown["messages"][0]["attachments"][0]["size"] == 200 * 1024
