"""A routing rule cannot stall the import (issue 13, point 3; catalogue item 55).

A regex with catastrophic backtracking used to run inside the import transaction with no limit:
the poll never finished, the database stayed locked and SIGTERM was ignored. Through the real poll
against the real Dovecot: the poll finishes, the mail is stored with a warning on its ticket, the
CLI reads the database meanwhile, and the daemon stops on SIGTERM. Obviously unsafe patterns are
refused at config load, naming the rule.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.helpers import DaemonProcess, run_cli, storage_toml, write_config

REPO = Path(__file__).resolve().parents[1]
# Exponential for a backtracking engine on a string of word characters ending in '!', though no
# quantifier is nested: it passes the load-time check, so only the time limit can stop it.
EVIL = r"^(\w|\w\w)+$"
EVIL_SUBJECT = "a" * 50 + "!"


def _mail(subject: str, n: int) -> bytes:
    return (
        f"From: customer{n}@example.org\r\nTo: desk@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <rule-limit-{n}@example.org>\r\n\r\nThe printer is broken.\r\n"
    ).encode()


def _config(tmp_path: Path, account: dict, rules: str) -> Path:
    config = write_config(tmp_path, account, schedule={"poll": "1h"})
    config.write_text(config.read_text() + rules)
    return config


RULES = f"""
[[rules]]
name = "slow"
match = "regex"
subject = '{EVIL}'
tags = ["slow"]

[[rules]]
name = "printers"
body = "printer"
tags = ["printer"]
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_backtracking_rule_is_cut_off_the_mail_is_stored_and_the_cli_reads_meanwhile(
    dovecot, imap_user, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = _config(tmp_path, account_config(imap_user), RULES)
    dovecot.append_many(imap_user, [_mail(EVIL_SUBJECT, 1), _mail("Printer broken", 2)])
    assert run_cli(config, "tickets", "list").exit_code == 0  # the database exists

    t0 = time.monotonic()
    poll = subprocess.Popen(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "poll"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )
    try:
        reads = 0
        while poll.poll() is None and time.monotonic() - t0 < 60:
            listed = run_cli(config, "tickets", "list", "--json")
            assert listed.exit_code == 0, listed.output  # never "database is locked"
            reads += 1
            time.sleep(0.2)
        assert poll.poll() is not None, "the poll did not finish within 60 s"
    finally:
        if poll.poll() is None:
            poll.kill()
        out, err = poll.communicate()
    took = time.monotonic() - t0
    print(f"poll with a backtracking rule: {took:.1f} s, {reads} CLI reads meanwhile")
    assert poll.returncode == 0, err.decode()

    tickets = {t["subject"]: t for t in json.loads(run_cli(config, "tickets", "list", "--json").stdout)}
    assert set(tickets) == {EVIL_SUBJECT, "Printer broken"}
    evil = tickets[EVIL_SUBJECT]
    shown = run_cli(config, "tickets", "show", str(evil["id"]))
    assert shown.exit_code == 0
    assert "rule 'slow' skipped" in shown.stdout and "time limit" in shown.stdout
    detail = json.loads(run_cli(config, "tickets", "show", str(evil["id"]), "--json").stdout)
    assert "printer" in detail["tags"] and "slow" not in detail["tags"]  # the other rules still ran
    assert "printer" in tickets["Printer broken"]["tags"]
    assert "rule 'slow'" in err.decode()  # and the log says so


def test_the_daemon_stops_on_sigterm_while_a_backtracking_rule_runs(
    dovecot, imap_user, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = _config(tmp_path, account_config(imap_user), RULES)
    dovecot.append_many(imap_user, [_mail(EVIL_SUBJECT, n) for n in range(1, 4)])
    daemon = DaemonProcess(config, tmp_path)
    try:
        daemon.notify.wait_for("READY", "1", timeout=20)
        time.sleep(2)  # the first poll is fetching or matching by now
        code, took = daemon.stop(signal.SIGTERM, timeout=30)
    finally:
        daemon.close()
    print(f"daemon stopped {took:.1f} s after SIGTERM")
    assert code == 0 and took < 15


@pytest.mark.parametrize(
    "pattern", [r"^(\w+\s?)+$", r"(a+)+b", r"(x*)*y", r"((ab)+c*)+$"], ids=["issue", "plus-plus", "star-star", "deep"]
)
def test_a_pattern_with_nested_quantifiers_is_refused_at_load_naming_the_rule(tmp_path: Path, pattern: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        storage_toml(tmp_path, str(tmp_path / "m2t.db")) + '\n[[rules]]\nname = "names"\nmatch = "regex"\n'
        f"subject = '{pattern}'\ntags = [\"x\"]\n"
    )
    result = run_cli(config, "tickets", "list")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "rules.names.subject" in lines[0] and "nested" in lines[0]


@pytest.mark.parametrize("pattern", [r"(\d{1,3}\.){3}\d{1,3}", r"^\[(ticket|case) #\d+\]", r"(ab)+c", r"\w+@\w+\.com"])
def test_ordinary_patterns_are_accepted(tmp_path: Path, pattern: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        storage_toml(tmp_path, str(tmp_path / "m2t.db")) + '\n[[rules]]\nname = "ok"\nmatch = "regex"\n'
        f"subject = '{pattern}'\ntags = [\"x\"]\n"
    )
    result = run_cli(config, "tickets", "list")
    assert result.exit_code == 0, result.output
