"""Large messages in bounded memory (issue 9): the parser that reads a message from a file.

bigmessage.parse_file replaces each large leaf body by a marker, parses the small skeleton with
parse_message and decodes the large bodies in chunks straight into the attachment store.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
from pathlib import Path

from mail2ticket import bigmessage
from mail2ticket.attachments import AttachmentStore
from mail2ticket.parse import ParseLimits, parse_message

MiB = 1024 * 1024
PEAK_LIMIT_KIB = 150 * 1000 * 1000 // 1024  # the target: 150 MB, whatever the attachment sizes
ATTACHMENT = 50 * MiB


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the parser, without a server


def _message(*parts: tuple[bytes, bytes]) -> bytes:
    body = b"".join(
        b"--XyZ\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts
    )
    return (
        b"From: a@example.org\r\nTo: b@example.test\r\nSubject: parts\r\nMessage-ID: <p@x>\r\n"
        b'Content-Type: multipart/mixed; boundary="XyZ"\r\n\r\n' + body + b"--XyZ--\r\n"
    )


LIMITS = ParseLimits(max_message_bytes=200 * MiB, max_attachment_bytes=200 * MiB)


def _parse_file(tmp_path: Path, raw: bytes, limits: ParseLimits = LIMITS) -> tuple:
    path = tmp_path / "message.eml"
    path.write_bytes(raw)
    store = AttachmentStore(tmp_path / "files")
    return bigmessage.parse_file(
        lambda b: parse_message(b, limits=limits), store, str(path), limits
    )


def test_the_file_parser_gives_what_parse_message_gives(tmp_path: Path) -> None:
    rng = random.Random(3)
    binary = rng.randbytes(3 * MiB)
    text = ("une ligne de texte accentuée\n" * 80_000).encode("latin-1")
    import binascii

    raw = _message(
        (b"Content-Type: text/plain; charset=utf-8", b"Hello, the files."),
        (
            b'Content-Type: application/pdf; name="a.pdf"\r\nContent-Transfer-Encoding: base64',
            base64.encodebytes(binary).replace(b"\n", b"\r\n").rstrip(),
        ),
        (
            b'Content-Type: text/csv; charset=latin-1\r\nContent-Disposition: attachment; filename="t.csv"\r\n'
            b"Content-Transfer-Encoding: quoted-printable",
            binascii.b2a_qp(text),
        ),
        (
            b'Content-Type: application/octet-stream; name="small.bin"\r\nContent-Transfer-Encoding: base64',
            base64.b64encode(b"tiny"),
        ),
    )
    answer = _parse_file(tmp_path, raw)
    reference = parse_message(raw, limits=LIMITS)

    assert answer[0] == "ok", answer
    parsed = answer[1]
    assert parsed.body_text == reference.body_text and parsed.subject == reference.subject
    assert parsed.defects == reference.defects
    assert [(a.filename, a.content_type, a.size, a.sha256) for a in parsed.attachments] == [
        (a.filename, a.content_type, a.size, a.sha256) for a in reference.attachments
    ]
    for att, ref in zip(parsed.attachments, reference.attachments, strict=True):
        assert att.path.read_bytes() == ref.data


def test_a_huge_text_body_is_shown_cut_with_a_defect(tmp_path: Path) -> None:
    text = "Grüße, eine Zeile\n" * 300_000
    raw = _message(
        (
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64",
            base64.encodebytes(text.encode()).rstrip(),
        )
    )

    answer = _parse_file(tmp_path, raw)

    assert answer[0] == "ok", answer
    parsed = answer[1]
    assert text.startswith(parsed.body_text) and 0.9 * MiB < len(parsed.body_text.encode()) <= MiB
    assert any("too long to show" in d for d in parsed.defects)


def test_what_the_file_parser_cannot_reduce_is_an_error_not_a_crash(
    tmp_path: Path, monkeypatch
) -> None:
    inner = (
        b"From: x@example.org\r\nSubject: inner\r\n\r\n"
        + b"line of a forwarded message\r\n" * 100_000
    )
    raw = _message((b"Content-Type: message/rfc822", inner))
    monkeypatch.setattr(bigmessage, "SKELETON_MAX", 1 * MiB)

    answer = _parse_file(tmp_path, raw)

    assert answer[0] == "error" and "cannot be streamed" in answer[1]
    limited = _parse_file(
        tmp_path,
        _message(
            (
                b'Content-Type: application/zip; name="z.zip"\r\nContent-Transfer-Encoding: base64',
                base64.encodebytes(os.urandom(2 * MiB)),
            )
        ),
        ParseLimits(max_message_bytes=200 * MiB, max_attachment_bytes=MiB),
    )
    assert limited[0] == "error" and "max_attachment_bytes" in limited[1]
    assert not list((tmp_path / "files" / "tmp").glob("*"))


def test_an_unparseable_large_message_is_quarantined_with_its_raw_bytes(
    tmp_path: Path, monkeypatch
) -> None:
    from mail2ticket.bigmessage import Spool
    from mail2ticket.importer import ImportContext, Incoming, Source, import_batch
    from mail2ticket.store import open_db

    inner = (
        b"From: x@example.org\r\nSubject: inner\r\n\r\n"
        + b"line of a forwarded message\r\n" * 100_000
    )
    raw = _message((b"Content-Type: message/rfc822", inner))
    monkeypatch.setattr(bigmessage, "SKELETON_MAX", 1 * MiB)
    path = tmp_path / "spool.tmp"
    path.write_bytes(raw)
    db = open_db(tmp_path / "m2t.db")
    ctx = ImportContext(db=db, attachments=AttachmentStore(tmp_path / "files"))
    item = Incoming(
        "acct",
        None,
        Source("acct", "INBOX", 1, 7),
        action="seen",
        spool=Spool(str(path), len(raw), _sha(raw)),
        size=len(raw),
    )

    [outcome] = import_batch(ctx, [item])

    assert outcome.status == "quarantined" and outcome.flag_on_server
    stored = db.execute("select raw from raw_messages where sha256 = ?", [_sha(raw)]).fetchone()[0]
    assert stored == raw
    assert db.execute("select size, reason from quarantine").fetchone() == (len(raw), "unparseable")
