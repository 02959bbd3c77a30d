"""From a real IMAP mailbox to tickets in SQLite, driven through the real CLI (issue 2)."""

from __future__ import annotations

import json
import socket
import tomllib
from datetime import UTC, datetime

import pytest
import tomli_w
from click.testing import CliRunner

from mail2ticket.cli import cli
from tests.helpers import engine_storage, make_mail


@pytest.fixture
def setup(tmp_path, dovecot, imap_user, smtp_server, account_config):
    """A main config in tmp_path, and a helper that registers accounts through add-account."""
    main = tmp_path / "etc" / "config.toml"
    main.parent.mkdir()
    storage = engine_storage(main.parent, {"database": "../var/m2t.db", "attachments": "../var/att"},
                             replaces="../var/m2t.db")  # on PostgreSQL: a database of this test's own
    main.write_text("# my hand-written comment\n[storage]\n" + tomli_w.dumps(storage))

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, ["--config", str(main), *args], input=input)

    def add(user=imap_user, password=None, extra=(), **overrides):
        acc = account_config(user, smtp_server, **overrides)
        args = [
            "add-account",
            acc["name"],
            "--email",
            acc["email"],
            "--imap-host",
            acc["imap_host"],
            "--imap-port",
            str(acc["imap_port"]),
            "--smtp-host",
            acc["smtp_host"],
            "--smtp-port",
            str(acc["smtp_port"]),
            "--smtp-security",
            acc["smtp_security"],
            "--ca-file",
            acc["ca_file"],
            "--password-stdin",
            *extra,
        ]
        return invoke(*args, input=(password or user.password) + "\n")

    class Setup:
        pass

    s = Setup()
    s.main, s.invoke, s.add, s.user, s.dovecot = main, invoke, add, imap_user, dovecot
    return s


def tickets(s, *args):
    result = s.invoke("tickets", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_account_logs_in_and_writes_the_account_beside_the_main_config(setup):
    result = setup.add()
    assert result.exit_code == 0, result.output
    account_file = setup.main.parent / "accounts.d" / f"{setup.user.name}.toml"
    assert account_file.exists()
    data = tomllib.loads(account_file.read_text())
    assert data["accounts"][0]["email"] == setup.user.email
    # The main config keeps the sysadmin's comment; the password is in no file.
    assert setup.main.read_text().startswith("# my hand-written comment")
    for path in setup.main.parent.rglob("*"):
        if path.is_file():
            assert setup.user.password not in path.read_text()
    check = setup.invoke("config", "check")
    assert check.exit_code == 0 and setup.user.email in check.stdout


def test_the_password_goes_to_the_keyring_only(setup, isolated_env):
    import keyring

    assert setup.add().exit_code == 0
    assert keyring.get_password("mail2ticket", setup.user.name) == setup.user.password


def test_poll_turns_each_new_mail_into_a_ticket_and_a_second_poll_imports_nothing(setup):
    assert setup.add().exit_code == 0
    setup.dovecot.append(setup.user, make_mail("First problem"))
    setup.dovecot.append(setup.user, make_mail("Second problem", attachment=b"%PDF-1.4 fake"))
    first = setup.invoke("poll")
    assert first.exit_code == 0, first.output
    assert f"{setup.user.name}: 2 imported" in first.stdout
    listed = tickets(setup)
    assert sorted(t["subject"] for t in listed) == ["First problem", "Second problem"]
    t = listed[0]
    for key in (
        "id",
        "subject",
        "requester",
        "status",
        "priority",
        "account",
        "created_at",
        "updated_at",
        "message_count",
        "incoming_count",
        "overdue",
    ):
        assert key in t
    assert t["requester"] == "ann@customer.test"
    assert t["status"] == "open" and t["overdue"] is False and t["message_count"] == 1
    assert t["created_at"].endswith("Z")
    second = setup.invoke("poll")
    assert second.exit_code == 0
    assert f"{setup.user.name}: 0 imported" in second.stdout
    assert len(tickets(setup)) == 2


def test_a_message_appended_later_is_imported_by_the_next_poll(setup):
    assert setup.add().exit_code == 0
    setup.dovecot.append(setup.user, make_mail("Early"))
    assert setup.invoke("poll").exit_code == 0
    setup.dovecot.append(setup.user, make_mail("Late"))
    assert setup.invoke("poll").exit_code == 0
    assert sorted(t["subject"] for t in tickets(setup)) == ["Early", "Late"]


def test_messages_are_marked_seen_only_after_import(setup):
    assert setup.add().exit_code == 0
    uid = setup.dovecot.append(setup.user, make_mail("Flag me"))
    assert "\\Seen" not in setup.dovecot.flags(setup.user)[uid]
    assert setup.invoke("poll").exit_code == 0
    assert "\\Seen" in setup.dovecot.flags(setup.user)[uid]


def test_after_import_none_leaves_the_server_untouched(setup):
    assert setup.add(extra=("--after-import", "none")).exit_code == 0
    uid = setup.dovecot.append(setup.user, make_mail("Leave me"))
    assert setup.invoke("poll").exit_code == 0
    assert "\\Seen" not in setup.dovecot.flags(setup.user)[uid]
    assert len(tickets(setup)) == 1


def test_after_import_move_puts_the_message_in_another_folder(setup):
    setup.dovecot.create_folder(setup.user, "Imported")
    assert setup.add(extra=("--after-import", "move:Imported")).exit_code == 0
    setup.dovecot.append(setup.user, make_mail("Move me"))
    assert setup.invoke("poll").exit_code == 0
    assert setup.dovecot.uids(setup.user, "INBOX") == []
    assert len(setup.dovecot.uids(setup.user, "Imported")) == 1
    assert len(tickets(setup)) == 1


def test_after_import_delete_expunges_only_our_messages(setup):
    assert setup.add(extra=("--after-import", "delete")).exit_code == 0
    setup.dovecot.append(setup.user, make_mail("Delete me"))
    assert setup.invoke("poll").exit_code == 0
    assert setup.dovecot.uids(setup.user, "INBOX") == []
    assert len(tickets(setup)) == 1


def test_since_skips_older_mail(setup):
    assert setup.add(extra=("--since", "2020-01-01")).exit_code == 0
    old = datetime(2015, 5, 1, tzinfo=UTC)
    setup.dovecot.append(setup.user, make_mail("Ancient", date=old), msg_time=old)
    setup.dovecot.append(setup.user, make_mail("Recent"))
    assert setup.invoke("poll").exit_code == 0
    assert [t["subject"] for t in tickets(setup)] == ["Recent"]
    account_file = setup.main.parent / "accounts.d" / f"{setup.user.name}.toml"
    assert "since = 2020-01-01" in account_file.read_text()


def test_tickets_show_gives_the_messages_with_text_and_stored_attachments(setup):
    assert setup.add().exit_code == 0
    setup.dovecot.append(
        setup.user, make_mail("With file", body="See attached.", attachment=b"%PDF-1.4 x")
    )
    assert setup.invoke("poll").exit_code == 0
    tid = tickets(setup)[0]["id"]
    result = setup.invoke("tickets", "show", str(tid), "--json")
    assert result.exit_code == 0, result.output
    ticket = json.loads(result.stdout)
    [message] = ticket["messages"]
    assert message["direction"] == "in"
    assert message["from_address"] == "ann@customer.test" and message["from_name"] == "Ann Customer"
    assert message["to"] == ["support@example.test"]
    assert "See attached." in message["body_text"]
    [att] = message["attachments"]
    assert att["filename"] == "invoice.pdf" and att["size"] == len(b"%PDF-1.4 x")
    with open(att["path"], "rb") as f:
        assert f.read() == b"%PDF-1.4 x"
    human = setup.invoke("tickets", "show", str(tid))
    assert "With file" in human.stdout and "See attached." in human.stdout


def test_tickets_list_prints_plain_aligned_text_when_piped(setup):
    assert setup.add().exit_code == 0
    setup.dovecot.append(setup.user, make_mail("Plain output"))
    assert setup.invoke("poll").exit_code == 0
    result = setup.invoke("tickets", "list")
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:3] == ["id", "status", "priority"]
    assert "Plain output" in row and "\x1b[" not in result.stdout


