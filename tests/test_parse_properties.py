"""Property tests: random and mutated MIME either parses or raises ParseError, nothing else."""

from __future__ import annotations

import json
import os
from email.message import EmailMessage

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail2ticket.errors import ParseError
from mail2ticket.parse.message import parse_message
from mail2ticket.parse.parsed import ParsedMessage, ParseLimits

# Bounded so the file runs in seconds; raise MAIL2TICKET_HYPOTHESIS_EXAMPLES for a longer hunt.
SETTINGS = settings(
    max_examples=int(os.environ.get("MAIL2TICKET_HYPOTHESIS_EXAMPLES", "150")),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
LIMITS = ParseLimits(max_message_bytes=2 * 1024 * 1024, max_depth=20, max_parts=500)

TOKENS = [
    b"From: ",
    b"To: ",
    b"Cc: ",
    b"Subject: ",
    b"Date: ",
    b"Message-ID: ",
    b"Content-Type: ",
    b"Content-Transfer-Encoding: ",
    b"Content-Disposition: ",
    b"multipart/mixed; boundary=b",
    b'multipart/alternative; boundary="b"',
    b"message/rfc822",
    b"text/plain; charset=",
    b"text/html",
    b"utf-8",
    b"gb2312",
    b"iso-2022-jp",
    b"unknown-8bit",
    b"base64",
    b"quoted-printable",
    b"x-uuencode",
    b"--b",
    b"--b--",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b"=?utf-8?q?",
    b"=?gb2312?b?",
    b"?=",
    b"=C3=A9",
    b"<",
    b">",
    b"@",
    b"(",
    b")",
    b'"',
    b",",
    b":",
    b";",
    b"filename*=UTF-8''%E2%82%AC",
    b"name=",
    b"../..\\",
    b"\x00",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"\x1b$B",
    b"begin 644 x\n",
    b"end\n",
    b"<a href=x>",
    b"<!--",
    b"\xd0\xcf\x11\xe0",
    b"=",
    b"a",
    b"b",
]


def check(raw: bytes) -> None:
    try:
        parsed = parse_message(raw, limits=LIMITS)
    except ParseError as exc:
        # The documented refusals only; the catch-all that turns a bug into ParseError is not one.
        assert not str(exc).startswith("message could not be parsed"), exc
        return
    assert isinstance(parsed, ParsedMessage)
    texts = [parsed.subject, parsed.from_name or "", parsed.body_text, *parsed.defects]
    texts += [a.filename for a in parsed.attachments]
    texts += [v for values in parsed.headers.values() for v in values]
    for text in texts:
        text.encode("utf-8")  # no lone surrogates
        assert "\x00" not in text
    for attachment in parsed.attachments:
        assert "/" not in attachment.filename and "\\" not in attachment.filename
        assert attachment.filename not in ("", ".", "..")
    for address in [parsed.from_address or "a@b", *parsed.to, *parsed.cc]:
        assert address == address.lower() and "@" in address
    if parsed.date is not None:
        assert parsed.date.utcoffset().total_seconds() == 0
    json.dumps(parsed.to_dict())


@SETTINGS
@given(st.binary(max_size=4000))
def test_random_bytes_parse_or_raise_parse_error(raw: bytes) -> None:
    check(raw)


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=200).map(b"".join))
def test_token_soup_that_looks_like_mime_parses_or_raises_parse_error(raw: bytes) -> None:
    check(raw)


def sample_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?Jos=C3=A9?= <jose@example.com>"
    msg["To"] = "a@example.com, b@example.com"
    msg["Subject"] = "Grüße"
    msg["Date"] = "Tue, 1 Jul 2025 14:00:00 +0200"
    msg["Message-ID"] = "<x@example.com>"
    msg.set_content("Plain Grüße")
    msg.add_alternative("<p>HTML <b>Grüße</b></p>", subtype="html")
    msg.add_attachment(b"\x89PNG data", maintype="image", subtype="png", filename="a b.png")
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner body")
    msg.add_attachment(inner)
    return msg.as_bytes()


SAMPLE = sample_message()


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(SAMPLE)),
            st.integers(0, 64),
            st.binary(max_size=16) | st.sampled_from(TOKENS),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_mutated_real_message_parses_or_raises_parse_error(
    edits: list[tuple[int, int, bytes]],
) -> None:
    raw = bytearray(SAMPLE)
    for position, cut, insert in edits:
        position = min(position, len(raw))
        raw[position : position + cut] = insert
    check(bytes(raw))


def test_the_unmutated_sample_parses_fully() -> None:
    parsed = parse_message(SAMPLE)
    assert parsed.subject == "Grüße" and parsed.body_text == "Plain Grüße"
    assert [a.filename for a in parsed.attachments] == ["a b.png", "inner.eml"]
