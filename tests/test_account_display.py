"""What 'accounts show' and 'accounts list --json' print (issues 14.11 and 13.10): only the keys
that apply to the account, and never a secret of the config (oauth_client_secret, the
password_command line) in clear. And 'add-account --help' names every after_import value."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from mail2ticket.cli import cli
from mail2ticket.config.accounts import ACCOUNT_KEYS

CONFIG = """\
[storage]
database = "m2t.db"

[[accounts]]
name = "desk"
email = "desk@example.test"
imap_host = "imap.example.test"
smtp_host = "smtp.example.test"
password_command = "echo hunter2-from-the-command"

[[accounts]]
name = "google"
email = "desk@gmail.example"
provider = "gmail"
auth = "oauth2"
oauth_client_id = "1234.apps.example"
oauth_client_secret = "GOCSPX-s3cr3t-client"

[[accounts]]
name = "local"
email = "local@example.test"
source = "maildir"
path = "Maildir"
"""
SECRETS = ("hunter2-from-the-command", "GOCSPX-s3cr3t-client")


def invoke(tmp_path, *args):
    config = tmp_path / "config.toml"
    if not config.exists():
        config.write_text(CONFIG)
        (tmp_path / "Maildir").mkdir()
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def shown_keys(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*([a-z_]+): ?(.*)$", text, re.M)}


def test_a_password_account_shows_no_oauth_keys_and_no_empty_ones(tmp_path):
    keys = shown_keys(invoke(tmp_path, "accounts", "show", "desk"))
    assert not [k for k in keys if k.startswith("oauth_")]
    assert all(value.strip() for value in keys.values()), keys  # nothing empty
    assert keys["imap_host"] == "imap.example.test" and keys["auth"] == "password"
    assert "path" not in keys  # a Maildir key, for an IMAP account
    assert set(keys) < set(ACCOUNT_KEYS) | {"defined_in", "last_poll_at", "last_result", "last_error"}


def test_an_oauth_account_shows_its_oauth_keys_and_a_maildir_account_no_server_keys(tmp_path):
    google = shown_keys(invoke(tmp_path, "accounts", "show", "google"))
    assert google["oauth_client_id"] == "1234.apps.example"
    local = shown_keys(invoke(tmp_path, "accounts", "show", "local"))
    assert local["source"] == "maildir" and local["path"].endswith("Maildir")
    assert not [k for k in local if k.startswith(("imap_", "oauth_")) or k in ("folder", "push", "password_command")]


def test_accounts_show_and_list_json_never_print_a_client_secret_or_the_password_command(tmp_path):
    outputs = [
        invoke(tmp_path, "accounts", "show", "desk"),
        invoke(tmp_path, "accounts", "show", "google"),
        invoke(tmp_path, "accounts", "show", "desk", "--json"),
        invoke(tmp_path, "accounts", "show", "google", "--json"),
        invoke(tmp_path, "accounts", "list", "--json"),
        invoke(tmp_path, "accounts", "list"),
    ]
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output
    # They are masked, not dropped: one can see that they are set.
    desk = json.loads(outputs[2])
    assert desk["password_command"] == "(hidden)"
    assert json.loads(outputs[3])["oauth_client_secret"] == "(hidden)"
    assert shown_keys(outputs[0])["password_command"] == "(hidden)"
    assert json.loads(outputs[4])[2]["password_command"] is None  # not set: nothing to hide


def test_add_account_help_names_every_after_import_value(tmp_path):
    text = " ".join(invoke(tmp_path, "add-account", "--help").split())
    option = text.split("--after-import", 1)[1].split(" --", 1)[0]
    for value in ("seen", "none", "delete", "archive", "move:FOLDER"):
        assert value in option, option
