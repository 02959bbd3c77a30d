"""The 'reparse' command: re-derive stored messages with the current parser."""

from __future__ import annotations

import click

from mail2ticket.cli.output import json_option, print_json
from mail2ticket.cli.params import TicketId

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.command("reparse")
@click.option("--ticket", "ticket_ids", type=TicketId(), multiple=True, help="Only this ticket (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Every stored incoming message.")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@json_option
@click.pass_obj
def reparse_command(app, ticket_ids, all_, dry_run, as_json):
    """Re-read stored messages from their raw bytes with the current parser.

    After an upgrade of mail2ticket, text, addresses, attachments and the auto-reply
    classification of messages already imported are derived again from the raw bytes
    kept in the database. Nothing is fetched or changed on any server, no ticket is
    created or merged, and a message the parser cannot read is left as it was.

    \b
    Examples:
      mail2ticket reparse --ticket 42
      mail2ticket reparse --all --dry-run
    """
    from mail2ticket.intake.reparse import reparse

    if not ticket_ids and not all_:
        raise click.UsageError("name tickets with --ticket ID, or use --all")
    report = reparse(app.config(), app.db, ticket_ids=list(ticket_ids) or None, dry_run=dry_run)
    if as_json:
        print_json(report.to_dict() | {"dry_run": dry_run})
    else:
        verb = "would change" if dry_run else "changed"
        noun = "message" if report.messages == 1 else "messages"
        click.echo(f"{report.messages} {noun} read again: {len(report.changed)} {verb}, "
                   f"{len(report.failed)} unreadable")
        for mid, error in report.failed.items():
            click.echo(f"message {mid}: {error}", err=True)
    if report.failed:
        raise click.exceptions.Exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(reparse_command)
