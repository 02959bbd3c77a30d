"""Editors and terminals (issue 14, point 8): without a terminal no editor is ever started (the text
comes from --message, --file or '--file -'); ticket ids are accepted as the tool prints them ('#12')."""

from __future__ import annotations

import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ptys import read_all
from tests.test_reply import desk  # noqa: F401  (a fixture: one acknowledged ticket, real Dovecot and SMTP)

USAGE = 2


@pytest.fixture
def editors(tmp_path: Path) -> tuple[Path, Path]:
    """A directory of fake editors (sensible-editor, editor, vim, vi, nano) that leave a mark when
    started; returns (that directory, the mark)."""
    bin_dir = tmp_path / "editors"
    bin_dir.mkdir()
    mark = tmp_path / "an-editor-was-started"
    for name in ("sensible-editor", "editor", "vim", "vi", "nano"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "$0" >> {mark}\nprintf "From the editor.\\n" > "$1"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir, mark


def no_editor_env(bin_dir: Path) -> dict[str, str | None]:
    return {"EDITOR": None, "VISUAL": None, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def on_terminal(config: Path, *args: str, env: dict[str, str | None]) -> tuple[int, str]:
    """The installed CLI with stdin and stdout on a pseudo-terminal: (exit code, what it printed)."""
    master, slave = pty.openpty()
    full = dict(os.environ)
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    proc = subprocess.Popen([sys.executable, "-m", "mail2ticket", "--config", str(config), *args],
                            stdin=slave, stdout=slave, stderr=slave, env=full)
    os.close(slave)
    output = read_all(master)
    proc.wait(timeout=120)
    return proc.returncode, output.decode(errors="replace")


def test_reply_without_text_or_terminal_starts_no_editor_and_says_what_to_give(desk, editors):  # noqa: F811
    bin_dir, mark = editors
    result = desk.invoke("tickets", "reply", str(desk.ticket), env=no_editor_env(bin_dir))
    assert not mark.exists(), f"an editor was started: {mark.read_text()}"
    assert result.exit_code == USAGE, result.output
    assert "--message" in result.stderr and "--file -" in result.stderr
    assert desk.smtp.messages == [] and desk.show(desk.ticket)["message_count"] == 1


def test_without_a_terminal_even_a_set_editor_is_not_started(desk, editors):  # noqa: F811
    bin_dir, mark = editors
    env = no_editor_env(bin_dir) | {"EDITOR": str(bin_dir / "vim")}
    result = desk.invoke("tickets", "note", str(desk.ticket), env=env)
    assert not mark.exists(), "vim was started with no terminal"
    assert result.exit_code == USAGE and "--file -" in result.stderr


def test_reply_reads_standard_input_with_file_dash(desk):  # noqa: F811
    result = desk.invoke("tickets", "reply", str(desk.ticket), "--file", "-", input="Sent from a script.\n")
    assert result.exit_code == 0, result.output
    [sent] = desk.smtp.messages
    assert sent.message.get_content().strip() == "Sent from a script."


def test_on_a_terminal_the_editor_is_opened(desk, editors):  # noqa: F811
    bin_dir, mark = editors
    code, out = on_terminal(desk.config, "tickets", "reply", str(desk.ticket), env=no_editor_env(bin_dir))
    assert code == 0, out
    assert mark.exists(), "no editor on a terminal"
    [sent] = desk.smtp.messages
    assert sent.message.get_content().strip() == "From the editor."


@pytest.mark.parametrize(
    "args",
    [
        ("tickets", "show", "#{id}"),
        ("tickets", "show", "#{id}", "--json"),
        ("tickets", "assign", "#{id}", "alice"),
        ("tickets", "priority", "#{id}", "high"),
        ("tickets", "tag", "#{id}", "vip"),
        ("tickets", "note", "#{id}", "--message", "Called back."),
        ("tickets", "reply", "#{id}", "--message", "On it."),
        ("reparse", "--ticket", "#{id}"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_ticket_id_is_accepted_as_the_tool_prints_it(desk, args):  # noqa: F811
    result = desk.invoke(*[a.format(id=desk.ticket) for a in args])
    assert result.exit_code == 0, result.output


def test_a_ticket_id_that_is_not_a_number_is_a_usage_error_naming_the_form(desk):  # noqa: F811
    result = desk.invoke("tickets", "show", "twelve")
    assert result.exit_code == USAGE
    assert "#12" in result.stderr
