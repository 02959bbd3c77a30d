"""Mail to the team: the notice of tickets that passed their SLA targets, queued with the check."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from mail2ticket.config.model import Config
from mail2ticket.tickets.db import log_event
from mail2ticket.tickets.sla import mark_overdue

if TYPE_CHECKING:
    from sqlite_utils import Database


# Notices list at most this many tickets; the rest is counted.
NOTICE_LIST_MAX = 50

log = logging.getLogger(__name__)


def check_overdue(cfg: Config, db: Database, *, now: datetime | None = None, recompute: bool = False) -> dict:
    """The overdue check (tickets/sla.mark_overdue) with its notice: when [sla] notify is set, one
    mail listing the new breaches is queued in the same transaction. Returns the check's report."""
    return mark_overdue(cfg, db, now=now, recompute=recompute, notice=lambda report: queue_notice(cfg, db, report))


def queue_notice(cfg: Config, db: Database, report: dict) -> dict | None:
    """One mail per check listing the new breaches, through the outbox (same transaction)."""
    sla = getattr(cfg, "sla", None) or {}
    to = sla.get("notify")
    if not to:
        return None
    # Here, not at the top: the mail libraries load only when a notice is sent, not for every
    # overdue check (every 15 minutes in the daemon, and 'overdue check' from the shell).
    from mail2ticket.outgoing.compose import Draft, check_address
    from mail2ticket.outgoing.outbox import queue

    breaches = report["new_breaches"]
    name = sla.get("notify_account") or breaches[0]["account"]
    account = next((a for a in cfg.accounts if a.name == name), None) or (cfg.accounts[0] if cfg.accounts else None)
    if account is None:
        log.error("sla.notify is set but there is no account to send the notice from")
        return None
    tickets = sorted({b["id"] for b in breaches})
    lines = [
        f"{len(breaches)} SLA target(s) passed on {len(tickets)} ticket(s) "
        f"(checked {report['checked_at']}; {report['overdue']} tickets are overdue in all).",
        "",
    ]
    for b in breaches[:NOTICE_LIST_MAX]:
        who = f", assigned to {b['assignee']}" if b["assignee"] else ""
        lines.append(f"#{b['id']} [{b['priority']}] {b['target']} due {b['due_at']}: {b['subject']}")
        lines.append(f"    from {b['requester'] or 'unknown'}, account {b['account']}{who}")
    if len(breaches) > NOTICE_LIST_MAX:
        lines.append(f"... and {len(breaches) - NOTICE_LIST_MAX} more: mail2ticket tickets list --overdue")
    lines += ["", "See them with: mail2ticket tickets list --overdue"]
    draft = Draft(
        from_address=account.email,
        to=[check_address(to)],
        subject=f"[mail2ticket] {len(tickets)} ticket(s) passed their SLA targets",
        body="\n".join(lines) + "\n",
        auto_submitted="auto-generated",
    )
    row = queue(db, draft, account=account.name, kind="sla-notice", ticket_id=None)
    for ticket_id in tickets:
        log_event(db, "overdue-notice", f"notice to {to} ({row['message_id']})", ticket_id=ticket_id,
                  account=account.name)
    return {"id": row["id"], "to": to, "message_id": row["message_id"]}
