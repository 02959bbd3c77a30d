"""Bodies: the text a person would read, from plain, HTML, uuencode and forwarded messages."""

from __future__ import annotations

import binascii
import socket
from email.message import EmailMessage

import pytest

from mail2ticket.parse.htmltext import html_to_text
from mail2ticket.parse.message import parse_message


def alternative(plain: str | None, html: str | None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["Subject"] = "alt"
    if plain is not None:
        msg.set_content(plain)
    if html is not None:
        if plain is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def test_plain_text_is_chosen_when_it_carries_the_message() -> None:
    parsed = parse_message(alternative("Plain words.\n", "<p>HTML <b>words</b></p>"))
    assert parsed.body_text == "Plain words."
    assert parsed.body_html is not None and "<b>words</b>" in parsed.body_html


@pytest.mark.parametrize("plain", [None, "", "   \n", "-- \nJane Doe\nACME Support\n"])
def test_html_is_read_when_the_plain_part_is_missing_empty_or_only_a_signature(
    plain: str | None,
) -> None:
    parsed = parse_message(alternative(plain, "<p>The <i>real</i> message.</p>"))
    assert parsed.body_text == "The real message."


def test_html_becomes_readable_text_with_links_kept_and_scripts_dropped() -> None:
    html = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body>"
        "<script>document.write('x')</script><h1>Order</h1><p>Track it "
        '<a href="https://shop.example/track?id=1">here</a>.</p>'
        "<ul><li>one</li><li>two</li></ul><p>Bye &amp; thanks&nbsp;&#8212; Jo</p></body></html>"
    )
    text = html_to_text(html)
    assert "document.write" not in text and "color:red" not in text
    assert "Track it here <https://shop.example/track?id=1>." in text
    assert "- one\n- two" in text
    assert "Bye & thanks\xa0— Jo" in text


def test_html_links_that_say_nothing_to_a_reader_are_not_shown() -> None:
    text = html_to_text('<a href="javascript:steal()">a</a> <a href="#top">b</a> <a>c</a>')
    assert text == "a b c"


def test_html_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the parser opened a connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    html = (
        '<img src="https://tracker.example/p.gif" alt="logo">'
        '<link rel="stylesheet" href="https://evil.example/x.css">'
        '<iframe src="https://evil.example/"></iframe><p>Text</p>'
    )
    parsed = parse_message(alternative(None, html))
    assert parsed.body_text == "[logo]\n\nText"


def test_uuencoded_part_is_decoded_into_an_attachment() -> None:
    data = bytes(range(256)) * 4
    encoded = "".join(binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45))
    raw = (
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nSee the file.\r\n"
        "--b\r\nContent-Type: application/zip; name=q.zip\r\n"
        "Content-Transfer-Encoding: x-uuencode\r\n\r\n"
        f"begin 644 q.zip\r\n{encoded}`\r\nend\r\n--b--\r\n"
    ).encode()
    parsed = parse_message(raw)
    assert parsed.body_text == "See the file."
    assert [(a.filename, a.data) for a in parsed.attachments] == [("q.zip", data)]


def test_uuencoded_block_inside_a_text_body_becomes_an_attachment() -> None:
    data = b"\x00\x01hello uuencode\xff" * 10
    encoded = "".join(binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45))
    body = f"Here it is:\n\nbegin 600 report.bin\n{encoded}`\nend\n\nRegards\n"
    parsed = parse_message(b"From: a@example.com\r\n\r\n" + body.encode())
    assert "begin 600" not in parsed.body_text
    assert "Here it is:" in parsed.body_text and "Regards" in parsed.body_text
    assert [(a.filename, a.data) for a in parsed.attachments] == [("report.bin", data)]


def test_multipart_with_no_parts_is_a_ticket_with_a_defect() -> None:
    raw = (
        b"From: a@example.com\r\nSubject: empty\r\n"
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.subject == "empty" and parsed.body_text == "" and parsed.attachments == []
    assert "multipart/mixed without parts" in parsed.defects


def test_multipart_without_a_boundary_still_shows_its_text() -> None:
    raw = b"From: a@example.com\r\nContent-Type: multipart/mixed\r\n\r\nJust some words.\r\n"
    parsed = parse_message(raw)
    assert parsed.body_text == "Just some words."
    assert "multipart/mixed without parts" in parsed.defects


def forwarded(inner_body: str = "Inner words.") -> bytes:
    inner = EmailMessage()
    inner["From"] = "Original <orig@example.com>"
    inner["Subject"] = "Quarterly numbers"
    inner.set_content(inner_body)
    inner.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="q3.pdf")
    outer = EmailMessage()
    outer["From"] = "fwd@example.com"
    outer["Subject"] = "Fwd: Quarterly numbers"
    outer.set_content("See below.")
    outer.add_attachment(inner)
    return outer.as_bytes()


def test_forwarded_message_is_kept_as_an_eml_named_after_its_subject() -> None:
    parsed = parse_message(forwarded())
    assert parsed.body_text == "See below."
    eml = parsed.attachments[0]
    assert (eml.filename, eml.content_type) == ("Quarterly numbers.eml", "message/rfc822")
    assert b"Subject: Quarterly numbers" in eml.data and b"Inner words." in eml.data


def test_attachments_of_a_forwarded_message_follow_it_in_mime_order() -> None:
    parsed = parse_message(forwarded())
    assert [a.filename for a in parsed.attachments] == ["Quarterly numbers.eml", "q3.pdf"]
    assert parsed.attachments[1].data == b"%PDF-1.4"


def test_a_mail_that_is_only_a_forwarded_message_shows_the_forwarded_text() -> None:
    inner = EmailMessage()
    inner["From"] = "orig@example.com"
    inner["Subject"] = "Broken printer"
    inner.set_content("The printer is on fire.")
    outer = EmailMessage()
    outer["From"] = "fwd@example.com"
    outer.add_attachment(inner)
    outer.set_type("multipart/mixed")
    parsed = parse_message(outer.as_bytes())
    assert "Subject: Broken printer" in parsed.body_text
    assert "The printer is on fire." in parsed.body_text


def test_several_inline_text_parts_are_read_in_order() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nFirst.\r\n"
        b"--b\r\nContent-Type: image/png\r\nContent-Disposition: inline\r\n\r\nPNG\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nSecond.\r\n--b--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.body_text == "First.\n\nSecond."
    assert [a.content_type for a in parsed.attachments] == ["image/png"]


def test_terminal_escapes_and_nul_are_removed_from_the_body() -> None:
    raw = b"From: a@example.com\r\n\r\nHi\x1b[31m red\x00 \xc2\x9b2J done\r\n"  # ESC, C1 CSI
    assert parse_message(raw).body_text == "Hi[31m red 2J done"


def test_pathological_html_converts_quickly() -> None:
    html = '<a href="https://x.example/">l</a>' * 5000 + "<div>" * 50_000 + "<a " * 50_000
    text = html_to_text(html)
    assert text.count("https://x.example/") <= 2000
