"""Exit codes and messages that agree across commands (issue 14, point 9): a cause has one exit code
whichever command meets it (README, "exit code"), and each failure is said once."""

from __future__ import annotations

import keyring
import pytest

from tests.helpers import make_mail
from tests.test_poll import setup  # noqa: F401  (setup is a fixture)

AUTH, SECRET, FAILURE, USAGE = 4, 7, 1, 2


@pytest.fixture
def two(setup, dovecot):  # noqa: F811
    """Two accounts registered by add-account, each with one new mail."""
    assert setup.add().exit_code == 0
    setup.other = dovecot.add_user()
    assert setup.add(user=setup.other).exit_code == 0
    dovecot.append(setup.user, make_mail("For the first"))
    dovecot.append(setup.other, make_mail("For the second"))
    return setup


def test_a_wrong_password_is_exit_4_in_poll_as_in_accounts_test_and_is_said_once(two):
    keyring.set_password("mail2ticket", two.user.name, "wrong")
    test = two.invoke("accounts", "test", two.user.name)
    assert test.exit_code == AUTH, test.output
    poll = two.invoke("poll")
    assert poll.exit_code == AUTH, poll.output
    assert f"{two.other.name}: 1 imported" in poll.stdout, "the healthy account is still polled"
    failure_lines = [line for line in poll.stderr.splitlines() if two.user.name in line]
    assert len(failure_lines) == 1, poll.stderr  # not once as a log line and once as a summary
    assert "IMAP login" in failure_lines[0] or "sign" in failure_lines[0].lower()


def test_a_missing_password_is_exit_7_in_poll_as_in_accounts_test(two):
    keyring.delete_password("mail2ticket", two.user.name)
    keyring.delete_password("mail2ticket", two.other.name)
    test = two.invoke("accounts", "test", two.user.name)
    assert test.exit_code == SECRET, test.output
    poll = two.invoke("poll")
    assert poll.exit_code == SECRET, poll.output
    for name in (two.user.name, two.other.name):
        assert len([line for line in poll.stderr.splitlines() if name in line]) == 1, poll.stderr


def test_accounts_failing_for_different_causes_make_poll_exit_1(two):
    keyring.set_password("mail2ticket", two.user.name, "wrong")
    keyring.delete_password("mail2ticket", two.other.name)
    poll = two.invoke("poll")
    assert poll.exit_code == FAILURE, poll.output
    lines = poll.stderr.splitlines()
    assert len(lines) == 2, poll.stderr
    assert lines[0].startswith(f"{two.user.name}: FAILED: IMAP login")
    assert lines[1].startswith(f"{two.other.name}: FAILED: no password")


def test_poll_json_gives_each_accounts_exit_code(two):
    import json

    keyring.set_password("mail2ticket", two.user.name, "wrong")
    poll = two.invoke("poll", "--json")
    assert poll.exit_code == AUTH
    by_name = {r["account"]: r for r in json.loads(poll.stdout)}
    assert by_name[two.user.name]["exit_code"] == AUTH and not by_name[two.user.name]["ok"]
    assert by_name[two.other.name]["exit_code"] == 0 and by_name[two.other.name]["ok"]


def test_a_duplicate_account_name_in_add_account_is_a_usage_error(two):
    again = two.add()
    assert again.exit_code == USAGE, again.output
    assert "exists already" in again.stderr and "bad config" not in again.stderr.lower()
