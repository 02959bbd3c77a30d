"""The poll's FETCH reading (issue 19.6, fourth step): imaplib builds no debug output that nobody
logs, and transport/fetchreader.py reads every answer as imapclient's parser reads it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from imapclient.exceptions import ProtocolError
from imapclient.response_parser import parse_fetch_response

from mail2ticket.config.load import load_config
from mail2ticket.transport.fetchreader import parse_fetch
from mail2ticket.transport.imap import Mailbox
from tests.helpers import make_mail, write_config


def _instant(value):
    if isinstance(value, datetime):
        return value.astimezone(UTC)  # naive (imapclient's local time) or aware: the same instant
    return value


def _same(ours: dict, theirs: dict) -> None:
    assert {uid: {k: _instant(v) for k, v in item.items()} for uid, item in ours.items()} == \
        {uid: {k: _instant(v) for k, v in item.items()} for uid, item in theirs.items()}


def _imapclient(data):
    return dict(parse_fetch_response(list(data), True, True))


@pytest.fixture
def mailbox(tmp_path, dovecot, imap_user, account_config):
    mails = [make_mail(subject=f"fetch {i}", body="x" * (i * 700)) for i in range(1, 6)]
    for raw in mails:
        dovecot.append(imap_user, raw)
    config = write_config(tmp_path, account_config(imap_user))
    account = load_config(config).accounts[0]
    with Mailbox(account, imap_user.password) as box:
        box.select("INBOX")
        yield box, mails


def _raw_answer(box: Mailbox, uids: str, items: str) -> list:
    imap = box.client._imap
    tag = imap._command("UID", "FETCH", uids, items)
    typ, data = imap._command_complete("FETCH", tag)
    assert typ == "OK"
    return imap._untagged_response(typ, data, "FETCH")[1]


def test_dovecots_answers_read_as_imapclient_reads_them_and_fetch_returns_the_bytes(mailbox):
    box, mails = mailbox
    for items in ("(BODY.PEEK[] INTERNALDATE RFC822.SIZE)", "(RFC822.SIZE)", "(BODY.PEEK[]<0.100> INTERNALDATE)",
                  "(FLAGS INTERNALDATE)"):
        data = _raw_answer(box, "1:5", items)
        unusual = []
        ours = parse_fetch(list(data), lambda d, unusual=unusual: unusual.append(1) or _imapclient(d))
        _same(ours, _imapclient(data))
        assert bool(unusual) == ("FLAGS" in items)  # the usual shape is read without imapclient
    fetched = box.fetch([1, 2, 3, 4, 5])
    assert [fetched[uid][0] for uid in range(1, 6)] == [m.replace(b"\n", b"\r\n") for m in mails]  # stored with CRLF
    arrived = fetched[1][1]
    assert abs((datetime.now(UTC) - arrived).total_seconds()) < 600


@pytest.mark.parametrize("data", [
    [(b'1 (UID 7 INTERNALDATE "02-Dec-2026 06:53:53 +0000" RFC822.SIZE 5 BODY[] {5}', b"hello"), b")"],
    [(b'1 (UID 7 BODY[] {5}', b"hello"), b' INTERNALDATE " 2-Dec-2026 06:53:53 -0130" RFC822.SIZE 5)'],
    [(b"1 (uid 7 body[]<0> {5}", b"hello"), b")", b"2 (UID 8 RFC822.SIZE 0123)"],  # lower case, a leading zero
    [(b"1 (UID 7 BODY[] {5}", b"hello"), b" FLAGS (\\Seen))"],  # a parenthesised value
    [(b"1 (UID 7 BODY[] {5}", b"hello"), b' INTERNALDATE NIL)'],
    [(b"1 (UID 7 BODY[] {5}", b"hello"), b' X-NOTE "a \\"quoted\\" word")'],
    [(b"1 (UID 7 BODY[] {5}", b"hello"), (b" BODY[HEADER] {2}", b"hi"), b")"],  # a second literal
    [b"3 (FLAGS (\\Seen))", (b"1 (UID 7 BODY[] {5}", b"hello"), b")"],  # an unsolicited FETCH without UID
    [(b'1 (UID 7 INTERNALDATE "31-Feb-2026 06:53:53 +0000" BODY[] {5}', b"hello"), b")"],  # no such day
    [(b"1 (UID 7 BODY[] {5}", b"hello"), b")", (b"2 (UID 7 RFC822.SIZE 5 BODY[] {5}", b"world"), b")"],
    [None],
])
def test_every_answer_reads_as_imapclient_reads_it(data):
    _same(parse_fetch(list(data), _imapclient), _imapclient(data))


@pytest.mark.parametrize("data", [
    [(b"1 (UID 7 BODY[] {6}", b"hello"), b")"],  # the literal is shorter than announced
    [(b"1 (UID 7 BODY[] {5}", b"hello"), b" RFC822.SIZE 5"],  # no closing parenthesis
])
def test_an_unreadable_answer_fails_as_with_imapclient(data):
    with pytest.raises(ProtocolError):
        _imapclient(data)
    with pytest.raises(ProtocolError):
        parse_fetch(list(data), _imapclient)


def test_imaplib_formats_no_debug_output_unless_it_is_logged(mailbox, tmp_path, imap_user, account_config):
    """imapclient turns imaplib's debug level to 5, and imaplib then formats the repr of every
    FETCH answer (whole messages) for a log line, whether or not the log keeps it."""
    box, _ = mailbox
    assert logging.getLogger("imapclient.imaplib").getEffectiveLevel() > logging.DEBUG
    assert box.client._imap.debug == 0  # imaplib's own switch for building that output
    imaplib_log = logging.getLogger("imapclient.imaplib")
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    imaplib_log.addHandler(handler)
    level = imaplib_log.level
    imaplib_log.setLevel(logging.DEBUG)  # as --debug: the IMAP trace is still logged
    try:
        account = load_config(write_config(_mkdir(tmp_path / "debug"), account_config(imap_user))).accounts[0]
        with Mailbox(account, imap_user.password) as traced:
            assert traced.client._imap.debug == 5
            traced.select("INBOX")
            traced.fetch([1])
    finally:
        imaplib_log.setLevel(level)
        imaplib_log.removeHandler(handler)
    assert any("FETCH" in record.getMessage() for record in records)


def _mkdir(path):
    path.mkdir()
    return path
