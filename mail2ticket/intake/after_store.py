"""What happens after a mail is stored, inside the import's transaction: the one list of it.

In this order, for each message stored as a new ticket or a follow-up:

1. the routing rules, then the SLA due times of a new ticket (tickets/rules.py ``apply_to_mail``;
   the rules were matched before the transaction, under a time limit);
2. the caller's own steps (``ImportContext.hooks``: tests, and where a future event table goes);
3. bounce bookkeeping (failing addresses) and the acknowledgement (outgoing/acknowledge.py),
   last, so that it sees what the rules decided (a rule may suppress it).

A step runs as ``step(db, outcome, parsed)``. It must not reach the network: what goes out (an
acknowledgement) is queued in the outbox in this same transaction and sent after the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mail2ticket.config.model import Config
from mail2ticket.outgoing.acknowledge import ack_hook
from mail2ticket.parse.parsed import ParsedMessage
from mail2ticket.tickets.rules import apply_to_mail

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

Step = Callable[["Database", Any, ParsedMessage], None]


def rules_and_sla(cfg: Config) -> Step:
    """Step 1: the [[rules]] that matched (``outcome.rules``), then the [sla] due times."""

    def step(db: Database, outcome: Any, parsed: ParsedMessage) -> None:
        apply_to_mail(cfg, db, outcome, parsed, outcome.rules)

    step.__name__ = "rules"
    return step


def steps(cfg: Config | None, hooks: Sequence[Step] = (), *, acknowledge: bool = True) -> list[Step]:
    """The steps for an import with ``cfg`` (None: a bare import, only ``hooks``)."""
    out: list[Step] = []
    if cfg is not None:
        out.append(rules_and_sla(cfg))
    out.extend(hooks)
    if cfg is not None and acknowledge:
        out.append(ack_hook(cfg))
    return out
