"""Charsets: mislabelled and legacy text decodes to what a person would read."""

from __future__ import annotations

import pytest

from mail2ticket.parse import charsets
from mail2ticket.parse.message import parse_message


def text_mail(body: bytes, charset: str | None, cte: str = "8bit") -> bytes:
    ctype = "text/plain" + (f"; charset={charset}" if charset else "")
    head = f"From: a@example.com\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n"
    return head.encode() + b"\r\n" + body


def jis(text: str) -> bytes:
    """ISO-2022-JP as Outlook writes it: cp932 characters, vendor rows included, in JIS form."""
    out, in_jis = bytearray(), False
    for char in text:
        sjis = char.encode("cp932")
        if len(sjis) == 1:
            if in_jis:
                out += b"\x1b(B"
                in_jis = False
            out += sjis
            continue
        if not in_jis:
            out += b"\x1b$B"
            in_jis = True
        s1, s2 = sjis
        s1 -= 0x70 if s1 < 0xA0 else 0xB0
        s1 *= 2
        if s2 < 0x9F:
            s1 -= 1
            s2 -= 0x20 if s2 > 0x7F else 0x1F
        else:
            s2 -= 0x7E
        out += bytes((s1, s2))
    if in_jis:
        out += b"\x1b(B"
    return bytes(out)


@pytest.mark.parametrize(
    ("text", "encoding", "label"),
    [
        ("镕鎔 GBK text labelled gb2312", "gbk", "gb2312"),
        ("𠀀 and 中文 in GB18030", "gb18030", "gb2312"),
        ("“Smart quotes” – and € in windows-1252", "cp1252", "iso-8859-1"),
        ("Ελληνικά", "iso-8859-7", "ISO-8859-7"),
        ("한국어 텍스트", "cp949", "ks_c_5601-1987"),
        ("Шалом", "cp866", "cp-866"),
        ("Plain UTF-8 mislabelled: naïve café", "utf-8", "iso-8859-1"),
        ("Hebrew שלום", "iso-8859-8", "iso-8859-8-i"),
        ("garbage label", "utf-8", "utf-8 euao6y69zh2w"),
    ],
)
def test_mislabelled_and_legacy_charsets_read_as_sent(text: str, encoding: str, label: str) -> None:
    parsed = parse_message(text_mail(text.encode(encoding), label))
    assert parsed.body_text == text


def test_iso_2022_jp_with_nec_vendor_characters_decodes() -> None:
    text = "①番 ㈱テスト ≒ こんにちは"
    parsed = parse_message(text_mail(jis(text), "iso-2022-jp", cte="7bit"))
    assert parsed.body_text == text


def test_iso_2022_jp_with_ibm_extension_characters_decodes() -> None:
    text = "纊褜鍈"  # NEC-selected IBM extension row in cp932
    assert charsets.decode(jis(text), "ISO-2022-JP")[0] == text


@pytest.mark.parametrize("label", ["unknown-8bit", "x-unknown", "x-klingon-42", None])
def test_unknown_or_missing_charset_on_8bit_text_is_detected(label: str | None) -> None:
    text = "Große Grüße aus München. Die Größe der Häuser überrascht mich jedes Mal sehr."
    parsed = parse_message(text_mail(text.encode("cp1252"), label))
    assert parsed.body_text == text
    assert parsed.defects  # a note says the text was not declared properly


def test_undeclared_utf8_is_read_as_utf8() -> None:
    parsed = parse_message(text_mail("Ünïcödé".encode(), None))
    assert parsed.body_text == "Ünïcödé"


def test_a_few_broken_bytes_in_utf8_do_not_send_the_text_to_detection() -> None:
    text = "Привет, это длинное письмо в UTF-8. " * 20
    data = text.encode() + b"\xd0" + text.encode()
    decoded, defect = charsets.decode(data, "utf-8")
    assert decoded.startswith(text) and "\ufffd" in decoded
    assert defect and "replaced" in defect


@pytest.mark.parametrize("label", ["zlib", "base64", "rot13", "hex", "idna", "undefined"])
def test_codecs_that_are_not_text_encodings_are_never_used(label: str) -> None:
    assert charsets.candidates(label) == ()
    parsed = parse_message(text_mail("text é".encode(), label))
    assert parsed.body_text == "text é"


def test_html_meta_charset_is_used_when_mime_declares_none() -> None:
    html = '<html><head><meta charset="windows-1251"></head><body>Привет мир</body></html>'
    raw = b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n" + html.encode("cp1251")
    assert parse_message(raw).body_text == "Привет мир"


def test_detection_looks_at_a_bounded_prefix_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = charsets._detect
    monkeypatch.setattr(
        charsets, "_detect", lambda prefix: seen.append(len(prefix)) or real(prefix)
    )
    big = ("Größe " * 100_000).encode("cp1252")
    parse_message(text_mail(big, None))
    assert seen and max(seen) <= charsets.DETECT_PREFIX_BYTES


def test_declared_charset_that_decodes_cleanly_skips_detection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(charsets, "_detect", lambda prefix: pytest.fail("detection ran"))
    parse_message(text_mail("Größe".encode("iso-8859-15"), "iso-8859-15"))
    parse_message(text_mail("Größe".encode(), "utf-8"))
