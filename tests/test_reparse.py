"""'mail2ticket reparse': stored messages re-derived from their raw bytes, nothing duplicated."""

from __future__ import annotations

import json
from email.message import EmailMessage

import pytest

import mail2ticket.parse.message
from tests.helpers import run_cli, storage_toml


def _config(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        storage_toml(tmp_path, "t.db", attachments="files") +
        '[[accounts]]\nname = "desk"\nemail = "desk@example.test"\nsource = "pipe"\nacknowledge = false\n'
    )
    return cfg


def _mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <c{n}@example.net>"
    msg["To"] = "desk@example.test"
    msg["Subject"] = f"Problem {n}"
    msg["Message-ID"] = f"<reparse-{n}@example.net>"
    msg.set_content(f"The details of problem {n}.")
    msg.add_attachment(b"log line\n" * 10, maintype="text", subtype="plain", filename=f"log{n}.txt")
    return msg.as_bytes()


@pytest.fixture
def imported_with_an_old_parser(tmp_path, monkeypatch):
    """Two tickets imported by a parser release that lost the body text and the attachments."""
    real = mail2ticket.parse.message.parse_message

    def old_release(raw, **kwargs):
        parsed = real(raw, **kwargs)
        parsed.body_text = ""
        parsed.attachments = []
        return parsed

    cfg = _config(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(mail2ticket.parse.message, "parse_message", old_release)
        for n in (1, 2):
            assert run_cli(cfg, "ingest", input=_mail(n)).exit_code == 0
    return cfg


def _show(cfg, tid):
    return json.loads(run_cli(cfg, "tickets", "show", str(tid), "--json").stdout)


def test_reparse_of_one_ticket_re_derives_its_text_and_attachments_and_nothing_else(imported_with_an_old_parser):
    cfg = imported_with_an_old_parser
    assert _show(cfg, 1)["messages"][0]["body_text"] == ""
    result = run_cli(cfg, "reparse", "--ticket", "1")
    assert result.exit_code == 0, result.output
    assert "1 message read again: 1 changed" in result.stdout
    [message] = _show(cfg, 1)["messages"]
    assert "The details of problem 1." in message["body_text"]
    [att] = message["attachments"]
    assert att["filename"] == "log1.txt"
    assert open(att["path"], "rb").read() == b"log line\n" * 10
    assert _show(cfg, 2)["messages"][0]["body_text"] == "", "ticket 2 was not asked for"
    assert len(json.loads(run_cli(cfg, "tickets", "list", "--json", "--status", "all").stdout)) == 2
    assert any(e["kind"] == "reparsed" for e in _show(cfg, 1)["events"])


def test_reparse_all_is_idempotent_and_dry_run_changes_nothing(imported_with_an_old_parser):
    cfg = imported_with_an_old_parser
    dry = json.loads(run_cli(cfg, "reparse", "--all", "--dry-run", "--json").stdout)
    assert dry["messages"] == 2 and len(dry["changed"]) == 2 and dry["dry_run"] is True
    assert _show(cfg, 2)["messages"][0]["body_text"] == ""
    assert run_cli(cfg, "reparse", "--all").exit_code == 0
    again = json.loads(run_cli(cfg, "reparse", "--all", "--json").stdout)
    assert again["changed"] == [] and again["failed"] == {}
    listed = json.loads(run_cli(cfg, "tickets", "list", "--json", "--status", "all").stdout)
    assert [t["message_count"] for t in listed] == [1, 1]


def test_reparse_needs_a_ticket_or_all(tmp_path):
    result = run_cli(_config(tmp_path), "reparse")
    assert result.exit_code == 2 and "--ticket" in result.stderr
