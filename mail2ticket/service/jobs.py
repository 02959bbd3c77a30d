"""What one pass of the daemon does (poll, outbox, overdue) and the health report of 'status'."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlite_utils import Database

from mail2ticket.config.model import Account, Config

log = logging.getLogger(__name__)

# Jobs run after the accounts are polled in one pass (outbox sender, overdue check).
# Later modules register themselves here: each is called as job(cfg, db).
# The daemon runs each on its own [schedule] key: register with @register_job("outbox"), or set
# job.schedule_key; without one it guesses from the job's name (outbox/overdue), else "poll".
AFTER_POLL_JOBS: list[Callable[[Config, Database], None]] = []


def overdue_check(cfg: Config, db: Database) -> None:
    """Mark tickets past their SLA targets (sla.check_overdue). Registered before the outbox job,
    so a breach notice goes out in the same pass."""
    from mail2ticket.tickets.search import ensure_triggers
    from mail2ticket.tickets.sla import check_overdue

    if ensure_triggers(db):  # a table rebuild by a migration drops triggers: never lose search
        log.warning("the search index had lost its triggers: recreated and re-indexed")
    check_overdue(cfg, db)


overdue_check.schedule_key = "overdue"  # type: ignore[attr-defined]
AFTER_POLL_JOBS.append(overdue_check)


def register_job(schedule_key: str):
    """Decorator: run job(cfg, db) after each 'poll' pass and, in the daemon, on [schedule] KEY."""

    def decorate(job):
        job.schedule_key = schedule_key
        if job not in AFTER_POLL_JOBS:
            AFTER_POLL_JOBS.append(job)
        return job

    return decorate


@register_job("outbox")
def send_outbox(cfg: Config, db: Database) -> None:
    """Send the mail waiting in the outbox (acknowledgements, replies, notices) that is due."""
    from mail2ticket.outgoing.outbox import outbox_job

    outbox_job(cfg, db)


def poll_once(cfg: Config, db: Database, accounts: Sequence[Account], *, run_poll=None) -> list:
    """Poll each account in turn (one failing never stops the others), then run the other jobs.
    ``run_poll`` polls one account (default: mail2ticket.intake.poller.run_poll)."""
    if run_poll is None:
        from mail2ticket.intake.poller import run_poll
    results = [run_poll(cfg, db, account) for account in accounts]
    for job in AFTER_POLL_JOBS:
        try:
            job(cfg, db)
        except Exception:
            log.exception("job %s failed", getattr(job, "__name__", job))
    return results


def status_report(cfg: Config, db: Database, *, require_daemon: bool | None = None) -> dict:
    """Everything 'status' shows, as plain data. 'healthy' is False when an enabled account is
    failing or no daemon is running on this database: with ``require_daemon`` None (the default)
    only once a daemon has run on it (stopped or dead), with True also when none ever started,
    with False never."""
    from mail2ticket.intake.quarantine import open_count
    from mail2ticket.service.daemon import daemon_state, next_polls
    from mail2ticket.tickets.db import account_status

    status = account_status(db)
    daemon = daemon_state(db)
    upcoming = next_polls(db) if daemon["running"] else {}
    sessions = push_sessions(db) if daemon["running"] else {}
    accounts = []
    alerts = []
    healthy = True
    for a in cfg.accounts:
        st = status.get(a.name, {})
        failing = bool(st.get("last_error")) and a.enabled
        if failing:
            healthy = False
            alerts.append(f"account {a.name} is failing: {st.get('last_error')}")
        next_poll = upcoming.get(a.name) if a.enabled else None
        backoff = st.get("next_attempt_at")
        if next_poll and backoff and backoff > next_poll:
            next_poll = backoff  # backing off: no poll before then
        accounts.append(
            {
                "name": a.name,
                "email": a.email,
                "enabled": a.enabled,
                "source": a.source,
                "schedule": a.poll or cfg.schedule["poll"],
                "push": a.push,
                "next_poll_at": next_poll,
                "last_poll_at": st.get("last_poll_at"),
                # A pipe account is never polled: its last delivery by 'ingest' (also last_poll_at).
                "last_delivery_at": st.get("last_poll_at") if a.source == "pipe" else None,
                "last_result": st.get("last_result"),
                "last_error": st.get("last_error"),
                "last_success_at": st.get("last_success_at"),
                "imported_total": st.get("imported_total", 0),
                "failures": st.get("failures", 0),
                "next_attempt_at": st.get("next_attempt_at"),
                "push_session": sessions.get(a.name) if a.push and a.enabled else None,
                "healthy": not failing,
            }
        )
    _push_alerts(sessions, alerts)
    for ev in db.query(
        "select account, created_at, detail from events where kind = 'uidvalidity-changed' "
        "order by id desc limit 5"
    ):
        alerts.append(f"{ev['created_at']} account {ev['account']}: {ev['detail']}")
    counts = {
        row["status"]: row["n"]
        for row in db.query("select status, count(*) as n from tickets group by status")
    }
    overdue = db.execute("select count(*) from tickets where overdue = 1 and status != 'closed'").fetchone()[0]
    if not daemon["running"]:
        if require_daemon or (require_daemon is None and daemon["state"] != "never started"):
            healthy = False
        if daemon["state"] == "dead":
            alerts.append(
                f"the daemon (pid {daemon['pid']} on {daemon['host']}) stopped without a clean "
                f"shutdown; last heartbeat {daemon['heartbeat_at']}"
            )
    return {
        "healthy": healthy,
        "daemon": daemon,
        "accounts": accounts,
        "tickets": {
            "open": counts.get("open", 0),
            "pending": counts.get("pending", 0),
            "closed": counts.get("closed", 0),
            "overdue": overdue,
        },
        "quarantine": open_count(db),
        "outbox": _outbox_alerts(db, alerts),
        "alerts": alerts,
    }


def push_sessions(db: Database) -> dict[str, dict]:
    """{account: its push (IDLE) session as the running daemon last wrote it: state (connecting,
    idle = open, busy = importing over it, waiting = could not open and retrying, no-idle,
    closed), since, error (the server's words), failures, retry_at}."""
    if not db["push_sessions"].exists():
        return {}
    return {row.pop("account"): row for row in db.query("select * from push_sessions")}


# How a server at its process or connection limit looks from the client: Dovecot accepts the
# connection, then closes it during LOGIN (after 10 s) without a word.
_CLOSED_WORDS = ("socket error: eof", "closed the", "connection reset", "eof occurred")


def _push_alerts(sessions: dict[str, dict], alerts: list[str]) -> None:
    """One alert per push session that could not open (up to five; then one for the rest), with
    the server's words, and what to check when the server closed connections without a word."""
    failing = sorted((name, row) for name, row in sessions.items() if row["state"] == "waiting")
    for name, row in failing[:5]:
        alerts.append(f"account {name}: push (IDLE) session could not open ({row['failures']} tries): "
                      f"{row['error']}; next try {row['retry_at']}")
    if len(failing) > 5:
        alerts.append(f"... and {len(failing) - 5} more push sessions could not open "
                      "(mail2ticket status --json: accounts[].push_session)")
    if any(any(w in (row["error"] or "").lower() for w in _CLOSED_WORDS) for _, row in failing):
        alerts.append(
            "the IMAP server closed connections without an answer: a server at its process or "
            "connection limit does this (Dovecot: default_process_limit = 100 sessions per service, "
            "default_client_limit, mail_max_userip_connections; see docs/performance.md)"
        )


def _outbox_alerts(db: Database, alerts: list[str]) -> dict[str, int]:
    """Mail waiting in the outbox, by status; an alert for mail that will not go by itself."""
    from mail2ticket.outgoing.outbox import waiting_count

    waiting = waiting_count(db)
    if waiting.get("failed"):
        alerts.append(
            f"outbox: {waiting['failed']} mail(s) refused or given up; see 'mail2ticket outbox list', "
            "then 'mail2ticket outbox retry ID'"
        )
    return waiting
