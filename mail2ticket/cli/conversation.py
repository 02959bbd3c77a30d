"""The 'tickets reply', 'tickets close' and 'tickets reopen' commands: answer from the shell.
'close' and 'reopen' take several ids, or the filters of 'tickets list' (old mail in bulk)."""

from __future__ import annotations

import click

from mail2ticket.cli.params import TicketId
from mail2ticket.cli.tickets import filter_options, message_text, select_tickets

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


def _send_now(app, entry: dict) -> None:
    """Try to send one queued mail at once; report what happened (it stays queued if not sent)."""
    from mail2ticket.outgoing.sender import send_pending
    from mail2ticket.tickets.mailqueue import get_entry

    if entry.get("warning"):  # a person's reply is sent, but to a failing address or into a loop
        click.echo(f"Warning: {entry['warning']}", err=True)
    if entry["status"] == "held":  # an automatic notice stopped by loop protection
        click.echo(
            f"Warning: the notice was not sent: {entry['last_error']}. It is kept as outbox "
            f"#{entry['id']}; 'mail2ticket outbox retry {entry['id']}' sends it anyway.",
            err=True,
        )
        return
    report = send_pending(app.config(), app.db, ids=[entry["id"]])
    entry = get_entry(app.db, entry["id"])
    recipients = ", ".join(entry["recipients"])
    if entry["status"] == "sent":
        click.echo(f"Sent to {recipients} ({entry['message_id']}).")
    elif entry["status"] == "failed":
        raise click.ClickException(
            f"the mail server refused the mail to {recipients}: {entry['last_error']} "
            f"(it is kept as outbox #{entry['id']}; fix the cause, then 'mail2ticket outbox retry {entry['id']}')"
        )
    else:
        click.echo(
            f"Warning: not sent yet ({report.errors.get(entry['id'], entry['last_error'])}); it stays in the "
            f"outbox as #{entry['id']} and is retried by the next poll ('mail2ticket outbox list').",
            err=True,
        )


@click.command("reply")
@click.argument("ticket_id", type=TicketId())
@click.option("-m", "--message", "text", help="The text of the reply.")
@click.option("--file", "path", type=click.File("r", encoding="utf-8"), help="Read the text from a file ('-': stdin).")
@click.option("--all", "to_all", is_flag=True, help="Copy (Cc) everyone else who took part in the ticket.")
@click.option("--yes", is_flag=True,
              help="With --all: send even to more recipients than [conversations] reply_all_limit (20).")
@click.option("--status", type=click.Choice(["open", "pending", "closed"]),
              help="The ticket's status afterwards (default: [conversations] reply_status, 'pending').")
@click.pass_obj
def reply(app, ticket_id, text, path, to_all, yes, status):
    """Mail a threaded reply to the ticket's requester and store it in the ticket.

    The text comes from --message, --file (--file - reads standard input), or else,
    on a terminal only, $VISUAL or $EDITOR. The reply answers the
    customer's latest mail (In-Reply-To, References), carries the ticket tag in its
    subject, and is sent from the ticket's account. It is stored and queued in one
    step; if the SMTP server cannot take it now, it stays in the outbox and is sent
    by the next poll. The ticket becomes 'pending' (waiting for the customer) unless
    --status says otherwise. With --all, a reply to more people than reply_all_limit
    (default 20) is refused, saying how many, unless --yes is given.

    \b
    Examples:
      mail2ticket tickets reply 42 --message "The printer is fixed."
      mail2ticket tickets reply 42 --file answer.txt --all --status closed
      mail2ticket tickets reply 42 --all --yes -m "..."   # to more than reply_all_limit
      mail2ticket tickets reply 42            # opens $EDITOR
    """
    from mail2ticket.outgoing.actions import check_reply_all, queue_reply
    from mail2ticket.tickets.db import get_ticket

    if to_all:  # before any editor opens: refuse a reply to hundreds at once
        check_reply_all(app.config(), app.db, ticket_id, yes=yes)

    def template() -> str:
        ticket = get_ticket(app.db, ticket_id)
        return ("\n\n# Lines starting with '#' are removed. An empty reply sends nothing.\n"
                f"# Reply to #{ticket['id']}: {ticket['subject']}\n# To: {ticket['requester']}\n")

    text = message_text(text, path, template, what="reply", nothing="nothing sent")
    entry = queue_reply(app.config(), app.db, ticket_id, text, to_all=to_all, status=status, yes=yes)
    click.echo(f"Reply stored in ticket #{ticket_id}.")
    _send_now(app, entry)


def _status_command(name: str, status: str, help_text: str):
    @click.command(name, help=help_text)
    @click.argument("ticket_ids", metavar="[ID]...", nargs=-1, type=TicketId())
    @filter_options
    @click.option("--notify", is_flag=True, help="Mail each requester a short notice (threaded, tagged).")
    @click.option("-y", "--yes", is_flag=True, help="Do not ask before changing the tickets a filter selects.")
    @click.pass_obj
    def command(app, ticket_ids, notify, yes, **kw):
        from mail2ticket.outgoing.actions import change_status

        cfg = app.config()
        targets = select_tickets(
            app, name, ticket_ids, kw, yes, example="",
            # reopen: by default the closed tickets the filters select
            default_status="closed" if status == "open" else None,
            already=lambda t: t["status"] == status,
        )
        for ticket in targets:
            before = ticket["status"]
            if before == status:
                click.echo(f"Ticket #{ticket['id']} is already {status}; nothing changed.")
                continue
            entry = change_status(cfg, app.db, ticket["id"], status, notify=notify)
            if ticket_ids:
                click.echo(f"Ticket #{ticket['id']}: {before} -> {status}.")
            if entry is not None:
                _send_now(app, entry)
        if targets and not ticket_ids:
            count = f"{len(targets)} ticket" + ("" if len(targets) == 1 else "s")
            click.echo(f"{count} {'closed' if status == 'closed' else 'reopened'}.")

    return command


close = _status_command(
    "close", "closed",
    """Close tickets: by id, or every ticket the filters of 'tickets list' select.

    With filters, it says how many tickets match and asks first (--yes does not
    ask; without a terminal --yes is required). With --notify, each requester
    gets a notice by mail. A later mail from the customer opens a ticket again
    (unless the account sets reopen_on_reply = false).

    \b
    Examples:
      mail2ticket tickets close 42
      mail2ticket tickets close 42 43 '#44' --notify
      mail2ticket tickets close --account support --before 2026-01-01      # old mail
      mail2ticket tickets close --status pending --updated-until 30d --yes
    """,
)
reopen = _status_command(
    "reopen", "open",
    """Open closed or pending tickets again: by id, or the closed tickets the filters select.

    With filters, it says how many tickets match and asks first (--yes does not
    ask). With --notify, each requester gets a notice by mail.

    \b
    Examples:
      mail2ticket tickets reopen 42 --notify
      mail2ticket tickets reopen --account support --after 2026-03-01 --yes
    """,
)


def register(cli: click.Group) -> None:
    for command in (reply, close, reopen):  # 'tickets' registered first (cli.COMMAND_MODULES)
        cli.commands["tickets"].add_command(command)
