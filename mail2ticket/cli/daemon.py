"""The 'run' command: the daemon that systemd (or a terminal) keeps running."""

from __future__ import annotations

import logging

import click

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.command("run")
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="How many accounts are polled at the same time (each poll holds one IMAP connection).",
)
@click.pass_obj
def run(app, workers):
    """Run the daemon: poll every enabled account on its schedule until stopped.

    \b
    What it does:
      - polls each account on [schedule] poll (default "*/5": every 5 minutes,
        aligned to the clock), or on the account's own `poll`; accounts with
        `push = true` also keep an IMAP IDLE session, so new mail becomes a
        ticket within seconds, imported over that connection (the scheduled
        poll stays as a safety net); one thread waits on every IDLE session,
        and logins are spread at [performance] logins_per_second (default 5);
      - sends the outbox on [schedule] outbox and checks for overdue tickets on
        [schedule] overdue;
      - polls accounts side by side (--workers at a time), never the same
        account twice at once; a failing account backs off (1 to 15 minutes)
        and is reported by 'mail2ticket status' while the others carry on.

    \b
    Signals:
      SIGTERM, SIGINT  stop: the batch being imported is committed, connections
                       are logged out, exit code 0 (within about 10 seconds)
      SIGHUP           reload the config: added, removed, disabled or changed
                       accounts take effect (only a changed account's push
                       session reconnects) and the log says what changed; each
                       account is polled once (at most once per 5 s however
                       many SIGHUPs, never around a backoff unless its config
                       or password changed); a broken config is reported and
                       the running one stays in force

    \b
    Under systemd (Type=notify) it sends READY=1, a one-line STATUS= after each
    poll, WATCHDOG=1 when WatchdogSec= is set, and STOPPING=1; logs go to stderr
    with levels journald understands. See examples/mail2ticket.service.

    \b
    Passwords, for each account in this order: the keyring, then
    $CREDENTIALS_DIRECTORY/ACCOUNT (systemd LoadCredential= or
    LoadCredentialEncrypted=), then the account's password_command. It exits
    at once when no account has a password.

    \b
    Examples:
      mail2ticket run
      mail2ticket --config /etc/mail2ticket/config.toml run --workers 8
      systemctl reload mail2ticket     # sends SIGHUP
      mail2ticket status               # is it running? is any account failing?
    """
    from mail2ticket.cli import setup_logging
    from mail2ticket.service.daemon import Daemon

    setup_logging(app.debug, level=logging.INFO)
    code = Daemon(app.config_path, workers=workers).run()
    raise click.exceptions.Exit(code)


def register(cli: click.Group) -> None:
    cli.add_command(run)
