"""Poison messages and over-size mail: kept in the quarantine, never blocking the rest, retryable.

`mail2ticket quarantine list|show|retry` is how a sysadmin sees and re-runs them. A message over
the size limit is not downloaded at all: it stays unflagged on the server and is fetched by
`quarantine retry` once the limit is raised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mail2ticket.parse.message
from mail2ticket.accounts.secrets import store_password
from mail2ticket.cli import cli
from tests.helpers import all_tickets, numbered_mail, rows, run_cli, sha256_hex, write_config
from tests.servers import Dovecot, User


def _message(n: int, extra_header: bytes = b"", body: bytes = b"") -> bytes:
    return numbered_mail(n, b"quarantine test", b"<q-%d@example.org>" % n, extra=extra_header, body=body)


def _events(tmp_path: Path, kind: str) -> int:
    return rows(tmp_path, "select count(*) from events where kind = ?", [kind])[0][0]


@pytest.fixture
def buggy_parser():
    """The installed parser with a bug: it crashes on mail with an X-Trigger header.

    Stands for whatever parser bug the next real-world message finds; undo() is the fixed release.
    """
    real = mail2ticket.parse.message.parse_message

    def parse(raw: bytes, **kwargs):
        if b"\nX-Trigger:" in raw:
            raise IndexError("list index out of range")  # what the stdlib header parser raises
        return real(raw, **kwargs)

    with pytest.MonkeyPatch.context() as patch:  # its own: undo() leaves the test's environment
        patch.setattr(mail2ticket.parse.message, "parse_message", parse)
        yield patch


def test_a_poison_message_is_quarantined_and_the_mail_behind_it_imported_in_the_same_poll(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path, buggy_parser
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user, batch_size=3))
    poison = _message(3, b"X-Trigger: yes\r\n")
    dovecot.append_many(imap_user, [_message(1), _message(2), poison, _message(4), _message(5)])

    result = run_cli(config, "poll")

    assert result.exit_code == 0, result.output
    assert f"{imap_user.name}: 4 imported" in result.stdout and "1 quarantined" in result.stdout
    assert sorted(t["subject"] for t in all_tickets(config)) == [f"quarantine test {n}" for n in (1, 2, 4, 5)]
    entries = json.loads(run_cli(config, "quarantine", "list", "--json").stdout)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["reason"] == "unparseable" and "IndexError" in entry["error"]
    assert entry["uid"] == 3 and entry["raw_sha256"] == sha256_hex(poison)
    listing = run_cli(config, "quarantine", "list")
    assert listing.exit_code == 0 and "unparseable" in listing.stdout
    shown = run_cli(config, "quarantine", "show", str(entry["id"]))
    assert shown.exit_code == 0 and "IndexError" in shown.stdout
    raw = CliRunner().invoke(cli, ["--config", str(config), "quarantine", "show", str(entry["id"]), "--raw"])
    assert raw.stdout_bytes == dovecot.fetch_raw(imap_user)[3], "the exact bytes are kept"
    # Accounted for, so it is marked read like the others: it will not be fetched again.
    assert all("\\Seen" in f for f in dovecot.flags(imap_user).values())
    assert "quarantine: 1 waiting" in run_cli(config, "status").stdout

    still = run_cli(config, "quarantine", "retry", str(entry["id"]))
    assert still.exit_code == 1 and "still failing" in still.stderr

    buggy_parser.undo()  # the fixed release is installed
    fixed = run_cli(config, "quarantine", "retry", str(entry["id"]))

    assert fixed.exit_code == 0, fixed.output
    assert f"#{entry['id']}: imported as message" in fixed.stdout
    assert json.loads(run_cli(config, "quarantine", "list", "--json").stdout) == []
    assert len(all_tickets(config)) == 5
    after = run_cli(config, "poll")
    assert after.stdout.startswith(f"{imap_user.name}: 0 imported"), after.output
    assert run_cli(config, "quarantine", "retry", str(entry["id"])).exit_code == 0, "retrying again is harmless"
    assert len(all_tickets(config)) == 5


def test_hostile_messages_never_block_the_good_mail_and_each_is_accounted_for(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user, batch_size=4))
    nested = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(1500)
    )
    hostile = [
        b"Subject: deep\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n" + nested,
        b"no header at all, just text\r\n",
        b"Subject: =?UTF-8?Q?=0A?= broken\r\nContent-Type: text/plain; charset=\"utf-8 junk\"\r\n\r\n\xff\xfe\r\n",
        b"Subject: bad base64\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!===\r\n",
        b"X-Long: " + b"a" * 300_000 + b"\r\n\r\nbody\r\n",
    ]
    mixed = []
    for n, bad in enumerate(hostile):
        mixed += [_message(10 + n), bad]

    result = run_cli(config, "poll")
    assert result.exit_code == 0  # nothing there yet
    dovecot.append_many(imap_user, mixed)
    result = run_cli(config, "poll")

    assert result.exit_code == 0, result.output
    server = dovecot.fetch_raw(imap_user)
    in_tickets = {r[0] for r in rows(tmp_path, "select raw_sha256 from messages")}
    in_quarantine = {r[0] for r in rows(tmp_path, "select raw_sha256 from quarantine")}
    for uid, raw in server.items():
        assert (sha256_hex(raw) in in_tickets) != (sha256_hex(raw) in in_quarantine), f"UID {uid} not accounted for once"
    subjects = {t["subject"] for t in all_tickets(config)}
    assert {f"quarantine test {10 + n}" for n in range(len(hostile))} <= subjects


def test_an_over_size_message_is_quarantined_without_download_and_imported_by_retry_once_allowed(
    dovecot: Dovecot, imap_user: User, account_config, tcp_relay, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    relay = tcp_relay(dovecot.host, dovecot.imaps_port)
    account = account_config(imap_user, imap_port=relay.port, max_message_size="100KB")
    config = write_config(tmp_path, account)
    big = _message(2, body=b"0123456789abcdef" * 125_000 + b"\r\n")  # 2 MB
    dovecot.append_many(imap_user, [_message(1), big, _message(3)])
    # Any connection that carries more than 300 kB dies: a download of the 2 MB message would fail.
    relay.cut_after(300_000)

    result = run_cli(config, "poll")

    assert result.exit_code == 0, result.output
    assert relay.cuts == 0, "the over-size message was downloaded"
    assert f"{imap_user.name}: 2 imported" in result.stdout and "1 quarantined" in result.stdout
    assert "over the size limit" in result.stderr, "the sysadmin is told"
    entry = json.loads(run_cli(config, "quarantine", "list", "--json").stdout)[0]
    assert entry["reason"] == "too-large" and entry["size"] == len(big) and entry["raw_sha256"] is None
    assert "100" in entry["error"] or "102400" in entry["error"]
    flags = dovecot.flags(imap_user)
    assert "\\Seen" not in flags[2] and "\\Seen" in flags[1] and "\\Seen" in flags[3]
    raw = run_cli(config, "quarantine", "show", str(entry["id"]), "--raw")
    assert raw.exit_code == 1 and "still on the server" in raw.stderr

    again = run_cli(config, "poll")
    assert again.exit_code == 0 and "quarantined" not in again.stdout and "size limit" not in again.stderr
    assert _events(tmp_path, "quarantined") == 1, "alerted once, not on every poll"

    refused = run_cli(config, "quarantine", "retry", str(entry["id"]))
    assert refused.exit_code == 1 and "still over the size limit" in refused.stderr
    assert "\\Seen" not in dovecot.flags(imap_user)[2]

    relay.resume()
    account["max_message_size"] = "5MB"
    write_config(tmp_path, account)
    retried = run_cli(config, "quarantine", "retry", str(entry["id"]))

    assert retried.exit_code == 0, retried.output
    assert json.loads(run_cli(config, "quarantine", "list", "--json").stdout) == []
    assert "\\Seen" in dovecot.flags(imap_user)[2], "flagged once stored"
    [stored] = rows(tmp_path, "select raw from raw_messages where sha256 = ?", [sha256_hex(big)])
    assert stored[0] == dovecot.fetch_raw(imap_user)[2]
    assert len(all_tickets(config)) == 3
    assert run_cli(config, "poll").stdout.startswith(f"{imap_user.name}: 0 imported")
    assert len(all_tickets(config)) == 3
