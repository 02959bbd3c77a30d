"""The 'tickets reply', 'tickets close' and 'tickets reopen' commands: answer from the shell."""

from __future__ import annotations

import click

from mail2ticket.cli.tickets import message_text, tickets_group


def _send_now(app, entry: dict) -> None:
    """Try to send one queued mail at once; report what happened (it stays queued if not sent)."""
    from mail2ticket.outbox import get_entry, send_pending

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
@click.argument("ticket_id", type=int)
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

    The text comes from --message, --file, or else $EDITOR. The reply answers the
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
    from mail2ticket.outbox import check_reply_all, queue_reply
    from mail2ticket.store import get_ticket

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
    @click.argument("ticket_id", type=int)
    @click.option("--notify", is_flag=True, help="Mail the requester a short notice (threaded, tagged).")
    @click.pass_obj
    def command(app, ticket_id, notify):
        from mail2ticket.outbox import change_status
        from mail2ticket.store import get_ticket

        before = get_ticket(app.db, ticket_id)["status"]
        if before == status:
            click.echo(f"Ticket #{ticket_id} is already {status}; nothing changed.")
            return
        entry = change_status(app.config(), app.db, ticket_id, status, notify=notify)
        click.echo(f"Ticket #{ticket_id}: {before} -> {status}.")
        if entry is not None:
            _send_now(app, entry)

    return command


close = _status_command(
    "close", "closed",
    """Close a ticket; with --notify, tell the requester by mail.

    A later mail from the customer opens it again (unless the account sets
    reopen_on_reply = false).

    \b
    Examples:
      mail2ticket tickets close 42
      mail2ticket tickets close 42 --notify
    """,
)
reopen = _status_command(
    "reopen", "open",
    """Open a closed or pending ticket again; with --notify, tell the requester by mail.

    \b
    Example:
      mail2ticket tickets reopen 42 --notify
    """,
)


def register(cli: click.Group) -> None:
    # Modules register in name order, so 'tickets' may not be on cli yet: use the group itself.
    group = cli.commands.get("tickets", tickets_group)
    for command in (reply, close, reopen):
        group.add_command(command)
