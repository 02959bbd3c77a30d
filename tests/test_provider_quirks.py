"""Provider quirks (issue 8, point 5): Gmail's archive, its message and thread ids, one poll per account.

A private Dovecot in this module lays its folders out as Gmail does (a "[Gmail]/All Mail" folder
marked \\All) and writes each session's transcript (rawlog), so what is asked of the server is
seen; Gmail's X-GM-EXT-1 answers are checked as imapclient parses them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient.response_parser import parse_fetch_response, parse_response
from imapclient.util import chunk

from mail2ticket.accounts.secrets import store_password
from mail2ticket.config.load import load_config
from mail2ticket.errors import ConfigError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.intake.importer import ImportContext, Incoming, Source, import_batch
from mail2ticket.intake.locks import account_lock, lock_path
from mail2ticket.intake.poller import run_poll
from mail2ticket.transport.imap import choose_archive_folder, fetch_items, gmail_ids
from tests.helpers import (
    open_store,
    rawlogged_dovecot,
    rawlogged_user,
    rows,
    run_cli,
    transcript_commands,
    write_config,
)
from tests.servers import Dovecot, TcpRelay, User, account_config

ALL_MAIL = "[Gmail]/All Mail"
GMAIL_LIKE = f"""
namespace inbox {{
  mailbox "{ALL_MAIL}" {{
    special_use = \\All
    auto = create
  }}
}}
"""


def _mail(n: int, *, subject: str | None = None, extra: bytes = b"", body: bytes = b"") -> bytes:
    subject_line = (subject or f"quirk test {n}").encode()
    return (
        b"From: customer%d@example.org\r\nTo: desk@example.test\r\nSubject: " % n
        + subject_line
        + b"\r\nMessage-ID: <quirk-%d@example.org>\r\n" % n
        + extra
        + b"\r\nPlease help with request %d.\r\n" % n
        + body
    )


def _from(n: int, raw: bytes) -> bytes:
    """``raw`` as sent by customer ``n`` (a participant of the ticket of _mail(n))."""
    return raw.replace(b"From: customer", b"From: customer%d@example.org\r\nX-Was: customer" % n, 1)


# ------------------------------------------------------------------------------ servers


@pytest.fixture(scope="module")
def gmail_like(test_ca) -> Iterator[tuple[Dovecot, Path]]:
    """A Dovecot with Gmail's folder layout ("[Gmail]/All Mail" marked \\All) and rawlogs."""
    with rawlogged_dovecot(test_ca, "mail2ticket-quirks-rawlog-", GMAIL_LIKE) as logged:
        yield logged


def _commands(server: Dovecot, user: User, rawlogs: Path, before: set[Path]) -> list[str]:
    """The commands mail2ticket sent (tag stripped) in the sessions opened since ``before``."""
    server.disconnect_sessions(user)  # the transcripts are complete once the sessions end
    return transcript_commands(set((rawlogs / user.name).glob("*.in")) - before)


# ------------------------------------------------------------------------------ archive


def test_archive_moves_imported_mail_out_of_the_inbox_into_the_folder_marked_all_as_in_gmail(
    gmail_like, tmp_path: Path
) -> None:
    server, rawlogs = gmail_like
    user = rawlogged_user(server, rawlogs)
    server.append_many(user, [_mail(1), _mail(2)])
    config = write_config(tmp_path, account_config(user, server, after_import="archive"))
    server.disconnect_sessions(user)
    before = set((rawlogs / user.name).glob("*.in"))

    result = run_cli(config, "poll")

    assert result.exit_code == 0, result.output
    assert server.uids(user) == []
    archived = server.fetch_raw(user, ALL_MAIL)
    assert sorted(raw.split(b"Subject: ")[1].split(b"\r\n")[0] for raw in archived.values()) == [
        b"quirk test 1",
        b"quirk test 2",
    ]
    assert rows(tmp_path, "select count(*) from tickets") == [(2,)]
    assert rows(tmp_path, "select action, action_state from sources") == [("archive", "done")] * 2
    commands = _commands(server, user, rawlogs, before)
    assert 'LIST (SPECIAL-USE) "" "*"' in commands  # found by its attribute, not by its name
    assert any(c.startswith("UID MOVE") and ALL_MAIL in c for c in commands), commands


