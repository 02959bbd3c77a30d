"""The import ledger: identity is (account, folder, UIDVALIDITY, UID) backed by SHA-256, never Message-ID.

Importing the same message again, for whatever reason, changes nothing; different messages that
share a Message-ID (or have none) are all imported; and only UID commands reach the server, as
Dovecot's own transcript of the session (rawlog) shows.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.helpers import (
    connect,
    numbered_mail,
    rawlogged_dovecot,
    rawlogged_user,
    rows,
    run_cli,
    sha256_hex,
    transcript_commands,
    write_config,
)
from tests.servers import Dovecot, User, account_config

TABLES = ["tickets", "messages", "attachments", "raw_messages", "quarantine", "sources"]


def _message(n: int, message_id: bytes | None = None, body: bytes = b"") -> bytes:
    return numbered_mail(n, b"ledger test", message_id, body=body)


def _with_attachment(n: int) -> bytes:
    return (
        b"From: customer%d@example.org\r\nSubject: ledger attachment %d\r\nMessage-ID: <att-%d@example.org>\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee file\r\n"
        b"--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCg==\r\n--B--\r\n" % (n, n, n)
    )


def _counts(tmp_path: Path) -> dict[str, int]:
    with connect(tmp_path) as conn:
        return {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}


def test_importing_the_same_message_again_changes_nothing(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user))
    first = [_message(1, b"<one@example.org>"), _with_attachment(2), _message(3)]
    dovecot.append_many(imap_user, first)
    assert run_cli(config, "poll").exit_code == 0
    before = _counts(tmp_path)
    tickets_before = run_cli(config, "tickets", "list", "--status", "all", "--json").stdout
    assert before["tickets"] == 3 and before["attachments"] == 1

    # The watermark lost (an old backup of the database restored): the folder is read again.
    with connect(tmp_path) as conn:
        conn.execute("update mailboxes set last_uid = 0")
    rescan = run_cli(config, "poll")
    # The same bytes handed in again through the MTA pipe.
    ingested = run_cli(config, "ingest", "--account", imap_user.name, input=first[1])

    assert rescan.exit_code == 0 and f"{imap_user.name}: 0 imported" in rescan.stdout
    assert ingested.exit_code == 0, ingested.output
    assert _counts(tmp_path) == before
    assert run_cli(config, "tickets", "list", "--status", "all", "--json").stdout == tickets_before

    # The same bytes delivered a second time (a new UID): a ledger row, no second ticket entry.
    dovecot.append(imap_user, first[0])
    again = run_cli(config, "poll")
    after = _counts(tmp_path)
    assert again.exit_code == 0 and "1 duplicates" in again.stdout
    assert after == {**before, "sources": before["sources"] + 1}
    new_uid = max(dovecot.uids(imap_user))
    linked = rows(tmp_path, "select m.raw_sha256 from sources s join messages m on m.id = s.message where s.uid = ?", [new_uid])
    assert linked == [(sha256_hex(first[0]),)]
    assert all("\\Seen" in f for f in dovecot.flags(imap_user).values())


def test_different_messages_sharing_a_message_id_or_having_none_are_all_imported(
    dovecot: Dovecot, imap_user: User, account_config, tmp_path: Path
) -> None:
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user))
    shared = [_message(n, b"<reused@broken-mailer.example>") for n in (1, 2)]
    without = [_message(n) for n in (3, 4)]
    dovecot.append_many(imap_user, shared + without)

    result = run_cli(config, "poll")

    assert result.exit_code == 0, result.output
    stored = {row[0] for row in rows(tmp_path, "select raw_sha256 from messages where direction = 'in'")}
    assert stored == {sha256_hex(raw) for raw in dovecot.fetch_raw(imap_user).values()}
    assert len(rows(tmp_path, "select id from messages")) == 4
    ids = [row[0] for row in rows(tmp_path, "select message_id from messages order by id")]
    assert ids.count("<reused@broken-mailer.example>") == 2 and ids.count(None) == 2
    subjects = {t["subject"] for t in json.loads(run_cli(config, "tickets", "list", "--status", "all", "--json").stdout)}
    assert {"ledger test 3", "ledger test 4"} <= subjects, "mail without Message-ID gets its own tickets"


# ------------------------------------------------------------------------------ UID commands only


@pytest.fixture(scope="module")
def logged_dovecot(test_ca) -> Iterator[tuple[Dovecot, Path]]:
    """A private Dovecot that writes every IMAP session's transcript (rawlog) to a directory."""
    with rawlogged_dovecot(test_ca, "mail2ticket-rawlog-") as logged:
        yield logged


