"""The rows of hook_subscriptions and hook_deliveries: the config's [[hooks]] as rows, and the
durable queue of events waiting for a hook. outgoing/hooks.py decides and delivers; the SQL is here.

A delivery is queued by ``enqueue`` (called by tickets/db.log_event) in the event's own
transaction, with one INSERT ... SELECT over the subscriptions: with no hook configured that is
one statement on an empty table. Its payload is frozen by ``freeze`` just before that
transaction commits, so it holds the ticket as the whole change left it (a new ticket with the
priority and assignee its rules gave it), whenever it is delivered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mail2ticket.errors import NotFoundError

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

PAYLOAD_VERSION = 1
DELIVERY_COLUMNS = (
    "id, hook, event, event_id, ticket_id, account, created_at, status, attempts, next_attempt_at, "
    "delivered_at, last_error, last_result"
)
_ENQUEUE_SQL = (
    "insert into hook_deliveries (hook, event, event_id, ticket_id, account, created_at) "
    "select s.hook, s.event, cast(?1 as integer), cast(?2 as integer), cast(?3 as text), cast(?4 as text) "
    "from hook_subscriptions s where s.kind = ?5 and "
    "(s.account is null or s.account = coalesce(?3, (select account from tickets where id = ?2)))"
)


def subscribed_kinds(db: Database) -> frozenset[str]:
    """The history kinds some hook wants (none: no hook is configured)."""
    return frozenset(r[0] for r in db.execute("select distinct kind from hook_subscriptions"))


def enqueue(db: Database, kind: str, event_id: int, ticket_id: int | None, account: str | None, now: str) -> int:
    """Queue the event ``event_id`` of ``kind`` for every hook that wants it (the caller's
    transaction); how many deliveries were queued."""
    return db.conn.execute(_ENQUEUE_SQL, [event_id, ticket_id, account, now, kind]).rowcount


def freeze(db: Database, tickets_of: Callable[[Sequence[int]], list[dict]]) -> int:
    """Write the payload of every delivery that has none yet (those queued in this transaction),
    with the ticket objects ``tickets_of(ids)`` gives now; how many."""
    rows = db.execute(
        "select d.id, d.hook, d.event, d.event_id, d.ticket_id, d.account, e.created_at, e.actor, e.detail, "
        "e.kind from hook_deliveries d left join events e on e.id = d.event_id where d.payload is null"
    ).fetchall()
    if not rows:
        return 0
    tickets = {t["id"]: t for t in tickets_of(sorted({r[4] for r in rows if r[4] is not None}))}
    for (delivery, hook, event, event_id, ticket_id, account, created_at, actor, detail, kind) in rows:
        ticket = tickets.get(ticket_id)
        body = event_payload(event, event_id=event_id, time=created_at, kind=kind, actor=actor, detail=detail,
                             account=account or (ticket or {}).get("account"), ticket=ticket, hook=hook)
        db.execute("update hook_deliveries set payload = ? where id = ?", [json.dumps(body), delivery])
    return len(rows)


def event_payload(event: str, *, event_id: int | None, time: str, kind: str | None, actor: str | None,
                  detail: str | None, account: str | None, ticket: dict | None, hook: str,
                  test: bool = False) -> dict[str, Any]:
    """The JSON a hook receives (docs/hooks.md, version 1)."""
    body: dict[str, Any] = {
        "version": PAYLOAD_VERSION,
        "event": event,
        "id": event_id,
        "time": time,
        "hook": hook,
        "account": account,
        "kind": kind,
        "actor": actor,
        "detail": detail or "",
        "ticket": ticket,
        "text": summary_text(event, account, detail or "", ticket),
    }
    if test:
        body["test"] = True
    return body


_LABELS = {
    "ticket.created": "new ticket",
    "ticket.followup": "follow-up on",
    "ticket.status": "status of",
    "ticket.assigned": "assignment of",
    "ticket.overdue": "overdue:",
    "monitoring.problem": "monitoring problem:",
    "monitoring.recovery": "monitoring recovery:",
}


def summary_text(event: str, account: str | None, detail: str, ticket: dict | None) -> str:
    """One line for a chat or a terminal: what happened, to which ticket, and the detail."""
    where = f"[{account}] " if account else ""
    if ticket is not None:
        label = _LABELS.get(event, event)
        who = f", {ticket['assignee']}" if ticket.get("assignee") else ""
        text = f"{where}{label} #{ticket['id']} ({ticket['status']}, {ticket['priority']}{who}): {ticket['subject']}"
        # A monitoring ticket (its "monitoring" object, INTERFACE.md: tool, host, service, state).
        watched = ticket.get("monitoring")
        if isinstance(watched, dict) and watched.get("host"):
            what = "/".join(str(watched[k]) for k in ("host", "service") if watched.get(k))
            text += f" [{what} {watched.get('state') or ''}]".replace(" ]", "]")
        return f"{text} - {detail}" if detail else text
    if event == "message.quarantined":
        return f"{where}message put in quarantine {detail}"  # detail: "#N (reason): error"
    if event == "account.failing":
        return f"{where}account {account} is failing: {detail}"
    if event == "account.recovered":
        return f"{where}account {account} polls again: {detail}"
    return f"{where}{event}: {detail}"


# --- subscriptions: the config's hooks ------------------------------------------------------------


def subscriptions(db: Database) -> set[tuple[str, str, str, str | None]]:
    """Every (hook, kind, event, account) row."""
    return set(db.execute("select hook, kind, event, account from hook_subscriptions").fetchall())


def replace_subscriptions(db: Database, rows: set[tuple[str, str, str, str | None]]) -> None:
    """Make the subscriptions ``rows`` (the caller's transaction)."""
    db.execute("delete from hook_subscriptions")
    db.conn.executemany("insert into hook_subscriptions (hook, kind, event, account) values (?, ?, ?, ?)",
                        sorted(rows, key=lambda r: tuple(v or "" for v in r)))


def fail_unknown_hooks(db: Database, hooks: Sequence[str], now: str) -> int:
    """Deliveries waiting for a hook that is no longer in the config are failed (they stay
    visible in 'hooks list'); how many."""
    marks = ",".join("?" * len(hooks))
    where = f"status = 'pending' and hook not in ({marks})" if hooks else "status = 'pending'"
    return db.execute(
        f"update hook_deliveries set status = 'failed', next_attempt_at = null, "
        f"last_error = 'the hook is no longer in the config' where {where}", list(hooks),
    ).rowcount


# --- the queue ---------------------------------------------------------------------------------------


def due_deliveries(db: Database, now: str, hooks: Sequence[str] | None = None) -> list[dict]:
    """Pending deliveries whose time has come (NULL: at once), oldest first."""
    sql = ("select id, hook, event, payload, attempts from hook_deliveries where status = 'pending' "
           "and (next_attempt_at is null or next_attempt_at <= ?)")
    args: list[Any] = [now]
    if hooks is not None:
        sql += f" and hook in ({','.join('?' * len(hooks))})"
        args += list(hooks)
    return list(db.query(sql + " order by id", args))


def claim(db: Database, delivery_id: int, now: str, until: str) -> bool:
    """Take a due delivery for one attempt: not due again before ``until`` (a deliverer that dies
    mid-attempt leaves it to the next one then). False when another deliverer has it."""
    return db.execute(
        "update hook_deliveries set attempts = attempts + 1, next_attempt_at = ? where id = ? "
        "and status = 'pending' and (next_attempt_at is null or next_attempt_at <= ?)",
        [until, delivery_id, now],
    ).rowcount == 1


def mark_delivered(db: Database, delivery_id: int, result: str, now: str) -> None:
    db.execute(
        "update hook_deliveries set status = 'delivered', delivered_at = ?, last_result = ?, "
        "next_attempt_at = null where id = ?", [now, result, delivery_id],
    )


def mark_not_delivered(db: Database, delivery_id: int, error: str, result: str | None, *,
                       next_attempt_at: str | None, failed: bool) -> None:
    """An attempt failed: pending again from ``next_attempt_at``, or failed for good."""
    db.execute(
        "update hook_deliveries set status = ?, last_error = ?, last_result = ?, next_attempt_at = ? "
        "where id = ?", ["failed" if failed else "pending", error, result, next_attempt_at, delivery_id],
    )


def make_due(db: Database, target: str | int | None) -> list[int]:
    """Failed (and waiting) deliveries of a hook, one delivery by id, or all of them (None):
    pending again and due at once, with a fresh count of attempts; their ids."""
    if isinstance(target, int):
        row = db.execute("select status from hook_deliveries where id = ?", [target]).fetchone()
        if row is None:
            raise NotFoundError(f"no hook delivery #{target}", "see 'mail2ticket hooks list --all'")
        where, args = "id = ? and status != 'delivered'", [target]
    elif target is not None:
        where, args = "hook = ? and status != 'delivered'", [target]
    else:
        where, args = "status != 'delivered'", []
    ids = [r[0] for r in db.execute(f"select id from hook_deliveries where {where} order by id", args)]
    if ids:
        db.execute(f"update hook_deliveries set status = 'pending', next_attempt_at = null, attempts = 0 "
                   f"where {where}", args)
    return ids


def delivery_payload(db: Database, delivery_id: int) -> str | None:
    row = db.execute("select payload from hook_deliveries where id = ?", [delivery_id]).fetchone()
    return row[0] if row else None


def get_deliveries(db: Database, ids: Sequence[int]) -> list[dict]:
    marks = ",".join("?" * len(ids))
    return list(db.query(f"select {DELIVERY_COLUMNS} from hook_deliveries where id in ({marks}) order by id",
                         list(ids))) if ids else []


def list_deliveries(db: Database, *, include_delivered: bool = False) -> list[dict]:
    """The queue, oldest first: waiting and failed deliveries (and with ``include_delivered``, the
    delivered ones still kept)."""
    where = "" if include_delivered else " where status != 'delivered'"
    return list(db.query(f"select {DELIVERY_COLUMNS} from hook_deliveries{where} order by id"))


def per_hook(db: Database) -> dict[str, dict]:
    """For each hook with deliveries: pending, failed and delivered counts, when its oldest
    pending delivery was queued, its last error and when it last delivered."""
    out: dict[str, dict] = {}
    for row in db.query(
        "select hook, sum(case when status = 'pending' then 1 else 0 end) as pending, "
        "sum(case when status = 'failed' then 1 else 0 end) as failed, "
        "sum(case when status = 'delivered' then 1 else 0 end) as delivered, "
        "min(case when status = 'pending' then created_at end) "
        "as oldest_pending_at, max(delivered_at) as last_delivered_at from hook_deliveries group by hook"
    ):
        out[row.pop("hook")] = row
    for hook, error in db.execute(
        "select d.hook, d.last_error from hook_deliveries d where d.id = (select max(id) from hook_deliveries "
        "x where x.hook = d.hook and x.last_error is not null and x.status != 'delivered')"
    ):
        out[hook]["last_error"] = error
    return out


QUEUE_STATUSES = ("pending", "failed")  # what waits: for its next attempt, or for 'hooks retry'


def queue_summary(db: Database) -> dict[str, tuple[int, str | None]]:
    """{status: (deliveries, when the oldest was queued)} for pending and failed deliveries
    (0 and None when there are none): the hook queue's size and age, for metrics."""
    out: dict[str, tuple[int, str | None]] = dict.fromkeys(QUEUE_STATUSES, (0, None))
    for status, n, oldest in db.execute(
        "select status, count(*), min(created_at) from hook_deliveries where status in ('pending', 'failed') "
        "group by status"
    ):
        out[status] = (n, oldest)
    return out


def queue_stats(db: Database) -> dict[str, Any]:
    """The hook queue for 'status': pending and failed deliveries, and when the oldest pending one
    was queued (ISO 8601 UTC, None when none waits)."""
    summary = queue_summary(db)
    return {"pending": summary["pending"][0], "failed": summary["failed"][0],
            "oldest_pending_at": summary["pending"][1]}


def prune_delivered(db: Database, before: str) -> int:
    """Forget deliveries delivered before ``before``; how many."""
    return db.execute("delete from hook_deliveries where status = 'delivered' and delivered_at < ?",
                      [before]).rowcount
