"""Typos are errors, not empty answers (issue 14.5): unknown accounts, assignees that never
existed and unknown statuses name the known values with the usage exit code (2); the global
options --config and --debug work after the subcommand too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import storage_toml

REPO = Path(__file__).resolve().parent.parent
USAGE = 2


def mail(n: int) -> bytes:
    return (f"From: ann{n}@customer.test\r\nTo: desk@example.test\r\nSubject: request {n}\r\n"
            f"Message-ID: <r{n}@customer.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n").encode()


@pytest.fixture
def config(tmp_path) -> Path:
    """A Maildir account 'support' with three tickets; #1 assigned to alice, then to nobody."""
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "Maildir" / sub).mkdir(parents=True)
    for n in (1, 2, 3):
        (tmp_path / "Maildir" / "new" / f"m{n}").write_bytes(mail(n))
    cfg = tmp_path / "config.toml"
    cfg.write_text(storage_toml(tmp_path) + '\n[[accounts]]\nname = "support"\nemail = "desk@example.test"\n'
                   'source = "maildir"\npath = "Maildir"\nacknowledge = false\n\n'
                   '[[rules]]\nname = "billing"\nsubject = "invoice"\nassignee = "bert"\n')
    assert run("--config", str(cfg), "poll").returncode == 0
    assert run("--config", str(cfg), "tickets", "assign", "1", "alice").returncode == 0
    assert run("--config", str(cfg), "tickets", "assign", "1", "--unassign").returncode == 0
    assert run("--config", str(cfg), "tickets", "assign", "2", "dave").returncode == 0
    return cfg


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mail2ticket", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [["tickets", "list"], ["tickets", "count"], ["tickets", "close"],
                                     ["tickets", "search", "hello"]])
def test_an_unknown_account_is_an_error_naming_the_known_ones(config, command):
    result = run("--config", str(config), *command, "--account", "bob")
    assert result.returncode == USAGE, result.stdout + result.stderr
    assert "no account 'bob'" in result.stderr and "support" in result.stderr
    assert result.stdout == ""


def test_an_account_that_is_gone_from_the_config_but_has_tickets_can_still_be_listed(config):
    text = config.read_text().replace('name = "support"', 'name = "helpdesk"')
    config.write_text(text)
    result = run("--config", str(config), "tickets", "count", "--account", "support")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3\n"


def test_an_assignee_that_never_existed_is_an_error_naming_the_known_ones(config):
    result = run("--config", str(config), "tickets", "list", "--assignee", "carol")
    assert result.returncode == USAGE
    assert "nobody named 'carol'" in result.stderr
    for known in ("alice", "bert", "dave"):  # ever assigned, assigned now, or by a rule
        assert known in result.stderr
    # alice has no ticket now, but she did: an empty answer, not an error.
    alice = run("--config", str(config), "tickets", "list", "--assignee", "alice", "--json")
    assert alice.returncode == 0 and json.loads(alice.stdout) == []
    assert run("--config", str(config), "tickets", "count", "--assignee", "dave").stdout == "1\n"


def test_an_unknown_status_is_an_error_naming_the_known_ones(config):
    result = run("--config", str(config), "tickets", "list", "--status", "opne")
    assert result.returncode == USAGE
    assert "'opne' is not one of 'open', 'pending', 'closed', 'all'" in result.stderr


def test_global_options_work_after_the_subcommand(config):
    after = run("tickets", "count", "--config", str(config))
    assert after.returncode == 0, after.stderr
    assert after.stdout == "3\n"
    equals = run("tickets", "list", f"--config={config}", "--json", "--debug")
    assert equals.returncode == 0, equals.stderr
    assert len(json.loads(equals.stdout)) == 3
    polled = run("poll", "--debug", "--config", str(config))
    assert polled.returncode == 0, polled.stderr
    missing = run("tickets", "show", "999", "--debug", "--config", str(config))
    assert missing.returncode == 1 and "Traceback" in missing.stderr  # --debug: the traceback
    # A value that only looks like an option is left alone.
    note = run("tickets", "note", "3", "--message", "--debug", "--config", str(config))
    assert note.returncode == 0, note.stderr
    shown = json.loads(run("--config", str(config), "tickets", "show", "3", "--json").stdout)
    assert any(e["kind"] == "note" and e["detail"] == "--debug" for e in shown["events"])
