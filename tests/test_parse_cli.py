"""`mail2ticket parse FILE [--json]`: how a file would become a ticket, without a database."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mail2ticket.cli.parse_cmd import parse_command

SAMPLE = (
    b"From: =?utf-8?q?Jos=C3=A9?= <Jose@Example.com>\r\nTo: help@example.com\r\n"
    b"Subject: Printer on fire\r\nDate: Tue, 1 Jul 2025 14:00:00 +0200\r\n"
    b"Message-ID: <m1@example.com>\r\nAuto-Submitted: auto-replied\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nIt is [bold]burning[/bold].\r\n"
    b'--b\r\nContent-Type: image/png; name="../fire.png"\r\nContent-Transfer-Encoding: base64\r\n'
    b"\r\niVBORw0K\r\n--b--\r\n"
)


def write(tmp_path: Path, data: bytes = SAMPLE) -> Path:
    path = tmp_path / "m.eml"
    path.write_bytes(data)
    return path


def test_json_prints_a_message_object_with_defects_and_auto_reply(tmp_path: Path) -> None:
    result = CliRunner().invoke(parse_command, [str(write(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["subject"] == "Printer on fire"
    assert (data["from_address"], data["from_name"]) == ("jose@example.com", "José")
    assert data["to"] == ["help@example.com"]
    assert data["date"] == "2025-07-01T12:00:00Z"
    assert data["message_id"] == "<m1@example.com>"
    assert data["body_text"] == "It is [bold]burning[/bold]."
    assert data["auto_reply"] == "Auto-Submitted: auto-replied"
    assert isinstance(data["defects"], list)
    [attachment] = data["attachments"]
    assert attachment["filename"] == "fire.png"
    assert attachment["content_type"] == "image/png"
    assert attachment["size"] == 6 and len(attachment["sha256"]) == 64


def test_plain_output_when_piped_lists_fields_text_and_attachments(tmp_path: Path) -> None:
    result = CliRunner().invoke(parse_command, [str(write(tmp_path))])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Subject: Printer on fire" in out
    assert "From: José <jose@example.com>" in out
    assert "It is [bold]burning[/bold]." in out
    assert "fire.png  image/png  6 B" in out
    assert "Auto-reply: Auto-Submitted: auto-replied" in out


def test_rich_output_on_a_terminal_shows_the_text_verbatim(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mail2ticket.cli.parse_cmd.is_tty", lambda: True)
    result = CliRunner().invoke(parse_command, [str(write(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "[bold]burning[/bold]" in result.stdout  # markup in mail is never interpreted
    assert "fire.png" in result.stdout


def test_a_missing_file_exits_1_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(parse_command, [str(tmp_path / "nope.eml")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_file_that_would_be_quarantined_says_why(tmp_path: Path) -> None:
    result = CliRunner().invoke(parse_command, [str(write(tmp_path, b""))])
    assert result.exit_code == 1
    assert "would be quarantined" in result.stderr and "empty" in result.stderr


def test_stdin_is_read_with_a_dash() -> None:
    result = CliRunner().invoke(parse_command, ["-", "--json"], input=SAMPLE)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["subject"] == "Printer on fire"
