"""The documentation keeps up with the code: every command has help and is in the README."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mail2ticket.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from all_commands(command, path)


COMMANDS = list(all_commands())


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help_with_a_summary(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert command.help and command.help.strip(), f"{' '.join(path)} has no help text"
    assert len(command.get_short_help_str(limit=200)) > 10


@pytest.mark.parametrize(
    "path", [p for p, c in COMMANDS if not isinstance(c, click.Group)], ids=lambda p: " ".join(p)
)
def test_every_command_is_named_in_the_readme(path):
    *parents, name = path
    if parents:
        # Subcommands are listed as "mail2ticket tickets list" or in a "list|show|..." cell.
        group_line = [line for line in README.splitlines() if f"mail2ticket {' '.join(parents)} " in line]
        assert any(name in line for line in group_line), f"'{' '.join(path)}' is not in README.md"
    else:
        assert f"mail2ticket {name}" in README, f"'mail2ticket {name}' is not in README.md"


def test_every_docs_page_linked_from_the_readme_exists():
    import re

    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to missing {target}"


def test_every_account_key_is_documented_in_config_example():
    from mail2ticket.config.accounts import ACCOUNT_KEYS

    example = (ROOT / "config.example.toml").read_text()
    import re

    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", example, re.M))
    missing = sorted(set(ACCOUNT_KEYS) - documented)
    assert not missing, f"account keys missing from config.example.toml: {missing}"
