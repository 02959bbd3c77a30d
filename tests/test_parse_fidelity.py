"""Issue 15, points 1-7: messages read as their sender wrote them, on every path.

Every message here is written by hand for the class it tests (docs/parsing.md lists the rules).
"""

from __future__ import annotations

from mail2ticket.parse import parse_message


def mail(*headers: str | bytes, body: bytes = b"Hello.\n") -> bytes:
    lines = [h if isinstance(h, bytes) else h.encode() for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- 1. encoded words with a comma in an unquoted display name (catalogue 77) ------------------


def test_an_encoded_word_with_a_comma_in_an_unquoted_name_is_one_mailbox() -> None:
    raw = mail("From: =?utf-8?q?M=C3=BCller,=20Andreas?= <a@example.com>", "Subject: hi")
    parsed = parse_message(raw)
    assert parsed.from_address == "a@example.com"
    assert parsed.from_name == "Müller, Andreas"


def test_encoded_names_with_commas_in_a_to_list_keep_every_address() -> None:
    raw = mail(
        "From: a@example.com",
        "To: =?utf-8?b?RG9lLCBKYW5l?= <jane@example.com>, =?iso-8859-1?q?D=FCrr,_Max?= "
        "<max@example.com>, plain@example.com",
    )
    assert parse_message(raw).to == ["jane@example.com", "max@example.com", "plain@example.com"]


def test_an_encoded_word_cannot_smuggle_an_address_past_the_real_one() -> None:
    # "Boss <boss@example.com>" encoded, followed by the real address: the real one is the sender.
    raw = mail("From: =?utf-8?q?Boss_=3Cboss=40example=2Ecom=3E?= <mallory@example.net>")
    parsed = parse_message(raw)
    assert parsed.from_address == "mallory@example.net"
    assert parsed.from_name == "Boss <boss@example.com>"


def test_a_whole_mailbox_in_one_encoded_word_still_gives_its_address() -> None:
    raw = mail("From: =?utf-8?q?Andr=C3=A9_=3Candre=40example=2Ecom=3E?=")
    parsed = parse_message(raw)
    assert (parsed.from_address, parsed.from_name) == ("andre@example.com", "André")


# -- 5. display names: the phrase, else the comment; a broken address keeps its name (catalogue 81)


def test_a_phrase_and_a_comment_give_the_phrase_as_the_name() -> None:
    raw = mail("From: MAILER-DAEMON (Mail Delivery System) <MAILER-DAEMON@mx.example.com>")
    parsed = parse_message(raw)
    assert (parsed.from_address, parsed.from_name) == ("mailer-daemon@mx.example.com", "MAILER-DAEMON")


def test_a_comment_is_the_name_only_when_there_is_no_phrase() -> None:
    raw = mail("From: postmaster@example.com (Mail Delivery System)")
    assert parse_message(raw).from_name == "Mail Delivery System"
    quoted = mail('From: "Support (EU)" <help@example.com>')
    assert parse_message(quoted).from_name == "Support (EU)"


def test_an_unparseable_address_keeps_the_display_name_the_raw_header_and_a_defect() -> None:
    raw = mail("From: Jane Roe <jane roe@example.com>", "Subject: printer")
    parsed = parse_message(raw)
    assert parsed.from_name == "Jane Roe"
    assert parsed.from_address is None
    assert parsed.header("from") == "Jane Roe <jane roe@example.com>"
    assert any("jane roe@example.com" in d for d in parsed.defects)
