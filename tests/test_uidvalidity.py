"""A folder's UIDVALIDITY changes (rebuilt, restored, recreated): re-scan, match by content.

Dovecot's folder is recreated so it hands out a new UIDVALIDITY and numbers every message again,
while new mail arrives before and after. The next poll must re-scan the folder, recognise every
message already imported by its SHA-256 (no second ticket), import the new ones, log the event
and show it in `status`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.helpers import connect, numbered_mail, run_cli, sha256_hex, write_config
from tests.servers import Dovecot, User


def _message(n: int) -> bytes:
    return numbered_mail(n, b"uidvalidity test", b"<uv-%d@example.org>" % n)


def check_exactly_once(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    """Every message on the server: one ledger row under the current UIDVALIDITY, one ticket entry."""
    server = dovecot.fetch_raw(user)
    uidvalidity = dovecot.uidvalidity(user)
    with connect(tmp_path) as conn:
        ledger = dict(
            conn.execute(
                "select uid, raw_sha256 from sources where account = ? and uidvalidity = ?",
                [user.name, uidvalidity],
            ).fetchall()
        )
        per_content = dict(
            conn.execute("select raw_sha256, count(*) from messages group by raw_sha256").fetchall()
        )
        tickets = conn.execute("select count(*) from tickets").fetchone()[0]
    assert ledger == {uid: sha256_hex(raw) for uid, raw in server.items()}, "lost or mismatched under the new UIDVALIDITY"
    assert set(per_content) == {sha256_hex(raw) for raw in server.values()}
    assert set(per_content.values()) == {1}, "a message was imported twice"
    assert tickets == len(server), "one ticket per (unrelated) message"
    flags = dovecot.flags(user)
    assert all("\\Seen" in f for f in flags.values())


@pytest.mark.parametrize("keep_uids", [False, True], ids=["renumbered", "same-uids"])
def test_a_new_uidvalidity_rescans_the_folder_loses_nothing_and_duplicates_nothing(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path, keep_uids: bool
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user, batch_size=7))
    dovecot.append_many(imap_user, [_message(n) for n in range(40)])
    assert run_cli(config, "poll").exit_code == 0
    old = dovecot.uidvalidity(imap_user)
    dovecot.append_many(imap_user, [_message(n) for n in range(40, 50)])  # arrives, not yet polled

    new = dovecot.recreate_folder(imap_user, keep_uids=keep_uids)
    dovecot.append_many(imap_user, [_message(n) for n in range(50, 55)])  # arrives after the reset
    result = run_cli(config, "poll")

    assert new != old
    assert result.exit_code == 0, result.output
    assert f"{imap_user.name}: 15 imported" in result.stdout
    assert "40 duplicates" in result.stdout and "UIDVALIDITY changed" in result.stdout
    check_exactly_once(dovecot, imap_user, tmp_path)
    with connect(tmp_path) as conn:
        events = [detail for (detail,) in conn.execute("select detail from events where kind = 'uidvalidity-changed'")]
    assert len(events) == 1 and f"from {old} to {new}" in events[0]
    status = run_cli(config, "status", "--json")
    alerts = json.loads(status.stdout)["alerts"]
    assert any(f"from {old} to {new}" in a and imap_user.name in a for a in alerts), alerts
    assert f"from {old} to {new}" in run_cli(config, "status").stdout

    again = run_cli(config, "poll")
    assert again.exit_code == 0 and f"{imap_user.name}: 0 imported" in again.stdout
    assert "UIDVALIDITY" not in again.stdout, "the change is handled once"


def test_repeated_resets_with_mail_arriving_each_time_keep_exactly_one_entry_per_message(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user, batch_size=10))
    dovecot.append_many(imap_user, [_message(n) for n in range(30)])
    assert run_cli(config, "poll").exit_code == 0
    for reset in range(4):
        dovecot.append_many(imap_user, [_message(100 + 10 * reset + n) for n in range(5)])
        dovecot.recreate_folder(imap_user)
        dovecot.append_many(imap_user, [_message(200 + 10 * reset + n) for n in range(5)])
        result = run_cli(config, "poll")
        assert result.exit_code == 0, result.output
        assert f"{imap_user.name}: 10 imported" in result.stdout
        check_exactly_once(dovecot, imap_user, tmp_path)
    with connect(tmp_path) as conn:
        assert conn.execute("select count(*) from events where kind = 'uidvalidity-changed'").fetchone()[0] == 4


def test_an_over_size_message_keeps_one_open_quarantine_entry_across_a_reset(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user, max_message_size="10KB"))
    dovecot.append(imap_user, _message(1))
    dovecot.append(imap_user, _message(2) + b"x" * 20_000 + b"\r\n")
    assert run_cli(config, "poll").exit_code == 0

    dovecot.recreate_folder(imap_user)
    assert run_cli(config, "poll").exit_code == 0

    entries = json.loads(run_cli(config, "quarantine", "list", "--json").stdout)
    assert len(entries) == 1, "one open entry for the one over-size message"
    assert entries[0]["uidvalidity"] == dovecot.uidvalidity(imap_user)
    assert entries[0]["uid"] in dovecot.uids(imap_user)
    everything = json.loads(run_cli(config, "quarantine", "list", "--all", "--json").stdout)
    assert len(everything) == 2 and "superseded" in everything[0]["error"]
