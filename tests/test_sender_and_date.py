"""Senders that cannot be trusted and dates that cannot be read (RELIABILITY items 27-29).

Parser cases use canned bytes (a pure function); the date case goes through the real Dovecot and
``mail2ticket poll``, because INTERNALDATE only exists on the server.
"""

from __future__ import annotations

import datetime as dt
import json

from click.testing import CliRunner

from mail2ticket.cli import cli
from mail2ticket.parse.message import parse_message
from tests.helpers import Desk


def mail(sender: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join([b"From: " + sender, b"Subject: s", *extra]) + b"\r\n\r\nhello\r\n"


def test_a_colon_heavy_sender_that_makes_parseaddr_recurse_is_an_unknown_sender_with_a_defect():
    for sender in (b":" * 5000 + b"a@b.test", b"(:" * 3000 + b"x"):
        parsed = parse_message(mail(sender))
        assert parsed.from_address is None
        assert any("could not be parsed" in d or "no usable address" in d for d in parsed.defects)


def test_an_ambiguous_sender_is_unknown_never_the_first_or_the_second_address():
    for sender in (b"alice@example.org)<bob@example.org>", b"alice@example.org (x <bob@example.org>"):
        parsed = parse_message(mail(sender))
        assert parsed.from_address is None, sender
        assert any("ambiguous" in d for d in parsed.defects)


def test_ordinary_comments_and_quoted_names_still_give_the_sender():
    for sender, address in [
        (b"Bob (the boss) <bob@example.org>", "bob@example.org"),
        (b'"Smith, (Bob)" <bob@example.org>', "bob@example.org"),
        (b'"a \\" b" <bob@example.org>', "bob@example.org"),
    ]:
        assert parse_message(mail(sender)).from_address == address


def test_a_garbage_date_falls_back_to_the_servers_internaldate_and_is_kept_raw(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "desk", dovecot, imap_user, smtp_server, account_config, acknowledge=False)
    arrived = dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    raw = mail(b"ann@customer.test", b"Date: the day after tomorrow, 99:99", b"Message-ID: <d@c.test>")
    with dovecot.connect(imap_user) as client:
        client.append("INBOX", raw, msg_time=arrived)
    desk.poll()
    result = CliRunner().invoke(cli, ["--config", str(desk.config), "tickets", "show", "1", "--json"])
    [message] = json.loads(result.stdout)["messages"]
    assert any("date" in d.lower() for d in message["defects"]), message["defects"]
    assert (message["date"] or message["received_at"]).startswith("2021-03-04T05:06:07")