def _commands(rawlog_dir: Path) -> list[str]:
    """The commands the client sent (tag stripped), from Dovecot's *.in transcripts."""
    return transcript_commands(rawlog_dir.glob("*.in"))


@pytest.mark.parametrize("after_import", ["seen", "delete", "move:Archive"])
def test_only_uid_commands_are_sent_and_other_clients_deleted_mail_is_left_alone(
    logged_dovecot, tmp_path: Path, after_import: str
) -> None:
    server, rawlogs = logged_dovecot
    user = rawlogged_user(server, rawlogs)
    own = rawlogs / user.name
    server.create_folder(user, "Archive")
    config = write_config(tmp_path, account_config(user, server, after_import=after_import, max_message_size="10KB", batch_size=2))
    server.append_many(user, [_message(n) for n in range(1, 5)])
    # Another client's mail marked \Deleted but not expunged (too big for us, so we leave it):
    # a plain EXPUNGE or CLOSE from us would destroy it.
    server.append(user, _message(9, body=b"x" * 20_000 + b"\r\n"), flags=[b"\\Deleted"])
    for uid in server.uids(user)[1:3]:  # some mail already read by a person: still imported
        with server.connect(user) as imap:
            imap.select_folder("INBOX")
            imap.add_flags([uid], [b"\\Seen"])

    server.disconnect_sessions(user)  # the test's own sessions end before ours is read
    before = set(rawlogs.joinpath(user.name).glob("*.in"))
    result = run_cli(config, "poll")
    server.disconnect_sessions(user)

    assert result.exit_code == 0, result.output
    ours = rawlogs / "ours"
    ours.mkdir(exist_ok=True)
    for path in set(own.glob("*.in")) - before:
        path.rename(ours / path.name)
    commands = _commands(ours)
    verbs = [c.split(" ")[0].upper() for c in commands]
    assert "UID" in verbs, f"no transcript of our session: {commands}"
    unsafe = [c for c in commands if re.match(r"(?i)(EXPUNGE|CLOSE|FETCH|STORE|COPY|MOVE|SEARCH)\b", c)]
    assert unsafe == [], f"commands that use sequence numbers or expunge everything: {unsafe}"
    uid_verbs = {c.split(" ")[1].upper() for c in commands if c.upper().startswith("UID ")}
    expected = {"seen": {"FETCH", "STORE"}, "delete": {"FETCH", "STORE", "EXPUNGE"}, "move:Archive": {"FETCH", "MOVE"}}
    assert expected[after_import] <= uid_verbs, commands
    left = server.fetch_raw(user)
    assert any(b"ledger test 9" in raw for raw in left.values()), "another client's \\Deleted mail was expunged"
    assert len(rows(tmp_path, "select id from messages")) == 4


def test_a_poll_with_nothing_new_asks_only_status_and_new_mail_is_still_found(
    logged_dovecot, tmp_path: Path
) -> None:
    """The idle poll's cost does not grow with the mailbox: no SELECT, no SEARCH, one STATUS."""
    server, rawlogs = logged_dovecot
    user = rawlogged_user(server, rawlogs)
    own = rawlogs / user.name
    config = write_config(tmp_path, account_config(user, server))
    server.append_many(user, [_message(n) for n in range(1, 4)])
    assert run_cli(config, "poll").exit_code == 0

    def poll_commands() -> tuple[object, list[str]]:
        server.disconnect_sessions(user)
        before = set(own.glob("*.in"))
        result = run_cli(config, "poll")
        server.disconnect_sessions(user)
        run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        run.mkdir()
        for path in set(own.glob("*.in")) - before:
            shutil.copy(path, run / path.name)
        return result, [c.split(" ")[0].upper() for c in _commands(run)]

    idle, verbs = poll_commands()
    assert idle.exit_code == 0 and "0 imported" in idle.stdout
    assert "STATUS" in verbs and "SELECT" not in verbs and "UID" not in verbs, verbs

    server.append(user, _message(4))
    found, verbs = poll_commands()
    assert found.exit_code == 0 and "1 imported" in found.stdout, found.output
    assert "SELECT" in verbs
    assert _counts(tmp_path)["tickets"] == 4
