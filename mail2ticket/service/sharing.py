"""Several daemons sharing one database's accounts (docs/scaling.md): each account is polled by
the one daemon that holds its lease (tickets/leases.py). Each renew (every [daemon] lease_renew)
a daemon renews what it holds, gives back what is above its fair share (accounts / live
daemons, the remainder to the first ones) and takes free or expired leases up to it; a daemon that cannot renew
stops touching its accounts once its own monotonic clock says a lease may have expired."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from mail2ticket.config.daemon import DaemonSettings
from mail2ticket.tickets import leases
from mail2ticket.tickets.daemon_state import pid_alive
from mail2ticket.tickets.db import transaction

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)


class AccountShare:
    """This daemon's leases. ``shared`` (PostgreSQL): the leases decide which accounts it polls,
    and its imports are fenced. Not shared (SQLite: one daemon, its lock file): the leases are
    only recorded, for 'status', and every account is polled."""

    def __init__(self, daemon_id: str, *, host: str, pid: int, settings: DaemonSettings | None,
                 shared: bool, clock: Callable[[], float] = time.monotonic):
        self.daemon_id, self.host, self.pid = daemon_id, host, pid
        self.settings = settings or DaemonSettings()
        self.shared = shared
        self.clock = clock
        self.held: dict[str, int] = {}  # account -> epoch
        self.safe_until = 0.0  # our monotonic clock: until then no lease of ours can have expired

    @property
    def ttl(self) -> float:
        return self.settings.lease_ttl

    def start(self, db: Database) -> None:
        """Register this daemon. Not shared: the lock file proves every other daemon row stale."""
        with transaction(db):
            leases.ensure_tables(db)
            if not self.shared:
                leases.forget_other_daemons(db, self.daemon_id)
            leases.register_daemon(db, self.daemon_id, host=self.host, pid=self.pid)

    def rank(self, account: str) -> str:
        """Each daemon prefers other accounts (rendezvous hashing): they spread without talking."""
        return hashlib.sha256(f"{self.daemon_id}/{account}".encode()).hexdigest()

    def renew(self, db: Database, wanted: Iterable[str], busy: Iterable[str] = ()) -> tuple[set[str], set[str]]:
        """One renew: (accounts gained, accounts lost). ``wanted``: the enabled accounts; ``busy``:
        those being polled now (never given back in the middle of a poll)."""
        wanted = sorted(set(wanted))
        busy = set(busy)
        before = dict(self.held)
        started = self.clock()
        try:
            with transaction(db):
                leases.heartbeat(db, self.daemon_id, host=self.host, pid=self.pid)
                held = leases.renew(db, self.daemon_id, self.ttl)
                share = len(wanted)
                if self.shared:
                    share = fair_share(len(wanted), leases.live_ids(db, stale_after=self.ttl), self.daemon_id)
                give_back = [a for a in held if a not in wanted]
                keep = [a for a in held if a in wanted]
                if len(keep) > share:
                    spare = sorted((a for a in keep if a not in busy), key=self.rank, reverse=True)
                    give_back += spare[: len(keep) - share]
                if give_back:
                    leases.release(db, self.daemon_id, give_back)
                    for name in give_back:
                        held.pop(name, None)
                for name in sorted((a for a in wanted if a not in held), key=self.rank):
                    if len(held) >= share:
                        break
                    epoch = leases.acquire(db, self.daemon_id, name, self.ttl)
                    if epoch is not None:
                        held[name] = epoch
        except Exception as exc:  # the database is unreachable (a partition) or locked
            log.warning("could not renew the account leases: %s", exc)
            if self.shared and self.held and self.clock() >= self.safe_until:
                lost = set(self.held)
                log.warning("leases of %s may have expired: this daemon stops touching them until it "
                            "renews", ", ".join(sorted(lost)))
                self.held = {}
                return set(), lost
            return set(), set()
        # Renewed at the database at or after ``started``: none can expire before started + ttl.
        # One renew period of margin (at most a renew's duration; a cut-off daemon stops in time).
        self.safe_until = started + self.ttl - self.settings.lease_renew
        self.held = held
        gained = {a for a in held if a not in before or before[a] != held[a]}
        lost = {a for a in before if a not in held or before[a] != held[a]}
        return gained, lost

    def may_touch(self, account: str) -> bool:
        """Whether this daemon may poll ``account`` (and use its IDLE session) now."""
        if not self.shared:
            return True
        return account in self.held and self.clock() < self.safe_until

    def alive(self) -> bool:
        """Whether no other daemon can have found this one's heartbeat stale yet (renewed with the
        leases): its outbox claims still hold. Always, when not shared (one daemon)."""
        return not self.shared or self.clock() < self.safe_until

    def fence(self, account: str) -> Callable[[Database], None] | None:
        """The import's fence for ``account`` (importer.ImportContext.fence), None when not shared."""
        if not self.shared:
            return None
        epoch = self.held.get(account)
        if epoch is None:
            return partial(_refuse, account)
        return partial(leases.check_fence, daemon_id=self.daemon_id, account=account, epoch=epoch)

    def stopping(self, db: Database) -> None:
        """A stop begins: the other daemons stop counting this one when they share out accounts."""
        try:
            with transaction(db):
                leases.set_stopping(db, self.daemon_id)
        except Exception as exc:
            log.debug("could not mark this daemon stopping: %s", exc)

    def stop(self, db: Database) -> None:
        """A clean stop: every lease given back (others take them at their next renew), the
        daemon's row gone."""
        try:
            with transaction(db):
                leases.forget_daemon(db, self.daemon_id)
        except Exception as exc:
            log.warning("could not give back the account leases: %s (they expire in %g s)", exc, self.ttl)
        self.held = {}


