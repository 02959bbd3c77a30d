"""A mailbox full of old mail (issue 14.4): add-account says how much the first poll would import
and offers --since; the list shows and sorts by the date of the first mail; ticket commands take
several ids or the list's filters, with a count and a confirmation. Against the real Dovecot."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import select
import sys
import time
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.helpers import run_cli, storage_toml

REPO = Path(__file__).resolve().parent.parent
UTC = dt.UTC
OLD = [dt.datetime(2024, 3, day, 9, 0, tzinfo=UTC) for day in (1, 2, 3, 4, 5)]  # five old mails
NOW = dt.datetime.now(UTC).replace(microsecond=0)


def mail(subject: str, date: dt.datetime) -> bytes:
    msg = EmailMessage()
    msg["From"] = "ann@customer.test"
    msg["To"] = "desk@example.test"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@customer.test>"
    msg.set_content("hello")
    return msg.as_bytes()


@pytest.fixture
def env(tmp_path, dovecot, imap_user, account_config):
    """A mailbox of 5 mails from March 2024, 1 from yesterday and 1 whose Date lies in the future."""
    main = tmp_path / "config.toml"
    main.write_text(storage_toml(tmp_path))
    for i, date in enumerate(OLD):
        dovecot.append(imap_user, mail(f"old {i}", date), msg_time=date)
    yesterday = NOW - dt.timedelta(days=1)
    dovecot.append(imap_user, mail("recent", yesterday), msg_time=yesterday)
    dovecot.append(imap_user, mail("from the future", NOW + dt.timedelta(days=300)))
    acc = account_config(imap_user)

    class Env:
        user = imap_user
        name = acc["name"]
        config = main
        args = ["--email", acc["email"], "--imap-host", acc["imap_host"], "--imap-port", str(acc["imap_port"]),
                "--ca-file", acc["ca_file"]]

        def invoke(self, *args, input=None):
            return run_cli(main, *args, input=input)

        def add(self, *extra):
            result = self.invoke("add-account", self.name, *self.args, "--password-stdin", *extra,
                                 input=imap_user.password + "\n")
            assert result.exit_code == 0, result.output
            return result

        def tickets(self, *args):
            result = self.invoke("tickets", "list", "--status", "all", "--json", *args)
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)

    return Env()


def test_add_account_says_how_many_mails_the_first_poll_imports_and_how_to_skip_old_ones(env, tmp_path):
    result = env.add()
    assert "The first poll will import all 7 messages in INBOX as tickets" in result.stderr
    account_file = tmp_path / "accounts.d" / f"{env.name}.toml"
    # What to do, and where: the account was saved without a date, the advice names the file.
    assert "since" not in account_file.read_text()
    assert "since = YYYY-MM-DD" in result.stderr and str(account_file) in result.stderr
    assert "tickets close --account" in result.stderr  # and how to clear them after the poll


def test_add_account_with_since_counts_only_the_mail_from_that_day_on(env):
    since = (NOW - dt.timedelta(days=30)).date().isoformat()
    result = env.add("--since", since)
    assert f"The first poll will import 2 messages in INBOX (from {since} on)" in result.stderr
    assert "--since" not in result.stderr.split("The first poll")[1]  # no advice: the user chose
    assert env.invoke("poll").exit_code == 0
    assert sorted(t["subject"] for t in env.tickets()) == ["from the future", "recent"]


def run_on_terminal(args: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run mail2ticket with a pseudo-terminal as stdin/stdout/stderr; type each answer after
    the prompt that ends with ': ' (or '] ') appears. Returns the exit code and the screen text."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on the terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "mail2ticket", *args],
                   {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"})
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
            if pending and screen.rstrip(b" ").endswith((b":", b"]")):
                os.write(fd, pending.pop(0).encode() + b"\r")
                screen += b"\n"
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


def test_add_account_on_a_terminal_asks_from_which_date_to_import(env, tmp_path):
    since = (NOW - dt.timedelta(days=30)).date().isoformat()
    code, screen = run_on_terminal(
        ["--config", str(env.config), "add-account", env.name, *env.args], [env.user.password, since]
    )
    assert code == 0, screen
    assert "The first poll would import all 7 messages in INBOX" in screen
    assert f"From {since} on: 2 messages." in screen
    account_file = tmp_path / "accounts.d" / f"{env.name}.toml"
    assert f"since = {since}" in account_file.read_text()
    assert env.invoke("poll").exit_code == 0
    assert len(env.tickets()) == 2


def test_the_list_shows_and_sorts_by_the_date_of_the_first_mail_never_later_than_its_arrival(env):
    env.add()
    assert env.invoke("poll").exit_code == 0
    tickets = env.tickets("--sort", "date")
    # The future-dated mail counts from its arrival (now), after yesterday's.
    assert [t["subject"] for t in tickets] == ["from the future", "recent", *[f"old {i}" for i in (4, 3, 2, 1, 0)]]
    by_subject = {t["subject"]: t for t in tickets}
    assert by_subject["old 0"]["first_message_at"] == "2024-03-01T09:00:00Z"
    assert by_subject["old 0"]["created_at"] >= NOW.isoformat().replace("+00:00", "Z")  # import time
    future = by_subject["from the future"]["first_message_at"]
    # capped at its arrival, not 300 days ahead (compared as times: "...19Z" sorts after "...19.47+00:00")
    assert dt.datetime.fromisoformat(future.replace("Z", "+00:00")) <= dt.datetime.now(UTC)
    assert [t["subject"] for t in env.tickets("--sort", "date", "--reverse")][:5] == [f"old {i}" for i in range(5)]
    # The plain table shows that date when sorting by it.
    table = env.invoke("tickets", "list", "--sort", "date")
    header, *rows = table.stdout.splitlines()
    assert header.split()[-1] == "date"
    assert rows[-1].endswith("2024-03-01T09:00:00Z")


def test_closing_old_mail_by_filter_counts_and_asks_first(env):
    env.add()
    assert env.invoke("poll").exit_code == 0

    refused = env.invoke("tickets", "close", "--account", env.name, "--before", "2025-01-01")
    assert refused.exit_code == 2
    assert "5 tickets match" in refused.stderr and "--yes" in refused.stderr
    assert sum(t["status"] == "open" for t in env.tickets()) == 7  # nothing changed

    code, screen = run_on_terminal(["--config", str(env.config), "tickets", "close", "--before", "2025-01-01"], ["n"])
    assert code == 1 and "Close 5 tickets?" in screen, screen
    assert sum(t["status"] == "open" for t in env.tickets()) == 7

    closed = env.invoke("tickets", "close", "--status", "open", "--account", env.name, "--before", "2025-01-01",
                        "--yes")
    assert closed.exit_code == 0, closed.output
    assert "5 tickets closed." in closed.stdout
    left = {t["subject"]: t["status"] for t in env.tickets()}
    assert left == {**{f"old {i}": "closed" for i in range(5)}, "recent": "open", "from the future": "open"}


def test_ticket_commands_take_several_ids_and_check_them_all_first(env):
    env.add()
    assert env.invoke("poll").exit_code == 0
    ids = sorted(t["id"] for t in env.tickets())

    missing = env.invoke("tickets", "close", str(ids[0]), "999")
    assert missing.exit_code == 1 and "no ticket #999" in missing.stderr
    assert all(t["status"] == "open" for t in env.tickets())  # nothing changed

    closed = env.invoke("tickets", "close", str(ids[0]), f"#{ids[1]}", str(ids[2]))
    assert closed.exit_code == 0, closed.output
    assert closed.stdout.splitlines() == [f"Ticket #{i}: open -> closed." for i in ids[:3]]
    reopened = env.invoke("tickets", "reopen", str(ids[0]), str(ids[1]))
    assert reopened.exit_code == 0
    assert {t["id"] for t in env.tickets("--status", "closed")} == {ids[2]}

    both = env.invoke("tickets", "close", str(ids[3]), "--account", env.name)
    assert both.exit_code == 2 and "not both" in both.stderr
    neither = env.invoke("tickets", "close")
    assert neither.exit_code == 2 and "--before" in neither.stderr


def test_assign_priority_and_tag_take_several_ids_or_the_lists_filters(env):
    env.add()
    assert env.invoke("poll").exit_code == 0
    by_subject = {t["subject"]: t["id"] for t in env.tickets()}
    old = [by_subject[f"old {i}"] for i in range(5)]
    recent = by_subject["recent"]

    # Several ids, as typed or as printed; one unknown id changes nothing.
    missing = env.invoke("tickets", "assign", str(old[0]), "999", "alice")
    assert missing.exit_code == 1 and "no ticket #999" in missing.stderr
    assert all(t["assignee"] is None for t in env.tickets())
    assigned = env.invoke("tickets", "assign", str(old[0]), f"#{old[1]}", "alice")
    assert assigned.exit_code == 0, assigned.output
    assert assigned.stdout.splitlines() == [f"Ticket #{i} assigned to alice." for i in old[:2]]
    prioritised = env.invoke("tickets", "priority", str(old[0]), str(recent), "high")
    assert prioritised.exit_code == 0, prioritised.output
    tagged = env.invoke("tickets", "tag", str(old[2]), str(recent), "vip", "billing")
    assert tagged.exit_code == 0, tagged.output
    tickets = {t["id"]: t for t in env.tickets()}
    assert {i for i, t in tickets.items() if t["assignee"] == "alice"} == set(old[:2])
    assert {i for i, t in tickets.items() if t["priority"] == "high"} == {old[0], recent}
    assert {i for i, t in tickets.items() if t["tags"]} == {old[2], recent}
    assert sorted(tickets[recent]["tags"]) == ["billing", "vip"]

    # By the list's filters: a count and --yes without a terminal, and only what would change.
    refused = env.invoke("tickets", "tag", "--before", "2025-01-01", "old-mail")
    assert refused.exit_code == 2 and "5 tickets match" in refused.stderr and "--yes" in refused.stderr
    assert not any("old-mail" in t["tags"] for t in env.tickets())
    tagged = env.invoke("tickets", "tag", "--before", "2025-01-01", "old-mail", "--yes")
    assert tagged.exit_code == 0, tagged.output
    assert {t["id"] for t in env.tickets() if "old-mail" in t["tags"]} == set(old)
    low = env.invoke("tickets", "priority", "--tag", "old-mail", "low", "--yes")
    assert low.exit_code == 0, low.output
    assert {t["id"] for t in env.tickets() if t["priority"] == "low"} == set(old)
    bob = env.invoke("tickets", "assign", "--before", "2025-01-01", "--assignee", "alice", "bob", "--yes")
    assert bob.exit_code == 0, bob.output
    assert {t["id"] for t in env.tickets() if t["assignee"] == "bob"} == set(old[:2])

    # Usage errors name what is wrong.
    assert "one priority" in env.invoke("tickets", "priority", str(old[0]), "sky-high").stderr
    assert "not both" in env.invoke("tickets", "tag", str(old[0]), "x", "--account", env.name).stderr
    assert "give a name, or --unassign" in env.invoke("tickets", "assign", str(old[0])).stderr
