"""The 'tickets' commands: triage from the shell (list, count, show, search, assign, priority, tag, note)."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from mail2ticket.cli.output import (
    is_tty,
    json_option,
    local_time,
    print_csv,
    print_json,
    print_table,
    shown_time,
)
from mail2ticket.cli.params import TicketId

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.

PRIORITY_CHOICES = ["low", "normal", "high", "urgent"]  # store.PRIORITIES (not imported: start-up)
SORTS = ["updated", "created", "id", "priority", "due", "date"]
PAGE = 50  # rows shown on a terminal unless --limit says otherwise
CSV_COLUMNS = [
    "id", "status", "priority", "account", "requester", "requester_name", "assignee", "subject", "tags",
    "created_at", "updated_at", "closed_at", "first_response_at", "due_response_at", "due_resolution_at",
    "overdue", "message_count", "incoming_count", "first_message_at",
    # A monitoring ticket's facts (docs/monitoring.md); empty for the others.
    "monitoring_tool", "monitoring_host", "monitoring_service", "monitoring_state",
]
PRIORITY_STYLE = {"urgent": "bold red", "high": "yellow", "normal": "", "low": "dim"}
# On a narrow terminal (80 columns) the list gives way in this order, so each ticket stays one line.
TICKETS_FIT = ("hide tags", "hide assignee", "hide account", "shrink requester 24", "hide msgs", "shrink subject 40",
               "hide updated", "shrink requester 16", "shrink subject 24", "shrink requester 12", "shrink subject 16",
               "hide requester", "hide due", "shrink subject 8")
# With monitoring tickets the host, service and state come first: the subject repeats them.
MONITORING_FIT = ("hide tags", "hide assignee", "hide account", "hide requester", "hide msgs", "shrink subject 24",
                  "hide updated", "shrink service 24", "shrink host 16", "shrink subject 12", "hide due",
                  "shrink service 12", "shrink state 8", "hide subject")


@click.group("tickets")
def tickets_group():
    """List, search, read, answer and manage tickets."""


# --- dates on the command line ------------------------------------------------------------------

_AGO_RE = re.compile(r"^(\d+)\s*([mhdw])$")


class When(click.ParamType):
    """A time: 2026-01-31, '2026-01-31 14:00' (local time), ISO 8601 with a zone, 'today',
    'yesterday', or an age such as 7d, 12h, 30m, 2w (that long ago). Converted to ISO 8601 UTC.
    With ``end``, a bare date means the end of that day (the whole day is included)."""

    name = "when"

    def __init__(self, end: bool = False):
        self.end = end

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        now = datetime.now().astimezone()
        m = _AGO_RE.match(text)
        if m:
            n, unit = int(m.group(1)), m.group(2)
            delta = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n),
                     "w": timedelta(weeks=n)}[unit]
            return _utc(now - delta)
        day_only = False
        if text in ("today", "yesterday"):
            dt = now.replace(hour=0, minute=0, second=0, microsecond=0)
            if text == "yesterday":
                dt = (dt - timedelta(days=1)).replace(tzinfo=None).astimezone()
            day_only = True
        else:
            try:
                dt = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
            except ValueError:
                self.fail(
                    f"{value!r} is not a date or time (try 2026-01-31, '2026-01-31 14:00', 7d or yesterday)",
                    param, ctx,
                )
            day_only = re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None
            if dt.tzinfo is None:
                dt = dt.astimezone()  # local time, as the user reads their clock
        if day_only and self.end:
            dt = (dt.replace(tzinfo=None) + timedelta(days=1)).astimezone(dt.tzinfo)
        return _utc(dt)


def _utc(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- the filters shared by list and count --------------------------------------------------------


def filter_options(func):
    options = [
        click.option("--status", type=click.Choice(["open", "pending", "closed", "all"]),
                     help="Only tickets with this status (default: every ticket that is not closed)."),
        click.option("--account", multiple=True, help="Only tickets of this account (repeat for several)."),
        click.option("--priority", multiple=True, type=click.Choice(PRIORITY_CHOICES),
                     help="Only tickets of this priority (repeat for several)."),
        click.option("--assignee", multiple=True, help="Only tickets assigned to this person (repeat for several)."),
        click.option("--unassigned", is_flag=True, help="Only tickets assigned to nobody."),
        click.option("--tag", "tags", multiple=True, help="Only tickets with this tag (repeat: all of them)."),
        click.option("--requester", help="Only tickets from this address, or from a domain: --requester @example.com."),
        click.option("--overdue", is_flag=True, help="Only tickets past an SLA target."),
        click.option("--since", "created_since", type=When(), help="Created at or after (2026-01-31, 7d, yesterday)."),
        click.option("--until", "created_until", type=When(end=True), help="Created before (a date: up to its end)."),
        click.option("--updated-since", type=When(), help="Last activity at or after."),
        click.option("--updated-until", type=When(end=True), help="Last activity before."),
        click.option("--before", type=When(),
                     help="First mail dated before this (its Date, not when it was imported): old mail."),
        click.option("--after", type=When(), help="First mail dated at or after this."),
        click.option("--monitoring/--no-monitoring", "monitoring", default=None,
                     help="Only monitoring tickets (one per problem of Nagios, Icinga, Zabbix, Alertmanager, "
                     "Monit, Checkmk...), or only the others: the mail of people."),
        click.option("--host", multiple=True, help="Only monitoring tickets of this host (repeat for several)."),
        click.option("--service", multiple=True,
                     help="Only monitoring tickets of this service or alert (repeat for several)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filters(kw: dict) -> dict:
    names = ("status", "account", "priority", "assignee", "unassigned", "tags", "requester", "overdue",
             "created_since", "created_until", "updated_since", "updated_until", "before", "after",
             "monitoring", "host", "service")
    out = {n: kw.pop(n) for n in names}
    out["monitoring"] = {True: "only", False: "none"}.get(out["monitoring"])  # --monitoring / --no-monitoring
    return out



# --- which tickets a command works on: ids, or the filters of 'tickets list' ---------------------

_ID_RE = re.compile(r"^#?\d+$")


def split_ids(args: tuple[str, ...]) -> tuple[list[int], list[str]]:
    """The leading arguments that are ticket ids (12 or #12), and the rest (a name, a priority, tags)."""
    ids: list[int] = []
    for i, arg in enumerate(args):
        if not _ID_RE.match(arg.strip()):
            return ids, list(args[i:])
        ids.append(int(arg.strip().lstrip("#")))
    return ids, []


def _plural(n: int) -> str:
    return f"{n} ticket" + ("" if n == 1 else "s")


def select_tickets(app, name: str, ticket_ids, kw: dict, yes: bool, *, example: str,
                   default_status: str | None = None, already=None) -> list[dict]:
    """The tickets a command changes: the ids given (every one must exist: otherwise nothing is
    changed), or those the filters of 'tickets list' select, after saying how many and asking
    (--yes does not ask; without a terminal --yes is required). ``already(ticket)`` leaves out
    the tickets the change would not change; ``default_status`` narrows a filter without --status."""
    from mail2ticket.errors import NotFoundError
    from mail2ticket.tickets.db import get_tickets, list_tickets

    filters = _filters(kw)
    filtered = any(v not in (None, False, ()) for v in filters.values())
    if ticket_ids and filtered:
        raise click.UsageError(f"give ticket ids or filters, not both ('tickets {name} --help')")
    if not ticket_ids and not filtered:
        raise click.UsageError(
            f"give ticket ids ('tickets {name} 12 13 {example}') or the filters of 'tickets list' "
            f"('tickets {name} --account support --before 2026-01-01 {example}')".replace("  ", " ")
        )
    check_filters(app, filters)
    if ticket_ids:
        ids = list(dict.fromkeys(ticket_ids))
        found = {t["id"]: t for t in get_tickets(app.db, ids)}
        missing = [f"#{i}" for i in ids if i not in found]
        if missing:
            raise NotFoundError(
                f"no ticket {', '.join(missing)}; nothing was changed",
                "see 'mail2ticket tickets list --status all'",
            )
        return [found[i] for i in ids]
    if filters["status"] is None and default_status is not None:
        filters["status"] = default_status
    targets = [t for t in list_tickets(app.db, order="id", **filters) if not (already and already(t))]
    if not targets:
        click.echo("No ticket matches that this would change; nothing changed.")
        return []
    shown = ", ".join(f"#{t['id']}" for t in targets[:20]) + (", ..." if len(targets) > 20 else "")
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise click.UsageError(
                f"{_plural(len(targets))} match ({shown}); no terminal to ask: add --yes to {name} them"
            )
        click.echo(f"{_plural(len(targets))} match: {shown}")
        click.confirm(f"{name.capitalize()} {_plural(len(targets))}?", abort=True)
    return targets


def _known_accounts(app) -> list[str]:
    """The accounts of the config, and those that have tickets (renamed or removed since)."""
    from mail2ticket.tickets.db import ticket_accounts

    names = {a.name for a in app.config().accounts}
    names.update(ticket_accounts(app.db))
    return sorted(names)


def _known_assignees(app) -> list[str]:
    """Everyone who has, or ever had, a ticket, and the assignees of the routing rules."""
    from mail2ticket.tickets.db import known_assignees

    names = known_assignees(app.db)
    names.update(rule.assignee for rule in app.config().rules if getattr(rule, "assignee", None))
    return sorted(names)


def _is_account(app, name: str) -> bool:
    from mail2ticket.tickets.db import account_has_tickets

    return any(a.name == name for a in app.config().accounts) or account_has_tickets(app.db, name)


def _is_assignee(app, name: str) -> bool:
    from mail2ticket.tickets.db import ever_assigned

    return any(getattr(r, "assignee", None) == name for r in app.config().rules) or ever_assigned(app.db, name)


def check_filters(app, filters: dict) -> None:
    """A typo is an error naming what exists, not an empty answer: unknown accounts, and assignees
    that never existed, are usage errors (exit 2). (Statuses and priorities are click choices.)
    Each name given is looked up alone (an index); the whole list only for the error."""
    checks = (("account", "--account", "no account", _is_account, _known_accounts),
              ("assignee", "--assignee", "nobody named", _is_assignee, _known_assignees))
    for key, option, what, is_known, known_values in checks:
        given = filters.get(key)
        given = [given] if isinstance(given, str) else list(given or ())
        if not given or all(is_known(app, g) for g in given):
            continue
        known = known_values(app)
        unknown = [g for g in given if g not in known]
        if unknown:
            raise click.BadParameter(
                f"{what} {unknown[0]!r}; known: {', '.join(known) or '(none yet)'}",
                ctx=click.get_current_context(), param_hint=f"'{option}'",
            )


# --- list and count ------------------------------------------------------------------------------


def _styled(text: str, style: str, tty: bool | None = None):
    """Coloured text on a terminal (rich is only imported there), the plain string otherwise."""
    if not style or not (is_tty() if tty is None else tty):
        return text
    from rich.text import Text

    return Text(text, style=style)


def _due_cell(t: dict, tty: bool | None = None):
    tty = is_tty() if tty is None else tty
    if t["status"] == "closed" or not t["due_at"]:
        return ""
    due = local_time(t["due_at"]) if tty else t["due_at"]
    if t["overdue"]:
        return _styled(f"OVERDUE {due}", "bold red", tty)
    return due


def _ticket_rows(rows: list[dict], extra=None, monitoring: bool = False) -> tuple[list[list], list[str]]:
    """The table of tickets; with ``monitoring``, the host, service and state columns too."""
    tty = is_tty()  # asked once: the whole open queue piped is 16,000 rows (docs/scaling.md)
    table = []
    for t in rows:
        priority = t["priority"]
        row = [
            f"#{t['id']}", t["status"], _styled(priority, PRIORITY_STYLE.get(priority, ""), tty) if tty else priority,
            _due_cell(t, tty), t["account"], t["requester"] or "", t["assignee"] or "", t["subject"],
            " ".join(t["tags"]) if t.get("tags") else "", t["message_count"],
            local_time(t["updated_at"]) if tty else (t["updated_at"] or ""),
        ]
        if monitoring:
            facts = t.get("monitoring") or {}
            row[4:4] = [facts.get("host") or "", facts.get("service") or "", _monitoring_state(facts)]
        if extra:
            row.append(extra(t))
        table.append(row)
    headers = ["id", "status", "priority", "due", "account", "requester", "assignee", "subject", "tags",
               "msgs", "updated"]
    if monitoring:
        headers[4:4] = ["host", "service", "state"]
    return table, headers


def _monitoring_state(facts: dict) -> str:
    """The state word of the latest mail; 'OK (after 1h 5m)' once the problem recovered."""
    if not facts:
        return ""
    state = facts.get("state") or ""
    if facts.get("phase") == "recovered" and facts.get("duration"):
        return f"{state} (after {facts['duration']})"
    return state


@tickets_group.command("list")
@filter_options
@click.option("--sort", "order", type=click.Choice(SORTS), default="updated", show_default=True,
              help="Sort order: newest activity or creation first, by id, most urgent first, soonest due, "
              "or by the date of the first mail, newest first (its Date, never later than it arrived; "
              "the table then shows that date).")
@click.option("--reverse", is_flag=True, help="Reverse the sort order.")
@click.option("--limit", type=click.IntRange(min=0),
              help=f"At most this many tickets; 0 for all (default: {PAGE} on a terminal, all otherwise).")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many tickets first (for paging).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (with a header row) instead of a table.")
@json_option
@click.pass_obj
def tickets_list(app, order, reverse, limit, offset, as_csv, as_json, **kw):
    """List tickets: a table on a terminal, aligned text when piped, JSON or CSV for scripts.

    Without --status it lists every ticket that is not closed, most recent
    activity first. Filters combine (all must hold). Times are local on a
    terminal and ISO 8601 UTC everywhere else. 'created' and 'updated' are
    when mail2ticket stored and last changed a ticket; --sort date, --before
    and --after use the date of its first mail, which tells old mail imported
    today from new mail.

    \b
    Examples:
      mail2ticket tickets list
      mail2ticket tickets list --overdue --sort due
      mail2ticket tickets list --priority urgent --priority high --unassigned
      mail2ticket tickets list --status all --account support --since 2026-01-01 --until 2026-01-31
      mail2ticket tickets list --tag vip --requester @bigcorp.example --json | jq '.[].subject'
      mail2ticket tickets list --status all --limit 0 --csv > tickets.csv
      mail2ticket tickets list --sort date --before 2026-01-01
      mail2ticket tickets list --monitoring --host web1
      mail2ticket tickets list --no-monitoring --unassigned

    Monitoring tickets (one per problem, docs/monitoring.md) show their host,
    service and state: with --monitoring, --host or --service, or whenever the
    listing has some. The state is the tool's word in the latest mail, with the
    problem's duration once it recovered. --no-monitoring leaves the machines'
    mail out, to triage the mail of people.
    """
    from mail2ticket.tickets.db import count_tickets, list_tickets

    filters = _filters(kw)
    check_filters(app, filters)
    table_on_tty = is_tty() and not as_json and not as_csv
    if limit is None and table_on_tty:
        limit = PAGE
    # A table needs neither incoming_count nor (but sorted by it) first_message_at.
    brief = not as_json and not as_csv and order != "date"
    rows = list_tickets(app.db, order=order, reverse=reverse, limit=limit or None, offset=offset, brief=brief,
                        **filters)
    if as_json:
        print_json(rows)
        return
    if as_csv:
        flat = [{**t, **{f"monitoring_{k}": (t["monitoring"] or {}).get(k) for k in ("tool", "host", "service", "state")}}
                for t in rows]
        print_csv(flat, CSV_COLUMNS)
        return
    if not rows and table_on_tty:
        click.echo("No tickets." if filters["status"] == "all" else "No tickets (try --status all).")
        return
    # The host, service and state columns: when asked for monitoring tickets, or when some are listed.
    with_monitoring = bool(filters["monitoring"] == "only" or filters["host"] or filters["service"]
                           or any(t["monitoring"] for t in rows))
    table, headers = _ticket_rows(rows, monitoring=with_monitoring)
    fit = MONITORING_FIT if with_monitoring else TICKETS_FIT
    if order == "date":  # show the date sorted by (the first mail's) in place of the last activity
        for row, t in zip(table, rows, strict=True):
            row[headers.index("updated")] = shown_time(t["first_message_at"])
        headers[headers.index("updated")] = "date"
        fit = tuple(step.replace("updated", "date") for step in fit)
    print_table(table, headers, fit=fit)
    if table_on_tty and limit and len(rows) == limit:
        total = count_tickets(app.db, **filters)
        if total > offset + len(rows):
            click.echo(
                f"Showing {offset + 1}-{offset + len(rows)} of {total}: see more with "
                f"--offset {offset + len(rows)}, or all with --limit 0."
            )


@tickets_group.command("count")
@filter_options
@click.option("--by", type=click.Choice(["status", "priority", "account", "assignee"]),
              help="Count per status, priority, account or assignee.")
@json_option
@click.pass_obj
def tickets_count(app, by, as_json, **kw):
    """Count tickets, with the same filters as 'tickets list'.

    \b
    Examples:
      mail2ticket tickets count --overdue
      mail2ticket tickets count --status all --by status
      mail2ticket tickets count --by assignee --json
    """
    from mail2ticket.tickets.db import count_tickets

    filters = _filters(kw)
    check_filters(app, filters)
    result = count_tickets(app.db, by=by, **filters)
    if as_json:
        print_json({"count": result} if by is None else [{by: k, "count": n} for k, n in result.items()])
    elif by is None:
        click.echo(str(result))
    else:
        print_table([[k if k is not None else "(none)", n] for k, n in result.items()], [by, "tickets"])


# --- show ----------------------------------------------------------------------------------------


@tickets_group.command("show")
@click.argument("ticket_id", type=TicketId())
@json_option
@click.pass_obj
def tickets_show(app, ticket_id, as_json):
    """Show a ticket with all its messages and its history (changes, notes, SLA events).

    \b
    Examples:
      mail2ticket tickets show 42
      mail2ticket tickets show 42 --json | jq '.messages[-1].body_text'
    """
    from mail2ticket.tickets.blobs import attachment_store
    from mail2ticket.tickets.db import get_ticket, ticket_events, ticket_messages

    ticket = get_ticket(app.db, ticket_id)
    ticket["messages"] = ticket_messages(app.db, ticket_id, attachment_store(app.config()).location)
    ticket["events"] = ticket_events(app.db, ticket_id)
    from mail2ticket.outgoing.loops import failing_participants

    ticket["failing_addresses"] = failing_participants(app.db, ticket_id)
    if as_json:
        print_json(ticket)
        return
    click.echo(f"Ticket #{ticket['id']}: {ticket['subject']}")
    click.echo(
        f"Status: {ticket['status']}   Priority: {ticket['priority']}   Account: {ticket['account']}   "
        f"Requester: {ticket['requester_name'] or ''} <{ticket['requester'] or ''}>"
    )
    click.echo(f"Assignee: {ticket['assignee'] or '-'}   Tags: {' '.join(ticket['tags']) or '-'}")
    click.echo(f"Created: {shown_time(ticket['created_at'])}   Updated: {shown_time(ticket['updated_at'])}")
    facts = ticket["monitoring"]
    if facts:
        what = " ".join(p for p in (facts["host"], facts["service"]) if p)
        if facts["phase"] == "recovered":
            when = (f"started {shown_time(facts['started_at'])}, recovered {shown_time(facts['recovered_at'])}"
                    + (f", duration {facts['duration']}" if facts["duration"] else ""))
        else:
            when = (f"a problem since {shown_time(facts['started_at'])}"
                    + (f" ({facts['duration']} to its latest mail)" if facts["duration"] else ""))
        severity = f" ({facts['severity']})" if facts["severity"] else ""
        event = f", event {facts['event_id']}" if facts["event_id"] else ""
        click.echo(f"Monitoring: {facts['tool']} {what}: {facts['state']}{severity}{event}; {when}")
    if ticket["due_response_at"] or ticket["due_resolution_at"]:
        response = "answered " + shown_time(ticket["first_response_at"]) if ticket["first_response_at"] else (
            "due " + shown_time(ticket["due_response_at"]) if ticket["due_response_at"] else "-")
        click.echo(
            f"Response: {response}   Resolution: due {shown_time(ticket['due_resolution_at']) or '-'}"
            + ("   OVERDUE" if ticket["overdue"] else "")
        )
    for f in ticket["failing_addresses"]:
        click.echo(
            f"Failing address: {f['address']} bounced {shown_time(f['failed_at'])} ({f['reason']}); no automatic "
            f"mail to it until {shown_time(f['hold_until'])} or until it writes to us"
        )
    for m in ticket["messages"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        click.echo("")
        click.echo(f"{arrow} {m['from_name'] or ''} <{m['from_address'] or ''}>  {shown_time(m['date'])}")
        click.echo(f"   Subject: {m['subject']}")
        if m["thread_reason"]:
            click.echo(f"   Threading: {m['thread_reason']}")
        if m["ack_reason"]:
            click.echo(f"   Acknowledgement: {m['ack_reason']}")
        click.echo("")
        for line in (m["body_text"] or "").strip().splitlines():
            click.echo(f"   {line}")
        for a in m["attachments"]:
            click.echo(f"   [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes) {a['path']}")
    if ticket["events"]:
        click.echo("")
        click.echo("History:")
        for e in ticket["events"]:
            actor = f" ({e['actor']})" if e.get("actor") and e["actor"] != "system" else ""
            detail = (e["detail"] or "").strip()
            if e["kind"] == "note" and "\n" in detail:
                click.echo(f"  {shown_time(e['created_at'])}  note{actor}:")
                for line in detail.splitlines():
                    click.echo(f"      {line}")
            else:
                click.echo(f"  {shown_time(e['created_at'])}  {e['kind']}{actor}: {detail}")


@tickets_group.command("attachment")
@click.argument("ticket_id", type=TicketId())
@click.argument("which", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="The file to write ('-': standard output; default: the attachment's file name here).")
@click.pass_obj
def tickets_attachment(app, ticket_id, which, output):
    """Save an attachment of a ticket, its SHA-256 checked first.

    WHICH is the attachment's number in the ticket (1 is the first, in the order
    'tickets show' lists them), its file name, or its SHA-256 (at least the
    first 8 characters). Without WHICH, the ticket's attachments are listed with
    their numbers. The bytes come from the attachment store, a directory or an
    S3 bucket alike; an attachment that is missing or does not match its
    SHA-256 is refused (nothing is written). The file is created with mode 600
    and never overwrites one that exists.

    \b
    Examples:
      mail2ticket tickets attachment 42
      mail2ticket tickets attachment 42 1
      mail2ticket tickets attachment 42 invoice.pdf -o /tmp/invoice.pdf
      mail2ticket tickets attachment 42 2 -o - | file -
    """
    import os
    import shutil

    from mail2ticket.errors import StoreError
    from mail2ticket.intake.quarantine import write_private
    from mail2ticket.tickets.blobs import attachment_store
    from mail2ticket.tickets.db import get_ticket, ticket_messages

    get_ticket(app.db, ticket_id)  # NotFoundError for a ticket that does not exist
    store = attachment_store(app.config())
    found = [a for m in ticket_messages(app.db, ticket_id, store.location) for a in m["attachments"]]
    if which is None:
        if not found:
            click.echo(f"Ticket #{ticket_id} has no attachments.")
        for n, a in enumerate(found, 1):
            click.echo(f"{n:>3}  {a['filename']}  ({a['content_type']}, {a['size']} bytes)  {a['sha256'][:12]}")
        return
    chosen = _choose_attachment(found, which, ticket_id)
    name = f"ticket #{ticket_id} attachment {chosen['filename']!r}"
    target = output or Path(os.path.basename(chosen["filename"] or "") or f"attachment-{chosen['sha256'][:12]}")
    try:
        with store.open_verified(chosen["sha256"]) as src:
            if str(target) == "-":
                shutil.copyfileobj(src, sys.stdout.buffer)
                sys.stdout.flush()
                return
            write_private(target, src)
    except StoreError as exc:
        raise type(exc)(f"{name}: {exc}", exc.hint) from None
    click.echo(f"{name} written to {target} ({chosen['size']} bytes, SHA-256 checked).")


def _choose_attachment(found: list[dict], which: str, ticket_id: int) -> dict:
    """The attachment WHICH names: a number, a file name or a SHA-256 prefix (UsageError otherwise)."""
    if which.isdigit() and 1 <= int(which) <= len(found):
        return found[int(which) - 1]
    named = [a for a in found if a["filename"] == which]
    if not named and len(which) >= 8 and re.fullmatch(r"[0-9a-fA-F]+", which):
        named = [a for a in found if a["sha256"].startswith(which.lower())]
    if len({a["sha256"] for a in named}) == 1:
        return named[0]
    if named:
        numbers = ", ".join(str(found.index(a) + 1) for a in named)
        raise click.UsageError(f"ticket #{ticket_id} has several attachments named {which!r}: choose by number ({numbers})")
    raise click.UsageError(f"ticket #{ticket_id} has no attachment {which!r} "
                           f"(it has {len(found)}; list them with 'mail2ticket tickets attachment {ticket_id}')")


# --- search --------------------------------------------------------------------------------------


@tickets_group.command("search")
@click.argument("query")
@click.option("--status", type=click.Choice(["open", "pending", "closed", "all"]), default="all",
              show_default=True, help="Only tickets with this status.")
@click.option("--account", help="Only tickets of this account.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many tickets.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many tickets first (for paging).")
@json_option
@click.pass_obj
def tickets_search(app, query, status, account, limit, offset, as_json):
    """Full-text search in subjects, bodies and senders, best match first, with the matching text.

    Words must all appear (in any message of a ticket). QUERY may use SQLite FTS5
    syntax: "a phrase", OR, NOT, prefix*, subject:word, from_name:word; the same
    syntax on PostgreSQL (its own full-text search, docs/storage.md).

    \b
    Examples:
      mail2ticket tickets search printer
      mail2ticket tickets search '"paper jam" OR toner' --status open
      mail2ticket tickets search 'invoice*' --json | jq '.[] | {id, snippet}'
    """
    from mail2ticket.tickets.search import HIT_END, HIT_START, mark_hits, search

    check_filters(app, {"account": account})
    rows = search(app.db, query, limit=limit, offset=offset, status=status, account=account)
    if as_json:
        for r in rows:
            r["snippet"] = mark_hits(r["snippet"])
        print_json(rows)
        return
    if not rows:
        if is_tty():
            click.echo("No matching tickets.")
        return

    def snippet(t):
        if not is_tty():
            return mark_hits(t["snippet"])
        from rich.text import Text

        text = Text()
        for i, part in enumerate(re.split(f"[{HIT_START}{HIT_END}]", t["snippet"])):
            text.append(part, style="bold yellow" if i % 2 else "")
        return text

    table = []
    for t in rows:
        table.append([f"#{t['id']}", t["status"], t["priority"], t["account"], t["requester"] or "",
                      t["subject"], shown_time(t["updated_at"]), snippet(t)])
    print_table(table, ["id", "status", "priority", "account", "requester", "subject", "updated", "match"],
                fit=("shrink match 30", "hide account", "hide updated", "shrink subject 20", "shrink requester 16",
                     "shrink match 16", "hide requester"))


# --- managing tickets: each change is an event in the ticket's history -----------------------------


def message_text(text: str | None, path, template, *, what: str, nothing: str) -> str:
    """The text of a reply or note: --message, --file, or else $EDITOR opened on ``template()``
    (lines starting with '#' removed) when on a terminal. Refuses both options at once, an empty
    text, and (a usage error) no text without a terminal: no editor is ever started then."""
    if text is not None and path is not None:
        raise click.UsageError("give either --message or --file, not both")
    if path is not None:
        text = path.read()
    elif text is None:
        import sys

        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            # Never an editor without a terminal: it would hang on (or scribble into) a pipe.
            raise click.UsageError(
                f"no terminal to open an editor on: give the {what} with --message TEXT or --file FILE "
                "(--file - reads it from standard input)"
            )
        edited = click.edit(template(), extension=".txt", require_save=True)
        if edited is None:
            raise click.ClickException(
                f"the editor was closed without saving: {nothing} (save the text, or give --message)"
            )
        text = "\n".join(line for line in edited.splitlines() if not line.startswith("#")).strip("\n")
    if not text.strip():
        raise click.ClickException(f"the {what} is empty: {nothing} (write some text)")
    return text


@tickets_group.command("assign")
@click.argument("args", metavar="[ID]... [NAME]", nargs=-1)
@click.option("--unassign", is_flag=True, help="Assign the tickets to nobody.")
@filter_options
@click.option("-y", "--yes", is_flag=True, help="Do not ask before changing the tickets a filter selects.")
@click.pass_obj
def tickets_assign(app, args, unassign, yes, **kw):
    """Assign tickets to someone (any name your team uses), or to nobody: by id, or every
    ticket the filters of 'tickets list' select (with a count and a question first).

    \b
    Examples:
      mail2ticket tickets assign 42 alice
      mail2ticket tickets assign 42 43 '#44' alice
      mail2ticket tickets assign 42 --unassign
      mail2ticket tickets assign --account support --unassigned alice --yes
    """
    from mail2ticket.tickets.db import current_user, transaction
    from mail2ticket.tickets.tickets import set_assignee

    ids, rest = split_ids(args)
    if len(rest) > 1:
        raise click.UsageError(f"one name to assign to, not {len(rest)} ({' '.join(rest)})")
    assignee = rest[0] if rest else None
    if bool(assignee) == unassign:
        raise click.UsageError("give a name, or --unassign")
    targets = select_tickets(app, "assign", ids, kw, yes, example="--unassign" if unassign else assignee,
                             already=lambda t: t["assignee"] == assignee)
    for ticket in targets:
        with transaction(app.db):
            changed = set_assignee(app.db, ticket["id"], assignee, actor=current_user())
        if not changed:
            click.echo(f"Ticket #{ticket['id']} already {'has no assignee' if unassign else f'is assigned to {assignee}'}.")
        else:
            click.echo(f"Ticket #{ticket['id']} {'unassigned' if unassign else f'assigned to {assignee}'}.")


@tickets_group.command("priority")
@click.argument("args", metavar="[ID]... PRIORITY", nargs=-1, required=True)
@filter_options
@click.option("-y", "--yes", is_flag=True, help="Do not ask before changing the tickets a filter selects.")
@click.pass_obj
def tickets_priority(app, args, yes, **kw):
    """Set the priority of tickets (by id, or every ticket the filters of 'tickets list'
    select); their SLA due times follow the targets of that priority.

    \b
    Examples:
      mail2ticket tickets priority 42 urgent
      mail2ticket tickets priority 42 43 low
      mail2ticket tickets priority --requester @bigcustomer.example high --yes
    """
    from mail2ticket.outgoing.notices import check_overdue
    from mail2ticket.tickets.db import current_user, transaction
    from mail2ticket.tickets.sla import set_due_times
    from mail2ticket.tickets.tickets import set_priority

    ids, rest = split_ids(args)
    if len(rest) != 1 or rest[0].lower() not in PRIORITY_CHOICES:
        raise click.UsageError(
            f"give one priority after the ids: {', '.join(PRIORITY_CHOICES)}"
            + (f" (not {' '.join(rest)!r})" if rest else "")
        )
    priority = rest[0].lower()
    cfg = app.config()
    targets = select_tickets(app, "priority", ids, kw, yes, example=priority,
                             already=lambda t: t["priority"] == priority)
    changed_any = False
    for ticket in targets:
        with transaction(app.db):
            changed = set_priority(app.db, ticket["id"], priority, actor=current_user())
            if changed:
                set_due_times(cfg, app.db, ticket["id"])
        changed_any = changed_any or changed
        if changed:
            click.echo(f"Ticket #{ticket['id']} now has priority {priority}.")
        else:
            click.echo(f"Ticket #{ticket['id']} already has priority {priority}.")
    if changed_any:
        check_overdue(cfg, app.db)  # a tighter target may already have passed: mark it now


@tickets_group.command("tag")
@click.argument("args", metavar="[ID]... TAG...", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@filter_options
@click.option("-y", "--yes", is_flag=True, help="Do not ask before changing the tickets a filter selects.")
@click.pass_obj
def tickets_tag(app, args, remove, yes, **kw):
    """Add tags to tickets (or remove them with --remove): by id, or every ticket the
    filters of 'tickets list' select. Tags are lower case words; the leading numbers
    are ticket ids, the words after them tags.

    \b
    Examples:
      mail2ticket tickets tag 42 billing vip
      mail2ticket tickets tag 42 43 vip --remove
      mail2ticket tickets tag --requester @bigcustomer.example vip --yes
    """
    from mail2ticket.tickets.db import current_user, get_ticket, transaction
    from mail2ticket.tickets.tickets import add_tags, remove_tags

    ids, tags = split_ids(args)
    if not tags:
        raise click.UsageError("give one or more tags after the ticket ids")
    targets = select_tickets(app, "tag", ids, kw, yes, example=" ".join(tags))
    verb = "removed" if remove else "added"
    for ticket in targets:
        ticket_id = ticket["id"]
        with transaction(app.db):
            if remove:
                changed = remove_tags(app.db, ticket_id, tags, actor=current_user())
            else:
                changed = add_tags(app.db, ticket_id, tags, actor=current_user())
            now = get_ticket(app.db, ticket_id)["tags"]
        if changed:
            click.echo(f"Ticket #{ticket_id}: {verb} {', '.join(changed)}; tags: {' '.join(now) or '(none)'}.")
        else:
            click.echo(f"Ticket #{ticket_id}: nothing {verb}; tags: {' '.join(now) or '(none)'}.")


@tickets_group.command("note")
@click.argument("ticket_id", type=TicketId())
@click.option("-m", "--message", "text", help="The text of the note.")
@click.option("--file", "path", type=click.File("r", encoding="utf-8"), help="Read the text from a file ('-': stdin).")
@click.pass_obj
def tickets_note(app, ticket_id, text, path):
    """Add an internal note to a ticket's history. Notes are never mailed to anyone.

    The text comes from --message, --file (--file - reads standard input), or else,
    on a terminal only, $VISUAL or $EDITOR.

    \b
    Examples:
      mail2ticket tickets note 42 --message "Called the customer; waiting for the part."
      dmesg | tail -20 | mail2ticket tickets note 42 --file -
    """
    from mail2ticket.tickets.db import current_user, get_ticket, transaction
    from mail2ticket.tickets.tickets import add_note

    def template() -> str:
        ticket = get_ticket(app.db, ticket_id)
        return (f"\n\n# Internal note on #{ticket['id']}: {ticket['subject']}\n"
                "# Lines starting with '#' are removed. Notes are never mailed.\n")

    text = message_text(text, path, template, what="note", nothing="nothing added")
    with transaction(app.db):
        add_note(app.db, ticket_id, text, actor=current_user())
    click.echo(f"Note added to ticket #{ticket_id}.")


def register(cli: click.Group) -> None:
    cli.add_command(tickets_group)