def test_a_server_without_x_gm_ext_1_is_never_asked_for_gmails_ids(
    gmail_like, tmp_path: Path
) -> None:
    server, rawlogs = gmail_like
    user = rawlogged_user(server, rawlogs)
    server.append(user, _mail(1))
    config = write_config(tmp_path, account_config(user, server))
    server.disconnect_sessions(user)
    before = set((rawlogs / user.name).glob("*.in"))

    result = run_cli(config, "poll")

    assert result.exit_code == 0, result.output
    commands = _commands(server, user, rawlogs, before)
    fetches = [c for c in commands if c.upper().startswith("UID FETCH")]
    assert any("BODY.PEEK[]" in c for c in fetches), commands
    assert not [c for c in commands if "X-GM-" in c.upper()]
    assert rows(tmp_path, "select gm_mailbox, gm_msgid from sources") == [(None, None)]
    assert rows(tmp_path, "select gm_thrid from messages") == [(None,)]


def test_archive_on_a_server_with_neither_an_archive_nor_an_all_folder_imports_and_leaves_the_mail(
    dovecot, imap_user, account_config, tmp_path: Path
) -> None:
    dovecot.append(imap_user, _mail(1))
    store_password(imap_user.name, imap_user.password)
    config = write_config(tmp_path, account_config(imap_user, after_import="archive"))

    result = run_cli(config, "poll")

    # A failing server action never stops the import (issue 13, point 8): the mail is stored,
    # stays on the server, and the poll fails saying what to do.
    assert result.exit_code == 1
    assert "marks no folder as \\Archive or \\All" in result.stderr
    assert 'after_import = "move:FOLDER"' in result.stderr
    assert rows(tmp_path, "select count(*) from tickets") == [(1,)]
    assert rows(tmp_path, "select action_state from sources") == [("pending",)]
    assert dovecot.uids(imap_user) == [1]


def _list(*lines: bytes) -> list[tuple[tuple[bytes, ...], str]]:
    """LIST answers as imapclient parses them: (attributes, name)."""
    return [
        (tuple(flags), name.decode()) for flags, _, name in chunk(parse_response(list(lines)), 3)
    ]


GMAIL_LIST = _list(
    b'(\\HasNoChildren) "/" "INBOX"',
    b'(\\HasChildren \\Noselect) "/" "[Gmail]"',
    b'(\\All \\HasNoChildren) "/" "[Gmail]/All Mail"',
    b'(\\HasNoChildren \\Trash) "/" "[Gmail]/Trash"',
)


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        (GMAIL_LIST, "[Gmail]/All Mail"),
        (
            _list(b'(\\HasNoChildren \\Archive) "." "Archiv"', b'(\\HasNoChildren) "." "INBOX"'),
            "Archiv",
        ),
        (_list(b'(\\All) "/" "Virtual/All"', b'(\\Archive) "/" "Old mail"'), "Old mail"),
    ],
    ids=["gmail-all-mail", "archive-under-another-name", "archive-before-all"],
)
def test_the_archive_folder_is_the_one_marked_archive_else_the_one_marked_all(
    folders, expected
) -> None:
    assert choose_archive_folder(folders, "INBOX") == expected


def test_a_folder_merely_named_archive_is_not_taken_for_the_archive() -> None:
    with pytest.raises(Exception, match="marks no folder"):
        choose_archive_folder(
            _list(b'(\\HasNoChildren) "/" "Archive"', b'(\\HasNoChildren) "/" "INBOX"'), "INBOX"
        )


def test_archive_refuses_to_move_mail_from_the_archive_folder_into_itself() -> None:
    with pytest.raises(Exception, match="into itself"):
        choose_archive_folder(GMAIL_LIST, "[Gmail]/All Mail")


