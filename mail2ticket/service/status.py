"""The health report of `status`: each account's last poll, push sessions, the outbox, the daemon."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mail2ticket.config.model import Config
from mail2ticket.service.metrics import prometheus_text, textfile_error
from mail2ticket.tickets.daemon_state import daemon_state, next_polls, push_session_rows
from mail2ticket.tickets.db import account_status, recent_events, ticket_counts
from mail2ticket.tickets.hookqueue import queue_stats
from mail2ticket.tickets.leases import daemons as daemon_rows
from mail2ticket.tickets.ledger import open_quarantine_count
from mail2ticket.tickets.mailqueue import waiting_count

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database


def status_report(cfg: Config, db: Database, *, require_daemon: bool | None = None) -> dict:
    """Everything 'status' shows, as plain data. 'healthy' is False when an enabled account is
    failing or no daemon is running on this database: with ``require_daemon`` None (the default)
    only once a daemon has run on it (stopped or dead), with True also when none ever started,
    with False never."""

    status = account_status(db)
    daemon = daemon_state(db)
    group = daemon_group(cfg, db)
    shared = getattr(db, "engine", "sqlite") == "postgresql"
    # The newest row is one dead daemon of several: another one's fresh heartbeat says the group
    # runs. The dead one's own row in the group (fresh until lease_ttl) does not (catalogue 117).
    if shared and not daemon["running"] and any(
            not d["stale"] and (d["host"], d["pid"]) != (daemon["host"], daemon["pid"]) for d in group):
        daemon = dict(daemon, running=True, state="running")
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
    for ev in recent_events(db, "uidvalidity-changed", 5):
        alerts.append(f"{ev['created_at']} account {ev['account']}: {ev['detail']}")
    metrics = {"textfile": str(cfg.metrics_textfile) if cfg.metrics_textfile else None, "error": None}
    if cfg.metrics_textfile is not None:
        failed = textfile_error(db)
        if failed is not None:
            metrics["error"] = failed["error"]
            alerts.append(f"metrics: {failed['error']}; failing since {failed['since']}")
    if shared:
        for d in group:
            if d["stale"] and not d["stopping"]:
                alerts.append(f"daemon pid {d['pid']} on {d['host']}: no heartbeat for {d['heartbeat_age_seconds']} s "
                              "(killed, hung or cut off); the other daemons take its accounts over")
    counts = ticket_counts(db)
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
        "daemons": group,
        "accounts": accounts,
        "tickets": {
            "open": counts.get("open", 0),
            "pending": counts.get("pending", 0),
            "closed": counts.get("closed", 0),
            "overdue": counts["overdue"],
        },
        "quarantine": open_quarantine_count(db),
        "outbox": _outbox_alerts(db, alerts),
        "metrics": metrics,
        "hooks": _hook_alerts(db, alerts),
        "alerts": alerts,
    }


def daemon_group(cfg: Config, db: Database) -> list[dict]:
    """Every daemon registered on the database (several share a PostgreSQL one, docs/scaling.md):
    host, pid, started_at, heartbeat_at (ISO 8601 UTC, the database's clock), the heartbeat's
    age in seconds, stale (older than [daemon] lease_ttl), stopping, the accounts it holds."""
    ttl = cfg.daemon.lease_ttl if cfg.daemon is not None else 30.0
    out = []
    for row in daemon_rows(db, stale_after=ttl):
        out.append({
            "host": row["host"], "pid": row["pid"], "started_at": _iso(row["started_at"]),
            "heartbeat_at": _iso(row["heartbeat_at"]), "heartbeat_age_seconds": max(0, round(row["age"])),
            "stale": row["stale"], "stopping": row["stopping"], "accounts": row["accounts"],
        })
    return out


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(float(epoch), UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def prometheus_report(cfg: Config, db: Database) -> str:
    """What 'status --prometheus' prints: every metric of docs/metrics.md, in the text format."""
    return prometheus_text(cfg, db, daemon_state(db))


def push_sessions(db: Database) -> dict[str, dict]:
    """{account: its push (IDLE) session as the running daemon last wrote it: state (connecting,
    idle = open, busy = importing over it, waiting = could not open and retrying, no-idle,
    closed), since, error (the server's words), failures, retry_at}."""
    return {row.pop("account"): row for row in push_session_rows(db)}


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

    waiting = waiting_count(db)
    if waiting.get("failed"):
        alerts.append(
            f"outbox: {waiting['failed']} mail(s) refused or given up; see 'mail2ticket outbox list', "
            "then 'mail2ticket outbox retry ID'"
        )
    return waiting


def _hook_alerts(db: Database, alerts: list[str]) -> dict:
    """The hook queue (pending, failed, when the oldest pending event was queued); an alert while
    events are failed: they wait for 'hooks retry' (docs/hooks.md)."""

    stats = queue_stats(db)
    if stats["failed"]:
        alerts.append(f"hooks: {stats['failed']} event(s) not delivered after every retry; see "
                      "'mail2ticket hooks list', then 'mail2ticket hooks retry'")
    return stats


# How a server at its process or connection limit looks from the client: Dovecot accepts the
# connection, then closes it during LOGIN (after 10 s) without a word.
_CLOSED_WORDS = ("socket error: eof", "closed the", "connection reset", "eof occurred")
