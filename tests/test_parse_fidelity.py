"""Issue 15, points 1-7: messages read as their sender wrote them, on every path.

Every message here is written by hand for the class it tests (docs/parsing.md lists the rules).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.parse import bigmessage
from mail2ticket.parse.message import parse_message
from mail2ticket.parse.parsed import ParseLimits
from tests.test_poll import setup, tickets  # noqa: F401  (the poll fixture and helper)

MiB = 1024 * 1024


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


# -- 6. a file that does not start with a header (catalogue 82) --------------------------------

HEAD = b"From: Ann Lee <ann@example.com>\r\nSubject: VPN down\r\nDate: Mon, 2 Mar 2026 09:00:00 +0000\r\n"


@pytest.mark.parametrize(
    "prefix",
    [
        b"From ann@example.com Mon Mar  2 09:00:00 2026\r\n",
        b"\xef\xbb\xbf",
        b"\xef\xbb\xbfFrom ann@example.com Mon Mar  2 09:00:00 2026\r\n",
    ],
    ids=["mbox-from-line", "bom", "bom-and-mbox-from-line"],
)
def test_an_mbox_from_line_or_a_bom_before_the_headers_is_skipped(prefix: bytes) -> None:
    parsed = parse_message(prefix + HEAD + b"\r\nThe VPN is down.\r\n")
    assert (parsed.from_address, parsed.subject) == ("ann@example.com", "VPN down")
    assert parsed.body_text == "The VPN is down."


@pytest.mark.parametrize(
    "prefix", [b"\r\n", b"\r\n\r\n", b"Forwarded by the printer\r\n", b"\r\n-- saved mail --\r\n"]
)
def test_a_header_block_after_a_few_stray_lines_is_recovered_with_a_defect(prefix: bytes) -> None:
    parsed = parse_message(prefix + HEAD + b"\r\nThe VPN is down.\r\n")
    assert (parsed.from_address, parsed.subject) == ("ann@example.com", "VPN down")
    assert parsed.body_text == "The VPN is down."
    assert any("before the header" in d for d in parsed.defects)


def test_text_that_merely_mentions_a_header_stays_a_body() -> None:
    raw = b"Hello,\r\nplease note: the server is down.\r\nSubject: outage\r\n"
    parsed = parse_message(raw)
    assert parsed.subject == "" and "please note" in parsed.body_text


def test_the_large_message_path_recovers_the_same_header_block(tmp_path: Path) -> None:
    limits = ParseLimits(max_message_bytes=200 * MiB, max_attachment_bytes=200 * MiB)
    raw = (
        b"\r\n" + HEAD + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the log.\r\n"
        b'--b1\r\nContent-Type: application/octet-stream; name="vpn.log"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"x" * (2 * MiB))
        + b"--b1--\r\n"
    )
    path = tmp_path / "big.eml"
    path.write_bytes(raw)
    answer = bigmessage.parse_file(
        lambda b: parse_message(b, limits=limits), AttachmentStore(tmp_path / "files"), str(path), limits
    )
    reference = parse_message(raw, limits=limits)
    assert answer.error is None, answer
    parsed = answer.parsed
    assert (parsed.from_address, parsed.subject, parsed.body_text) == ("ann@example.com", "VPN down", "See the log.")
    assert parsed.defects == reference.defects
    assert [(a.filename, a.size) for a in parsed.attachments] == [("vpn.log", 2 * MiB)]


# -- 7. multipart without its boundary (catalogue 83) -----------------------------------------

NO_BOUNDARY = (
    "From: ann@example.com",
    "Subject: scan",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="never-used"',
)


def test_a_lone_base64_part_under_a_missing_boundary_is_decoded_by_its_headers() -> None:
    body = (
        b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes("Der Drucker im 2. Stock ist kaputt, bitte prüfen.\n".encode())
    )
    parsed = parse_message(mail(*NO_BOUNDARY, body=body))
    assert parsed.body_text == "Der Drucker im 2. Stock ist kaputt, bitte prüfen."
    assert any("boundary" in d for d in parsed.defects)


def test_a_lone_quoted_printable_part_under_a_missing_boundary_is_decoded() -> None:
    body = (
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable"
        b"\r\n\r\nGr=FC=DFe aus M=FCnchen, der Server ist wieder da.\r\n"
    )
    parsed = parse_message(mail(*NO_BOUNDARY, body=body))
    assert parsed.body_text == "Grüße aus München, der Server ist wieder da."


def test_a_lone_base64_attachment_under_a_missing_boundary_is_an_attachment() -> None:
    body = (
        b'Content-Type: application/pdf; name="invoice.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="invoice.pdf"\r\n\r\n'
        + base64.encodebytes(b"%PDF-1.4 fake")
    )
    parsed = parse_message(mail(*NO_BOUNDARY, body=body))
    assert [(a.filename, a.data) for a in parsed.attachments] == [("invoice.pdf", b"%PDF-1.4 fake")]


def test_a_base64_payload_on_the_multipart_itself_is_decoded() -> None:
    raw = mail(*NO_BOUNDARY, "Content-Transfer-Encoding: base64", body=base64.encodebytes(b"Plain words.\n"))
    assert parse_message(raw).body_text == "Plain words."


def test_text_without_part_headers_under_a_missing_boundary_stays_as_written() -> None:
    parsed = parse_message(mail(*NO_BOUNDARY, body=b"Just text, no parts.\r\n"))
    assert parsed.body_text == "Just text, no parts."


# -- 4. alternatives that disagree (catalogue 80) -----------------------------------------------


def alternative(plain: str, html: str) -> bytes:
    return mail(
        "From: Ann Lee <ann@example.com>",
        "Subject: contract",
        "Message-ID: <alt-1@example.com>",
        "MIME-Version: 1.0",
        'Content-Type: multipart/alternative; boundary="alt"',
        body=(
            b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + plain.encode() + b"\r\n"
            b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n"
            b"--alt--\r\n"
        ),
    )


DISAGREEING = alternative(
    "Please renew the contract.",
    "<p>Please renew the contract.</p><p>The new price is 120 EUR per seat, from April.</p>"
    "<p>Regards, Ann Lee, Procurement</p>",
)


def test_html_with_text_the_plain_part_lacks_is_the_readable_body() -> None:
    parsed = parse_message(DISAGREEING)
    assert "Please renew the contract." in parsed.body_text
    assert "The new price is 120 EUR per seat, from April." in parsed.body_text
    assert "Regards, Ann Lee, Procurement" in parsed.body_text


def test_the_plain_alternative_the_body_does_not_show_is_kept_as_a_part() -> None:
    parsed = parse_message(DISAGREEING)
    [part] = parsed.attachments
    assert part.content_type == "text/plain"
    assert part.data.decode() == "Please renew the contract."


def test_alternatives_that_agree_keep_the_plain_body_and_add_no_part() -> None:
    parsed = parse_message(
        alternative(
            "Please renew the contract.\nhttps://example.com/c/1",
            '<p>Please <b>renew</b> the <a href="https://example.com/c/1">contract</a>.</p>'
            '<img src="cid:logo" alt="Example Ltd logo">',
        )
    )
    assert parsed.body_text == "Please renew the contract.\nhttps://example.com/c/1"
    assert parsed.attachments == []


def test_a_poll_shows_the_html_only_text_and_stores_the_plain_alternative(setup) -> None:  # noqa: F811
    assert setup.add().exit_code == 0
    setup.dovecot.append(setup.user, DISAGREEING)
    assert setup.invoke("poll").exit_code == 0
    [ticket] = tickets(setup)
    shown = setup.invoke("tickets", "show", str(ticket["id"]), "--json")
    assert shown.exit_code == 0, shown.output
    [message] = json.loads(shown.stdout)["messages"]
    assert "The new price is 120 EUR per seat, from April." in message["body_text"]
    [att] = message["attachments"]
    assert att["content_type"] == "text/plain"
    assert Path(att["path"]).read_bytes() == b"Please renew the contract."


def test_when_each_alternative_has_its_own_text_the_longer_is_the_body_and_the_other_a_part() -> None:
    parsed = parse_message(
        alternative(
            "Hello Ann,\nthe invoice for March is attached; please pay it by Friday.\nBest, Bo",
            "<p>Greetings from the finance team in Oslo</p>",
        )
    )
    assert parsed.body_text.startswith("Hello Ann,")
    [part] = parsed.attachments
    assert part.content_type == "text/html" and b"finance team in Oslo" in part.data


# -- 2. Japanese mail with the wrong label or none (catalogue 78) -------------------------------

JIS_BODY = "お世話になっております。会議の件、承知しました。\n"


def test_a_raw_shift_jis_subject_and_display_name_without_any_label_are_read() -> None:
    raw = mail(
        b"From: " + "山田 花子".encode("cp932") + b" <hanako@example.jp>",
        b"Subject: " + "会議の件について".encode("cp932"),
    )
    parsed = parse_message(raw)
    assert parsed.subject == "会議の件について"
    assert (parsed.from_name, parsed.from_address) == ("山田 花子", "hanako@example.jp")


def test_a_raw_shift_jis_subject_in_a_mail_whose_body_is_iso_2022_jp_is_read() -> None:
    raw = mail(
        "From: a@example.com",
        b"Subject: " + "見積もりのお願い".encode("cp932"),
        "Content-Type: text/plain; charset=iso-2022-jp",
        body=JIS_BODY.encode("iso2022_jp"),
    )
    parsed = parse_message(raw)
    assert parsed.subject == "見積もりのお願い"
    assert parsed.body_text == JIS_BODY.strip()


def test_an_encoded_word_labelled_iso_2022_jp_that_holds_shift_jis_is_read() -> None:
    word = base64.b64encode("請求書を送ります".encode("cp932")).decode()
    parsed = parse_message(mail("From: a@example.com", f"Subject: =?ISO-2022-JP?B?{word}?="))
    assert parsed.subject == "請求書を送ります"


def test_euc_jp_labelled_shift_jis_is_read() -> None:
    raw = mail(
        "From: a@example.com",
        "Content-Type: text/plain; charset=shift_jis",
        body=JIS_BODY.encode("euc_jp"),
    )
    assert parsed_body(raw) == JIS_BODY.strip()


def parsed_body(raw: bytes) -> str:
    return parse_message(raw).body_text


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain; charset=us-ascii", "text/plain; charset=iso-8859-1"],
    ids=["no-charset", "us-ascii", "iso-8859-1"],
)
def test_an_iso_2022_jp_body_is_recognised_by_its_escape_sequences_whatever_the_label(
    content_type: str,
) -> None:
    raw = mail("From: a@example.com", f"Content-Type: {content_type}", body=JIS_BODY.encode("iso2022_jp"))
    parsed = parse_message(raw)
    assert parsed.body_text == JIS_BODY.strip()
    assert any("ISO-2022-JP" in d for d in parsed.defects)


def test_a_raw_iso_2022_jp_subject_keeps_its_escape_bytes_until_decoded() -> None:
    raw = mail("From: a@example.com", b"Subject: " + "至急：サーバ停止".encode("iso2022_jp"))
    assert parse_message(raw).subject == "至急：サーバ停止"


# -- 3. short undeclared 8-bit text (catalogue 79) ---------------------------------------------

SHORT_TEXTS = [
    ("тест тест", "koi8_r"),
    ("Счёт оплачен", "koi8_r"),
    ("Добрый день", "cp1251"),
    ("Ошибка сервера", "cp1251"),
    ("Καλημέρα σας", "cp1253"),
    ("Ευχαριστώ πολύ", "cp1253"),
    ("äöüß ad asd", "latin-1"),
    ("Grüße aus München", "cp1252"),
    ("Café crème, s'il vous plaît", "cp1252"),
    ("Příliš žluťoučký kůň", "cp1250"),
    ("Zażółć gęślą jaźń", "cp1250"),
    ("Zażółć gęślą jaźń", "iso8859_2"),
    ("Toplantı yarın saat üçte", "cp1254"),
    ("Şirket müdürü", "cp1254"),
    ("שלום עולם", "cp1255"),
    ("תודה רבה", "cp1255"),
    ("测试邮件", "gb18030"),
    ("你好，世界", "gb18030"),
    ("請確認訂單", "cp950"),
    ("ありがとう", "cp932"),
    ("会議の件", "euc_jp"),
    ("안녕하세요", "cp949"),
]


@pytest.mark.parametrize(("text", "codec"), SHORT_TEXTS, ids=[f"{c}-{t}" for t, c in SHORT_TEXTS])
def test_a_short_unlabelled_subject_is_read_in_its_charset(text: str, codec: str) -> None:
    parsed = parse_message(mail("From: a@example.com", b"Subject: " + text.encode(codec)))
    assert parsed.subject == text


@pytest.mark.parametrize(("text", "codec"), SHORT_TEXTS, ids=[f"{c}-{t}" for t, c in SHORT_TEXTS])
def test_a_short_body_without_a_charset_is_read_in_its_charset(text: str, codec: str) -> None:
    raw = mail("From: a@example.com", "Subject: x", "Content-Type: text/plain", body=text.encode(codec))
    assert parsed_body(raw) == text


def test_utf_8_is_tried_first() -> None:
    raw = mail("From: a@example.com", "Subject: x", "Content-Type: text/plain", body="тест".encode())
    assert parsed_body(raw) == "тест"


@pytest.mark.parametrize(
    "context",
    ["From: jan@example.sk", "From: jan@example.com\r\nContent-Language: cs"],
    ids=["sender-domain", "content-language"],
)
def test_what_the_rest_of_the_message_says_settles_an_ambiguous_text(context: str) -> None:
    # "Kováč" in cp1250 reads "Kováè" in cp1252: only the sender's country or language tells.
    raw = mail(context, "Subject: x", "Content-Type: text/plain", body="Ján Kováč".encode("cp1250"))
    assert parsed_body(raw) == "Ján Kováč"


def test_another_parts_charset_settles_an_unlabelled_part() -> None:
    raw = mail(
        "From: a@example.com",
        'Content-Type: multipart/mixed; boundary="b"',
        body=(
            b"--b\r\nContent-Type: text/plain\r\n\r\n" + "Ján Kováč".encode("cp1250") + b"\r\n"
            b"--b\r\nContent-Type: text/plain; charset=windows-1250\r\nContent-Disposition: attachment;"
            b' filename="n.txt"\r\n\r\n' + "Poznámka".encode("cp1250") + b"\r\n--b--\r\n"
        ),
    )
    assert parsed_body(raw) == "Ján Kováč"


def test_guessing_is_bounded_per_message_and_the_subject_still_comes_first() -> None:
    # 2,000 different 8-bit headers: only the first GUESSES_PER_MESSAGE are weighed, the rest
    # fall back to windows-1252; the Subject, decoded first, is read right.
    from mail2ticket.parse import charguess

    junk = [f"X-Note-{n}: ".encode() + "тест".encode("koi8_r") + str(n).encode() for n in range(2000)]
    raw = mail("From: a@example.com", b"Subject: " + "Счёт оплачен".encode("koi8_r"), *junk)
    assert parse_message(raw).subject == "Счёт оплачен"
    with charguess.per_message():
        answers = [charguess.guess("тест".encode("koi8_r") + str(n).encode()) for n in range(400)]
    assert sum(a is not None for a in answers) == charguess.GUESSES_PER_MESSAGE


def test_the_large_message_path_picks_the_same_alternative(tmp_path: Path) -> None:
    limits = ParseLimits(max_message_bytes=200 * MiB, max_attachment_bytes=200 * MiB)
    plain = ("A very long log line that the customer pasted into the mail.\n" * 40_000).encode()
    raw = alternative("", "").replace(
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(plain),
    ).replace(
        b"Content-Type: text/html; charset=utf-8\r\n\r\n\r\n",
        b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>Our printer stopped after the update yesterday</p>\r\n",
    )
    path = tmp_path / "big.eml"
    path.write_bytes(raw)
    answer = bigmessage.parse_file(
        lambda b: parse_message(b, limits=limits), AttachmentStore(tmp_path / "files"), str(path), limits
    )
    reference = parse_message(raw, limits=limits)
    assert answer.error is None, answer
    parsed = answer.parsed
    assert parsed.body_text[:2000] == reference.body_text[:2000]
    assert [a.filename for a in parsed.attachments] == [a.filename for a in reference.attachments]
