"""Every change of a ticket: status (one closed_at formula), priority, assignee, tags, queue, notes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mail2ticket.config.fields import PRIORITIES, normalise_tag
from mail2ticket.tickets.db import insert_row

if TYPE_CHECKING:  # imported where needed: 'import mail2ticket.tickets.db' stays cheap
    from sqlite_utils import Database


from mail2ticket.errors import NotFoundError
from mail2ticket.tickets.db import log_event, now_iso


def ticket_field(db: Database, ticket_id: int, column: str) -> Any:
    row = db.execute(f"select {column} from tickets where id = ?", [ticket_id]).fetchone()
    if row is None:
        raise NotFoundError(f"no ticket #{ticket_id}", "see 'mail2ticket tickets list --status all'")
    return row[0]


def touch(db: Database, ticket_id: int, now: str | None = None) -> None:
    """Something happened on the ticket: its updated_at is now."""
    db.execute("update tickets set updated_at = ? where id = ?", [now or now_iso(), ticket_id])


def _set_field(
    db: Database, ticket_id: int, column: str, value: Any, kind: str, detail: Callable[[Any], str], *,
    actor: str, event: bool,
) -> bool:
    """Set one column of a ticket; with ``event``, touch it and log ``kind`` with ``detail(before)``.
    False when it already had that value."""
    before = ticket_field(db, ticket_id, column)
    if before == value:
        return False
    db.execute(f"update tickets set {column} = ? where id = ?", [value, ticket_id])
    if event:
        touch(db, ticket_id)
        log_event(db, kind, detail(before), ticket_id=ticket_id, actor=actor)
    return True


def set_priority(db: Database, ticket_id: int, priority: str, *, actor: str, event: bool = True) -> bool:
    """Set the priority (one of PRIORITIES); False when it already was that."""
    if priority not in PRIORITIES:
        raise ValueError(f"{priority!r} is not a priority (expected one of: {', '.join(PRIORITIES)})")
    return _set_field(db, ticket_id, "priority", priority, "priority", lambda before: f"{before} -> {priority}",
                      actor=actor, event=event)


def set_assignee(db: Database, ticket_id: int, assignee: str | None, *, actor: str, event: bool = True) -> bool:
    """Assign the ticket to ``assignee`` (None: to nobody); False when nothing changed."""
    assignee = (assignee or "").strip() or None
    return _set_field(db, ticket_id, "assignee", assignee, "assigned",
                      lambda before: f"to {assignee}" if assignee else f"unassigned (was {before})",
                      actor=actor, event=event)


def add_tags(db: Database, ticket_id: int, tags: Sequence[str], *, actor: str, event: bool = True) -> list[str]:
    """Add tags; returns those that were new."""
    ticket_field(db, ticket_id, "id")
    added = []
    for tag in dict.fromkeys(normalise_tag(t) for t in tags):
        if tag and db.execute(
            "insert into ticket_tags (ticket_id, tag) values (?, ?) on conflict do nothing", [ticket_id, tag]
        ).rowcount:
            added.append(tag)
    if added and event:
        touch(db, ticket_id)
        log_event(db, "tagged", ", ".join(added), ticket_id=ticket_id, actor=actor)
    return added


def remove_tags(db: Database, ticket_id: int, tags: Sequence[str], *, actor: str, event: bool = True) -> list[str]:
    """Remove tags; returns those that were there."""
    ticket_field(db, ticket_id, "id")
    removed = []
    for tag in dict.fromkeys(normalise_tag(t) for t in tags):
        if db.execute("delete from ticket_tags where ticket_id = ? and tag = ?", [ticket_id, tag]).rowcount:
            removed.append(tag)
    if removed and event:
        touch(db, ticket_id)
        log_event(db, "untagged", ", ".join(removed), ticket_id=ticket_id, actor=actor)
    return removed


def add_note(db: Database, ticket_id: int, text: str, *, actor: str) -> None:
    """An internal note: part of the history, never mailed to anyone."""
    ticket_field(db, ticket_id, "id")
    touch(db, ticket_id)
    log_event(db, "note", text.strip(), ticket_id=ticket_id, actor=actor)


def set_account(db: Database, ticket_id: int, account: str, *, actor: str, event: bool = True) -> bool:
    """Move the ticket to another account's queue (replies then go out from that account)."""
    return _set_field(db, ticket_id, "account", account, "queue", lambda before: f"{before} -> {account}",
                      actor=actor, event=event)


