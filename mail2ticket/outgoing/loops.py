"""Loop protection: which automatic mail is held back (limits per ticket and address, failing addresses)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from mail2ticket.config.conversations import conversation_settings
from mail2ticket.config.model import Config
from mail2ticket.config.periods import parse_duration
from mail2ticket.tickets.mailqueue import automatic_recipients
from mail2ticket.tickets.mailqueue import failing_address as queued_failing_address
from mail2ticket.tickets.threading import participants

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

# outgoing/compose (the email package) is imported by the functions that need it: 'tickets show'
# imports this module for failing_participants alone.

# Mail a machine decided to send: capped per ticket and per address, never sent to a failing
# address (RELIABILITY 45, 46). A reply typed by a person is never held, only warned about.
AUTOMATIC_KINDS = ("ack", "close", "reopen", "sla-notice")


def failing_address(db: Database, address: str, now: datetime | None = None) -> dict | None:
    """The failing_addresses row of ``address`` while its hold lasts (a bounce said it fails)."""
    return queued_failing_address(db, address, iso_utc(now or datetime.now(UTC)))


def failing_participants(db: Database, ticket_id: int) -> list[dict]:
    """The ticket's participants that are failing addresses now ('tickets show' says so)."""

    found = []
    for address in sorted(participants(db, ticket_id)):
        row = failing_address(db, address)
        if row is not None:
            found.append({k: row[k] for k in ("address", "reason", "failed_at", "hold_until", "ticket_id")})
    return found


def automatic_count(db: Database, *, since: datetime, ticket_id: int | None = None,
                    address: str | None = None, kinds: tuple[str, ...] = AUTOMATIC_KINDS,
                    account: str | None = None) -> int:
    """Automatic mails queued (held ones not counted) since ``since``, on a ticket, from an
    account, or to the mailbox of an address (compose.mailbox_key: ``v.i.c.t.i.m+1@gmail.com``
    is ``victim@gmail.com``, item 56)."""
    from mail2ticket.outgoing.compose import mailbox_domains, mailbox_key

    counted = {"since": iso_utc(since), "kinds": kinds, "ticket_id": ticket_id, "account": account}
    if address is None:
        return automatic_recipients(db, **counted)
    key = mailbox_key(address)
    return sum(1 for to in automatic_recipients(db, **counted, domains=mailbox_domains(key)) if mailbox_key(to) == key)


def hold_reason(cfg: Config, db: Database, *, to_address: str, ticket_id: int | None,
                now: datetime | None = None) -> str | None:
    """Why one more automatic mail to ``to_address`` (about ``ticket_id``) must not be sent, or None.

    An address that is no outside mailbox (compose.not_a_mailbox, item 56), a failing address
    (a bounce said so, RELIABILITY 46), or too many automatic mails on the
    ticket or to the address within [conversations] auto_mail_*_period (RELIABILITY 45): what
    stops a ping-pong with a responder that ignores Auto-Submitted.
    """
    from mail2ticket.outgoing.compose import not_a_mailbox

    now = now or datetime.now(UTC)
    address = to_address.lower()
    own_domains = {a.email.lower().rpartition("@")[2] for a in getattr(cfg, "accounts", []) if a.email}
    nowhere = not_a_mailbox(address, own_domains)
    if nowhere:
        return f"not a mailbox: {nowhere}; no automatic mail goes to it"
    failing = failing_address(db, address, now)
    if failing is not None:
        return (
            f"failing address: mail to {address} bounced ({failing['failed_at']}: {failing['reason']}); "
            f"no automatic mail to it until {failing['hold_until']} or until it writes to us"
        )
    settings = conversation_settings(cfg)
    checks = [("address", address, f"to {address}")]
    if ticket_id is not None:
        checks.insert(0, ("ticket", ticket_id, f"on ticket #{ticket_id}"))
    for scope, value, what in checks:
        limit, period = settings[f"auto_mail_{scope}_limit"], settings[f"auto_mail_{scope}_period"]
        since = now - timedelta(seconds=parse_duration(period))
        sent = automatic_count(db, since=since, **{"ticket_id" if scope == "ticket" else "address": value})
        if sent >= limit:
            return (f"loop protection: {sent} automatic mail(s) {what} in the last {period} "
                    f"(auto_mail_{scope}_limit = {limit})")
    return None




def iso_utc(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_utc(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
