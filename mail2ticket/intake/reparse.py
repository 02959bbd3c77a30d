"""Re-derive stored messages from their raw bytes with the current parser (after an upgrade)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mail2ticket.config.model import Config
from mail2ticket.errors import ParseError, TempFailError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.files.spool import Spool
from mail2ticket.intake.importer import ImportContext, bounded_addresses
from mail2ticket.parse.prepare import prepare
from mail2ticket.tickets.blobs import attachment_store
from mail2ticket.tickets.db import log_event, transaction
from mail2ticket.tickets.messages import (
    attachment_rows,
    first_incoming,
    incoming_messages,
    replace_attachments,
    take_stored,
    update_derived,
)
from mail2ticket.tickets.tickets import rederive_from_first_message

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)

# The message columns derived from the raw bytes; threading, ticket and account never change here.
DERIVED = ("subject", "from_address", "from_name", "to_addrs", "cc_addrs", "body_text", "body_html",
           "auto_reply", "defects", "message_id", "in_reply_to", "refs")


@dataclass
class ReparseReport:
    messages: int = 0
    changed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"messages": self.messages, "changed": self.changed,
                "failed": {str(k): v for k, v in self.failed.items()}}


def _derived(parsed) -> dict:
    return {
        "subject": parsed.subject,
        "from_address": parsed.from_address,
        "from_name": parsed.from_name,
        # At most 100 each, as at import (item 57): the raw bytes keep them all.
        "to_addrs": json.dumps(bounded_addresses(parsed, "To", parsed.to)),
        "cc_addrs": json.dumps(bounded_addresses(parsed, "Cc", parsed.cc)),
        "body_text": parsed.body_text,
        "body_html": parsed.body_html,
        "auto_reply": parsed.auto_reply,
        "defects": json.dumps(parsed.defects),
        "message_id": parsed.message_id,
        "in_reply_to": parsed.in_reply_to[0] if parsed.in_reply_to else None,
        "refs": json.dumps(parsed.references),
    }


def _attachment_rows(db: Database, message: int) -> list[tuple]:
    return [
        (r["position"], r["filename"], r["content_type"], r["size"], r["sha256"], r["content_id"], r["disposition"])
        for r in attachment_rows(db, message)
    ]


def reparse(cfg: Config, db: Database, *, ticket_ids: list[int] | None = None,
            dry_run: bool = False) -> ReparseReport:
    """Parse each incoming message of the given tickets (or all) again and update what differs.

    Nothing is fetched and nothing is changed on any server; no ticket is created or merged. A
    message the current parser cannot read is left as it was and reported.
    """
    ctx = ImportContext(db=db, attachments=attachment_store(cfg), config=cfg, acknowledge=False)
    store = ctx.attachments
    report = ReparseReport()
    for row in incoming_messages(db, ticket_ids):
        report.messages += 1
        # A large message is copied from its blob into a temp file and parsed from there in
        # bounded memory, as poll does (bigmessage); a small one is read whole.
        got = take_stored(db, row["raw_sha256"], store.root / "tmp")
        if got is None:
            report.failed[row["id"]] = "raw bytes missing"
            continue
        raw, spool = got
        try:
            _reparse_one(ctx, db, row, raw, spool, report, dry_run)
        finally:
            if spool is not None:
                spool.unlink()
    return report


def _parse_spool(ctx: ImportContext, store, spool: Spool):
    """(parsed, [(sha256, relpath) of each attachment]) of a large message, from its temp file."""
    done = prepare(ctx.parse, store, path=spool.path, limits=ctx.limits)
    if done.error is not None:
        raise ParseError(done.error)
    return done.parsed, [(sha, rel) for _index, sha, rel in done.stored]


class _Digests(AttachmentStore):
    """An attachment store that only hashes: what a large message's attachments would be, with
    nothing written (a dry run, or attachments that turn out unchanged)."""

    def put(self, data: bytes, sha256: str | None = None) -> tuple[str, str]:
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        return sha256, self.relpath(sha256)

    def put_stream(self, chunks, max_bytes: int | None = None) -> tuple[str, str, int]:
        digest = hashlib.sha256()
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise ValueError(f"more than {max_bytes} bytes")
            digest.update(chunk)
        return digest.hexdigest(), self.relpath(digest.hexdigest()), size


def _reparse_one(ctx: ImportContext, db: Database, row: dict, raw: bytes | None, spool: Spool | None,
                 report: ReparseReport, dry_run: bool) -> None:
    store = ctx.attachments
    try:
        if spool is None:
            parsed = ctx.parse(raw)
        else:
            parsed, _ = _parse_spool(ctx, _Digests(store.root), spool)
    except TempFailError:
        raise
    except Exception as exc:  # ParseError, or a parser bug: the stored row stays as it was
        report.failed[row["id"]] = f"{exc.__class__.__name__}: {exc}"
        return
    new = _derived(parsed)
    changes = [k for k in DERIVED if (row.get(k) or None) != (new[k] or None)]
    new_atts = [
        (i, a.filename, a.content_type, a.size, a.sha256, a.content_id, a.disposition)
        for i, a in enumerate(parsed.attachments)
    ]
    if new_atts != _attachment_rows(db, row["id"]):
        changes.append("attachments")
    if not changes:
        return
    report.changed.append(row["id"])
    if dry_run:
        return
    if spool is None:
        stored = [store.put(a.data) for a in parsed.attachments]  # durable before the commit
    elif "attachments" in changes:  # parsed again, the attachments written as they are decoded
        try:
            parsed, stored = _parse_spool(ctx, store, spool)
        except ParseError as exc:
            report.changed.remove(row["id"])
            report.failed[row["id"]] = f"{exc.__class__.__name__}: {exc}"
            return
    else:
        stored = [(a.sha256, store.relpath(a.sha256)) for a in parsed.attachments]
    with transaction(db):
        update_derived(db, row["id"], {k: new[k] for k in DERIVED})
        if "attachments" in changes:
            replace_attachments(db, row["id"], [
                {"position": i, "filename": a.filename, "original_filename": getattr(a, "original_filename", None),
                 "content_type": a.content_type, "size": a.size, "sha256": sha, "path": rel,
                 "content_id": a.content_id, "disposition": a.disposition}
                for (i, a), (sha, rel) in zip(enumerate(parsed.attachments), stored, strict=True)
            ])
        if first_incoming(db, row["ticket_id"]) == row["id"]:  # the ticket's fields came from it
            rederive_from_first_message(db, row["ticket_id"], old_subject=row["subject"] or "(no subject)",
                                        subject=parsed.subject or "(no subject)",
                                        requester=parsed.from_address, requester_name=parsed.from_name)
        log_event(db, "reparsed", f"message {row['id']}: {', '.join(changes)} re-derived",
                  ticket_id=row["ticket_id"], account=row["account"])
