"""Ticket actions that mail the requester: replies, close and reopen notices, reply-all limits."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from mail2ticket.config.conversations import conversation_settings
from mail2ticket.config.model import Config
from mail2ticket.errors import Mail2TicketError
from mail2ticket.outgoing.compose import (
    Draft,
    base_subject,
    build,
    check_address,
    header_text,
    render,
    tagged_subject,
)
from mail2ticket.outgoing.outbox import account_for, queue, template_values, threading_headers
from mail2ticket.tickets.db import current_user, get_ticket, log_event, now_iso, transaction
from mail2ticket.tickets.messages import insert_message, store_raw
from mail2ticket.tickets.threading import participant_list
from mail2ticket.tickets.tickets import record_first_response, set_status

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database


def _other_participants(cfg: Config, db: Database, ticket: dict) -> list[str]:
    """Everyone else who took part in the ticket (threader.participant_list), in order; never our
    accounts, never an address that cannot be mailed."""

    ours = {a.email.lower() for a in cfg.accounts}
    skip = ours | {(ticket["requester"] or "").lower()}
    found: list[str] = []
    for address in participant_list(db, ticket["id"]):
        if not address or address in skip:
            continue
        try:
            check_address(address)
        except ValueError:
            continue
        found.append(address)
    return found


def check_reply_all(cfg: Config, db: Database, ticket_id: int, *, yes: bool = False) -> int:
    """The number of recipients of 'tickets reply --all' on the ticket; Mail2TicketError when it is
    over [conversations] reply_all_limit and ``yes`` is not given (item 57)."""
    ticket = get_ticket(db, ticket_id)
    count = 1 + len(_other_participants(cfg, db, ticket))
    limit = conversation_settings(cfg)["reply_all_limit"]
    if count > limit and not yes:
        raise Mail2TicketError(
            f"ticket #{ticket_id}: reply --all would go to {count} recipients, more than "
            f"reply_all_limit = {limit}; nothing sent",
            "add --yes to send it to all of them, or reply without --all",
        )
    return count


def queue_reply(
    cfg: Config, db: Database, ticket_id: int, text: str, *, to_all: bool = False,
    status: str | None = None, actor: str | None = None, yes: bool = False,
) -> dict:
    """Store an agent's reply in the ticket, queue it for the requester, set the ticket status.

    Returns the outbox entry. All in one transaction: the reply is either stored and queued, or
    neither. With ``to_all``, more recipients than reply_all_limit need ``yes``.
    """
    if not text.strip():
        raise Mail2TicketError("the reply is empty: nothing sent", "write some text")
    settings = conversation_settings(cfg)
    status = status or settings["reply_status"]
    actor = actor or current_user()
    with transaction(db):
        ticket = get_ticket(db, ticket_id)
        account = account_for(cfg, ticket["account"])
        if not ticket["requester"]:
            raise Mail2TicketError(f"ticket #{ticket_id} has no requester address to answer")
        try:
            to = [check_address(ticket["requester"])]
        except ValueError:
            raise Mail2TicketError(
                f"ticket #{ticket_id}: the requester address {ticket['requester']!r} cannot be mailed"
            ) from None
        if to_all:
            check_reply_all(cfg, db, ticket_id, yes=yes)
        cc = _other_participants(cfg, db, ticket) if to_all else []
        values = template_values(cfg, ticket)
        in_reply_to, references = threading_headers(db, ticket_id)
        draft = Draft(
            from_address=account.email,
            to=to,
            cc=cc,
            subject=tagged_subject(values["tag"], base_subject(ticket["subject"], settings["tag_format"]), "Re: "),
            body=text,
            in_reply_to=in_reply_to,
            references=references,
            ticket_id=ticket_id,
        )
        raw = build(db, draft)
        sha = hashlib.sha256(raw).hexdigest()
        now = now_iso()
        store_raw(db, sha, raw, now)
        message_row = insert_message(
            db,
            {
                "ticket_id": ticket_id,
                "direction": "out",
                "account": account.name,
                "raw_sha256": sha,
                "message_id": draft.message_id,
                "in_reply_to": in_reply_to,
                "refs": json.dumps(references),
                "subject": header_text(draft.subject, 250),
                "from_address": account.email.lower(),
                "from_name": None,
                "to_addrs": json.dumps(to),
                "cc_addrs": json.dumps(cc),
                "date": now,
                "received_at": now,
                "body_text": draft.body,
                "defects": "[]",
                "thread_reason": f"reply by {actor} from the shell",
            },
        )
        row = queue(db, draft, account=account.name, kind="reply", ticket_id=ticket_id, message_row=message_row,
                    raw=raw, cfg=cfg)
        set_status(db, ticket_id, status, now)
        record_first_response(db, ticket_id, now)
        log_event(db, "replied", f"reply to {', '.join(draft.recipients)}; status {status}",
                  ticket_id=ticket_id, account=account.name, actor=actor)
        if ticket["status"] != status:  # the hooks' ticket.status event (docs/hooks.md)
            log_event(db, "status", f"{ticket['status']} -> {status} by a reply", ticket_id=ticket_id,
                      account=account.name, actor=actor)
    return row


def change_status(
    cfg: Config, db: Database, ticket_id: int, status: str, *, notify: bool = False, actor: str | None = None,
) -> dict | None:
    """Close or reopen a ticket; with ``notify``, queue a notice to the requester (same transaction).

    Returns the outbox entry of the notice, or None.
    """
    kind = {"closed": "close", "open": "reopen"}[status]
    actor = actor or current_user()
    with transaction(db):
        ticket = get_ticket(db, ticket_id)
        now = now_iso()
        set_status(db, ticket_id, status, now)
        log_event(db, "closed" if status == "closed" else "reopened", f"by {actor}",
                  ticket_id=ticket_id, account=ticket["account"], actor=actor)
        if not notify:
            return None
        account = account_for(cfg, ticket["account"])
        if not ticket["requester"]:
            raise Mail2TicketError(f"ticket #{ticket_id} has no requester address to notify")
        settings = conversation_settings(cfg)
        values = template_values(cfg, ticket)
        in_reply_to, references = threading_headers(db, ticket_id)
        draft = Draft(
            from_address=account.email,
            to=[check_address(ticket["requester"])],
            subject=tagged_subject(values["tag"], render(settings[f"{kind}_subject"], values)),
            body=render(settings[f"{kind}_body"], values),
            in_reply_to=in_reply_to,
            references=references,
            auto_submitted="auto-generated",
            ticket_id=ticket_id,
        )
        row = queue(db, draft, account=account.name, kind=kind, ticket_id=ticket_id, cfg=cfg)
        if row["status"] == "held":
            return row
        log_event(db, f"{kind}-notice-queued", f"notice to {row['to_address']} ({row['message_id']})",
                  ticket_id=ticket_id, account=account.name, actor=actor)
        return row