def test_status_shows_each_accounts_last_poll_and_result(setup):
    assert setup.add().exit_code == 0
    setup.dovecot.append(setup.user, make_mail("Counted"))
    assert setup.invoke("poll").exit_code == 0
    result = setup.invoke("status", "--json")
    report = json.loads(result.stdout)
    [acct] = [a for a in report["accounts"] if a["name"] == setup.user.name]
    assert acct["last_poll_at"] and acct["last_error"] is None
    assert acct["imported_total"] == 1
    assert "1 new" in acct["last_result"]


def test_add_account_refuses_a_wrong_password_and_saves_nothing(setup):
    result = setup.add(password="not-the-password")
    assert result.exit_code == 4
    assert "IMAP login" in result.stderr and "refused" in result.stderr
    assert "nothing was saved" in result.stderr and "add-account" in result.stderr  # not set-password (issue 14.7)
    assert "set-password" not in result.stderr
    assert not (setup.main.parent / "accounts.d").exists()
    assert "Traceback" not in result.output


def test_add_account_refuses_a_server_whose_certificate_is_not_trusted(setup, other_ca_file):
    result = setup.add(ca_file=str(other_ca_file))
    assert result.exit_code == 5
    assert "not trusted" in result.stderr and "ca_file" in result.stderr
    assert not (setup.main.parent / "accounts.d").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_add_account_reports_an_unreachable_port(setup):
    result = setup.add(imap_port=_closed_port())
    assert result.exit_code == 6
    assert "refused the connection" in result.stderr


def test_poll_with_a_wrong_password_reports_the_account_and_continues_with_the_others(
    setup, dovecot
):
    assert setup.add().exit_code == 0
    other = dovecot.add_user()
    assert setup.add(user=other).exit_code == 0
    import keyring

    keyring.set_password("mail2ticket", setup.user.name, "wrong")
    dovecot.append(other, make_mail("For the healthy account"))
    result = setup.invoke("poll")
    assert result.exit_code == 4  # sign-in refused, as in accounts test (README: exit codes)
    assert f"{setup.user.name}: FAILED" in result.stderr and "IMAP login" in result.stderr
    assert f"{other.name}: 1 imported" in result.stdout
    status = setup.invoke("status", "--json")
    assert status.exit_code == 1
    report = json.loads(status.stdout)
    failing = [a for a in report["accounts"] if a["name"] == setup.user.name][0]
    assert "IMAP login" in failing["last_error"]


def test_starttls_accounts_work_and_plain_imap_is_refused_without_opt_in(setup, dovecot, tmp_path):
    assert (
        setup.add(extra=("--imap-security", "starttls"), imap_port=dovecot.starttls_port).exit_code
        == 0
    )
    dovecot.append(setup.user, make_mail("Over STARTTLS"))
    assert setup.invoke("poll").exit_code == 0
    assert [t["subject"] for t in tickets(setup)] == ["Over STARTTLS"]


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mail2ticket", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "mail2ticket" in out.stdout
