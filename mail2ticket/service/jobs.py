"""What one pass does: poll the accounts, then the jobs of AFTER_POLL_JOBS (overdue check, outbox, hooks)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mail2ticket.config.model import Account, Config
from mail2ticket.config.periods import parse_schedule
from mail2ticket.intake import poller
from mail2ticket.intake.results import PollResult
from mail2ticket.outgoing.hooks import hooks_job
from mail2ticket.outgoing.notices import check_overdue
from mail2ticket.outgoing.sender import Claimer, outbox_job
from mail2ticket.service.sharing import pass_leases
from mail2ticket.tickets.db import transaction
from mail2ticket.tickets.engine import engine_of
from mail2ticket.tickets.fts import ensure_triggers
from mail2ticket.tickets.leases import claim_group_run, new_daemon_id

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Job:
    """Work the daemon runs on a [schedule] key of its own, and 'poll' runs after its accounts."""

    name: str
    schedule_key: str  # the [schedule] key that times it in the daemon
    run: Callable[[Config, Database], None]
    pool: str = "job"  # the daemon's pool it runs on (service/daemon.py JobRunner)
    # Once per period for a whole group of daemons on one database, not once per daemon
    # (docs/scaling.md): the daemon claims the run first (tickets/leases.claim_group_run).
    group: bool = False
    # The job claims outbox mail: a daemon passes its own Claimer (outgoing/sender.py), so that
    # the others know its claims from a dead daemon's.
    claims: bool = False

    def __call__(self, cfg: Config, db: Database, claimer: Claimer | None = None) -> None:
        if self.claims:
            self.run(cfg, db, claimer)
        else:
            self.run(cfg, db)


def overdue_check(cfg: Config, db: Database) -> None:
    """Mark tickets past their SLA targets and queue the notice (outgoing/notices.check_overdue)."""

    if ensure_triggers(db):  # a table rebuild by a migration drops triggers: never lose search
        log.warning("the search index had lost its triggers: recreated and re-indexed")
    check_overdue(cfg, db)


def send_outbox(cfg: Config, db: Database, claimer: Claimer | None = None) -> None:
    """Send the mail waiting in the outbox (acknowledgements, replies, notices) that is due."""

    outbox_job(cfg, db, claimer)


def deliver_hooks(cfg: Config, db: Database) -> None:
    """Deliver the queued events to the [[hooks]] (outgoing/hooks.hooks_job). In the daemon on a
    thread of its own: a hook target that hangs never delays a poll or the outbox."""

    hooks_job(cfg, db)


# Every job besides the polls, in the order one pass runs them: the overdue check first, so that a
# breach notice goes out with the same pass's outbox. Add a job here and give it a [schedule] key.
AFTER_POLL_JOBS: tuple[Job, ...] = (
    Job("overdue", "overdue", overdue_check, group=True),
    Job("outbox", "outbox", send_outbox, claims=True),
    Job("hooks", "hooks", deliver_hooks, pool="hooks"),
)


def poll_once(cfg: Config, db: Database, accounts: Sequence[Account], *, run_poll=None) -> list:
    """Poll each account in turn (one failing never stops the others), then run the other jobs.
    ``run_poll`` polls one account (default: mail2ticket.intake.poller.run_poll).

    On PostgreSQL, where daemons may share the database (docs/scaling.md), the pass takes each
    account's lease for itself (service/sharing.pass_leases): an account a live daemon holds is
    skipped (its result says by whom), the others are polled under the lease, fenced as a
    daemon's poll, and given back at the end; and a group job (the overdue check) runs only if
    no daemon or pass of the group ran it this period (claim_group_job)."""
    poll = run_poll or poller.run_poll
    if engine_of(db) != "postgresql":
        results = [poll(cfg, db, account) for account in accounts]
    else:
        with pass_leases(db, cfg.daemon, [a.name for a in accounts if a.source != "pipe"]) as plan:
            results = []
            for account in accounts:
                held = plan.get(account.name)
                if isinstance(held, str):
                    log.info("%s", held)
                    results.append(PollResult(account.name, skipped=held))
                elif held is None:  # a pipe account: mail handed over, nothing polled
                    results.append(poll(cfg, db, account))
                else:
                    results.append(poll(cfg, db, account, fence=held))
    runner = "poll-" + new_daemon_id()
    for job in AFTER_POLL_JOBS:
        try:
            if job.group and engine_of(db) == "postgresql" and not claim_group_job(cfg, db, job, runner):
                log.info("job %s: run by another daemon or poll of the group this period; skipped", job.name)
                continue
            job(cfg, db)
        except Exception:
            log.exception("job %s failed", job.name)
    return results


def claim_group_job(cfg: Config, db: Database, job: Job, runner: str) -> bool:
    """Whether ``runner`` (a daemon's id, or a 'poll' pass's) runs the group-wide ``job`` now:
    once per period of its [schedule] key for every daemon and pass on the database (the first
    to ask; a little early is fine: 0.8 of the period)."""
    period = parse_schedule(cfg.schedule.get(job.schedule_key) or cfg.schedule["poll"]).period
    with transaction(db):
        return claim_group_run(db, job.name, runner, period * 0.8)


