"""Decide which ticket an incoming message belongs to: its headers first, then a subject tag."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mail2ticket.config.conversations import conversation_settings
from mail2ticket.config.model import Config
from mail2ticket.tickets.ids import (
    OUR_ID_IN_TEXT,
    is_our_message_id,
    looks_like_ours,
    make_tag,
    tag_pattern,
)

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

    # Only named in annotations; parse/autoreply is imported by _is_bounce: 'tickets show' needs
    # participants() alone, without the parser's modules.
    from mail2ticket.parse.parsed import ParsedMessage

log = logging.getLogger(__name__)
DEFAULT_TAG_FORMAT = "[#{id}]"
DEFAULT_TAG_RE = tag_pattern(DEFAULT_TAG_FORMAT)


@dataclass
class ThreadDecision:
    """Where a message goes. ``kind``: new | followup | copy (same mail seen in another mailbox)
    | report (a delivery report about our mail: filed in the ticket, status unchanged)
    | own (a mail we sent, fetched back: nothing new to store)."""

    ticket_id: int | None  # None: open a new ticket
    reason: str
    kind: str = "new"
    message_row: int | None = None  # for "own": our stored message, if the mail was a reply


@dataclass(frozen=True)
class ThreadSettings:
    tag_format: str = DEFAULT_TAG_FORMAT
    allow_anyone_by_tag: bool = False
    reopen_on_reply: bool = True
    # The addresses of all our accounts: a mail that merely claims one of them as its From is not
    # a participant (every ticket has our address in its To); our own mail carries our signed id.
    own_addresses: frozenset[str] = frozenset()
    # The authserv-ids of our own mail server (account key authserv_id, lower case): only its
    # Authentication-Results headers are believed (RELIABILITY 40).
    authserv_ids: frozenset[str] = frozenset()


def settings_for(cfg: Config, account_name: str | None) -> ThreadSettings:
    """The threading rules of an account (defaults when there is no config or no such account)."""
    if cfg is None:
        return ThreadSettings()

    tag_format = conversation_settings(cfg)["tag_format"]
    own = frozenset(a.email.lower() for a in getattr(cfg, "accounts", []) if a.email)
    account = next((a for a in getattr(cfg, "accounts", []) if a.name == account_name), None)
    if account is None:
        return ThreadSettings(tag_format, own_addresses=own)
    ids = getattr(account, "authserv_id", None) or []
    ids = frozenset(i.strip().lower() for i in ([ids] if isinstance(ids, str) else ids) if i.strip())
    return ThreadSettings(tag_format, account.allow_anyone_by_tag, account.reopen_on_reply, own, ids)


# --- Authentication-Results of our own mail server (RFC 8601), RELIABILITY 40 -------------------
_AR_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_AR_RESULT = re.compile(r"\s*([A-Za-z0-9_-]+)(?:\s*/\s*\d+)?\s*=\s*([A-Za-z0-9_-]+)")


def authentication_results(value: str) -> tuple[str, dict[str, str]]:
    """(authserv-id, {method: result}) of one Authentication-Results header (lower case)."""
    text = value[:8000]
    for _ in range(8):  # comments, nested a few levels deep
        text, found = _AR_COMMENT.subn(" ", text)
        if not found:
            break
    head, *parts = text.split(";")
    words = head.split()
    results: dict[str, str] = {}
    for part in parts:
        match = _AR_RESULT.match(part)
        if match:
            results.setdefault(match.group(1).lower(), match.group(2).lower())
    return (words[0].strip('"').lower() if words else ""), results


def sender_unverified(parsed: ParsedMessage, authserv_ids: frozenset[str] | set[str]) -> str | None:
    """Why the From of this mail is not the sender's, by our own mail server's word: a DMARC
    failure in an Authentication-Results header with one of ``authserv_ids``. Headers of any other
    authserv-id are ignored (anyone can write them, RFC 8601 section 5). None: nothing says so."""
    if not authserv_ids:
        return None
    for value in parsed.headers.get("authentication-results", [])[:50]:
        authserv_id, results = authentication_results(value)
        if authserv_id in authserv_ids and results.get("dmarc") == "fail":
            return f"sender unverified: DMARC failed for {parsed.from_address or 'the From address'} per {authserv_id}"
    return None


# Messages of a ticket whose addresses make nobody a participant: a copy of a mail already stored
# (a forged copy could add a Cc) and a delivery report (anyone can write one). Recognised by the
# start of their thread_reason, which find_ticket writes.
COPY_REASON = "a copy of "
REPORT_REASON = "a delivery failure report"


def participant_list(db: Database, ticket_id: int) -> list[str]:
    """The requester, then everyone who sent or received a message of the ticket, in order of
    appearance (lower case). Copies and delivery reports add nobody (item 53)."""
    found: dict[str, None] = {}
    row = db.execute("select requester from tickets where id = ?", [ticket_id]).fetchone()
    if row and row[0]:
        found[row[0].lower()] = None
    for from_address, to_addrs, cc_addrs in db.execute(
        "select from_address, to_addrs, cc_addrs from messages where ticket_id = ? "
        "and coalesce(thread_reason, '') not like ? and coalesce(thread_reason, '') not like ? order by id",
        [ticket_id, COPY_REASON + "%", REPORT_REASON + "%"],
    ).fetchall():
        addresses = [from_address] if from_address else []
        for field in (to_addrs, cc_addrs):
            addresses += [a for a in json.loads(field or "[]") if isinstance(a, str)]
        for address in addresses:
            found.setdefault(address.lower(), None)
    return list(found)


def participants(db: Database, ticket_id: int) -> set[str]:
    """The requester and everyone who sent or received a message of the ticket (lower case)."""
    return set(participant_list(db, ticket_id))


def is_participant(db: Database, ticket_id: int, address: str | None) -> bool:
    """The requester, or anyone who sent or received a message of the ticket."""
    return bool(address) and address.lower() in participants(db, ticket_id)  # type: ignore[union-attr]


def sent_to(db: Database, message_id: str, address: str | None) -> bool:
    """Whether our mail ``message_id`` went to ``address`` (the outbox's recipients, or the To/Cc
    of our stored reply)."""
    if not address:
        return False
    address = address.lower()
    for (value,) in db.execute("select recipients from outbox where message_id = ?", [message_id]):
        if address in (a.lower() for a in json.loads(value or "[]") if isinstance(a, str)):
            return True
    for to_addrs, cc_addrs in db.execute(
        "select to_addrs, cc_addrs from messages where message_id = ? and direction = 'out'", [message_id]
    ):
        for field in (to_addrs, cc_addrs):
            if address in (a.lower() for a in json.loads(field or "[]") if isinstance(a, str)):
                return True
    return False


def may_join(db: Database, ticket_id: int, sender: str | None, *, our_id: str | None = None,
             own_addresses: frozenset[str] | set[str] = frozenset()) -> str | None:
    """Why ``sender`` may join ticket ``ticket_id`` (a participant, or the addressee of our mail
    ``our_id``); None: they may not (item 53). Our own accounts' addresses never count."""
    address = (sender or "").lower()
    if not address or address in own_addresses:
        return None
    if our_id is not None and sent_to(db, our_id, address):
        return f"sent to {address}"
    if address in participants(db, ticket_id):
        return f"from {address}, a participant"
    return None


