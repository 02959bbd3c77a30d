"""The importer asks the ledger once per batch (BatchLookups, issue 19.6): the same outcomes and
the same rows as asking once per message, for the awkward batches too (the same bytes or the same
server message twice in one batch, a message already imported or quarantined by an earlier batch,
one message that fails to store and goes to the quarantine instead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mail2ticket.errors import ParseError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.intake import importer
from mail2ticket.intake.importer import ImportContext, Incoming, Source, import_batch
from mail2ticket.parse.message import parse_message
from tests.helpers import connect, open_store


def _mail(n: int, body: str = "hello") -> bytes:
    return (
        f"From: Customer {n} <c{n}@example.org>\r\nTo: desk@example.com\r\nSubject: case {n}\r\n"
        f"Message-ID: <case-{n}@example.org>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\n{body} {n}\r\n"
    ).encode()


BROKEN = b"From: x@example.org\r\nSubject: BROKEN\r\n\r\nnot for the parser\r\n"


def _parse(raw: bytes):
    if b"BROKEN" in raw:
        raise ParseError("the test's parser refuses this message")
    return parse_message(raw)


def _in(uid: int, raw: bytes, folder: str = "INBOX") -> Incoming:
    return Incoming("desk", raw, Source("desk", folder, 7, uid), action="seen")


BATCHES = [
    [_in(1, _mail(1)), _in(2, BROKEN)],
    [
        _in(3, _mail(1)),  # bytes imported by the batch before
        _in(4, BROKEN),  # bytes in the quarantine since the batch before
        _in(1, _mail(1)),  # a server message of the batch before
        _in(5, _mail(5)),  # new
        _in(6, _mail(5)),  # the same bytes again, in this batch
        _in(7, _mail(7)),  # the same server message twice in this batch
        _in(7, _mail(7)),
        _in(8, _mail(8), folder="Other"),  # another folder in the same batch
        _in(9, _mail(9)),  # its row fails to store: quarantined instead (see _failing_message)
        _in(10, BROKEN),  # bytes in the quarantine, twice in this batch
        _in(11, BROKEN),
    ],
]


def _failing_message(db, outcome, parsed) -> None:
    if parsed.subject == "case 9":
        raise ValueError("a step after storing failed")


def _import(tmp_path: Path) -> tuple[list[list[tuple]], dict[str, list[tuple]]]:
    db = open_store(tmp_path)
    ctx = ImportContext(db=db, attachments=AttachmentStore(tmp_path / "files"), parse=_parse,
                        hooks=[_failing_message])
    outcomes = []
    for batch in BATCHES:
        items = [Incoming(i.account, i.raw, i.source, action=i.action) for i in batch]
        outcomes.append([(o.status, o.ticket_id, o.message_row, o.quarantine_id, o.detail)
                         for o in import_batch(ctx, items)])
    db.close()
    with connect(tmp_path) as conn:
        tables = {
            "sources": conn.execute("select account, folder, uidvalidity, uid, raw_sha256, message, quarantine, "
                                    "action, action_state from sources order by id").fetchall(),
            "messages": conn.execute("select id, ticket_id, raw_sha256, subject, ack_reason from messages "
                                     "order by id").fetchall(),
            "quarantine": conn.execute("select id, uid, raw_sha256, reason, error, resolved_at from quarantine "
                                       "order by id").fetchall(),
            "tickets": conn.execute("select id, subject, status from tickets order by id").fetchall(),
            "raw": conn.execute("select sha256 from raw_messages order by sha256").fetchall(),
        }
    return outcomes, tables


class _PerMessage(importer.BatchLookups):
    """The look-ups as they were: every question asked of the database, per message."""

    def __init__(self, db, prepared):
        super().__init__(db, [])


def test_one_query_per_batch_gives_the_outcomes_and_rows_of_one_query_per_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batched = _import(tmp_path / "batched")
    monkeypatch.setattr(importer, "BatchLookups", _PerMessage)
    per_message = _import(tmp_path / "per-message")

    assert batched == per_message
    outcomes, tables = batched
    assert [o[0] for o in outcomes[0]] == ["imported", "quarantined"]
    assert [o[0] for o in outcomes[1]] == [
        "duplicate", "duplicate", "already", "imported", "duplicate", "imported", "already", "imported",
        "quarantined", "duplicate", "duplicate",
    ]
    assert outcomes[1][0][4] == "same bytes already imported"
    assert outcomes[1][1][4] == outcomes[1][9][4] == outcomes[1][10][4] == "already in quarantine"
    assert "could not be stored: ValueError: a step after storing failed" in outcomes[1][8][4]
    # Each server message once in the ledger; each content once as a message or an open entry.
    assert len(tables["sources"]) == 11
    assert [m[3] for m in tables["messages"]] == ["case 1", "case 5", "case 7", "case 8"]
    assert len(tables["quarantine"]) == 2
