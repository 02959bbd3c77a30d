"""A wrong after_import never blocks an account (issue 13, point 8; catalogue item 58).

Through the real poll against the real Dovecot: a ``move:`` folder that does not exist leaves the
messages stored and their server action pending; new mail keeps coming in; the failure shows in
``status``; once the config names the right folder, the pending actions follow the new config.
``add-account`` and ``accounts test`` check the folder first and name the folders the server has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.helpers import connect, numbered_mail, run_cli, status_json, write_config
from tests.servers import Dovecot, account_config, find_dovecot

# Cyrus lays folders out below INBOX with a '.' separator: "INBOX.Processed", not "Processed".
CYRUS_LIKE = """
namespace inbox {
  prefix = INBOX.
  separator = .
}
"""


def _mail(n: int) -> bytes:
    return numbered_mail(n, b"after import", b"<after-import-%d@example.org>" % n,
                         to=b"desk@example.test", text=b"Please help with request %d." % n)


def _subjects(tmp_path: Path) -> list[str]:
    with connect(tmp_path) as conn:
        return [row[0] for row in conn.execute("select subject from tickets order by id")]


@pytest.fixture(scope="module")
def cyrus_like(test_ca) -> Iterator[Dovecot]:
    """A Dovecot whose personal namespace is "INBOX." with a '.' separator, as Cyrus has it."""
    if find_dovecot() is None:
        pytest.skip("Dovecot is not installed")
    with Dovecot(test_ca, extra_conf=CYRUS_LIKE) as server:
        yield server


def test_a_wrong_move_folder_never_stops_new_mail_and_a_fixed_config_moves_the_pending_ones(
    cyrus_like, tmp_path: Path
) -> None:
    server = cyrus_like
    user = server.add_user()
    store_password(user.name, user.password)
    server.create_folder(user, "INBOX.Processed")
    account = account_config(user, server, after_import="move:Processed")
    config = write_config(tmp_path, account)
    server.append(user, _mail(1))

    first = run_cli(config, "poll")
    # The mail is stored; the move fails and says which folder, and which folders exist.
    assert _subjects(tmp_path) == ["after import 1"]
    assert first.exit_code != 0
    assert "'Processed'" in first.stderr
    assert "INBOX.Processed" in first.stderr
    assert "separator '.'" in first.stderr
    status = status_json(config)
    (acct,) = status["accounts"]
    assert not acct["healthy"] and "Processed" in acct["last_error"]
    assert any("Processed" in alert for alert in status["alerts"])
    assert acct["imported_total"] == 1

    # New mail still comes in while the action keeps failing.
    server.append(user, _mail(2))
    second = run_cli(config, "poll")
    assert second.exit_code != 0
    assert _subjects(tmp_path) == ["after import 1", "after import 2"]
    assert server.uids(user, "INBOX") != []

    # The sysadmin fixes the config: the pending actions follow it, nothing is re-imported.
    account["after_import"] = "move:INBOX.Processed"
    config = write_config(tmp_path, account)
    server.append(user, _mail(3))
    third = run_cli(config, "poll")
    assert third.exit_code == 0, third.output
    assert _subjects(tmp_path) == ["after import 1", "after import 2", "after import 3"]
    assert server.uids(user, "INBOX") == []
    assert len(server.uids(user, "INBOX.Processed")) == 3
    (acct,) = status_json(config)["accounts"]
    assert acct["healthy"] and acct["last_error"] is None


def test_a_changed_after_import_applies_to_actions_still_pending(cyrus_like, tmp_path: Path) -> None:
    server = cyrus_like
    user = server.add_user()
    store_password(user.name, user.password)
    account = account_config(user, server, after_import="move:Nowhere")
    config = write_config(tmp_path, account)
    uid = server.append(user, _mail(1))
    assert run_cli(config, "poll").exit_code != 0
    account["after_import"] = "seen"
    config = write_config(tmp_path, account)
    assert run_cli(config, "poll").exit_code == 0
    assert "\\Seen" in server.flags(user)[uid]
    with connect(tmp_path) as conn:
        assert conn.execute("select action, action_state from sources").fetchall() == [("seen", "done")]


def test_accounts_test_names_a_missing_move_folder_and_the_folders_the_server_has(
    cyrus_like, smtp_server, tmp_path: Path
) -> None:
    server = cyrus_like
    user = server.add_user()
    store_password(user.name, user.password)
    server.create_folder(user, "INBOX.Processed")
    config = write_config(tmp_path, account_config(user, server, after_import="move:Processed"))
    result = run_cli(config, "accounts", "test", user.name, "-v")
    assert result.exit_code == 1, result.output
    assert "after_import folder 'Processed' does not exist" in result.stderr
    assert "INBOX.Processed" in result.stderr
    assert "separator '.'" in result.stderr and "namespace 'INBOX.'" in result.stderr

    good = write_config(tmp_path, account_config(user, server, smtp_server, after_import="move:INBOX.Processed"))
    ok = run_cli(good, "accounts", "test", user.name, "-v")
    assert ok.exit_code == 0, ok.output
    assert "ok  IMAP after_import folder INBOX.Processed" in ok.stdout


def test_add_account_refuses_a_move_folder_that_does_not_exist(cyrus_like, tmp_path: Path) -> None:
    server = cyrus_like
    user = server.add_user()
    main = tmp_path / "config.toml"
    main.write_text(f'[storage]\ndatabase = "{tmp_path / "m2t.db"}"\n')
    result = run_cli(
        main, "add-account", user.name, "--email", user.email, "--imap-host", server.host,
        "--imap-port", str(server.imaps_port), "--smtp-host", server.host, "--smtp-port", "1",
        "--ca-file", str(server.ca_file), "--after-import", "move:Processed", "--password-stdin",
        input=user.password + "\n",
    )
    assert result.exit_code == 1, result.output
    assert "after_import folder 'Processed' does not exist" in result.stderr
    assert not (tmp_path / "accounts.d" / f"{user.name}.toml").exists()
