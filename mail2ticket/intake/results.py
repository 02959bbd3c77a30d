"""What one poll of one mailbox did (IMAP or Maildir): stored, duplicates, quarantined, the error and exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mail2ticket.errors import (
    AuthError,
    ConnectError,
    ConnectTimeout,
    Mail2TicketError,
    SecretError,
    ServerError,
    StoreError,
    TLSError,
)

if TYPE_CHECKING:  # a type only: 'status --prometheus' reads FAILURE_CAUSES without the importer (0.06-0.09 s)
    from mail2ticket.intake.importer import Outcome

# Why a poll failed, for the counter mail2ticket_account_poll_failures_total{cause=...}: a small
# fixed set (docs/metrics.md), every one exported for every account so that rate() sees a zero.
FAILURE_CAUSES = ("auth", "tls", "connect", "timeout", "server", "limit", "local", "other")
# Words of a server that refuses because of a limit or a quota (RFC 5530 [LIMIT] and [OVERQUOTA],
# Gmail's "Too many simultaneous connections" and "exceeded ... bandwidth limits", Dovecot's
# "Maximum number of connections from user+IP exceeded"): such a failure counts as "limit".
_LIMIT_WORDS = ("limit", "quota", "too many", "exceeded", "throttl")


def failure_cause(error: Mail2TicketError) -> str:
    """The cause (FAILURE_CAUSES) of a failed poll, from the error it failed with: "auth" sign-in
    refused or no password, "tls", "connect" unreachable or connection lost, "timeout" no answer
    in time, "server" the server refused or sent something unusable, "limit" the server's limit or
    quota, "local" our side (database, disk, files), "other" anything else."""
    # The server's words come after the first ": " (before it: our words, the user and host names).
    words = str(error).lower().partition(": ")[2]
    if isinstance(error, (AuthError, ServerError, ConnectError)) and any(w in words for w in _LIMIT_WORDS):
        return "limit"
    for kind, cause in ((AuthError, "auth"), (SecretError, "auth"), (TLSError, "tls"),
                        (ConnectTimeout, "timeout"), (ConnectError, "connect"), (ServerError, "server"),
                        (StoreError, "local")):
        if isinstance(error, kind):
            return cause
    return "other"


@dataclass
class PollResult:
    account: str
    imported: int = 0  # new tickets
    followups: int = 0
    duplicates: int = 0
    quarantined: int = 0
    flagged: int = 0
    error: str | None = None
    exit_code: int = 0  # the failure's exit code (errors.EXIT_*): 4 sign-in, 7 no password, ...
    uidvalidity_changed: bool = False
    skipped: str | None = None  # why this poll did not run (another poll holds the account)
    action_error: str | None = None  # the after-import action failed: mail stored, action pending
    cause: str | None = None  # why it failed (FAILURE_CAUSES); None: "other"
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def stored(self) -> int:
        return self.imported + self.followups

    def summary(self) -> str:
        if self.skipped:
            return self.skipped
        parts = [f"{self.imported} new", f"{self.followups} follow-ups"]
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates")
        if self.quarantined:
            parts.append(f"{self.quarantined} quarantined")
        if self.uidvalidity_changed:
            parts.append("UIDVALIDITY changed: re-scanned")
        return ", ".join(parts)

    def count(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if outcome.status == "imported":
            self.imported += 1
        elif outcome.status == "followup":
            self.followups += 1
        elif outcome.status in ("duplicate", "already"):
            self.duplicates += 1
        elif outcome.status == "quarantined":
            self.quarantined += 1
