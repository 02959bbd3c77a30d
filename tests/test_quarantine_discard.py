"""The quarantine can be emptied (issue 14, point 10): 'quarantine discard' (the raw bytes kept in an
export file, or a plain word that they are not) and 'quarantine export' (the raw message in a file
for a bug report). A discarded message no longer counts as waiting, and is never imported again."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from mail2ticket.config.load import load_config
from tests.helpers import run_cli, write_config
from tests.servers import Dovecot, User
from tests.test_quarantine import _message, buggy_parser  # noqa: F401  (a fixture)


@pytest.fixture
def poisoned(dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path, buggy_parser):  # noqa: F811
    """A real poll that imported two messages and quarantined one the parser cannot read."""
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user))
    dovecot.append_many(imap_user, [_message(1), _message(2, b"X-Trigger: yes\r\n"), _message(3)])
    result = run_cli(config, "poll")
    assert result.exit_code == 0 and "1 quarantined" in result.stdout, result.output
    [entry] = json.loads(run_cli(config, "quarantine", "list", "--json").stdout)
    raw = dovecot.fetch_raw(imap_user)[entry["uid"]]
    return config, entry, raw


def discarded_dir(config: Path) -> Path:
    """Where discard keeps the raw bytes by default: quarantine-discarded/ beside the SQLite file,
    or on PostgreSQL in the local data directory (where the lock files are, docs/storage.md)."""
    return load_config(config).database.parent / "quarantine-discarded"


def waiting(config: Path) -> int:
    report = json.loads(run_cli(config, "status", "--json", "--no-daemon").stdout)
    return report["quarantine"]


def test_discard_keeps_the_raw_bytes_in_an_export_file_and_status_no_longer_counts_it(poisoned, tmp_path):
    config, entry, raw = poisoned
    assert waiting(config) == 1
    result = run_cli(config, "quarantine", "discard", str(entry["id"]), "--yes")
    assert result.exit_code == 0, result.output
    [exported] = discarded_dir(config).iterdir()
    assert str(exported) in result.stdout and "kept in" in result.stdout
    assert exported.read_bytes() == raw, "the exact bytes"
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600, "mail is private"
    assert waiting(config) == 0
    assert "quarantine: 0 waiting" in run_cli(config, "status", "--no-daemon").stdout
    assert json.loads(run_cli(config, "quarantine", "list", "--json").stdout) == []
    [gone] = json.loads(run_cli(config, "quarantine", "list", "--all", "--json").stdout)
    assert gone["discarded_at"] and gone["export_path"] == str(exported)
    shown = run_cli(config, "quarantine", "show", str(entry["id"]), "--raw")
    assert shown.exit_code != 0 and "discarded" in shown.stderr
    again = run_cli(config, "poll")  # the message is still on the server: never imported again
    assert again.exit_code == 0 and "0 imported" in again.stdout and "quarantined" not in again.stdout
    assert waiting(config) == 0


def test_discard_asks_for_confirmation_and_without_a_terminal_needs_yes(poisoned):
    config, entry, _ = poisoned
    result = run_cli(config, "quarantine", "discard", str(entry["id"]))
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert waiting(config) == 1, "nothing discarded"


def test_discard_without_export_says_the_bytes_are_not_kept(poisoned, tmp_path):
    config, entry, _ = poisoned
    result = run_cli(config, "quarantine", "discard", str(entry["id"]), "--yes", "--no-export")
    assert result.exit_code == 0, result.output
    assert "not kept" in result.stdout
    assert not discarded_dir(config).exists()
    assert waiting(config) == 0


def test_export_writes_the_raw_message_to_a_file_for_a_bug_report(poisoned, tmp_path):
    config, entry, raw = poisoned
    target = tmp_path / "report.eml"
    result = run_cli(config, "quarantine", "export", str(entry["id"]), "--output", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == raw and str(target) in result.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert waiting(config) == 1, "exporting changes nothing"
    to_stdout = run_cli(config, "quarantine", "export", str(entry["id"]), "--output", "-")
    assert to_stdout.stdout_bytes == raw
    refused = run_cli(config, "quarantine", "export", str(entry["id"]), "--output", str(target))
    assert refused.exit_code != 0 and "exists" in refused.stderr, "never overwrites a file"


def test_a_message_never_downloaded_is_discarded_with_a_word_that_no_bytes_are_kept(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
):
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user, max_message_size="2KB"))
    dovecot.append_many(imap_user, [_message(1, body=b"x" * 10_000 + b"\r\n")])
    assert "1 quarantined" in run_cli(config, "poll").stdout
    [entry] = json.loads(run_cli(config, "quarantine", "list", "--json").stdout)
    exported = run_cli(config, "quarantine", "export", str(entry["id"]), "--output", str(tmp_path / "x.eml"))
    assert exported.exit_code == 1 and "never downloaded" in exported.stderr
    result = run_cli(config, "quarantine", "discard", str(entry["id"]), "--yes")
    assert result.exit_code == 0, result.output
    assert "never downloaded" in result.stdout and "still on the server" in result.stdout
    assert waiting(config) == 0


def test_quarantine_ids_are_accepted_as_the_tool_prints_them(poisoned):
    config, entry, raw = poisoned
    shown = run_cli(config, "quarantine", "show", f"#{entry['id']}", "--raw")
    assert shown.exit_code == 0 and shown.stdout_bytes == raw
    assert run_cli(config, "quarantine", "export", f"#{entry['id']}", "-o", "-").stdout_bytes == raw
    wrong = run_cli(config, "quarantine", "show", "first")
    assert wrong.exit_code == 2 and "not a quarantine entry id" in wrong.stderr
