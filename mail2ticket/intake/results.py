"""What one poll of one mailbox did (IMAP or Maildir): stored, duplicates, quarantined, the error and exit code."""

from __future__ import annotations

from dataclasses import dataclass, field

from mail2ticket.intake.importer import Outcome


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
