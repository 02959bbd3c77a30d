"""The project's exceptions: each says when it is raised and carries the hint shown to the user."""

from __future__ import annotations

# Exit codes, named so scripts and tests can rely on them.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_AUTH = 4
EXIT_TLS = 5
EXIT_NETWORK = 6
EXIT_SECRET = 7
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL: the MTA keeps the message and retries
EXIT_WRONG_USER = 77  # sysexits EX_NOPERM: root on a database that belongs to another user


def common_exit_code(codes) -> int:
    """One exit code for several failures: theirs when they share one cause, else EXIT_FAILURE;
    EXIT_OK when there are none. ('poll', 'config check --online')"""
    found = {code or EXIT_FAILURE for code in codes}
    if not found:
        return EXIT_OK
    return found.pop() if len(found) == 1 else EXIT_FAILURE


class Mail2TicketError(Exception):
    """Base class: a failure the user can act on. ``hint`` says what to do next."""

    exit_code = EXIT_FAILURE
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        text = str(self)
        if self.hint:
            text = f"{text} ({self.hint})" if not text.endswith(".") else f"{text} {self.hint}"
        return " ".join(text.split())


class ConfigError(Mail2TicketError):
    """The config file is missing, unreadable, or a key is unknown, of the wrong type or missing."""

    exit_code = EXIT_CONFIG


class SecretError(Mail2TicketError):
    """No password could be found or stored for an account (keyring, credentials, command)."""

    exit_code = EXIT_SECRET


class ConnectError(Mail2TicketError):
    """A server could not be reached: DNS, refused connection, timeout, dropped connection."""

    exit_code = EXIT_NETWORK


class ConnectTimeout(ConnectError):
    """A server did not answer within the time limit (to connect, or to a command): a
    ConnectError that the metrics count apart (cause "timeout", docs/metrics.md)."""


class TLSError(Mail2TicketError):
    """TLS could not be established or the certificate was not trusted."""

    exit_code = EXIT_TLS


class AuthError(Mail2TicketError):
    """The server refused the username and password (or token)."""

    exit_code = EXIT_AUTH


class ServerError(Mail2TicketError):
    """The server answered something we cannot work with (folder missing, command refused)."""


class StoreError(Mail2TicketError):
    """The database or attachment store could not be written."""


class TempFailError(StoreError):
    """Storing failed for a reason that may pass (locked database, full disk): retry later."""

    exit_code = EXIT_TEMPFAIL


class WrongUserError(StoreError):
    """Root ran a command on a database owned by another user (the service user): files root
    would create beside it (lock files, attachment folders) would lock that user out."""

    exit_code = EXIT_WRONG_USER


class ParseError(Mail2TicketError):
    """A message could not be turned into a ticket; its raw bytes go to the quarantine."""


class NotFoundError(Mail2TicketError):
    """A ticket, account or quarantine entry named on the command line does not exist."""


class QueryError(Mail2TicketError):
    """A search query the database cannot run (on PostgreSQL: a word longer than its index keeps)."""

    exit_code = EXIT_USAGE
