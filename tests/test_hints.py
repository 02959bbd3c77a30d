"""Hints lead somewhere (issue 14.7): a wrong password in add-account is asked again on a
terminal and otherwise says to rerun add-account (nothing was saved); every README section or
docs anchor the code and help point to exists; the health check in examples/systemd.md catches a
service that never came up; the 'ingest --help' examples are the documented setup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import keyring
from click.testing import CliRunner

from mail2ticket.cli import cli
from tests.helpers import storage_toml
from tests.test_old_mail import run_on_terminal

ROOT = Path(__file__).resolve().parent.parent


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [h for h in re.findall(r"^#{1,6} (.+)$", text, re.M)]


def test_every_readme_section_and_docs_anchor_named_in_code_help_or_docs_exists():
    sources = [*ROOT.joinpath("mail2ticket").rglob("*.py"), ROOT / "README.md", *ROOT.joinpath("docs").glob("*.md"),
               *ROOT.joinpath("examples").glob("*.md"), ROOT / "config.example.toml"]
    checked = 0
    for source in sources:
        text = source.read_text()
        # "README: Passwords", "see README, section Passwords"
        for name in re.findall(r"README(?:\.md)?(?::|, section) ([A-Z][\w ]*?)(?=[\"'.,;)]|$| \()", text, re.M):
            assert any(h.strip().lower() == name.strip().lower() for h in headings(ROOT / "README.md")), \
                f"{source.name} points to README section {name!r}, which does not exist"
            checked += 1
        # [text](docs/x.md#anchor), (#anchor) in a markdown file
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([\w-]+)\)", text):
            base = (source.parent / target) if target else source
            if source.suffix == ".py":
                base = ROOT / target
            assert base.exists(), f"{source.name} links to missing {target}"
            assert anchor in [slug(h) for h in headings(base)], f"{source.name}: no #{anchor} in {base.name}"
            checked += 1
    assert checked >= 3


def add_account_args(config: Path, acc: dict) -> list[str]:
    return ["--config", str(config), "add-account", acc["name"], "--email", acc["email"],
            "--imap-host", acc["imap_host"], "--imap-port", str(acc["imap_port"]), "--ca-file", acc["ca_file"]]


def test_a_wrong_password_without_a_terminal_says_to_rerun_add_account_and_saves_nothing(
        tmp_path, imap_user, account_config):
    acc = account_config(imap_user)
    config = tmp_path / "config.toml"
    result = CliRunner().invoke(cli, [*add_account_args(config, acc), "--password-stdin"], input="wrong\n")
    assert result.exit_code == 4, result.output
    assert "set-password" not in result.stderr
    assert "nothing was saved" in result.stderr and "mail2ticket add-account" in result.stderr
    assert not (tmp_path / "accounts.d").exists()
    assert keyring.get_password("mail2ticket", acc["name"]) is None


def test_a_wrong_password_on_a_terminal_is_asked_again(tmp_path, imap_user, account_config):
    acc = account_config(imap_user)
    config = tmp_path / "config.toml"
    code, screen = run_on_terminal(add_account_args(config, acc) + ["--since", "2026-01-01"],
                                   ["wrong", imap_user.password])
    assert code == 0, screen
    assert "sign-in refused" in screen.lower() or "refused" in screen
    assert screen.count("App password:") == 2
    assert (tmp_path / "accounts.d" / f"{acc['name']}.toml").is_file()

    other = tmp_path / "other" / "config.toml"
    other.parent.mkdir()
    code, screen = run_on_terminal(add_account_args(other, acc), ["bad1", "bad2", "bad3"])
    assert code == 4, screen
    assert screen.count("App password:") == 3
    assert "nothing was saved" in screen and "set-password" not in screen
    assert not (other.parent / "accounts.d").exists()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mail2ticket", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_the_documented_health_check_fails_for_a_service_that_never_came_up(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(storage_toml(tmp_path))
    section = (ROOT / "examples" / "systemd.md").read_text().split("## Health checks", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    (command,) = [line for block in blocks for line in block.splitlines() if " status" in line]
    args = command.split(" status", 1)[1].split("#")[0].split()  # what follows 'status'
    never = run("--config", str(config), "status", *args)
    assert never.returncode == 1, never.stdout
    assert "never started" in never.stdout
    # Plain 'status' does not fail for it, and the page says so instead of claiming it does.
    assert run("--config", str(config), "status").returncode == 0
    first = section.split("```")[0]
    assert "never started, stopped" not in first and "does not fail plain `status`" in first


def test_the_ingest_help_examples_are_the_documented_setup():
    help_text = CliRunner().invoke(cli, ["ingest", "--help"]).output
    examples = help_text.split("Examples:", 1)[1].strip().split("\n\n")[0].splitlines()
    docs = (ROOT / "docs" / "local-sources.md").read_text()
    assert examples
    for line in examples:
        line = line.strip()
        command = line.split(":", 1)[1].strip() if re.match(r"^[\w/.-]+:\s", line) else line
        assert command in docs, f"'ingest --help' example not in docs/local-sources.md: {command}"
        assert "--config" in command or "<" in command