def test_archive_is_refused_at_load_time_for_a_maildir_account(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "name": "local",
            "email": "desk@example.test",
            "source": "maildir",
            "path": str(tmp_path / "Maildir"),
            "after_import": "archive",
        },
    )
    with pytest.raises(ConfigError, match="needs an IMAP account"):
        load_config(config)


# ------------------------------------------------------------------------------ X-GM-MSGID / X-GM-THRID

# Gmail's answer to UID FETCH ... (BODY.PEEK[] ... X-GM-MSGID X-GM-THRID), as imaplib hands it over.
GMAIL_FETCH = [
    (
        b"1 (X-GM-THRID 1278455344230334865 X-GM-MSGID 1278455344230334866 UID 4 RFC822.SIZE 5 "
        b'INTERNALDATE "17-Jul-1996 02:44:25 -0700" BODY[] {5}',
        b"hello",
    ),
    b")",
]


def test_gmails_ids_are_read_from_the_fetch_answer_as_imapclient_parses_it() -> None:
    item = parse_fetch_response(GMAIL_FETCH, True, True)[4]
    assert gmail_ids(item) == (1278455344230334866, 1278455344230334865)


def test_a_fetch_answer_without_gmails_ids_gives_none() -> None:
    item = parse_fetch_response(
        [(b"1 (UID 4 RFC822.SIZE 5 BODY[] {5}", b"hello"), b")"], True, True
    )[4]
    assert gmail_ids(item) == (None, None)


def test_gmails_ids_are_asked_for_only_when_the_server_offers_x_gm_ext_1() -> None:
    assert fetch_items({b"IMAP4REV1", b"X-GM-EXT-1", b"MOVE"})[-2:] == ["X-GM-MSGID", "X-GM-THRID"]
    assert not [
        i for i in fetch_items({b"IMAP4REV1", b"MOVE", b"SPECIAL-USE"}) if i.startswith("X-GM")
    ]


GMAIL_BOX = "imap.gmail.com/desk@gmail.com"


def _incoming(
    account: str,
    folder: str,
    uid: int,
    raw: bytes,
    *,
    msgid: int | None = None,
    thrid: int | None = None,
    mailbox: str = GMAIL_BOX,
) -> Incoming:
    return Incoming(
        account,
        raw,
        Source(account, folder, 7, uid),
        action="seen",
        gm_mailbox=mailbox if msgid else None,
        gm_msgid=msgid,
        gm_thrid=thrid,
    )


@pytest.fixture
def ctx(tmp_path: Path) -> ImportContext:
    db = open_store(tmp_path)
    return ImportContext(db=db, attachments=AttachmentStore(tmp_path / "files"))


def test_one_gmail_message_seen_under_two_labels_makes_one_ticket(ctx, tmp_path: Path) -> None:
    # Under each label the same message; here even its bytes differ (a header Gmail might add).
    first = _incoming(
        "desk", "INBOX", 10, _mail(1), msgid=1278455344230334866, thrid=1278455344230334865
    )
    second = _incoming(
        "desk",
        "Support",
        3,
        _mail(1, extra=b"X-Label: support\r\n"),
        msgid=1278455344230334866,
        thrid=1278455344230334865,
    )

    [one] = import_batch(ctx, [first])
    [two] = import_batch(ctx, [second])

    assert (one.status, two.status) == ("imported", "duplicate")
    assert two.ticket_id == one.ticket_id and two.message_row == one.message_row
    assert (
        "Gmail message 1278455344230334866 already imported from INBOX of account desk"
        in two.detail
    )
    assert rows(tmp_path, "select count(*) from tickets") == [(1,)]
    assert rows(tmp_path, "select count(*) from messages") == [(1,)]
    assert rows(
        tmp_path,
        "select folder, uid, message, gm_mailbox, gm_msgid, action_state from sources order by id",
    ) == [
        ("INBOX", 10, one.message_row, GMAIL_BOX, 1278455344230334866, "pending"),
        (
            "Support",
            3,
            one.message_row,
            GMAIL_BOX,
            1278455344230334866,
            "pending",
        ),  # flagged there too
    ]
    assert rows(tmp_path, "select gm_thrid from messages") == [(1278455344230334865,)]


