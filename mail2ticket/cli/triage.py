"""The 'overdue' commands: the SLA check that the daemon runs on its [schedule] overdue, by hand."""

from __future__ import annotations

import click

from mail2ticket.cli.output import json_option, print_json

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.group("overdue")
def overdue_group():
    """SLA targets: find and mark tickets that passed them."""


@overdue_group.command("check")
@click.option("--recompute", is_flag=True,
              help="First recompute the due times of every ticket that is not closed (after changing [sla]).")
@json_option
@click.pass_obj
def overdue_check(app, recompute, as_json):
    """Run the overdue check once: mark tickets past an SLA target, record each breach once.

    Each new breach is an 'overdue' event in the ticket's history; with [sla]
    notify set, one notice listing the new breaches is mailed through the outbox.
    The daemon runs this on [schedule] overdue, and 'mail2ticket poll' after
    each pass. See them with 'mail2ticket tickets list --overdue'.

    \b
    Examples:
      mail2ticket overdue check
      mail2ticket overdue check --recompute --json
    """
    from mail2ticket.outgoing.notices import check_overdue
    from mail2ticket.tickets.sla import has_targets

    cfg = app.config()
    report = check_overdue(cfg, app.db, recompute=recompute)
    if as_json:
        print_json(report)
        return
    if not has_targets(cfg):
        click.echo("No SLA targets are set ([sla] response / resolution in the config).", err=True)
    if report["due_times_set"]:
        click.echo(f"Due times set on {report['due_times_set']} ticket(s).")
    new = report["new_breaches"]
    if new:
        click.echo(f"{len(new)} new breach(es):")
        for b in new:
            click.echo(f"  #{b['id']} {b['target']} target passed (due {b['due_at']}, {b['priority']}): {b['subject']}")
    if report.get("notice"):
        click.echo(f"Notice queued for {report['notice']['to']} (outbox #{report['notice']['id']}).")
    if report["cleared"]:
        click.echo(f"{report['cleared']} ticket(s) no longer overdue.")
    click.echo(f"{report['overdue']} ticket(s) overdue.")


def register(cli: click.Group) -> None:
    cli.add_command(overdue_group)
