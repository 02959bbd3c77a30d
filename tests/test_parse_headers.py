"""Headers: encoded words, RFC 2231, raw 8-bit, display names, missing and repeated headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mail2ticket.parse.message import parse_message


def mail(*headers: str | bytes, body: bytes = b"Hello.\n") -> bytes:
    lines = [h if isinstance(h, bytes) else h.encode() for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_adjacent_encoded_words_join_without_a_space() -> None:
    raw = mail("From: a@example.com", "Subject: =?utf-8?q?Caf=C3=A9?= =?utf-8?q?_au_lait?=")
    assert parse_message(raw).subject == "Café au lait"


def test_a_character_split_across_two_encoded_words_survives() -> None:
    encoded = "é".encode()
    first = "=?utf-8?q?caf=" + f"{encoded[0]:02X}" + "?="
    second = "=?utf-8?q?=" + f"{encoded[1]:02X}" + "?="
    raw = mail("From: a@example.com", f"Subject: {first}\r\n {second}")
    assert parse_message(raw).subject == "café"


def test_space_between_encoded_word_and_plain_text_is_kept() -> None:
    raw = mail("From: a@example.com", "Subject: Re: =?utf-8?b?w6k=?= done")
    assert parse_message(raw).subject == "Re: é done"


def test_base64_encoded_word_without_padding_decodes() -> None:
    raw = mail("From: a@example.com", "Subject: =?utf-8?b?w6nDqQ?=")
    assert parse_message(raw).subject == "éé"


def test_encoded_word_with_unknown_charset_falls_back_and_records_a_defect() -> None:
    raw = mail("From: a@example.com", "Subject: =?x-klingon?q?caf=C3=A9?=")
    parsed = parse_message(raw)
    assert parsed.subject == "café"
    assert any("x-klingon" in d for d in parsed.defects)


def test_encoded_word_mislabelled_as_gb2312_decodes_as_gbk() -> None:
    data = "镕".encode("gbk")  # a GBK character that is not in GB2312
    word = "=?gb2312?q?" + "".join(f"={b:02X}" for b in data) + "?="
    assert parse_message(mail("From: a@example.com", f"Subject: {word}")).subject == "镕"


def test_encoded_word_decoding_to_newlines_never_yields_a_multi_line_subject() -> None:
    raw = mail("From: a@example.com", "Subject: =?UTF-8?Q?a=0D=0AX-Evil:_1?=")
    parsed = parse_message(raw)
    assert "\n" not in parsed.subject and "\r" not in parsed.subject
    assert parsed.subject.startswith("a")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Subject: Gr\xc3\xbc\xc3\x9fe", "Grüße"),  # raw UTF-8
        (b"Subject: Gr\xfc\xdfe", "Grüße"),  # raw Latin-1
        (b"Subject: \x93quoted\x94", "\u201cquoted\u201d"),  # raw windows-1252
    ],
)
def test_raw_8bit_header_is_decoded_sensibly(header: bytes, expected: str) -> None:
    parsed = parse_message(mail("From: a@example.com", header))
    assert parsed.subject == expected
    parsed.subject.encode("utf-8")


def test_raw_8bit_header_uses_the_body_charset_when_not_utf8() -> None:
    raw = mail(
        "From: a@example.com",
        b"Subject: " + "Привет".encode("koi8-r"),
        "Content-Type: text/plain; charset=koi8-r",
        body="Привет".encode("koi8-r"),
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Привет"
    assert parsed.body_text == "Привет"


def test_undecodable_header_bytes_never_become_surrogates() -> None:
    raw = mail(b"From: \xff\xfe <a@example.com>", b"Subject: \xff\xfe\xfd", b"X-Junk: \x80\x81")
    parsed = parse_message(raw)
    for text in [parsed.subject, parsed.from_name or "", *parsed.headers["x-junk"]]:
        text.encode("utf-8")
        assert "\x00" not in text


@pytest.mark.parametrize(
    ("header", "address", "name"),
    [
        ('From: "Doe, Jane" <Jane@Example.COM>', "jane@example.com", "Doe, Jane"),
        ("From: jane@example.com (Jane Doe)", "jane@example.com", "Jane Doe"),
        ("From: jane@example.com", "jane@example.com", None),
        ("From: <jane@example.com>", "jane@example.com", None),
        ("From: =?utf-8?q?Jos=C3=A9_Doe?= <jose@example.com>", "jose@example.com", "José Doe"),
        ('From: "=?utf-8?q?Jos=C3=A9?=" <jose@example.com>', "jose@example.com", "José"),
        ("From: =?utf-8?q?Doe=2C_Jane?= <jane@example.com>", "jane@example.com", "Doe, Jane"),
    ],
)
def test_display_names_in_all_their_forms(header: str, address: str, name: str | None) -> None:
    parsed = parse_message(mail(header))
    assert (parsed.from_address, parsed.from_name) == (address, name)


def test_an_address_in_the_name_slot_never_becomes_the_sender() -> None:
    parsed = parse_message(mail("From: boss@example.com <attacker@evil.example>"))
    assert parsed.from_address == "attacker@evil.example"
    assert parsed.from_name is None


def test_a_mailbox_encoded_whole_as_one_encoded_word_is_read() -> None:
    parsed = parse_message(mail("From: =?UTF-8?B?bm90aWNlQGJhbmsuZXhhbXBsZQ==?="))
    assert parsed.from_address == "notice@bank.example"


def test_recipient_lists_are_lower_case_addresses() -> None:
    raw = mail(
        "From: a@example.com",
        'To: "B" <B@Example.com>, c@example.com,',
        "Cc: D <d@example.com>",
        "Reply-To: Help <Help@Example.com>",
    )
    parsed = parse_message(raw)
    assert parsed.to == ["b@example.com", "c@example.com"]
    assert parsed.cc == ["d@example.com"]
    assert parsed.reply_to == ["help@example.com"]


def test_message_ids_keep_their_angle_brackets() -> None:
    raw = mail(
        "From: a@example.com",
        "Message-ID: <abc@host.example>",
        "In-Reply-To: <x@h> (comment)",
        "References: <r1@h>\r\n <r2@h>, <r3@h>",
    )
    parsed = parse_message(raw)
    assert parsed.message_id == "<abc@host.example>"
    assert parsed.in_reply_to == ["<x@h>"]
    assert parsed.references == ["<r1@h>", "<r2@h>", "<r3@h>"]


def test_exchange_style_bracketed_message_id_is_kept() -> None:
    parsed = parse_message(mail("From: a@example.com", "Message-ID: <[1.2.3.4]@host>"))
    assert parsed.message_id == "<[1.2.3.4]@host>"


def test_missing_message_id_and_from_are_defects_not_errors() -> None:
    parsed = parse_message(mail("Subject: hi"))
    assert parsed.message_id is None and parsed.from_address is None
    assert "no Message-ID header" in parsed.defects
    assert "no From header" in parsed.defects


def test_duplicated_subject_uses_the_first_and_says_so() -> None:
    parsed = parse_message(mail("From: a@example.com", "Subject: one", "Subject: two"))
    assert parsed.subject == "one"
    assert parsed.headers["subject"] == ["one", "two"]
    assert any("2 Subject headers" in d for d in parsed.defects)


def test_date_is_aware_utc() -> None:
    parsed = parse_message(mail("From: a@example.com", "Date: Tue, 1 Jul 2025 14:00:00 +0200"))
    assert parsed.date == datetime(2025, 7, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", ["not a date", "Mon, 99 Foo 20251 99:99:99 +9999", ""])
def test_garbage_date_is_none_with_a_defect(value: str) -> None:
    parsed = parse_message(mail("From: a@example.com", f"Date: {value}"))
    assert parsed.date is None
    assert any("Date" in d for d in parsed.defects)


def test_headers_map_lower_case_names_to_decoded_values() -> None:
    raw = mail("From: a@example.com", "X-Custom: =?utf-8?q?v=C3=A4lue?=", "x-custom: two")
    assert parse_message(raw).headers["x-custom"] == ["välue", "two"]


def test_address_header_that_breaks_the_stdlib_parser_is_a_defect() -> None:
    raw = mail("From: " + ":" * 5000 + "<a@example.com>", "To: (c):,,,", "Cc: a@b,")
    parsed = parse_message(raw)
    assert parsed.cc == ["a@b"]
    parsed.from_address  # noqa: B018 - whatever it is, parsing did not raise


def test_very_long_subject_is_kept_up_to_a_cap() -> None:
    words = " ".join(["=?utf-8?q?D=C3=BCrer?="] * 20_000)
    parsed = parse_message(mail("From: a@example.com", f"Subject: {words}"))
    assert parsed.subject.startswith("DürerDürer")
    assert len(parsed.subject) <= 16 * 1024
