"""Pathological input finishes quickly with bounded memory: a ticket, or ParseError to quarantine."""

from __future__ import annotations

import base64
import os
import time
import tracemalloc

import pytest

from mail2ticket.errors import ParseError
from mail2ticket.parse.message import parse_message
from mail2ticket.parse.parsed import DEFAULT_LIMITS, ParseLimits


def nested(depth: int, kind: str = "multipart") -> bytes:
    out = [b"From: a@example.com\r\nSubject: deep\r\n"]
    for i in range(depth):
        if kind == "multipart":
            out.append(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i))
        else:
            out.append(b"Content-Type: message/rfc822\r\n\r\n")
    out.append(b"Content-Type: text/plain\r\n\r\nthe bottom\r\n")
    if kind == "multipart":
        out += [b"--b%d--\r\n" % i for i in reversed(range(depth))]
    return b"".join(out)


def timed(raw: bytes, limits: ParseLimits | None = None) -> tuple[object, float]:
    """The result of parse_message and the CPU seconds it took: the parser's own work, which a
    busy machine (the suite's other worker) does not stretch as it stretches the wall clock;
    a stall (a wait, not work) is caught by the generous wall-clock bound (catalogue 111)."""
    start, cpu = time.monotonic(), time.process_time()
    try:
        result: object = parse_message(raw, limits=limits)
    except ParseError as exc:
        result = exc
    spent = time.process_time() - cpu
    assert time.monotonic() - start < 120, "the parser stalled"
    return result, spent


@pytest.mark.parametrize("kind", ["multipart", "message"])
def test_thousands_of_nested_parts_are_cut_at_the_depth_limit(kind: str) -> None:
    parsed, seconds = timed(nested(3000, kind))
    assert seconds < 10
    assert not isinstance(parsed, ParseError), parsed
    assert any("nesting deeper than 50" in d for d in parsed.defects)
    assert parsed.attachments  # the part too deep to parse is kept, unparsed


def test_nesting_within_the_limit_is_parsed_fully() -> None:
    parsed = parse_message(nested(40))
    assert parsed.body_text == "the bottom"
    assert not any("nesting" in d for d in parsed.defects)


def test_a_hundred_thousand_parts_end_in_quarantine_quickly() -> None:
    parts = b"".join(b"--z\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(100_000))
    raw = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n" + parts
    result, seconds = timed(raw + b"--z--\r\n")
    assert isinstance(result, ParseError) and "max_parts" in str(result)
    assert seconds < 20


def test_a_100_kib_header_is_a_ticket() -> None:
    raw = b"From: a@example.com\r\nSubject: " + b"word " * 20_000 + b"\r\n\r\nbody\r\n"
    parsed, seconds = timed(raw)
    assert not isinstance(parsed, ParseError) and seconds < 5
    assert parsed.subject.startswith("word word") and parsed.body_text == "body"


def test_a_header_section_over_the_limit_is_quarantined() -> None:
    raw = b"From: a@example.com\r\nX-Big: " + b"a" * (2 * 1024 * 1024) + b"\r\n\r\nbody"
    result, seconds = timed(raw)
    assert isinstance(result, ParseError) and "max_header_bytes" in str(result)
    assert seconds < 2


def test_many_encoded_words_and_addresses_parse_in_linear_time() -> None:
    raw = (
        b"From: a@example.com\r\nTo: "
        + b", ".join(b"u%d@example.com" % i for i in range(20_000))
        + b"\r\nSubject: "
        + b" ".join([b"=?utf-8?q?=C3=A9?="] * 20_000)
        + b"\r\n\r\nbody"
    )
    parsed, seconds = timed(raw)
    assert not isinstance(parsed, ParseError) and seconds < 10
    assert len(parsed.to) > 1000


def big_attachment(size: int) -> bytes:
    data = os.urandom(size)
    return (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--zz\r\nContent-Type: application/octet-stream; name=big.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data) + b"\r\n--zz--\r\n"
    )


def test_a_50_mb_attachment_is_refused_at_once_under_default_limits() -> None:
    raw = big_attachment(50 * 1024 * 1024)
    tracemalloc.start()
    result, seconds = timed(raw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(result, ParseError) and "message too large" in str(result)
    assert seconds < 1 and peak < 10 * 1024 * 1024


def test_a_large_attachment_within_the_limits_is_kept_with_bounded_memory() -> None:
    raw = big_attachment(8 * 1024 * 1024)
    tracemalloc.start()
    parsed, seconds = timed(raw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not isinstance(parsed, ParseError)
    assert parsed.attachments[0].size == 8 * 1024 * 1024
    assert seconds < 10 and peak < 12 * len(raw)


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n  ", b"\n"])
def test_an_empty_file_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError, match="empty"):
        parse_message(raw)


def test_an_outlook_msg_file_is_not_an_email() -> None:
    with pytest.raises(ParseError, match="Outlook"):
        parse_message(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + os.urandom(2000))


@pytest.mark.parametrize("seed", range(5))
def test_binary_garbage_is_quarantined_or_a_ticket_never_a_crash(seed: int) -> None:
    import random

    raw = random.Random(seed).randbytes(200_000)
    result, seconds = timed(raw)
    assert seconds < 5
    if not isinstance(result, ParseError):
        result.body_text.encode("utf-8")


def test_headers_only_message_is_a_ticket() -> None:
    parsed = parse_message(b"From: a@example.com\r\nSubject: only headers\r\n")
    assert parsed.subject == "only headers" and parsed.body_text == ""


def test_text_without_any_header_is_still_read() -> None:
    parsed = parse_message(b"Hello, this is just text\nwith no headers at all.\n")
    assert "with no headers at all." in parsed.body_text
    assert parsed.from_address is None


def test_bare_lf_and_mixed_line_endings_parse_alike() -> None:
    crlf = b"From: a@example.com\r\nSubject: s\r\n\r\nline1\r\nline2\r\n"
    assert parse_message(crlf.replace(b"\r\n", b"\n")).body_text == parse_message(crlf).body_text


def test_unknown_transfer_encoding_keeps_the_raw_part() -> None:
    raw = b"From: a@example.com\r\nContent-Transfer-Encoding: x-martian\r\n\r\nzorg\r\n"
    parsed = parse_message(raw)
    assert parsed.body_text == "zorg"
    assert any("x-martian" in d for d in parsed.defects)


def test_default_limits_are_documented_values() -> None:
    assert DEFAULT_LIMITS.max_depth == 50
    assert DEFAULT_LIMITS.max_parts >= 1000
    assert DEFAULT_LIMITS.max_attachment_bytes <= DEFAULT_LIMITS.max_message_bytes
