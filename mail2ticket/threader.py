"""Decide which ticket an incoming message belongs to: headers first, then a subject tag."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from sqlite_utils import Database

from mail2ticket.parse import ParsedMessage

log = logging.getLogger(__name__)
DEFAULT_TAG_RE = re.compile(r"\[#(\d+)\]")


@dataclass
class ThreadDecision:
    ticket_id: int | None  # None: open a new ticket
    reason: str


def ticket_tag(ticket_id: int) -> str:
    return f"[#{ticket_id}]"


def is_participant(db: Database, ticket_id: int, address: str | None) -> bool:
    """The requester, or anyone who sent or received a message of the ticket."""
    if not address:
        return False
    address = address.lower()
    row = next(iter(db.query("select requester from tickets where id = ?", [ticket_id])), None)
    if row is None:
        return False
    if (row["requester"] or "").lower() == address:
        return True
    for m in db.query(
        "select from_address, to_addrs, cc_addrs from messages where ticket_id = ?", [ticket_id]
    ):
        if (m["from_address"] or "").lower() == address:
            return True
        for field in ("to_addrs", "cc_addrs"):
            if address in (a.lower() for a in json.loads(m[field] or "[]")):
                return True
    return False


def find_ticket(
    db: Database, parsed: ParsedMessage, *, allow_anyone_by_tag: bool = False
) -> ThreadDecision:
    """The ticket this message follows up, with the reason; or a new ticket, with the reason."""
    ids = list(dict.fromkeys(parsed.in_reply_to + list(reversed(parsed.references))))
    if ids:
        marks = ",".join("?" * len(ids))
        rows = list(
            db.query(
                f"select ticket_id, message_id from messages where message_id in ({marks}) "
                "order by id desc limit 1",
                ids,
            )
        )
        if rows:
            header = "In-Reply-To" if rows[0]["message_id"] in parsed.in_reply_to else "References"
            return ThreadDecision(
                rows[0]["ticket_id"], f"{header} names {rows[0]['message_id']} of ticket #{rows[0]['ticket_id']}"
            )
    match = DEFAULT_TAG_RE.search(parsed.subject or "")
    if match:
        ticket_id = int(match.group(1))
        exists = next(iter(db.query("select id from tickets where id = ?", [ticket_id])), None)
        if exists is None:
            return ThreadDecision(None, f"subject tag [#{ticket_id}] names no ticket: new ticket")
        if allow_anyone_by_tag or is_participant(db, ticket_id, parsed.from_address):
            return ThreadDecision(ticket_id, f"subject tag [#{ticket_id}] from a participant")
        log.warning(
            "subject tag [#%s] from %s, who is not a participant of that ticket: new ticket",
            ticket_id,
            parsed.from_address,
        )
        return ThreadDecision(
            None, f"subject tag [#{ticket_id}] from a non-participant ({parsed.from_address}): new ticket"
        )
    return ThreadDecision(None, "new conversation")
