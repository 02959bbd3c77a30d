"""The mail2ticket command line: the root group, its context and the one error boundary."""

from __future__ import annotations

import logging
import sys
import traceback

import click

from mail2ticket import __version__
from mail2ticket.errors import EXIT_FAILURE, EXIT_TEMPFAIL, Mail2TicketError

# The commands that only read tickets: they make no event, so they need not record the config's
# [[hooks]] first (one statement and outgoing/hooks less at their start-up; the next command that
# can make an event, or the daemon, records them).
READ_ONLY_COMMANDS = frozenset({
    "tickets list", "tickets count", "tickets show", "tickets search", "tickets attachment",
})
# Of those, the ones that write nothing but their output: they end without the interpreter's
# teardown (main()), which cost 45 ms of each (psycopg's modules among others), a fifth of a
# 'tickets show' on PostgreSQL (docs/scaling.md).
QUICK_EXIT_COMMANDS = READ_ONLY_COMMANDS - {"tickets attachment"}
_quick_exit = False


class AppContext:
    """Opens the config and the database lazily, once per command."""

    def __init__(self, config_path: str | None, debug: bool):
        self.config_path = config_path
        self.debug = debug
        self._config = None
        self._db = None
        self._subscribed = False

    def config(self, must_exist: bool = True):
        if self._config is None:
            # sqlite-utils is imported where a SQLite database is opened (tickets/db.open_db,
            # without numpy and pandas): not at all for a PostgreSQL one.
            from mail2ticket.config.load import load_config

            self._config = load_config(self.config_path, must_exist=must_exist)
        return self._config

    @property
    def db(self):
        if self._db is None:
            from mail2ticket.tickets.db import open_store

            self._db = open_store(self.config())
            global _quick_exit
            _quick_exit = _running_command() in QUICK_EXIT_COMMANDS
        if not self._subscribed and not _running_read_only():
            self._subscribed = True
            from mail2ticket.outgoing.hooks import subscribe

            # Every command that can make an event queues it for the hooks of this config (a
            # read when they are recorded already; a database this user cannot write is no error).
            try:
                subscribe(self.config(), self._db)
            except Mail2TicketError as exc:
                logging.getLogger(__name__).warning("could not record the config's [[hooks]]: %s", exc.one_line())
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            self._subscribed = False


def _running_read_only() -> bool:
    """Whether the command running is one of READ_ONLY_COMMANDS."""
    return _running_command() in READ_ONLY_COMMANDS


def _running_command() -> str:
    """The command running, as 'tickets list' ('' outside a command)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ""
    path = []
    while ctx.parent is not None:  # the root's name is the program's: left out
        path.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(path))


class JournalFormatter(logging.Formatter):
    """For stderr connected to journald: a '<N>' syslog priority before every line (journald
    stores it as the entry's level), no time (journald adds it) and no level word."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to journald ($JOURNAL_STREAM is 'device:inode')."""
    import os

    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class StampedFormatter(logging.Formatter):
    """'TIME LEVEL message', the time in ISO 8601 with the local offset (2026-03-01T14:05:09+01:00):
    for a log file or a terminal, where nobody else adds the time."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        from datetime import datetime

        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")


def setup_logging(debug: bool = False, level: int = logging.WARNING) -> None:
    """One line per event on stderr, secrets never logged: '<N>message' under journald (which
    adds the time and reads the level), 'TIME LEVEL message' anywhere else (a terminal, a file,
    a pipe: cron, nohup, docker)."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(StampedFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("mail2ticket")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else level)
    root.propagate = False


class RootGroup(click.Group):
    """Turns project errors into one line with what to do next, and a named exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Mail2TicketError as exc:
            app = ctx.obj
            if app is not None and app.debug:
                traceback.print_exc()
            click.echo(f"Error: {exc.one_line()}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except Exception as exc:
            app = ctx.obj
            if app is not None and app.debug:
                traceback.print_exc()
            from mail2ticket.tickets.engine import PgTransientError

            if isinstance(exc, PgTransientError):
                # A lost PostgreSQL connection that its caller did not turn into a StoreError
                # (a daemon whose start was cut): temporary, exit 75 as TempFailError (catalogue 128).
                click.echo(f"Error: {exc} (check the PostgreSQL server and the connection, then try again)", err=True)
                ctx.exit(EXIT_TEMPFAIL)
            click.echo(
                f"Error: unexpected {exc.__class__.__name__}: {exc} (run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(EXIT_FAILURE)
        finally:
            if ctx.obj is not None:
                ctx.obj.close()


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="MAIL2TICKET_CONFIG",
    help="Config file (default: $MAIL2TICKET_CONFIG, ~/.config/mail2ticket/config.toml, "
    "then /etc/mail2ticket/config.toml).",
)
@click.option("--debug", is_flag=True, help="Log everything and show tracebacks on errors.")
@click.version_option(__version__, prog_name="mail2ticket")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """mail2ticket turns mailboxes into a ticket queue in a local SQLite database.

    \b
    Quick start:
      mail2ticket add-account support --email support@example.com --provider gmail
      mail2ticket poll
      mail2ticket tickets list

    Run 'mail2ticket COMMAND --help' for the details of each command. The
    options --config and --debug may also follow the command.
    """
    setup_logging(debug)
    ctx.obj = AppContext(config_path, debug)


# The command modules, in the order they add their commands ('conversation' adds reply, close
# and reopen to the 'tickets' group, so it comes after 'tickets'). Each is imported at every
# start-up, so each imports what its commands need inside the command: start-up stays fast.
COMMAND_MODULES = (
    "accounts", "config_cmd", "mail", "tickets", "conversation", "triage", "outbox",
    "reparse_cmd", "parse_cmd", "ingest", "daemon", "hooks", "db",
)


def _register() -> None:
    """Each module of COMMAND_MODULES adds its commands with ``register(cli)``."""
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(cli)


def _late_config(ctx: click.Context, _param, value):
    if value is not None:
        ctx.find_object(AppContext).config_path = value


def _late_debug(ctx: click.Context, _param, value):
    if value:
        ctx.find_object(AppContext).debug = True
        setup_logging(True)


def _accept_global_options_everywhere(group: click.Group) -> None:
    """'mail2ticket tickets list --config X --debug' works as '--config X --debug tickets list':
    each subcommand also takes the global options (hidden from its help). They are parsed with
    the subcommand's own options, so a value such as '--message --debug' stays a value."""
    for command in group.commands.values():
        names = {opt for p in command.params for opt in getattr(p, "opts", [])}
        if "--config" not in names:
            command.params.append(click.Option(
                ["--config"], type=click.Path(dir_okay=False), hidden=True, expose_value=False,
                callback=_late_config, help="The global --config, given after the command."))
        if "--debug" not in names:
            command.params.append(click.Option(
                ["--debug"], is_flag=True, hidden=True, expose_value=False, callback=_late_debug,
                help="The global --debug, given after the command."))
        if isinstance(command, click.Group):
            _accept_global_options_everywhere(command)


_register()
_accept_global_options_everywhere(cli)


def main() -> None:
    try:
        cli(prog_name="mail2ticket")
    except BrokenPipeError:
        _broken_pipe()
    except SystemExit as exc:
        if not _quick_exit:
            raise
        # A command of QUICK_EXIT_COMMANDS: its database is closed (RootGroup.invoke) and it
        # wrote nothing but its output; once that is flushed, nothing is left to tear down.
        import os

        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _broken_pipe()
        sys.stderr.flush()
        os._exit(code)


def _broken_pipe() -> None:
    # Output piped into 'head' and the like: not an error worth a traceback.
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)
