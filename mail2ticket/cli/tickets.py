"""The 'tickets' commands: triage from the shell."""

from __future__ import annotations

import click

from mail2ticket.cli.output import is_tty, json_option, local_time, print_json, print_table


@click.group("tickets")
def tickets_group():
    """List, read and answer tickets."""


def _when(value: str | None) -> str:
    return local_time(value) if is_tty() else (value or "")


@tickets_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["open", "pending", "closed", "all"]),
    help="Only tickets with this status (default: all that are not closed).",
)
@click.option("--account", help="Only tickets of this account.")
@click.option("--requester", help="Only tickets from this address.")
@click.option("--overdue", is_flag=True, help="Only tickets past their SLA targets.")
@click.option("--sort", "order", type=click.Choice(["updated", "created", "id"]), default="updated",
              show_default=True, help="Sort order (newest first for dates).")
@click.option("--limit", type=int, help="At most this many tickets.")
@click.option("--offset", type=int, default=0, help="Skip this many tickets first (for paging).")
@json_option
@click.pass_obj
def tickets_list(app, status, account, requester, overdue, order, limit, offset, as_json):
    """List tickets: a table on a terminal, aligned text when piped, JSON with --json.

    \b
    Examples:
      mail2ticket tickets list
      mail2ticket tickets list --status all --account support --limit 20
      mail2ticket tickets list --json | jq '.[].subject'
    """
    from mail2ticket.store import list_tickets

    rows = list_tickets(
        app.db, status=status, account=account, requester=requester, overdue=overdue,
        limit=limit, offset=offset, order=order,
    )
    if as_json:
        print_json(rows)
        return
    if not rows and is_tty():
        click.echo("No tickets." if status == "all" else "No tickets (try --status all).")
        return
    print_table(
        [
            [f"#{r['id']}", r["status"] + (" OVERDUE" if r["overdue"] else ""), r["priority"], r["account"],
             r["requester"] or "", r["subject"], r["message_count"], _when(r["updated_at"])]
            for r in rows
        ],
        ["id", "status", "priority", "account", "requester", "subject", "msgs", "updated"],
        row_styles=["bold red" if r["overdue"] else ("yellow" if r["priority"] in ("high", "urgent") else None)
                    for r in rows],
    )


@tickets_group.command("show")
@click.argument("ticket_id", type=int)
@json_option
@click.pass_obj
def tickets_show(app, ticket_id, as_json):
    """Show a ticket with all its messages and its history.

    \b
    Example:
      mail2ticket tickets show 42
    """
    from mail2ticket.store import get_ticket, ticket_events, ticket_messages

    ticket = get_ticket(app.db, ticket_id)
    ticket["messages"] = ticket_messages(app.db, ticket_id, app.config().attachments)
    ticket["events"] = ticket_events(app.db, ticket_id)
    if as_json:
        print_json(ticket)
        return
    click.echo(f"Ticket #{ticket['id']}: {ticket['subject']}")
    click.echo(
        f"Status: {ticket['status']}   Priority: {ticket['priority']}   Account: {ticket['account']}   "
        f"Requester: {ticket['requester_name'] or ''} <{ticket['requester'] or ''}>"
    )
    click.echo(f"Created: {_when(ticket['created_at'])}   Updated: {_when(ticket['updated_at'])}")
    for m in ticket["messages"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        click.echo("")
        click.echo(f"{arrow} {m['from_name'] or ''} <{m['from_address'] or ''}>  {_when(m['date'])}")
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
            click.echo(f"  {_when(e['created_at'])}  {e['kind']}: {e['detail']}")


def register(cli: click.Group) -> None:
    cli.add_command(tickets_group)
