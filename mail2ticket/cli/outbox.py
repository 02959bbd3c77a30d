"""The 'outbox' commands: see and re-send mail that is waiting or was refused."""

from __future__ import annotations

import click

from mail2ticket.cli.output import is_tty, json_option, print_json, print_table, shown_time
from mail2ticket.cli.params import TicketId

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.group("outbox")
def outbox_group():
    """Mail waiting to be sent: acknowledgements, replies and notices."""


@outbox_group.command("list")
@click.option("--all", "include_sent", is_flag=True, help="Include mail already sent.")
@json_option
@click.pass_obj
def outbox_list(app, include_sent, as_json):
    """List mail that is not sent yet (queued, being sent, or failed), oldest first.

    \b
    Examples:
      mail2ticket outbox list
      mail2ticket outbox list --all --json
    """
    from mail2ticket.tickets.mailqueue import list_entries

    rows = list_entries(app.db, include_sent=include_sent)
    if as_json:
        print_json(rows)
        return
    if not rows and is_tty():
        click.echo("The outbox is empty." if include_sent else "Nothing waiting in the outbox.")
        return
    print_table(
        [
            [r["id"], f"#{r['ticket_id']}" if r["ticket_id"] else "", r["kind"], ", ".join(r["recipients"]),
             r["status"], r["attempts"], shown_time(r["sent_at"] or r["next_attempt_at"]),
             r["last_error"] or r["smtp_reply"] or ""]
            for r in rows
        ],
        ["id", "ticket", "kind", "to", "status", "tries", "sent/next try", "last answer"],
        fit=("shrink last answer 24", "hide tries", "shrink to 24", "hide kind", "shrink last answer 12",
             "shrink to 16", "hide last answer"),
    )


@outbox_group.command("retry")
@click.argument("ids", type=TicketId("outbox entry"), nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Every mail not sent yet, failed ones included.")
@click.pass_obj
def outbox_retry(app, ids, retry_all):
    """Send the named mail (or --all waiting mail) now, ignoring the retry delay.

    A mail the server refused permanently (5xx) is only sent again this way, once
    the cause is fixed. Exits non-zero if any of them is still not sent.

    \b
    Examples:
      mail2ticket outbox retry 7
      mail2ticket outbox retry --all
    """
    from mail2ticket.outgoing.sender import retry
    from mail2ticket.tickets.mailqueue import get_entry, list_entries

    if ids and retry_all:
        raise click.UsageError("name entries or give --all, not both")
    if not ids and not retry_all:
        raise click.UsageError("name entries to retry (see 'mail2ticket outbox list'), or --all")
    ids = list(ids) or [e["id"] for e in list_entries(app.db)]
    if not ids:
        click.echo("Nothing waiting in the outbox.")
        return
    retry(app.config(), app.db, ids)
    entries = [get_entry(app.db, i) for i in ids]
    not_sent = 0
    for e in entries:
        if e["status"] == "sent":
            click.echo(f"#{e['id']}: sent to {', '.join(e['recipients'])} ({e['smtp_reply']})")
        else:
            not_sent += 1
            click.echo(f"#{e['id']}: not sent ({e['status']}): {e['last_error']}", err=True)
    if not_sent:
        raise click.exceptions.Exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(outbox_group)