def _ticket_of_id(db: Database, message_id: str) -> tuple[int, str] | None:
    """The ticket a message id belongs to, and what it is (a stored message or a mail we sent)."""
    row = db.execute(
        "select ticket_id, direction from messages where message_id = ? order by id desc limit 1",
        [message_id],
    ).fetchone()
    if row:
        return row[0], ("our reply" if row[1] == "out" else "message")
    row = db.execute(
        "select ticket_id, kind from outbox where message_id = ? and ticket_id is not null limit 1",
        [message_id],
    ).fetchone()
    if row:
        return row[0], {"ack": "our acknowledgement"}.get(row[1], f"our {row[1]} notice")
    return None


def _is_bounce(parsed: ParsedMessage) -> bool:
    from mail2ticket.parse.autoreply import bounce_reason

    return bounce_reason(parsed) is not None


def find_ticket(
    db: Database,
    parsed: ParsedMessage,
    *,
    allow_anyone_by_tag: bool = False,
    tag_format: str = DEFAULT_TAG_FORMAT,
    raw: bytes | None = None,
    gm_thrid: int | None = None,
    account: str | None = None,
    own_addresses: frozenset[str] | set[str] = frozenset(),
    unverified: str | None = None,
) -> ThreadDecision:
    """The ticket this message follows up, with the reason; or a new ticket, with the reason.

    Trust nothing in the mail for authorization: a header naming one of our Message-IDs counts
    only when its token verifies, and a subject tag only when the sender takes part in the ticket.
    """
    # Our own mail fetched back (a shared mailbox, a copy to ourselves): nothing new.
    if is_our_message_id(db, parsed.message_id):
        row = db.execute(
            "select id, ticket_id from messages where message_id = ? and direction = 'out' limit 1",
            [parsed.message_id],
        ).fetchone()
        found = _ticket_of_id(db, parsed.message_id)  # type: ignore[arg-type]
        return ThreadDecision(
            found[0] if found else None,
            f"our own mail {parsed.message_id} fetched back: not imported again",
            kind="own",
            message_row=row[0] if row else None,
        )
    # Our mail server says the From is forged (DMARC failed): it never joins anyone's ticket.
    if unverified:
        log.warning("message %s: %s: a new ticket", parsed.message_id, unverified)
        return ThreadDecision(None, f"{unverified}: new ticket, it joins no existing one")
    # The same mail delivered to two monitored mailboxes (or forwarded between them).
    if parsed.message_id and parsed.from_address:
        row = db.execute(
            "select ticket_id from messages where message_id = ? and direction = 'in' "
            "and lower(from_address) = ? order by id limit 1",
            [parsed.message_id, parsed.from_address.lower()],
        ).fetchone()
        if row:
            return ThreadDecision(
                row[0],
                f"{COPY_REASON}{parsed.message_id} (same Message-ID and sender) already in ticket #{row[0]}",
                kind="copy",
            )
    ignored: list[str] = []
    refused: list[str] = []  # a header named a ticket the sender may not join (item 53)
    sender = parsed.from_address or "an unknown sender"
    headers = [("In-Reply-To", i) for i in parsed.in_reply_to]
    headers += [("References", i) for i in reversed(parsed.references)]  # the newest first
    for header, message_id in headers:
        if looks_like_ours(message_id) and not is_our_message_id(db, message_id):
            ignored.append(message_id)
            continue
        found = _ticket_of_id(db, message_id)
        if found:
            ours = is_our_message_id(db, message_id)
            why = may_join(db, found[0], parsed.from_address, our_id=message_id if ours else None,
                           own_addresses=own_addresses)
            if why:
                return ThreadDecision(
                    found[0], f"{header} names {found[1]} {message_id} of ticket #{found[0]}, {why}",
                    kind="followup",
                )
            refused.append(
                f"{header} names {found[1]} {message_id} of ticket #{found[0]}, but "
                + (f"it was not sent to {sender}, who is" if ours else f"{sender} is")
                + " not a participant"
            )
    if ignored:
        log.warning(
            "message %s from %s quotes Message-IDs in our form with a wrong token (%s): not trusted",
            parsed.message_id, parsed.from_address, ", ".join(ignored[:3]),
        )
    if refused:
        log.warning("message %s from %s: %s: a new ticket", parsed.message_id, parsed.from_address, refused[0])
    if raw is not None and _is_bounce(parsed):
        # The returned headers of our mail: in the raw report, or in an encoded part of it. The
        # report joins that ticket as a report: it adds no participant and changes no status.
        texts = [raw, *(a.data for a in parsed.attachments[:20] if a.size < 1_000_000)]
        found_ids = [m.decode() for text in texts for m in OUR_ID_IN_TEXT.findall(text)]
        for candidate in dict.fromkeys(found_ids):
            if is_our_message_id(db, candidate):
                found = _ticket_of_id(db, candidate)
                if found:
                    return ThreadDecision(
                        found[0], f"{REPORT_REASON} about {found[1]} {candidate} of "
                        f"ticket #{found[0]}", kind="report",
                    )
    forged = f"; ignored forged Message-IDs {', '.join(ignored[:3])}" if ignored else ""
    if gm_thrid and account:
        # Gmail's thread id (X-GM-THRID): a hint after the headers, only within the same account
        # (thread ids are per mailbox).
        row = db.execute(
            "select ticket_id from messages where account = ? and gm_thrid = ? and direction = 'in' "
            "order by id desc limit 1",
            [account, gm_thrid],
        ).fetchone()
        if row:
            why = may_join(db, row[0], parsed.from_address, own_addresses=own_addresses)
            if why:
                return ThreadDecision(row[0], f"Gmail thread {gm_thrid} of ticket #{row[0]}, {why}",
                                      kind="followup")
            refused.append(f"Gmail thread {gm_thrid} of ticket #{row[0]}, but {sender} is not a participant")
            log.warning("message %s from %s: %s: a new ticket", parsed.message_id, parsed.from_address,
                        refused[-1])
    forged += "".join(f"; {why}" for why in refused[:3])
    match = tag_pattern(tag_format).search(parsed.subject or "")
    if match:
        ticket_id = int(match.group(1))
        tag = make_tag(tag_format, ticket_id)
        exists = db.execute("select 1 from tickets where id = ?", [ticket_id]).fetchone()
        if exists is None:
            return ThreadDecision(None, f"subject tag {tag} names no ticket: new ticket{forged}")
        if (parsed.from_address or "").lower() in own_addresses:
            log.warning(
                "subject tag %s from our own address %s in a mail we did not send (%s): opening a new ticket",
                tag, parsed.from_address, parsed.message_id,
            )
            return ThreadDecision(
                None,
                f"subject tag {tag} from our own address {parsed.from_address}, but the mail is not one "
                f"we sent (its Message-ID is not ours): new ticket{forged}",
            )
        if is_participant(db, ticket_id, parsed.from_address):
            return ThreadDecision(
                ticket_id, f"subject tag {tag} from {parsed.from_address}, a participant", kind="followup"
            )
        if allow_anyone_by_tag:
            return ThreadDecision(
                ticket_id, f"subject tag {tag} (the account accepts the tag from anyone)", kind="followup"
            )
        log.warning(
            "subject tag %s from %s, who is not a participant of ticket #%s: opening a new ticket",
            tag, parsed.from_address, ticket_id,
        )
        return ThreadDecision(
            None,
            f"subject tag {tag} from {parsed.from_address or 'an unknown sender'}, who is not a "
            f"participant of ticket #{ticket_id}: new ticket{forged}",
        )
    if refused:
        others = f"; ignored forged Message-IDs {', '.join(ignored[:3])}" if ignored else ""
        return ThreadDecision(None, f"{refused[0]}: new ticket{others}")
    if ignored:
        return ThreadDecision(None, f"new conversation{forged}")
    return ThreadDecision(None, "new conversation")


def thread_parent(db: Database, ticket_id: int) -> dict | None:
    """The message a reply answers: the newest incoming one, else the newest with an id."""
    for sql in (
        "select * from messages where ticket_id = ? and direction = 'in' and message_id is not null "
        "order by id desc limit 1",
        "select * from messages where ticket_id = ? and message_id is not null order by id desc limit 1",
    ):
        row = next(iter(db.query(sql, [ticket_id])), None)
        if row:
            return row
    return None
