"""Managing accounts from the CLI: list, show, enable/disable, set-password, remove, rename."""

from __future__ import annotations

import json
from email.message import EmailMessage

import keyring
import pytest

from tests.helpers import connect, run_cli, storage_toml


@pytest.fixture
def env(tmp_path, dovecot, imap_user, smtp_server, account_config):
    main = tmp_path / "etc" / "config.toml"
    main.parent.mkdir()
    main.write_text("# my own comment\n" + storage_toml(main.parent, "../var/m2t.db"))
    acc = account_config(imap_user, smtp_server)

    class Env:
        user = imap_user
        name = acc["name"]
        config = main

        def invoke(self, *args, input=None):
            return run_cli(main, *args, input=input)

        def add(self):
            result = self.invoke(
                "add-account", acc["name"], "--email", acc["email"], "--imap-host", acc["imap_host"],
                "--imap-port", str(acc["imap_port"]), "--smtp-host", acc["smtp_host"],
                "--smtp-port", str(acc["smtp_port"]), "--ca-file", acc["ca_file"],
                "--password-stdin", input=imap_user.password + "\n",
            )
            assert result.exit_code == 0, result.output
            return result

    return Env()


def mail(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "ann@customer.test"
    msg["To"] = "desk@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@customer.test>"
    msg.set_content("hello")
    return msg.as_bytes()


def test_add_account_runs_every_check_and_says_so_before_saving(env):
    result = env.add()
    assert "ok  IMAP sign-in" in result.stderr and "ok  SMTP AUTH" in result.stderr
    assert "All 12 checks passed." in result.stderr
    assert env.config.read_text().startswith("# my own comment")


def test_disable_and_enable_switch_polling_and_keep_the_main_configs_comments(env):
    env.add()
    assert env.invoke("accounts", "disable", env.name).exit_code == 0
    rows = json.loads(env.invoke("accounts", "list", "--json").stdout)
    assert [(r["name"], r["enabled"]) for r in rows] == [(env.name, False)]
    poll = env.invoke("poll")
    assert poll.exit_code == 0
    assert env.name not in poll.stdout
    assert env.invoke("accounts", "enable", env.name).exit_code == 0
    rows = json.loads(env.invoke("accounts", "list", "--json").stdout)
    assert rows[0]["enabled"] is True
    assert env.config.read_text().startswith("# my own comment")


def test_show_prints_the_accounts_settings(env):
    env.add()
    result = env.invoke("accounts", "show", env.name, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["email"] == env.user.email and data["auth"] == "password"


def test_set_password_checks_the_new_password_before_storing_it(env):
    env.add()
    bad = env.invoke("accounts", "set-password", env.name, "--password-stdin", input="wrong\n")
    assert bad.exit_code == 4
    assert keyring.get_password("mail2ticket", env.name) == env.user.password


def test_remove_asks_for_confirmation_and_deletes_the_password(env):
    env.add()
    refused = env.invoke("accounts", "remove", env.name)
    assert refused.exit_code != 0
    result = env.invoke("accounts", "remove", env.name, "--yes")
    assert result.exit_code == 0, result.output
    assert keyring.get_password("mail2ticket", env.name) is None
    assert json.loads(env.invoke("accounts", "list", "--json").stdout) == []


def test_rename_moves_the_file_the_password_and_every_row_of_the_account(env, dovecot):
    env.add()
    dovecot.append(env.user, mail("Printer on fire"))
    assert env.invoke("poll").exit_code == 0
    result = env.invoke("accounts", "rename", env.name, "helpdesk")
    assert result.exit_code == 0, result.output
    assert not (env.config.parent / "accounts.d" / f"{env.name}.toml").exists()
    assert (env.config.parent / "accounts.d" / "helpdesk.toml").exists()
    assert keyring.get_password("mail2ticket", "helpdesk") == env.user.password
    assert keyring.get_password("mail2ticket", env.name) is None
    with connect(env.config.parent) as db:
        for table in ("tickets", "messages", "sources", "mailboxes", "account_status"):
            names = {row[0] for row in db.execute(f"select account from {table}")}
            assert names == {"helpdesk"}, table
    # The import ledger moved with it: the next poll imports nothing twice.
    poll = env.invoke("poll", "--json")
    assert poll.exit_code == 0, poll.output
    tickets = json.loads(env.invoke("tickets", "list", "--json").stdout)
    assert [(t["subject"], t["account"]) for t in tickets] == [("Printer on fire", "helpdesk")]
    assert env.invoke("accounts", "test", "helpdesk").exit_code == 0


def test_rename_refuses_a_name_that_is_taken_and_changes_nothing(env):
    env.add()
    result = env.invoke("accounts", "rename", env.name, env.name)
    assert result.exit_code == 3
    assert "exists already" in result.stderr
    assert (env.config.parent / "accounts.d" / f"{env.name}.toml").exists()


@pytest.mark.parametrize("taken", ["s3-attachments", "chat.hook", "database"])
def test_a_name_another_secret_is_kept_under_is_refused_everywhere(env, taken):
    """Item 92: an account's password is the keyring entry and systemd credential of its name; the
    S3 secret key is 's3-attachments' and a webhook's credential 'NAME.hook'. An account of that
    name would read (and 'accounts remove' would delete) the other secret."""
    keyring.set_password("mail2ticket", "s3-attachments", "the-bucket-key")
    added = env.invoke("add-account", taken, "--email", "x@example.test", "--imap-host", "127.0.0.1",
                       "--smtp-host", "127.0.0.1", "--no-verify", "--password-stdin", input="pw\n")
    assert added.exit_code == 3, added.output
    assert f"{taken!r} cannot be an account name" in added.stderr
    env.add()
    renamed = env.invoke("accounts", "rename", env.name, taken)
    assert renamed.exit_code == 3 and f"{taken!r} cannot be an account name" in renamed.stderr
    by_hand = env.config.parent / "accounts.d" / "by-hand.toml"
    by_hand.write_text(f'[[accounts]]\nname = "{taken}"\nemail = "x@example.test"\nimap_host = "127.0.0.1"\n'
                       'smtp_host = "127.0.0.1"\n')
    checked = env.invoke("config", "check")
    assert checked.exit_code == 3 and f"{taken!r} cannot be an account name" in checked.stderr
    assert keyring.get_password("mail2ticket", "s3-attachments") == "the-bucket-key"


def test_rename_refuses_a_name_still_used_in_the_database(env, dovecot):
    env.add()
    dovecot.append(env.user, mail("Old ticket"))
    assert env.invoke("poll").exit_code == 0
    with connect(env.config.parent) as db:
        db.execute("update tickets set account = 'gone'")
    result = env.invoke("accounts", "rename", env.name, "gone")
    assert result.exit_code == 3
    assert "already holds" in result.stderr
    with connect(env.config.parent) as db:
        assert {r[0] for r in db.execute("select account from sources")} == {env.name}
    assert (env.config.parent / "accounts.d" / f"{env.name}.toml").exists()
    assert not (env.config.parent / "accounts.d" / "gone.toml").exists()