def test_two_accounts_on_the_same_gmail_mailbox_make_one_ticket(ctx, tmp_path: Path) -> None:
    [one] = import_batch(ctx, [_incoming("desk", "INBOX", 10, _mail(1), msgid=42)])
    [two] = import_batch(
        ctx, [_incoming("desk-support", "Support", 3, _mail(1, extra=b"X-A: b\r\n"), msgid=42)]
    )
    assert two.status == "duplicate" and two.ticket_id == one.ticket_id
    assert rows(tmp_path, "select count(*) from messages") == [(1,)]


def test_the_same_gmail_message_id_in_another_mailbox_is_another_message(
    ctx, tmp_path: Path
) -> None:
    import_batch(ctx, [_incoming("desk", "INBOX", 10, _mail(1), msgid=42)])
    [other] = import_batch(
        ctx,
        [
            _incoming(
                "sales", "INBOX", 10, _mail(2), msgid=42, mailbox="imap.gmail.com/sales@gmail.com"
            )
        ],
    )
    assert other.status == "imported"
    assert rows(tmp_path, "select count(*) from tickets") == [(2,)]


def test_gmails_thread_id_makes_a_reply_without_headers_a_follow_up_in_the_same_account(
    ctx,
) -> None:
    [first] = import_batch(ctx, [_incoming("desk", "INBOX", 1, _mail(1), msgid=100, thrid=7)])
    [reply] = import_batch(
        ctx,
        [_incoming("desk", "INBOX", 2, _from(1, _mail(2, subject="Re: quirk test 1")), msgid=101, thrid=7)],
    )
    assert reply.status == "followup" and reply.ticket_id == first.ticket_id
    assert reply.detail == f"Gmail thread 7 of ticket #{first.ticket_id}, from customer1@example.org, a participant"


def test_gmails_thread_id_is_no_hint_across_accounts(ctx) -> None:
    import_batch(ctx, [_incoming("desk", "INBOX", 1, _mail(1), msgid=100, thrid=7)])
    [other] = import_batch(
        ctx,
        [
            _incoming(
                "sales",
                "INBOX",
                1,
                _mail(2),
                msgid=100,
                thrid=7,
                mailbox="imap.gmail.com/sales@gmail.com",
            )
        ],
    )
    assert other.status == "imported"


def test_in_reply_to_wins_over_gmails_thread_id(ctx) -> None:
    [first] = import_batch(ctx, [_incoming("desk", "INBOX", 1, _mail(1), msgid=100, thrid=7)])
    [second] = import_batch(ctx, [_incoming("desk", "INBOX", 2, _mail(2), msgid=101, thrid=8)])
    [reply] = import_batch(
        ctx,
        [
            _incoming(
                "desk",
                "INBOX",
                3,
                _from(2, _mail(3, extra=b"In-Reply-To: <quirk-2@example.org>\r\n")),
                msgid=102,
                thrid=7,
            )
        ],
    )
    assert first.ticket_id != second.ticket_id
    assert reply.ticket_id == second.ticket_id and reply.detail.startswith("In-Reply-To names")


# ------------------------------------------------------------------------------ one poll per account


def test_a_poll_of_an_account_another_poll_holds_in_this_process_is_skipped(
    dovecot, imap_user, account_config, tmp_path: Path
) -> None:
    dovecot.append(imap_user, _mail(1))
    store_password(imap_user.name, imap_user.password)
    cfg = load_config(write_config(tmp_path, account_config(imap_user)))
    db = open_store(tmp_path)
    account = cfg.account(imap_user.name)

    held = threading.Event()
    release = threading.Event()

    def daemon_worker() -> None:  # what a poll on the daemon's pool holds while it runs
        with account_lock(cfg.database, account.name):
            held.set()
            release.wait(10)

    worker = threading.Thread(target=daemon_worker)
    worker.start()
    try:
        assert held.wait(10)
        result = run_poll(cfg, db, account)
    finally:
        release.set()
        worker.join()

    assert (
        result.ok
        and result.skipped == f"account {account.name} is being polled by this process: skipped"
    )
    assert rows(tmp_path, "select count(*) from account_status") == [(0,)]  # nothing recorded
    assert run_poll(cfg, db, account).imported == 1  # free again once released


