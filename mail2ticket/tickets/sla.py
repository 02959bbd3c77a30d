"""SLA targets ([sla]): each ticket's due times, business hours, and the overdue check."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mail2ticket.config.model import Config
from mail2ticket.config.periods import parse_duration
from mail2ticket.config.sla import (
    DAY_NAMES,
    DEFAULT_DAYS,
    TARGETS,
    Calendar,
    parse_hours,
    time_zone,
)
from mail2ticket.tickets.db import log_event, now_iso, transaction
from mail2ticket.tickets.tickets import mark_breached, refresh_overdue_marks, set_due

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger(__name__)

# A ticket is overdue while it is not closed and a target it has not met has passed.
OVERDUE_SQL = (
    "(status != 'closed' and ((first_response_at is null and due_response_at <= :now) "
    "or due_resolution_at <= :now))"
)


def target_seconds(text: str, calendar: Calendar | None) -> int:
    """A target duration in seconds. In business hours a day ("d") is one business day (e.g. 8h
    for 09:00-17:00) and a week ("w") is as many business days as the calendar has per week."""

    seconds = parse_duration(text)
    if calendar is not None:
        unit = text.strip()[-1]
        if unit == "d":
            seconds = seconds // 86400 * calendar.day_seconds
        elif unit == "w":
            seconds = seconds // 604800 * calendar.day_seconds * len(calendar.days)
    return seconds


# --- config ------------------------------------------------------------------------------------


def has_targets(cfg: Config) -> bool:
    sla = getattr(cfg, "sla", None) or {}
    if any(sla.get(k) for k in TARGETS):
        return True
    return any(v.get(k) for table in ("priority", "account") for v in (sla.get(table) or {}).values() for k in TARGETS)


def targets_for(cfg: Config, priority: str | None, account: str | None) -> tuple[str | None, str | None, Calendar | None]:
    """(response, resolution, calendar) for a ticket: a [sla.priority.P] value wins over an
    [sla.account.A] value, which wins over the [sla] one; a calendar of None counts every hour."""
    sla = getattr(cfg, "sla", None) or {}
    layers = [
        (sla.get("priority") or {}).get(priority or "", {}),
        (sla.get("account") or {}).get(account or "", {}),
        sla,
    ]

    def pick(key: str) -> Any:
        for layer in layers:
            if layer.get(key) is not None:
                return layer[key]
        return None

    hours = pick("business_hours")
    calendar = None
    if hours:
        opens, closes = parse_hours(hours)
        calendar = Calendar(
            tz=time_zone(None, sla["timezone"]),
            open=opens,
            close=closes,
            days=frozenset(DAY_NAMES.index(d) for d in (sla.get("business_days") or DEFAULT_DAYS)),
            holidays=frozenset(sla.get("holidays") or []),
        )
    return pick("response"), pick("resolution"), calendar


def _parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def due_times(cfg: Config, created_at: str, priority: str | None, account: str | None) -> tuple[str | None, str | None]:
    """(due_response_at, due_resolution_at) as ISO 8601 UTC, None where there is no target."""
    response, resolution, calendar = targets_for(cfg, priority, account)
    start = _parse_iso(created_at)
    out = []
    for text in (response, resolution):
        if not text:
            out.append(None)
            continue
        seconds = target_seconds(text, calendar)
        due = calendar.add(start, seconds) if calendar else start + timedelta(seconds=seconds)
        out.append(_iso(due))
    return out[0], out[1]


def set_due_times(cfg: Config, db: Database, ticket_id: int, *, now: str | None = None) -> tuple[str | None, str | None]:
    """(Re)compute a ticket's due times from its creation, priority and account. A target moved
    into the future is no longer breached: its breach record and the overdue mark are cleared
    (the overdue check marks a new breach, with its own event)."""

    row = db.execute("select created_at, priority, account from tickets where id = ?", [ticket_id]).fetchone()
    if row is None:
        return None, None
    due_response, due_resolution = due_times(cfg, row[0], row[1], row[2])
    now = now or now_iso()
    set_due(db, ticket_id, due_response, due_resolution, now, OVERDUE_SQL)
    return due_response, due_resolution


# --- the overdue check -------------------------------------------------------------------------


def mark_overdue(cfg: Config, db: Database, *, now: datetime | None = None, recompute: bool = False,
                 notice: Callable[[dict], dict | None] | None = None) -> dict:
    """Mark tickets past an SLA target as overdue, record one 'overdue' event per breach, clear
    the mark where it no longer holds, and call ``notice(report)`` in the same transaction when
    there are new breaches (outgoing/notices.py queues the mail). Returns a report (what
    'overdue check --json' prints)."""

    now_s = _iso(now or datetime.now(UTC))
    report: dict[str, Any] = {"checked_at": now_s, "due_times_set": 0, "new_breaches": [], "cleared": 0}
    with transaction(db):
        if recompute or has_targets(cfg):
            # Tickets without due times (imported before [sla] was set) get them; --recompute
            # recomputes every ticket that is not closed (after the targets were changed).
            sql = "select id from tickets where status != 'closed'"
            if not recompute:
                sql += " and due_response_at is null and due_resolution_at is null"
            ids = [r[0] for r in db.execute(sql)]
            for ticket_id in ids:
                set_due_times(cfg, db, ticket_id, now=now_s)
            report["due_times_set"] = len(ids)
        breaches = []
        for target, due_col, mark_col, extra in (
            ("response", "due_response_at", "response_breached_at", "and first_response_at is null "),
            ("resolution", "due_resolution_at", "resolution_breached_at", ""),
        ):
            rows = db.execute(
                f"select id, subject, requester, priority, account, assignee, {due_col} from tickets "
                f"where status != 'closed' {extra}and {due_col} <= ? and {mark_col} is null",
                [now_s],
            ).fetchall()
            for ticket_id, subject, requester, priority, account, assignee, due in rows:
                mark_breached(db, ticket_id, target, now_s)
                log_event(db, "overdue", f"{target} target passed (due {due}, priority {priority})",
                          ticket_id=ticket_id, account=account)
                breaches.append({"id": ticket_id, "target": target, "due_at": due, "subject": subject,
                                 "requester": requester, "priority": priority, "account": account,
                                 "assignee": assignee})
        report["cleared"] = refresh_overdue_marks(db, now_s, OVERDUE_SQL)
        report["new_breaches"] = sorted(breaches, key=lambda b: (b["id"], b["target"]))
        report["overdue"] = db.execute(
            "select count(*) from tickets where overdue = 1 and status != 'closed'"
        ).fetchone()[0]
        report["notice"] = notice(report) if (breaches and notice) else None
    if breaches:
        log.warning("%d new SLA breach(es); %d tickets overdue", len(breaches), report["overdue"])
    return report


