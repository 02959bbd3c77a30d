"""The poll_failure_counts table: failed polls of each account by cause, counted for ever (the
counter mail2ticket_account_poll_failures_total of docs/metrics.md). intake/poller.py counts each
failure in the transaction that records it; the causes are intake/results.FAILURE_CAUSES."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database


def count_poll_failure(db: Database, account: str, cause: str, now: str) -> None:
    """One more failed poll of ``account`` for ``cause`` (in the caller's transaction)."""
    db.execute(
        "insert into poll_failure_counts (account, cause, count, last_at) values (?, ?, 1, ?) "
        "on conflict(account, cause) do update set count = poll_failure_counts.count + 1, last_at = excluded.last_at",
        [account, cause, now],
    )


def poll_failure_counts(db: Database) -> dict[str, dict[str, int]]:
    """{account: {cause: failed polls since the database was created}}."""
    out: dict[str, dict[str, int]] = {}
    for account, cause, count in db.execute("select account, cause, count from poll_failure_counts"):
        out.setdefault(account, {})[cause] = count
    return out
