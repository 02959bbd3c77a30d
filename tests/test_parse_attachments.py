"""Attachments: every one kept, with a safe display name; TNEF unpacked; size limits."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from mail2ticket.errors import ParseError
from mail2ticket.parse import tnef
from mail2ticket.parse.filenames import MAX_NAME_BYTES, MAX_NAME_CHARS, safe_filename
from mail2ticket.parse.message import parse_message
from mail2ticket.parse.parsed import ParseLimits


def mixed(*parts: str, body: str = "Hello.") -> bytes:
    head = "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    text = f"--b\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
    return (head + text + "".join(f"--b\r\n{p}\r\n" for p in parts) + "--b--\r\n").encode()


def part(headers: str, data: bytes) -> str:
    encoded = base64.encodebytes(data).decode()
    return f"{headers}\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}"


def test_inline_images_and_files_are_all_kept_in_mime_order() -> None:
    raw = mixed(
        part(
            "Content-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Disposition: inline", b"P"
        ),
        part('Content-Type: application/pdf; name="a.pdf"', b"%PDF"),
        part("Content-Type: text/csv\r\nContent-Disposition: attachment", b"a,b"),
        part('Content-Type: text/plain\r\nContent-Disposition: attachment; filename="n.txt"', b"n"),
    )
    parsed = parse_message(raw)
    assert parsed.body_text == "Hello."
    assert [(a.filename, a.content_type, a.data, a.disposition) for a in parsed.attachments] == [
        ("attachment-1.png", "image/png", b"P", "inline"),
        ("a.pdf", "application/pdf", b"%PDF", "attachment"),
        ("attachment-3.csv", "text/csv", b"a,b", "attachment"),
        ("n.txt", "text/plain", b"n", "attachment"),
    ]
    assert parsed.attachments[0].content_id == "<logo@x>"
    assert parsed.attachments[1].original_filename == "a.pdf"
    assert parsed.attachments[0].original_filename is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rate.pdf", "€ rate.pdf"),
        (
            "Content-Disposition: attachment;\r\n filename*0*=UTF-8''long%20;\r\n"
            " filename*1*=n%C3%A4me.txt",
            "long näme.txt",
        ),
        ("Content-Disposition: attachment; filename*=iso-8859-1'de'Gr%FC%DFe.txt", "Grüße.txt"),
        (
            'Content-Disposition: attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.doc?="',
            "résumé.doc",
        ),
        ('Content-Type: application/octet-stream; name="=?utf-8?b?0YTQsNC50Lsuemlw?="', "файл.zip"),
    ],
)
def test_file_names_are_decoded_from_rfc2231_and_encoded_words(header: str, expected: str) -> None:
    raw = mixed(
        part(
            header
            if header.startswith("Content-Type")
            else f"Content-Type: application/octet-stream\r\n{header}",
            b"x",
        )
    )
    attachment = parse_message(raw).attachments[0]
    assert attachment.original_filename == expected
    assert attachment.filename == expected


def test_raw_utf8_file_name_is_read() -> None:
    raw = mixed(part('Content-Type: application/zip; name="ФНС_РФ558.zip"', b"PK"))
    assert parse_message(raw).attachments[0].filename == "ФНС_РФ558.zip"


HOSTILE_NAMES = [
    "../../etc/passwd",
    "..\\..\\windows\\system32\\evil.dll",
    "/absolute/path.txt",
    "C:\\Users\\x\\evil.bat",
    "con.txt",
    "NUL",
    "LPT1.log",
    "a\x00b.pdf",
    "line\r\nbreak.txt",
    "\u202egpj.exe",
    "x" * 300 + ".pdf",
    ".",
    "..",
    "...",
    "",
    " ",
    ".htaccess",
    "-rf",
    'a:b*c?d|e<f>g".txt',
    "ü" * 200 + ".docx",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_filename_is_never_usable_as_a_path(name: str) -> None:
    safe = safe_filename(name, "application/pdf", 7)
    assert safe and safe not in (".", "..")
    assert "/" not in safe and "\\" not in safe and ".." not in safe
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in safe)
    assert "\u202e" not in safe and not safe.startswith((".", "-"))
    assert safe.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "LPT1", "COM1"}
    assert len(safe) <= MAX_NAME_CHARS and len(safe.encode()) <= MAX_NAME_BYTES


def test_an_over_long_name_keeps_its_extension() -> None:
    assert safe_filename("a" * 500 + ".pdf", "application/pdf", 1).endswith("a.pdf")


def test_a_missing_name_gets_a_numbered_name_with_the_types_extension() -> None:
    assert safe_filename(None, "image/png", 3) == "attachment-3.png"
    assert safe_filename("", "message/rfc822", 2) == "attachment-2.eml"


def test_hostile_names_in_a_mail_are_kept_only_as_original_filename() -> None:
    raw = mixed(
        *(
            part(f'Content-Type: application/octet-stream; name="{n}"', b"x")
            for n in ["../../x.sh", "C:\\x.bat", "con.txt"]
        )
    )
    parsed = parse_message(raw)
    assert [a.filename for a in parsed.attachments] == ["x.sh", "C__x.bat", "_con.txt"]
    assert [a.original_filename for a in parsed.attachments] == [
        "../../x.sh",
        "C:\\x.bat",
        "con.txt",
    ]


def tnef_attr(level: int, attr_id: int, data: bytes) -> bytes:
    return (
        struct.pack("<BII", level, attr_id, len(data))
        + data
        + struct.pack("<H", sum(data) & 0xFFFF)
    )


def long_filename_props(name: str) -> bytes:
    value = name.encode("utf-16-le") + b"\x00\x00"
    value += b"\x00" * (-len(value) % 4)
    return struct.pack("<IHHII", 1, 0x001F, 0x3707, 1, len(name.encode("utf-16-le")) + 2) + value


def winmail(files: list[tuple[str, bytes]], body: str = "Body from Outlook") -> bytes:
    out = struct.pack("<IH", tnef.SIGNATURE, 1)
    out += tnef_attr(1, 0x00089006, b"\x00\x00\x01\x00")
    out += tnef_attr(1, 0x00069007, struct.pack("<II", 1252, 0))
    out += tnef_attr(1, 0x0002800C, body.encode("cp1252") + b"\x00")
    for name, data in files:
        out += tnef_attr(2, 0x00069002, b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 8)
        out += tnef_attr(2, 0x00018010, b"SHORT~1.DAT\x00")
        out += tnef_attr(2, 0x0006800F, data)
        out += tnef_attr(2, 0x00069005, long_filename_props(name))
    return out


def test_tnef_winmail_dat_is_unpacked_and_also_kept_as_sent() -> None:
    dat = winmail([("Quarterly report.xlsx", b"XLSX"), ("Photo é.jpg", b"JPEG")])
    raw = mixed(part('Content-Type: application/ms-tnef; name="winmail.dat"', dat), body="")
    parsed = parse_message(raw)
    assert [(a.filename, a.data) for a in parsed.attachments] == [
        ("winmail.dat", dat),
        ("Quarterly report.xlsx", b"XLSX"),
        ("Photo é.jpg", b"JPEG"),
    ]
    assert parsed.body_text == "Body from Outlook"


def test_broken_tnef_is_kept_with_a_defect() -> None:
    dat = winmail([("a.txt", b"a")])[:45]  # cut inside an attribute
    parsed = parse_message(
        mixed(part('Content-Type: application/ms-tnef; name="winmail.dat"', dat))
    )
    assert [a.filename for a in parsed.attachments] == ["winmail.dat"]
    assert any("winmail.dat" in d for d in parsed.defects)


def test_an_attachment_over_the_limit_quarantines_the_message_saying_why() -> None:
    raw = mixed(part('Content-Type: application/pdf; name="big.pdf"', b"x" * 5000))
    with pytest.raises(ParseError, match="max_attachment_bytes"):
        parse_message(raw, limits=ParseLimits(max_attachment_bytes=4096))
    assert parse_message(raw, limits=ParseLimits(max_attachment_bytes=5000)).attachments


def test_a_message_over_the_limit_is_too_large() -> None:
    raw = mixed(body="x" * 2000)
    with pytest.raises(ParseError, match="message too large"):
        parse_message(raw, limits=ParseLimits(max_message_bytes=1000))


def test_attachment_sizes_and_hashes_are_of_the_decoded_bytes() -> None:
    attachment = parse_message(mixed(part("Content-Type: image/gif", b"GIF89a"))).attachments[0]
    assert attachment.size == 6
    assert attachment.sha256 == hashlib.sha256(b"GIF89a").hexdigest()
