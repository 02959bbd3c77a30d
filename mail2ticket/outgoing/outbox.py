"""The outbox: mail is queued in the transaction that caused it, then sent with retries.

A mail is marked sent only once the server answered 250 to DATA. A sender claims a mail before
sending it; a crash between the server's 250 and the update leaves the claim of a dead process,
so the mail is sent once more, byte for byte the same (same Message-ID): at most one repeat.
Why never twice otherwise, with several daemons too: tickets/mailqueue.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from mail2ticket.config.conversations import conversation_settings
from mail2ticket.config.model import Config
from mail2ticket.errors import NotFoundError
from mail2ticket.outgoing.compose import (
    Draft,
    base_subject,
    build,
    check_address,
    header_text,
    render,
    tagged_subject,
)
from mail2ticket.outgoing.loops import AUTOMATIC_KINDS, hold_reason
from mail2ticket.tickets.db import get_ticket, log_event, now_iso
from mail2ticket.tickets.ids import make_tag
from mail2ticket.tickets.mailqueue import get_entry, insert_entry
from mail2ticket.tickets.threading import thread_parent

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)

UNSENT = ("queued", "sending", "failed", "held")


# --- loop protection ---------------------------------------------------------------------------


# --- queueing ----------------------------------------------------------------------------------


def queue(
    db: Database, draft: Draft, *, account: str, kind: str, ticket_id: int | None,
    message_row: int | None = None, raw: bytes | None = None, cfg: Config = None,
) -> dict:
    """Put a mail in the outbox; call inside the caller's transaction.

    ``raw``: the bytes of a reply already stored in raw_messages with its messages row. Without,
    the mail is built here and its bytes are kept in the outbox row (acknowledgements, notices:
    raw_messages holds only mail that is a message of a ticket).

    Automatic mail (AUTOMATIC_KINDS) that hold_reason() stops is kept with status 'held' and the
    reason in last_error (an event 'mail-held' on the ticket); it is sent only by 'outbox retry'.
    For other mail (a person's reply) the returned row has the reason as 'warning'.
    ``cfg``: the limits of [conversations]; without it, the defaults.
    """
    own = raw is None
    why = hold_reason(cfg, db, to_address=draft.to[0], ticket_id=ticket_id)
    held = why is not None and kind in AUTOMATIC_KINDS
    if raw is None:
        raw = build(db, draft)
    sha = hashlib.sha256(raw).hexdigest()
    now = now_iso()
    row_id = insert_entry(
        db,
        {
            "ticket_id": ticket_id,
            "message": message_row,
            "account": account,
            "kind": kind,
            "mail_from": draft.from_address,
            "recipients": json.dumps(draft.recipients),
            "to_address": draft.to[0].lower(),
            "message_id": draft.message_id,
            "subject": header_text(draft.subject, 250),
            "raw_sha256": sha,
            "raw": raw if own else None,
            "status": "held" if held else "queued",
            "attempts": 0,
            "created_at": now,
            "last_error": why if held else None,
        },
    )
    entry = get_entry(db, row_id)
    if held:
        log_event(db, "mail-held", f"{kind} to {entry['to_address']} not sent: {why}", ticket_id=ticket_id,
                  account=account)
        log.warning("outbox #%s: %s to %s held back: %s", row_id, kind, entry["to_address"], why)
    elif why is not None:
        entry["warning"] = why
        log.warning("outbox #%s: %s to %s is sent although: %s", row_id, kind, entry["to_address"], why)
    return entry


def account_for(cfg: Config, name: str) -> Any:
    account = next((a for a in cfg.accounts if a.name == name), None)
    if account is None:
        raise NotFoundError(
            f"the ticket's account {name!r} is not in the config any more",
            "add it back (its SMTP server is needed to send)",
        )
    return account


def template_values(cfg: Config, ticket: dict) -> dict[str, Any]:
    settings = conversation_settings(cfg)
    return {
        "ticket": ticket["id"],
        "tag": make_tag(settings["tag_format"], ticket["id"]),
        "subject": header_text(base_subject(ticket["subject"], settings["tag_format"]), 120),
        "requester": ticket.get("requester") or "",
        "account": ticket.get("account") or "",
    }


def queue_ack(cfg: Config, db: Database, ticket_id: int, message_row: int, parsed: Any) -> dict:
    """The acknowledgement of a new ticket: threaded with the customer's mail, RFC 3834 marked."""
    ticket = get_ticket(db, ticket_id)
    account = account_for(cfg, ticket["account"])
    settings = conversation_settings(cfg)
    values = template_values(cfg, ticket)
    draft = Draft(
        from_address=account.email,
        to=[check_address(parsed.from_address)],
        subject=tagged_subject(values["tag"], render(settings["ack_subject"], values)),
        body=render(settings["ack_body"], values),
        in_reply_to=parsed.message_id,
        references=[*parsed.references, *([parsed.message_id] if parsed.message_id else [])],
        auto_submitted="auto-replied",
        ticket_id=ticket_id,
    )
    row = queue(db, draft, account=account.name, kind="ack", ticket_id=ticket_id, cfg=cfg)
    if row["status"] == "held":
        return row
    log_event(db, "ack-queued", f"acknowledgement to {row['to_address']} ({row['message_id']})",
              ticket_id=ticket_id, account=account.name)
    return row


def threading_headers(db: Database, ticket_id: int) -> tuple[str | None, list[str]]:
    parent = thread_parent(db, ticket_id)
    if parent is None:
        return None, []
    refs = json.loads(parent["refs"] or "[]")
    return parent["message_id"], [*refs, parent["message_id"]]


# --- sending -----------------------------------------------------------------------------------