def test_a_second_process_polling_a_busy_account_skips_it_and_names_the_pid(
    dovecot, imap_user, account_config, tcp_relay, tmp_path: Path
) -> None:
    # A message large enough that the first poll is still downloading it when the relay stalls.
    dovecot.append(imap_user, _mail(1, body=b"x" * 76 + b"\r\n") + b"y" * 2_000_000 + b"\r\n")
    store_password(imap_user.name, imap_user.password)
    relay: TcpRelay = tcp_relay(dovecot.host, dovecot.imaps_port)
    config = write_config(
        tmp_path, account_config(imap_user, imap_port=relay.port, max_message_size="50MB")
    )
    relay.stall(after=300_000)  # greeting, TLS, login, SELECT, SEARCH pass; the body stops
    env = {**os.environ, "MAIL2TICKET_CONFIG": str(config)}
    first = subprocess.Popen(
        [sys.executable, "-m", "mail2ticket", "poll"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lock = lock_path(load_config(config).database, imap_user.name)  # PostgreSQL: in the data directory
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip() and dovecot.sessions(imap_user) == 1):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first poll never got going"
            time.sleep(0.02)

        second = subprocess.run(
            [sys.executable, "-m", "mail2ticket", "poll"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert second.returncode == 0, second.stderr
        assert (
            f"account {imap_user.name} is being polled by pid {first.pid}: skipped" in second.stdout
        )
        assert dovecot.sessions(imap_user) == 1  # the second poll never connected
    finally:
        relay.resume()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert rows(tmp_path, "select count(*) from tickets") == [(1,)]
    assert lock.read_text() == ""  # released: no stale pid is ever reported


# ------------------------------------------------------------------------------ iCloud


def test_an_icloud_account_signs_in_to_imap_with_the_name_part_and_to_smtp_with_the_full_address(
    imap_user, account_config, smtp_server, tmp_path: Path
) -> None:
    address = f"{imap_user.name}@icloud.com"
    smtp_server.add_user(address, imap_user.password)  # SMTP knows only the full address
    values = account_config(
        imap_user,
        provider="icloud",
        email=address,
        username=None,  # the preset's rule decides
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        smtp_security=smtp_server.security,
    )
    config = write_config(tmp_path, values)
    store_password(imap_user.name, imap_user.password)
    account = load_config(config).account(imap_user.name)
    assert (account.username, account.smtp_username) == (imap_user.name, address)

    result = run_cli(config, "accounts", "test", imap_user.name, "-v")

    assert result.exit_code == 0, result.output
    assert "ok  IMAP sign-in" in result.stdout and "ok  SMTP AUTH" in result.stdout


def test_gmails_thread_id_attaches_only_mail_from_a_participant(ctx) -> None:
    # Gmail puts a stranger's "Re:" with the same subject in the customer's thread (X-GM-THRID):
    # that is no reason to let the stranger into the ticket (item 53). Dovecot has no X-GM-EXT-1,
    # so this one goes through import_batch with the thread id as the poller hands it over.
    [first] = import_batch(ctx, [_incoming("desk", "INBOX", 1, _mail(1), msgid=100, thrid=7)])
    stranger = _mail(2, subject="Re: quirk test 1")  # from customer2, not a participant of ticket 1
    [other] = import_batch(ctx, [_incoming("desk", "INBOX", 2, stranger, msgid=101, thrid=7)])
    assert other.status == "imported" and other.ticket_id != first.ticket_id
    assert "Gmail thread 7" in other.detail and "not a participant" in other.detail
