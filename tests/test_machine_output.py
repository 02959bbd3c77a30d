"""Small things a sysadmin's scripts and logs rely on (issue 14, point 11): times in machine output
are ISO 8601 UTC in every command, 'run' logs carry a timestamp unless journald adds its own, and
'reparse' counts in good English."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from click.testing import CliRunner

from mail2ticket.cli import cli
from tests.test_quarantine import buggy_parser  # noqa: F401  (poisoned needs it)
from tests.test_quarantine_discard import poisoned  # noqa: F401  (a fixture: a real poll, one quarantined)
from tests.triage_support import deliver, mail, write_config

ISO_UTC = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
LOCAL = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}"  # how a terminal shows a time


def piped(config: Path, *args: str, tz: str = "America/New_York"):
    return CliRunner().invoke(cli, ["--config", str(config), *args], env={"TZ": tz})


def test_status_and_quarantine_list_piped_give_iso_8601_utc_like_tickets_list(poisoned):  # noqa: F811
    config, entry, _ = poisoned
    status = piped(config, "status", "--no-daemon")
    assert status.exit_code == 0, status.output
    assert re.search(ISO_UTC, status.stdout), status.stdout  # the last poll
    assert not re.search(LOCAL, status.stdout), "a local time in piped output"
    listing = piped(config, "quarantine", "list")
    assert listing.exit_code == 0
    assert entry["created_at"] in listing.stdout and not re.search(LOCAL, listing.stdout), listing.stdout
    tickets = piped(config, "tickets", "list")
    assert re.search(ISO_UTC, tickets.stdout) and not re.search(LOCAL, tickets.stdout)


def test_run_logs_carry_a_timestamp_when_not_under_journald(tmp_path, start_daemon):  # noqa: F811
    daemon = start_daemon(write_config(tmp_path))
    daemon.notify.wait_for("READY", "1", timeout=60)
    code, _ = daemon.stop(signal.SIGTERM)
    assert code == 0
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert lines and any("started" in line for line in lines), lines
    stamped = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
    assert all(stamped.match(line) for line in lines), lines


def test_under_journald_the_log_has_no_timestamp_of_its_own(tmp_path, start_daemon):  # noqa: F811
    daemon = start_daemon(write_config(tmp_path), journal=True)
    daemon.notify.wait_for("READY", "1", timeout=60)
    assert daemon.stop(signal.SIGTERM)[0] == 0
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert lines and all(re.match(r"^<\d>\S", line) for line in lines), lines
    assert not any(re.search(r"\d{2}:\d{2}:\d{2}", line) for line in lines), lines


def test_reparse_counts_one_message_in_the_singular(tmp_path):
    config = write_config(tmp_path)
    [outcome] = deliver(config, mail("Printer broken"))
    result = piped(config, "reparse", "--ticket", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 message read again: 0 changed, 0 unreadable"), result.stdout
    deliver(config, mail("Re: Printer broken", in_reply_to=None), mail("Second"))
    everything = piped(config, "reparse", "--all")
    assert everything.stdout.startswith("3 messages read again"), everything.stdout
