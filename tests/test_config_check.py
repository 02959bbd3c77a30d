"""'config check' refuses configs that cannot work, one line per problem, exit 3; '--online' also
signs in to each account as 'accounts test' does (issue 14, point 6)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import tomli_w

from mail2ticket.accounts.secrets import store_password
from tests.helpers import run_cli

CONFIG_ERROR = 3


def write(tmp_path: Path, *accounts: dict, storage: dict | None = None) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({
        "storage": storage or {"database": "data/m2t.db", "attachments": "data/files"},
        "accounts": list(accounts),
    }))
    return config


def account(name: str = "support", **keys) -> dict:
    return {"name": name, "email": f"{name}@example.com", "imap_host": "imap.example.com",
            "smtp_host": "smtp.example.com", **keys}


def check(config: Path, *args: str):
    return run_cli(config, "config", "check", *args)


def maildir(path: Path) -> Path:
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True)
    return path


def test_a_config_that_can_work_passes(tmp_path: Path):
    store_password("support", "secret")
    config = write(tmp_path, account(), {"name": "local", "email": "l@example.com", "source": "maildir",
                                         "path": str(maildir(tmp_path / "Maildir"))})
    result = check(config)
    assert result.exit_code == 0, result.output
    assert "Config OK" in result.stdout and result.stderr == ""


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ca_file", "ca_file {tmp}/no-such-ca.pem does not exist"),
        ("no password", "account nopass: no password in the keyring, in $CREDENTIALS_DIRECTORY or from a password_command"),
        ("password_command not executable", "password_command {tmp}/pass.sh is not an executable file"),
        ("password_command not found", "password_command no-such-password-tool is not found on $PATH"),
        ("maildir", "the Maildir {tmp}/gone does not exist"),
        ("database", "[storage] database = /sys/mail2ticket-check/m2t.db: the directory /sys is not writable"),
    ],
)
def test_a_config_that_cannot_work_fails_with_one_line_naming_the_problem(tmp_path: Path, case, expected):
    store_password("support", "secret")
    script = tmp_path / "pass.sh"
    script.write_text("#!/bin/sh\necho secret\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)  # not executable
    accounts = {
        "ca_file": [account(ca_file=str(tmp_path / "no-such-ca.pem"))],
        "no password": [account(), account("nopass")],
        "password_command not executable": [account(password_command=str(script))],
        "password_command not found": [account(password_command="no-such-password-tool show mail")],
        "maildir": [{"name": "local", "email": "l@example.com", "source": "maildir", "path": str(tmp_path / "gone")}],
        "database": [account()],
    }[case]
    storage = {"database": "/sys/mail2ticket-check/m2t.db"} if case == "database" else None
    config = write(tmp_path, *accounts, storage=storage)
    result = check(config)
    assert result.exit_code == CONFIG_ERROR, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected.format(tmp=tmp_path) in lines[0], lines[0]
    assert lines[0].startswith("Error: ") and "(" in lines[0], "it says what to do"
    assert "Config OK" not in result.stdout


def test_every_problem_is_one_line(tmp_path: Path):
    script = tmp_path / "pass.sh"
    script.write_text("#!/bin/sh\necho secret\n")
    accounts = [
        account("a", ca_file=str(tmp_path / "no-such-ca.pem"), password_command=str(script)),
        account("b"),
        {"name": "local", "email": "l@example.com", "source": "maildir", "path": str(tmp_path / "gone")},
    ]
    config = write(tmp_path, *accounts, storage={"database": "/sys/mail2ticket-check/m2t.db"})
    result = check(config)
    assert result.exit_code == CONFIG_ERROR
    lines = result.stderr.strip().splitlines()
    # a: ca_file, password_command; b: no password; local: the Maildir; the database directory
    assert len(lines) == 5, result.stderr
    report = json.loads(check(config, "--json").stdout)
    assert len(report["problems"]) == 5


def test_online_signs_in_to_each_account_like_accounts_test(tmp_path, dovecot, imap_user, smtp_server,
                                                            account_config):
    store_password(imap_user.name, imap_user.password)
    config = write(tmp_path, account_config(imap_user, smtp_server))
    offline = check(config)
    assert offline.exit_code == 0, offline.output
    assert "checks passed" not in offline.stdout
    online = check(config, "--online")
    assert online.exit_code == 0, online.output
    assert f"{imap_user.name} <{imap_user.email}> enabled" in online.stdout
    assert "online: all" in online.stdout and "checks passed" in online.stdout


@pytest.mark.parametrize(
    ("fault", "code", "expected"),
    [
        ("wrong password", 4, "IMAP sign-in"),
        ("missing folder", 1, "IMAP folder Nowhere"),
        ("missing move: folder", 1, "IMAP after_import folder Nowhere"),  # diagnostics.check_move_folder
    ],
)
def test_online_fails_with_the_cause_of_the_failing_step(tmp_path, dovecot, imap_user, smtp_server,
                                                        account_config, fault, code, expected):
    store_password(imap_user.name, "wrong" if fault == "wrong password" else imap_user.password)
    keys = {"missing folder": {"folder": "Nowhere"}, "missing move: folder": {"after_import": "move:Nowhere"}}.get(fault, {})
    config = write(tmp_path, account_config(imap_user, smtp_server, **keys))
    assert check(config).exit_code == 0, "nothing wrong to see offline"
    result = check(config, "--online")
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert lines[0].startswith(f"Error: account {imap_user.name}: ")


def test_online_tries_a_postgresql_database_and_says_in_one_line_why_it_cannot_use_it(tmp_path, pg_url):
    from mail2ticket.tickets.db import open_db
    from tests.postgres import TEST_PASSWORD
    from tests.servers import free_port

    storage = {"database": pg_url, "attachments": str(tmp_path / "files")}
    config = write(tmp_path, storage=storage)
    store_password("database", TEST_PASSWORD)
    open_db(pg_url, password=TEST_PASSWORD).close()  # the schema, as a first start makes it
    result = check(config, "--online")
    assert result.exit_code == 0, result.output
    assert "; reached, schema up to date" in result.stdout
    assert json.loads(check(config, "--online", "--json").stdout)["database_online"]["ok"] is True

    store_password("database", "wrong")
    result = check(config, "--online")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 4 and len(lines) == 1 and "cannot sign in to the PostgreSQL database" in lines[0], \
        result.output
    assert "wrong" not in result.output and check(config).exit_code == 0  # offline: nothing to see

    store_password("database", TEST_PASSWORD)
    nowhere = pg_url.replace(f":{pg_url.split(':')[-1].split('/')[0]}/", f":{free_port()}/")
    config = write(tmp_path, storage={**storage, "database": nowhere})
    result = check(config, "--online")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 6 and len(lines) == 1 and "cannot connect to the PostgreSQL database" in lines[0], \
        result.output

    with open_db(pg_url, password=TEST_PASSWORD) as db:
        db.execute("insert into m2t_schema (name, applied_at) values ('9999 from a newer version', 'x')")
    config = write(tmp_path, storage=storage)
    result = check(config, "--online")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == CONFIG_ERROR and len(lines) == 1 and "newer mail2ticket" in lines[0], result.output
