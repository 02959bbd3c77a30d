"""Config loading and validation: one clear line naming the file, the key and what is expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mail2ticket.cli import cli
from mail2ticket.config.load import load_config

ROOT = Path(__file__).resolve().parent.parent

ACCOUNT = """
[[accounts]]
name = "support"
email = "support@example.com"
imap_host = "imap.example.com"
smtp_host = "smtp.example.com"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def run(*args, **kwargs):
    return CliRunner().invoke(cli, list(args), **kwargs)


def test_config_example_loads_and_every_documented_key_is_valid():
    cfg = load_config(ROOT / "config.example.toml")
    assert cfg.accounts[0].name == "support"
    assert cfg.schedule["poll"] == "*/5"
    assert cfg.sla["response"] == "4h"


def test_config_check_prints_what_it_found(tmp_path):
    from mail2ticket.accounts.secrets import store_password

    store_password("support", "secret")  # an account without a password cannot work (tests/test_config_check.py)
    cfg = write(tmp_path / "config.toml", ACCOUNT)
    result = run("--config", str(cfg), "config", "check")
    assert result.exit_code == 0, result.output
    assert "Config OK" in result.stdout
    assert "support <support@example.com> enabled: imap.example.com:993 (tls)" in result.stdout
    assert "smtp.example.com:587 (starttls)" in result.stdout


@pytest.mark.parametrize(
    "text, expected",
    [
        (ACCOUNT + 'colour = "blue"\n', "unknown key 'accounts.support.colour'"),
        (ACCOUNT.replace('"imap.example.com"', "993"), "'accounts.support.imap_host' has the wrong type (int)"),
        ('[[accounts]]\nname = "x"\nimap_host = "h"\n', "'accounts.x.email' is required"),
        ("[storage]\ndatbase = 'x.db'\n", "unknown key 'storage.datbase'"),
        ('[schedule]\npoll = "every now and then"\n', "'schedule.poll' = 'every now and then' is not a schedule"),
        ('[sla]\nresponse = "soon"\n', "'sla.response' = 'soon' is not a duration"),
        (ACCOUNT + 'imap_security = "none"\n', "sends the password in clear text"),
        (ACCOUNT + 'after_import = "shred"\n', "'accounts.support.after_import' = 'shred' is not valid"),
        ("[storage\n", "invalid TOML"),
    ],
)
def test_a_bad_config_gives_one_line_naming_the_file_and_key(tmp_path, text, expected):
    cfg = write(tmp_path / "config.toml", text)
    result = run("--config", str(cfg), "config", "check")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {cfg}")
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_a_missing_config_says_how_to_create_one(tmp_path):
    result = run("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert result.exit_code == 3
    assert "config file not found" in result.stderr
    assert "add-account" in result.stderr


def test_debug_shows_the_traceback_of_an_error(tmp_path):
    result = run("--config", str(tmp_path / "nope.toml"), "--debug", "config", "check")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr


def test_config_is_found_through_the_environment_variable(tmp_path, monkeypatch):
    cfg = write(tmp_path / "elsewhere.toml", ACCOUNT)
    monkeypatch.setenv("MAIL2TICKET_CONFIG", str(cfg))
    result = run("config", "path")
    assert result.stdout.strip() == str(cfg)


def test_config_defaults_to_the_users_xdg_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = run("config", "path")
    assert result.stdout.strip() == str(tmp_path / "xdg" / "mail2ticket" / "config.toml")


def test_storage_paths_are_relative_to_the_config_file(tmp_path):
    cfg = write(tmp_path / "config.toml", '[storage]\ndatabase = "data/t.db"\nattachments = "files"\n')
    loaded = load_config(cfg)
    assert loaded.database == tmp_path / "data" / "t.db"
    assert loaded.attachments == tmp_path / "files"


def test_storage_defaults_to_the_users_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    loaded = load_config(write(tmp_path / "config.toml", ""))
    assert loaded.database == tmp_path / "data" / "mail2ticket" / "mail2ticket.db"


def test_accounts_in_included_files_are_loaded_and_names_must_be_unique(tmp_path):
    main = write(tmp_path / "config.toml", "# my comments\n")
    (tmp_path / "accounts.d").mkdir()
    write(tmp_path / "accounts.d" / "a.toml", ACCOUNT)
    loaded = load_config(main)
    assert [a.name for a in loaded.accounts] == ["support"]
    assert loaded.accounts[0].defined_in == str(tmp_path / "accounts.d" / "a.toml")
    write(tmp_path / "accounts.d" / "b.toml", ACCOUNT)
    result = run("--config", str(main), "config", "check")
    assert result.exit_code == 3
    assert "account 'support' is defined twice" in result.stderr


def test_a_provider_preset_fills_hosts_ports_and_tls_modes(tmp_path):
    cfg = write(tmp_path / "config.toml", '[[accounts]]\nname = "g"\nemail = "a@gmail.com"\nprovider = "gmail"\n')
    account = load_config(cfg).accounts[0]
    assert (account.imap_host, account.imap_port, account.imap_security) == ("imap.gmail.com", 993, "tls")
    assert account.smtp_host == "smtp.gmail.com"
    assert account.username == "a@gmail.com"