@contextlib.contextmanager
def pass_leases(db: Database, settings: DaemonSettings | None, accounts: Iterable[str]) -> Iterator[dict[str, Any]]:
    """One 'poll' pass (cron) on a database that daemons may share (PostgreSQL): the pass takes
    the lease of each account that is free or expired, under an id of its own, for
    ``lease_ttl``; {account: its import fence (renewing the lease at each batch) or, for an
    account another daemon or pass holds, the line that says so}. Every lease it took is given
    back at the end of the ``with`` block, so the daemons take them at their next renew.

    A pass's id names its host and pid (``poll:HOST:PID:TOKEN``): the lease of a pass of this host
    whose process is gone (SIGKILLed, the machine's OOM killer) is taken over at once, not after
    ``lease_ttl``, so a poll run again right after a killed one polls (the epoch rises: nothing
    of the dead pass could commit anyway)."""
    ttl = (settings or DaemonSettings()).lease_ttl
    pass_id = f"poll:{socket.gethostname()}:{os.getpid()}:{leases.new_daemon_id()}"
    plan: dict[str, Any] = {}
    with transaction(db):
        leases.ensure_tables(db)
        for name in accounts:
            epoch = leases.acquire(db, pass_id, name, ttl)
            if epoch is not None:
                plan[name] = partial(leases.check_fence, daemon_id=pass_id, account=name, epoch=epoch, extend=ttl)
                continue
            who = leases.holder(db, name) or {}
            other = _pass_of(who.get("daemon_id") or "")
            if other and other[0] == socket.gethostname() and not pid_alive(other[1]):
                epoch = leases.take_over(db, pass_id, name, ttl, from_id=who["daemon_id"])
                if epoch is not None:
                    log.info("%s: the lease of a 'poll' (pid %d) that is gone taken over", name, other[1])
                    plan[name] = partial(leases.check_fence, daemon_id=pass_id, account=name, epoch=epoch,
                                         extend=ttl)
                    continue
            if who.get("host") is not None:
                plan[name] = (f"skipped: the daemon on {who['host']} (pid {who['pid']}) holds account {name} "
                              "and polls it")
            elif other:  # in the words of the local poll lock (intake/locks.py), the host added if not this one
                where = "" if other[0] == socket.gethostname() else f" on {other[0]}"
                plan[name] = f"account {name} is being polled by pid {other[1]}{where}: skipped"
            else:
                plan[name] = f"skipped: another 'poll' holds account {name}"
    try:
        yield plan
    finally:
        try:
            with transaction(db):
                leases.release(db, pass_id)
        except Exception as exc:
            log.warning("could not give back the account leases of this poll: %s (they expire in %g s)", exc, ttl)


def _pass_of(lease_holder: str) -> tuple[str, int] | None:
    """(host, pid) of a 'poll' pass's id (``poll:HOST:PID:TOKEN``), or None (a daemon's id)."""
    parts = lease_holder.split(":")
    if len(parts) == 4 and parts[0] == "poll" and parts[2].isdigit():
        return parts[1], int(parts[2])
    return None


def fair_share(accounts: int, live: list[str], me: str) -> int:
    """This daemon's part of ``accounts`` among the ``live`` daemons (sorted ids): the first
    accounts % len(live) of them take one more, so the parts add up to every account."""
    if me not in live:
        live = sorted([*live, me])
    whole, rest = divmod(accounts, len(live))
    return whole + (1 if live.index(me) < rest else 0)


def _refuse(account: str, db: Database) -> None:
    raise leases.LeaseLost(account)
