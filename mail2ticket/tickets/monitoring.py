"""One ticket per monitoring problem: the table ``monitoring`` (one row per monitoring ticket, the
owner of its SQL) and what each recognised monitoring mail does to its problem's ticket.

The key of a problem is (account, tool, host, service or alert), lower case; Zabbix mail also
carries its event id ("Original problem ID"), looked up first. ``plan`` finds the latest ticket
of the key (one indexed lookup) and decides; the importer creates the ticket or joins it, then
``record`` writes the row and changes the ticket (status, priority, events). docs/monitoring.md
describes the behaviour; parse/monitoring.py what a monitoring mail is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mail2ticket.config.fields import PRIORITIES
from mail2ticket.tickets.db import human_duration, log_event
from mail2ticket.tickets.tickets import (
    add_tags,
    remove_tags,
    set_priority,
    set_status,
    ticket_field,
)

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

# Tools whose event id names one problem from its first mail to its recovery (Zabbix's
# {EVENT.ID}). A custom format's event_id group may be a run number: it is stored, not keyed on.
EVENT_ID_TOOLS = ("zabbix",)
# The tag of a ticket whose problem recovered while on_recovery = "mark" left it open.
RECOVERED_TAG = "recovered"
ACTOR = "monitoring"

_ROW_SQL = ("select m.*, t.status as ticket_status, t.closed_at as ticket_closed_at from monitoring m "
            "join tickets t on t.id = m.ticket_id where ")


@dataclass
class Plan:
    """What a monitoring mail does. ``action``: new (opens a ticket), orphan (a recovery of no
    known problem: a ticket closed on arrival), join (joins ``ticket_id``, status unchanged),
    reopen (a new problem within the flap window: the recovered ticket is open again), recover
    (a recovery joins its problem's ticket and closes or marks it)."""

    action: str
    ticket_id: int | None
    reason: str
    row: dict | None = None


def problem_key(tool: str, host: str | None, service: str | None) -> str:
    """The lookup key of a problem (besides the account): tool, host and service, lower case."""
    return "\x1f".join(" ".join((part or "").split()).lower() for part in (tool, host, service))


def describe(mon: Any) -> str:
    """'nagios web1/HTTP', 'alertmanager InstanceDown', 'icinga2 db1 (host)'."""
    if mon.host and mon.service:
        what = f"{mon.host}/{mon.service}"
    else:
        what = mon.host or mon.service or "?"
    return f"{mon.tool} {what}"


def _seconds_between(earlier: str | None, later: str | None) -> int | None:
    if not earlier or not later:
        return None
    try:
        a = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        b = datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((b - a).total_seconds())


def find_row(db: Database, account: str, mon: Any) -> dict | None:
    """The latest monitoring row of this mail's problem: by event id (Zabbix), else by key, else
    (a mail naming no host and no event id, such as Zabbix's update mail) the latest open
    problem of the same tool and service. Each an indexed lookup."""
    if mon.event_id and mon.tool in EVENT_ID_TOOLS:
        row = _one(db, "m.account = ? and m.tool = ? and m.event_id = ?", [account, mon.tool, mon.event_id])
        if row is not None:
            return {**row, "by_event": True}
    row = _one(db, "m.account = ? and m.key = ?", [account, problem_key(mon.tool, mon.host, mon.service)])
    if row is None and mon.host is None and mon.event_id is None and mon.kind != "problem" and mon.service:
        row = _one(db, "m.account = ? and m.service = ? collate nocase and m.tool = ? and m.phase = 'problem'",
                   [account, mon.service, mon.tool])
    return {**row, "by_event": False} if row is not None else None


def _one(db: Database, where: str, params: list) -> dict | None:
    """The row of the latest monitoring ticket matching ``where``, with its ticket's status."""
    cursor = db.execute(f"{_ROW_SQL}{where} order by m.ticket_id desc limit 1", params)
    row = cursor.fetchone()
    return dict(zip([c[0] for c in cursor.description], row, strict=True)) if row is not None else None


def plan(db: Database, account: str, mon: Any, when: str, flap_window: int, *, ignored: bool = False) -> Plan:
    """Decide what ``mon`` (a recognised mail of ``account``, dated ``when``) does. ``ignored``:
    a [[rules]] entry with ignore = true matched it: it never reopens a ticket (it joins)."""
    decided = _plan(db, account, mon, when, flap_window)
    if ignored and decided.action == "reopen":
        reason = decided.reason.removesuffix(" reopened").removesuffix(":")
        return Plan("join", decided.ticket_id, f"{reason}: ignored by a rule, the ticket stays closed", decided.row)
    return decided


def _plan(db: Database, account: str, mon: Any, when: str, flap_window: int) -> Plan:
    row = find_row(db, account, mon)
    what = describe(mon)
    if row is not None:
        # Only a recovery ends a problem: until then it lasts, even if a person closed its ticket.
        lasting = row["phase"] == "problem"
        gap = None if lasting else _seconds_between(row["recovered_at"], when)
        recent = gap is not None and gap <= flap_window
        ticket = f"#{row['ticket_id']}"
        if mon.kind == "problem":
            if lasting:
                if (mon.tool in EVENT_ID_TOOLS and mon.event_id and row["event_id"]
                        and not row["by_event"] and row["event_id"] != mon.event_id):
                    return Plan("new", None, f"monitoring: {what}, another problem (event {mon.event_id}) "
                                f"than the one of {ticket} (event {row['event_id']})")
                if row["ticket_status"] == "closed":
                    return Plan("reopen", row["ticket_id"], f"monitoring: {what}, the problem of {ticket} goes on "
                                "(no recovery since it was closed): reopened", row)
                return Plan("join", row["ticket_id"], f"monitoring: {what}, the open problem of {ticket}", row)
            if recent:
                return Plan("reopen", row["ticket_id"], f"monitoring: {what} again {human_duration(gap)} after "
                            f"its recovery, within the flap window: {ticket} reopened", row)
            return Plan("new", None, f"monitoring: {what}, a new problem ({ticket} recovered "
                        f"{human_duration(gap) or 'long'} before, past the flap window)")
        if lasting or recent or row["by_event"]:
            if mon.kind == "recovery" and lasting:
                return Plan("recover", row["ticket_id"], f"monitoring: {what} recovered, the problem of {ticket}", row)
            return Plan("join", row["ticket_id"], f"monitoring: {what} ({mon.kind}), the problem of {ticket}", row)
    if mon.kind == "recovery":
        return Plan("orphan", None, f"monitoring: {what} recovered, but no problem of it is known: "
                    "filed closed")
    kind = f" ({mon.kind})" if mon.kind != "problem" else ""
    return Plan("new", None, f"monitoring: {what}{kind}, a new problem")


def _insert(db: Database, ticket_id: int, account: str, mon: Any, when: str, phase: str) -> None:
    db.execute(
        "insert into monitoring (ticket_id, account, key, tool, host, service, event_id, state, severity, "
        "phase, started_at, recovered_at, last_at, mails) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
        [ticket_id, account, problem_key(mon.tool, mon.host, mon.service), mon.tool, mon.host, mon.service,
         mon.event_id, mon.state, mon.severity, phase, when if phase == "problem" else None,
         when if phase == "recovered" else None, when],
    )


def _priority(db: Database, ticket_id: int, priority: str | None, *, only_raise: bool) -> str | None:
    """Set the priority of the problem's severity (only raise it, on a repeat); what was set."""
    if priority is None:
        return None
    if only_raise and PRIORITIES.index(priority) <= PRIORITIES.index(ticket_field(db, ticket_id, "priority")):
        return None
    return priority if set_priority(db, ticket_id, priority, actor=ACTOR, event=False) else None


def record(db: Database, the_plan: Plan, ticket_id: int, account: str, mon: Any, when: str, *,
           on_recovery: str, priority: str | None, now: str, ignored: bool = False) -> None:
    """After the importer created or joined ``ticket_id``: the monitoring row, the ticket's status
    and priority, and the events (monitoring-problem, monitoring-recovery; t18c's hooks read them)."""
    state = f"{mon.state} ({mon.severity})" if mon.state and mon.severity else (mon.state or mon.kind)
    action = the_plan.action
    if action in ("new", "orphan"):
        _insert(db, ticket_id, account, mon, when, "recovered" if action == "orphan" else "problem")
        if action == "orphan":
            log_event(db, "monitoring", f"{describe(mon)} {state}: a recovery of no known problem, filed closed",
                      ticket_id=ticket_id, account=account, actor=ACTOR)
            return
        set_to = _priority(db, ticket_id, priority, only_raise=False)
        # A PROBLEM (or a service that started flapping) is a problem; a downtime, acknowledgement
        # or other notice of no known problem opens a ticket too, without the problem event.
        kind, what = (("monitoring-problem", "a new problem") if mon.kind in ("problem", "flapping")
                      else ("monitoring", ("an acknowledgement" if mon.kind == "acknowledgement" else "a notice")
                            + " of no known problem"))
        if ignored:  # no problem event (nor its hooks) for what a rule ignores
            kind, what = "monitoring", what + ", ignored by a rule"
        log_event(db, kind, f"{describe(mon)} {state}: {what}" + (f", priority {set_to}" if set_to else ""),
                  ticket_id=ticket_id, account=account, actor=ACTOR)
        return
    row = the_plan.row or {}
    updates = {"state": mon.state, "last_at": max(when, row.get("last_at") or when)}
    if mon.event_id and mon.tool in EVENT_ID_TOOLS:
        updates["event_id"] = mon.event_id
    if action == "reopen":
        flap = row.get("phase") == "recovered"
        if flap:  # the problem is back: its times start again
            updates.update(phase="problem", started_at=when, recovered_at=None)
        updates["severity"] = mon.severity or row.get("severity")
        if ticket_field(db, ticket_id, "status") == "closed":
            set_status(db, ticket_id, "open", now)
            why = (f"by the problem back {human_duration(_seconds_between(row.get('recovered_at'), when))} after its "
                   "recovery (within the flap window)" if flap else "by the next notification of a problem that never "
                   "recovered")
            log_event(db, "reopened", why, ticket_id=ticket_id, account=account, actor=ACTOR)
        remove_tags(db, ticket_id, [RECOVERED_TAG], actor=ACTOR, event=False)
        set_to = _priority(db, ticket_id, priority, only_raise=False)
        back = "the problem is back within the flap window" if flap else "the problem goes on"
        log_event(db, "monitoring-problem", f"{describe(mon)} {state}: {back}"
                  + (f", priority {set_to}" if set_to else ""), ticket_id=ticket_id, account=account, actor=ACTOR)
    elif action == "recover":
        updates.update(phase="recovered", recovered_at=when)
        took = human_duration(_seconds_between(row.get("started_at"), when))
        closed = ticket_field(db, ticket_id, "status") == "closed"
        if on_recovery == "close" and not closed:
            set_status(db, ticket_id, "closed", now)
            log_event(db, "closed", "by the recovery", ticket_id=ticket_id, account=account, actor=ACTOR)
            outcome = "the ticket is closed"
        elif closed:
            outcome = "the ticket was closed already"
        else:
            add_tags(db, ticket_id, [RECOVERED_TAG], actor=ACTOR, event=False)
            outcome = "marked recovered, left open for a person (on_recovery = \"mark\")"
        log_event(db, "monitoring-recovery", f"{describe(mon)} {mon.state or 'recovered'} after {took or 'an unknown time'}: "
                  f"{outcome}", ticket_id=ticket_id, account=account, actor=ACTOR)
    elif mon.kind == "problem":  # a repeated notification: the state may have changed
        updates["severity"] = mon.severity or row.get("severity")
        _priority(db, ticket_id, priority, only_raise=True)
    assignments = ", ".join(f"{k} = ?" for k in updates)
    db.execute(f"update monitoring set {assignments}, mails = mails + 1 where ticket_id = ?",
               [*updates.values(), ticket_id])
