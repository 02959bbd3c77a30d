"""Re-derive stored messages from their raw bytes with the current parser (after an upgrade)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from sqlite_utils import Database

from mail2ticket.attachments import AttachmentStore
from mail2ticket.config import Config
from mail2ticket.importer import ImportContext
from mail2ticket.store import get_raw, log_event, transaction

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
        "to_addrs": json.dumps(parsed.to),
        "cc_addrs": json.dumps(parsed.cc),
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
        for r in db.query("select * from attachments where message = ? order by position", [message])
    ]


def reparse(cfg: Config, db: Database, *, ticket_ids: list[int] | None = None,
            dry_run: bool = False) -> ReparseReport:
    """Parse each incoming message of the given tickets (or all) again and update what differs.

    Nothing is fetched and nothing is changed on any server; no ticket is created or merged. A
    message the current parser cannot read is left as it was and reported.
    """
    ctx = ImportContext(db=db, attachments=AttachmentStore(cfg.attachments), config=cfg, acknowledge=False)
    store = ctx.attachments
    sql = "select * from messages where direction = 'in' and raw_sha256 is not null"
    params: list = []
    if ticket_ids:
        sql += f" and ticket_id in ({','.join('?' * len(ticket_ids))})"
        params = list(ticket_ids)
    report = ReparseReport()
    for row in list(db.query(sql + " order by id", params)):
        report.messages += 1
        raw = get_raw(db, row["raw_sha256"])
        if raw is None:
            report.failed[row["id"]] = "raw bytes missing"
            continue
        try:
            parsed = ctx.parse(raw)
        except Exception as exc:  # ParseError, or a parser bug: the stored row stays as it was
            report.failed[row["id"]] = f"{exc.__class__.__name__}: {exc}"
            continue
        new = _derived(parsed)
        changes = [k for k in DERIVED if (row.get(k) or None) != (new[k] or None)]
        new_atts = [
            (i, a.filename, a.content_type, a.size, a.sha256, a.content_id, a.disposition)
            for i, a in enumerate(parsed.attachments)
        ]
        if new_atts != _attachment_rows(db, row["id"]):
            changes.append("attachments")
        if not changes:
            continue
        report.changed.append(row["id"])
        if dry_run:
            continue
        stored = [store.put(a.data) for a in parsed.attachments]  # durable before the commit
        with transaction(db):
            db.execute(
                f"update messages set {', '.join(f'{k} = ?' for k in DERIVED)} where id = ?",
                [new[k] for k in DERIVED] + [row["id"]],
            )
            if "attachments" in changes:
                db.execute("delete from attachments where message = ?", [row["id"]])
                for (i, a), (sha, rel) in zip(enumerate(parsed.attachments), stored, strict=True):
                    db["attachments"].insert({
                        "message": row["id"], "position": i, "filename": a.filename,
                        "original_filename": getattr(a, "original_filename", None),
                        "content_type": a.content_type, "size": a.size, "sha256": sha, "path": rel,
                        "content_id": a.content_id, "disposition": a.disposition,
                    })
            first = db.execute(
                "select min(id) from messages where ticket_id = ? and direction = 'in'", [row["ticket_id"]]
            ).fetchone()[0]
            if first == row["id"]:  # the ticket's own fields came from this message, unless edited since
                db.execute(
                    "update tickets set subject = case when subject = ? then ? else subject end, "
                    "requester = coalesce(?, requester), "
                    "requester_name = coalesce(?, requester_name) where id = ?",
                    [row["subject"] or "(no subject)", parsed.subject or "(no subject)",
                     parsed.from_address, parsed.from_name, row["ticket_id"]],
                )
            log_event(db, "reparsed", f"message {row['id']}: {', '.join(changes)} re-derived",
                      ticket_id=row["ticket_id"], account=row["account"])
    return report
