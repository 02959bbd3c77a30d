"""The 'ingest' command: one message on stdin from an MTA pipe, procmail or .forward."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import click

from mail2ticket.config.model import Account
from mail2ticket.errors import Mail2TicketError, TempFailError

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 30.0


def pick_account(cfg, name: str | None):
    """The account named, or the only one; ConfigError when that is ambiguous or it is disabled."""
    from mail2ticket.errors import ConfigError

    if name:
        account = cfg.account(name)
    elif len(cfg.accounts) == 1:
        account = cfg.accounts[0]
    else:
        known = ", ".join(a.name for a in cfg.accounts) or "none"
        raise ConfigError(
            f"{cfg.path}: {len(cfg.accounts)} accounts, so 'ingest' needs --account NAME",
            f"known accounts: {known}",
        )
    if not account.enabled:
        raise ConfigError(
            f"account {account.name} is disabled",
            f"enable it with 'mail2ticket accounts enable {account.name}'; until then the MTA keeps the mail",
        )
    return account


def ingest_message(cfg, db, account: Account, raw: bytes | None, *, hooks=None, spool=None):
    """Store ``raw`` for ``account`` through the importer (no mailbox identity: dedup by content).

    ``spool``: instead of ``raw``, a large message in a temp file (bigmessage.take): parsed from
    the file and stored with incremental blob I/O, in bounded memory, as poll does.
    Returns the importer's Outcome; raises TempFailError when it could not be stored durably now.
    """
    from mail2ticket.intake.importer import ImportContext, Incoming, import_batch
    from mail2ticket.intake.maildir import limit_size
    from mail2ticket.intake.pipeline import Pipeline
    from mail2ticket.tickets.blobs import attachment_store

    ctx = ImportContext(
        db=db, attachments=attachment_store(cfg), hooks=list(hooks or []), config=cfg
    )  # config: rules, SLA and acknowledgements as for IMAP mail
    limit_size(ctx, account.max_message_size or cfg.max_message_size)
    incoming = Incoming(account.name, raw, None, received_at=datetime.now(UTC), spool=spool,
                        size=spool.size if spool is not None else None)
    # Parsed as poll parses: in a worker process with a time limit, so a message that hangs or
    # crashes the parser is quarantined (stored) instead of holding up the MTA.
    with Pipeline(ctx, getattr(cfg, "workers", None), getattr(cfg, "parse_timeout", None)) as pipe:
        prepared = pipe.submit([incoming]).result()
    outcome = import_batch(ctx, [incoming], prepared=prepared)[0]
    _record_delivery(db, account, outcome)
    return outcome


def _record_delivery(db, account: Account, outcome) -> None:
    """A pipe account's deliveries in account_status, as polls are: 'status' shows the last one
    (time and result) and counts what was stored. Never fails the delivery: it is stored."""
    from mail2ticket.tickets.db import record_poll

    stored = 1 if outcome.status in ("imported", "followup") else 0
    try:
        record_poll(db, account.name, ok=True, imported=stored, result="delivered: " + _describe(outcome))
    except Exception as exc:  # noqa: BLE001 - the message is stored; only the bookkeeping failed
        log.warning("account %s: could not record the delivery in 'status': %s", account.name, exc)


def _describe(outcome) -> str:
    if outcome.status == "imported":
        return f"stored as new ticket #{outcome.ticket_id}"
    if outcome.status == "followup":
        return f"stored as a follow-up to ticket #{outcome.ticket_id}"
    if outcome.status == "duplicate" and outcome.ticket_id is not None:
        return f"already stored in ticket #{outcome.ticket_id}: this delivery is a duplicate"
    if outcome.status == "duplicate":
        return f"already stored in the quarantine as #{outcome.quarantine_id}: this delivery is a duplicate"
    return f"stored ({outcome.status})"


@click.command("ingest")
@click.option("--account", "account_name", metavar="NAME",
              help="The account the message is for (may be left out when there is only one).")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=DEFAULT_LOCK_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="How long to wait for a database another process holds before exiting 75.")
@click.pass_obj
def ingest(app, account_name, lock_timeout):
    """Import one message from standard input (for an MTA pipe, procmail or .forward).

    The message takes the same path as mail read from IMAP: parsing, threading,
    acknowledgement, quarantine. Exit status follows the mail delivery convention
    (sysexits.h): 0 once the message is stored (or was stored before: a repeated
    delivery makes no second ticket); 75 (EX_TEMPFAIL) when it could not be
    stored now (database locked, disk full, store unwritable, config broken), so
    the MTA keeps it and retries. A message that cannot be parsed is stored in
    the quarantine: exit 0, with a warning.

    Run it as the daemon's user with the daemon's --config, so that both use one
    database (docs/local-sources.md: "One database for everything").

    \b
    Examples:
      mail2ticket --config /etc/mail2ticket/config.toml ingest --account support < request.eml
      master.cf: flags=DRX user=mail2ticket argv=/opt/mail2ticket/bin/mail2ticket --config /etc/mail2ticket/config.toml ingest --account ${nexthop}
    """
    import sys

    from mail2ticket.parse.bigmessage import take

    stdin = sys.stdin.buffer
    if stdin.isatty():
        raise click.UsageError("no message on standard input: pipe one in ('mail2ticket ingest < message.eml')")
    db = spool = None
    try:
        from mail2ticket.outgoing.hooks import subscribe
        from mail2ticket.tickets.db import open_store

        # A large message goes to a temp file beside the attachments, never whole into memory.
        raw, spool = take(stdin, lambda: Path(app.config().attachments) / "tmp")
        if raw is not None and not raw.strip():
            raise click.UsageError("standard input was empty: there is no message to import")
        cfg = app.config()
        account = pick_account(cfg, account_name)
        db = open_store(cfg, busy_timeout_ms=int(lock_timeout * 1000))
        subscribe(cfg, db)  # the new ticket's event is queued for this config's [[hooks]]
        outcome = ingest_message(cfg, db, account, raw, spool=spool)
    except (TempFailError, click.UsageError):
        raise
    except Mail2TicketError as exc:
        # Not stored: whatever the cause, the MTA must keep the message (a config mistake
        # must not bounce mail), so every failure here is a temporary one.
        raise TempFailError(str(exc), exc.hint) from exc
    except Exception as exc:
        raise TempFailError(
            f"unexpected {exc.__class__.__name__}: {exc}", "run with --debug for the traceback"
        ) from exc
    finally:
        if db is not None:
            db.close()
        if spool is not None:
            spool.unlink()
    if outcome.status == "quarantined":
        qid = outcome.quarantine_id
        if outcome.quarantine_reason == "too-large":
            click.echo(
                f"Warning: the message is over the size limit (max_message_size); it is stored in the "
                f"quarantine as #{qid} ({outcome.detail}). To import it, raise max_message_size and run "
                f"'mail2ticket quarantine retry {qid}'.",
                err=True,
            )
            return
        click.echo(
            f"Warning: the message could not be read as mail; it is stored in the quarantine as "
            f"#{qid} ({outcome.detail}). See 'mail2ticket quarantine show {qid}'.",
            err=True,
        )
        return
    click.echo(f"{account.name}: {_describe(outcome)}")


def register(cli: click.Group) -> None:
    cli.add_command(ingest)