def set_status(db: Database, ticket_id: int, status: str, now: str) -> None:
    """Set the status and touch the ticket. The one formula of closed_at: the first time it was
    closed, kept while it stays closed; none while it is open or pending."""
    db.execute(
        "update tickets set status = ?, updated_at = ?, "
        "closed_at = case when ? = 'closed' then coalesce(closed_at, ?) else null end where id = ?",
        [status, now, status, now, ticket_id],
    )


def record_first_response(db: Database, ticket_id: int, now: str) -> None:
    """The first reply to the requester ends the response target (SLA); later ones change nothing."""
    db.execute("update tickets set first_response_at = coalesce(first_response_at, ?) where id = ?",
               [now, ticket_id])


def set_due(db: Database, ticket_id: int, due_response: str | None, due_resolution: str | None, now: str,
            overdue_sql: str) -> None:
    """Set the SLA due times. A target moved into the future is no longer breached: its breach
    record and the overdue mark (``overdue_sql``: when a ticket is overdue) are cleared."""
    # cast(:r as text): PostgreSQL cannot tell the type of a parameter that is only tested for null.
    db.execute(
        "update tickets set due_response_at = :r, due_resolution_at = :s, response_breached_at = case "
        "when cast(:r as text) is null or :r > :now then null else response_breached_at end, "
        "resolution_breached_at = case "
        "when cast(:s as text) is null or :s > :now then null else resolution_breached_at end "
        "where id = :id",
        {"r": due_response, "s": due_resolution, "now": now, "id": ticket_id},
    )
    db.execute(
        f"update tickets set overdue = 0 where id = :id and overdue = 1 and not {overdue_sql}",
        {"id": ticket_id, "now": now},
    )


def mark_breached(db: Database, ticket_id: int, target: str, now: str) -> None:
    """Record when the ``target`` ("response" or "resolution") of a ticket was found passed."""
    column = {"response": "response_breached_at", "resolution": "resolution_breached_at"}[target]
    db.execute(f"update tickets set {column} = ? where id = ?", [now, ticket_id])


def refresh_overdue_marks(db: Database, now: str, overdue_sql: str) -> int:
    """Set the overdue mark where a due time passed, clear it where it no longer holds (two
    indexed passes that set, one that clears); returns the number cleared."""
    params = {"now": now}
    db.execute("update tickets set overdue = 1 where status != 'closed' and first_response_at is null "
               "and due_response_at <= :now and overdue = 0", params)
    db.execute("update tickets set overdue = 1 where status != 'closed' and due_resolution_at <= :now "
               "and overdue = 0", params)
    return db.execute(f"update tickets set overdue = 0 where overdue = 1 and not {overdue_sql}", params).rowcount


def ticket_status(db: Database, ticket_id: int) -> str:
    return ticket_field(db, ticket_id, "status")


def create_ticket(db: Database, *, account: str | None, subject: str, requester: str | None,
                  requester_name: str | None, now: str, closed: bool = False) -> int:
    """A new ticket (open, or closed on arrival: an automatic answer to nothing of ours); its id.
    Inside the import's transaction; the status formula is set_status's (closed_at = now)."""
    return insert_row(db, "tickets", {
        "account": account,
        "subject": subject,
        "requester": requester,
        "requester_name": requester_name,
        "status": "closed" if closed else "open",
        "priority": "normal",
        "created_at": now,
        "updated_at": now,
        **({"closed_at": now} if closed else {}),
    })


def follow_up(db: Database, ticket_id: int, now: str, *, reopen: bool) -> str:
    """A customer's follow-up arrived: a pending ticket is open again, a closed one too when
    ``reopen`` (reopen_on_reply), touched either way. Returns the status it had before."""
    before = ticket_status(db, ticket_id)
    if before == "pending" or (before == "closed" and reopen):
        set_status(db, ticket_id, "open", now)
    else:
        touch(db, ticket_id, now)
    return before



def rederive_from_first_message(db: Database, ticket_id: int, *, old_subject: str, subject: str,
                                requester: str | None, requester_name: str | None) -> None:
    """The ticket's first message was parsed again: its subject follows unless edited since
    (it still is ``old_subject``), and the requester is filled in where it is now known."""
    db.execute(
        "update tickets set subject = case when subject = ? then ? else subject end, "
        "requester = coalesce(?, requester), requester_name = coalesce(?, requester_name) where id = ?",
        [old_subject, subject, requester, requester_name, ticket_id],
    )
