"""The long-running process behind 'mail2ticket run': schedules, worker pools, push, signals, heartbeat."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import schedule

from mail2ticket import __version__
from mail2ticket.accounts.credentials import sign_in_secret
from mail2ticket.config.load import load_config
from mail2ticket.config.model import Account, Config
from mail2ticket.config.periods import frequency_warning, parse_schedule
from mail2ticket.errors import Mail2TicketError, SecretError
from mail2ticket.files import perms as fileperms
from mail2ticket.intake.poller import run_poll
from mail2ticket.intake.push import DEFAULT_LOGINS_PER_SECOND, LoginGate, PushHub, WorkerPool
from mail2ticket.outgoing.hooks import subscribe
from mail2ticket.outgoing.sender import Claimer
from mail2ticket.service.jobs import AFTER_POLL_JOBS, Job, claim_group_job
from mail2ticket.service.metrics import write_textfile
from mail2ticket.service.notify import Notifier
from mail2ticket.service.schedules import PollPlan, add_jobs, spread_offsets
from mail2ticket.service.sharing import AccountShare
from mail2ticket.tickets.daemon_state import (  # daemon_state: here for the callers of old
    STALE_AFTER_SECONDS,  # noqa: F401
    daemon_state,
    publish_jobs,
    publish_push_sessions,
    record_heartbeat,
    record_start,
    record_stop,
)
from mail2ticket.tickets.db import next_attempt_at, now_iso, open_store, transaction
from mail2ticket.tickets.leases import new_daemon_id

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4  # accounts polled at the same time; each poll holds one IMAP connection
JOB_WORKERS = 2  # outbox sender, overdue check: their own pool, so slow polls never delay them
HEARTBEAT_SECONDS = 10  # how often the daemon row is refreshed
STOP_GRACE_SECONDS = 8  # how long a stop waits for the batch being imported (exit within 10 s)
RELOAD_POLL_SECONDS = 5  # a reload polls an account at most once in this long (a burst of SIGHUPs)
# A poll with more to import yields its thread after this when others wait, and goes on in the
# backlog pool: on the main pool (new mail) quickly, in the backlog pool (bursts) less often.
SLICE_SECONDS = {"poll": 0.5, "backlog": 5.0}
FIRST_SLICE_BATCH = 20  # batch size of polls on the main pool (a burst's first slice)
BACKLOG_PAUSE_SECONDS = 10.0  # how long a backlog waits at most for the main pool to be idle


class DaemonError(Mail2TicketError):
    """The daemon cannot start: another one serves the same database, or no account has a secret."""


# --- jobs registered by other modules ----------------------------------------------------------------


def _write_metrics(cfg: Config, db: Database) -> None:
    """The metrics to [metrics] textfile (service/metrics.py; a failure is an alert in 'status')."""
    write_textfile(cfg, db, daemon_state(db))


# On [schedule] metrics (default every minute), at start and at a clean stop, when [metrics]
# textfile is set: the daemon's own job (not in jobs.AFTER_POLL_JOBS: it reads the heartbeat).
METRICS_JOB = Job("metrics", "metrics", _write_metrics)


# --- running jobs: bounded pools, never the same job twice at once -------------------------------


# How urgent each reason for a poll is (lower first).
PRIORITY = {"push": 0, "renew": 0, "start": 1, "reload": 1, "continue": 2, "schedule": 2}


class JobRunner:
    """Runs keyed work on bounded thread pools: a key that is still running is never started
    again (a later request is skipped, or with ``again=True`` remembered and run once more
    after it), and each pool is separate so slow polls never hold up the other jobs. Within a
    pool, more urgent work (a lower ``priority``) is started first."""

    def __init__(self, pools: dict[str, int]):
        self._pools = {name: WorkerPool(size, name) for name, size in pools.items()}
        self._lock = threading.Lock()
        self._running: dict[str, Future] = {}
        self._again: dict[str, tuple[str, Callable[[], object], int]] = {}
        self.closed = False

    def submit(self, pool: str, key: str, func: Callable[[], object], *, again: bool = False,
               priority: int = 0) -> bool:
        """Start ``func`` on ``pool`` under ``key``; False when ``key`` is still running."""
        with self._lock:
            if self.closed:
                return False
            if key in self._running:
                if again:
                    old = self._again.get(key)
                    self._again[key] = (pool, func, min(priority, old[2]) if old else priority)
                return False
            self._running[key] = self._pools[pool].submit(priority, partial(self._call, key, func))
            return True

    def _call(self, key: str, func: Callable[[], object]) -> None:
        try:
            func()
        except Exception as exc:  # every job is wrapped: one exception is logged, the daemon lives on
            log.error("%s failed: %s: %s", key, exc.__class__.__name__, exc)
            log.debug("%s", key, exc_info=True)
        finally:
            with self._lock:
                self._running.pop(key, None)
                rerun = self._again.pop(key, None) if not self.closed else None
            if rerun:
                pool, func, priority = rerun
                self.submit(pool, key, func, priority=priority)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    def waiting(self, pool: str, below: int) -> bool:
        return self._pools[pool].waiting(below)

    def busy(self, pool: str) -> bool:
        return self._pools[pool].busy()

    @property
    def thread_count(self) -> int:
        return sum(len(p.threads) for p in self._pools.values())

    def close(self, timeout: float) -> list[str]:
        """Start nothing new, wait up to ``timeout`` s for what runs; the keys still running."""
        with self._lock:
            self.closed = True
            self._again.clear()
            running = dict(self._running)
        for pool in self._pools.values():
            pool.shutdown()  # what still waits for a thread is dropped
        wait_futures([f for f in running.values() if not f.cancelled()], timeout=timeout)
        return sorted(key for key, fut in running.items() if not fut.done())


# --- the daemon ----------------------------------------------------------------------------------------


class _Slice:
    """What a poll checks between batches as its ``stop``: set when the daemon stops, or once the
    poll has had its SLICE_SECONDS and other work of the same or more urgency waits for a thread
    of its pool. A poll cut this way has committed (and flagged) everything it imported, and goes
    on in the backlog pool: an account importing thousands of messages never holds a thread of
    the main pool while others' new mail waits."""

    def __init__(self, stop: threading.Event, runner: JobRunner, pool: str, priority: int,
                 may_touch: Callable[[], bool] = lambda: True):
        self.stop, self.runner, self.pool, self.priority = stop, runner, pool, priority
        self.may_touch = may_touch  # False once this daemon's lease of the account may have expired
        self.started = time.monotonic()
        self.cut = False
        self.checks = 0

    def is_set(self) -> bool:
        if self.stop.is_set() or not self.may_touch():
            return True
        self.checks += 1
        if self.pool == "backlog":
            # A backlog waits between its batches while new mail is imported: the CPU and the
            # database's write lock go to that first (at most BACKLOG_PAUSE_SECONDS at a time).
            deadline = time.monotonic() + BACKLOG_PAUSE_SECONDS
            while self.runner.busy("poll") and time.monotonic() < deadline and not self.stop.is_set():
                time.sleep(0.02)
        # The poll asks before fetching batch 1, before fetching batch 2 and before committing
        # batch 1: a slice always ends with at least one batch committed.
        if self.checks > 3 and (time.monotonic() - self.started >= SLICE_SECONDS[self.pool]
                and self.runner.waiting(self.pool, self.priority + 1)):
            self.cut = True
            return True
        return False


class Daemon:
    """Runs the jobs on their schedules until SIGTERM/SIGINT; SIGHUP reloads the config."""

    def __init__(
        self,
        config_path: str | os.PathLike | None,
        *,
        workers: int = DEFAULT_WORKERS,
        notifier: Notifier | None = None,
    ):
        self.config_path = config_path
        self.workers = max(1, workers)
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.scheduler = schedule.Scheduler()  # the other jobs (outbox, overdue): a few
        self.plan = PollPlan()  # every account's polls: a heap, cheap for thousands
        self.cfg: Config | None = None
        self.hub = None  # push.PushHub: every IDLE session
        self.gate = None  # push.LoginGate: logins spread over time
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._signal: int | None = None
        self._reload_requested = False
        self._results: dict[str, object] = {}
        self._last_poll: tuple[str, str] | None = None
        self._last_reload_poll: dict[str, float] = {}  # account -> when a reload last polled it (monotonic)
        self._deferred: dict[str, float] = {}  # account -> when a reload's poll is due (monotonic)
        self._secrets: dict[str, str] = {}  # account -> digest of the password last looked up
        self._published: dict[str, dict] = {}
        self._published_push: dict[str, dict] = {}
        self._config_note = ""
        self._status_due = False
        self.imported = 0
        self.daemon_id: int | None = None
        self.share: AccountShare | None = None  # the account leases (service/sharing.py)
        self._lease_thread: threading.Thread | None = None
        self._polled_since_lease: set[str] = set()
        self._leases_changed = False
        self._hooks_job = next((job for job in AFTER_POLL_JOBS if job.pool == "hooks"), None)

    # --- start and stop ----------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; returns the exit code (0 after a clean stop)."""

        self.cfg = cfg = load_config(self.config_path)
        check_secrets(cfg, cfg.accounts, fail_if_none=True, seen=self._secrets)
        self._lock_file = acquire_lock(cfg.database)
        self.db = open_store(cfg, busy_timeout_ms=5000)
        raise_open_files_limit()
        self._install_signals()
        # New mail on "poll"; what a long import has left after its first slice on "backlog".
        # Hook deliveries on a thread of their own: a hook target that hangs delays nothing else.
        self.runner = JobRunner({"poll": self.workers, "backlog": max(1, self.workers // 2), "job": JOB_WORKERS,
                                 "hooks": 1})
        self.gate = LoginGate(_login_rate(cfg))
        self.hub = PushHub(partial(self.request_poll, reason="push"), self.stop_event, gate=self.gate)
        self.daemon_id = self._start_heartbeat()
        subscribe(cfg, self.db)
        self._start_leases()
        try:
            self._apply_config(cfg, previous=None)
            enabled = [a for a in cfg.accounts if a.enabled]
            if not enabled:
                log.warning("no enabled accounts in %s: waiting for a reload (SIGHUP)", cfg.path)
            log.info("mail2ticket %s started (pid %d): %d account(s), %d worker(s), database %s",
                     __version__, os.getpid(), len(enabled), self.workers, cfg.database)
            for account in enabled:  # a first poll right away (push: once its session is open)
                if not _pushed(account) and self.share.may_touch(account.name):
                    self.request_poll(account.name, "start", ignore_backoff=True)
            if cfg.metrics_textfile is not None:
                self.request_job(METRICS_JOB)
            self.notifier.ready(self.summary())
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _install_signals(self) -> None:
        # A signal handler only sets a flag; the wakeup fd wakes the main loop's select().
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._signal = signum

    def _loop(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        next_watchdog = time.monotonic()
        while self._signal is None:
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if self._leases_changed or (self.share.shared and self.share.held
                                        and not self.share.may_touch(next(iter(self.share.held)))):
                self._leases_changed = False
                self._follow_leases()
            try:
                for name in self.plan.due():
                    self.request_poll(name, "schedule")
                self._run_deferred()
                self.scheduler.run_pending()
            except Exception as exc:  # a job only submits work; still, the loop lives on
                log.error("scheduler: %s: %s", exc.__class__.__name__, exc)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_SECONDS
                self._heartbeat()
            if self._status_due:
                self._status_due = False
                self.notifier.status(self.summary())
            interval = self.notifier.watchdog_interval
            if interval and now >= next_watchdog:
                next_watchdog = now + interval
                self.notifier.watchdog()
            waits = [1.0, self.scheduler.idle_seconds, self.plan.idle_seconds()]
            if self._deferred:
                waits.append(min(self._deferred.values()) - now)
            timeout = max(0.0, min(w for w in waits if w is not None))
            if self._signal is None and not self._reload_requested:
                with contextlib.suppress(InterruptedError, OSError):
                    ready, _, _ = select.select([self._wake_r], [], [], timeout)
                    if ready:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)

    def _shutdown(self) -> None:
        name = signal.Signals(self._signal).name if self._signal else "error"
        log.info("%s: stopping; the batch being imported is finished and committed first", name)
        self.notifier.stopping(f"stopping ({name})")
        self.stop_event.set()
        self.scheduler.clear()
        if self.share is not None and self.share.shared:
            self.share.stopping(self.db)
        if self.hub is not None:
            self.hub.close()  # idle sessions log out at once; a busy one when its batch is committed
        unfinished = self.runner.close(STOP_GRACE_SECONDS)
        if self._lease_thread is not None:
            self._lease_thread.join(timeout=STOP_GRACE_SECONDS)
        if self.share is not None:
            self.share.stop(self.db)  # the others take our accounts at their next renew
        try:
            with transaction(self.db):
                record_stop(self.db, self.daemon_id, now_iso(), f"stopped ({name})", clear=not self._shared)
                if self._shared and self._published_push:
                    publish_push_sessions(self.db, list(self._published_push), [])
        except Exception as exc:
            log.warning("could not record the stop in the database: %s", exc)
        if self.cfg is not None and self.cfg.metrics_textfile is not None:
            _write_metrics(self.cfg, self.db)  # daemon_running 0 from now on (never raises)
        if unfinished:
            # Nothing is lost: uncommitted work rolls back and nothing uncommitted was flagged
            # on the server, so the next start fetches it again.
            log.warning("%s did not finish within %d s; stopping anyway (its uncommitted batch "
                        "is fetched again at the next start)", ", ".join(unfinished), STOP_GRACE_SECONDS)
            logging.shutdown()
            os._exit(0)
        log.info("stopped")

    # --- configuration -----------------------------------------------------------------------
    def _apply_config(self, cfg: Config, previous: Config | None) -> None:
        """(Re)build the schedules from ``cfg``; open, close or restart only the push sessions
        whose account was added, removed or changed (the others keep their connection)."""
        self.scheduler.clear()
        enabled = [a for a in cfg.accounts if a.enabled]
        groups: dict[str, list[str]] = {}
        for account in enabled:
            text = account.poll or cfg.schedule["poll"]
            sched = parse_schedule(text)
            if (account.name, text) not in self._warned:
                self._warned.add((account.name, text))
                warning = frequency_warning(f"account {account.name}", sched)
                if warning:
                    log.warning("%s", warning)
            groups.setdefault(text, []).append(account.name)
        planned: set[str] = set()
        for text, names in groups.items():
            sched = parse_schedule(text)
            # Accounts sharing a schedule are spread over its period, not all polled at :00.
            for name, offset in spread_offsets(names, sched).items():
                self.plan.set(name, sched, offset)
                planned.add(name)
        for name in self.plan.names() - planned:
            self.plan.remove(name)
        for job in AFTER_POLL_JOBS:
            key = job.schedule_key
            text = cfg.schedule.get(key) or cfg.schedule["poll"]
            add_jobs(self.scheduler, parse_schedule(text), partial(self.request_job, job),
                     tag=f"job:{job.name}")
            log.debug("job %s scheduled on [schedule] %s = %r", job.name, key, text)
        if cfg.metrics_textfile is not None:
            add_jobs(self.scheduler, parse_schedule(cfg.schedule["metrics"]),
                     partial(self.request_job, METRICS_JOB), tag="job:metrics")
        if self.gate is not None:
            self.gate.rate = _login_rate(cfg)
        # Push: one IDLE session per account with push = true; touched only when the account changed.
        wanted = {a.name: a for a in enabled if _pushed(a) and self.share.may_touch(a.name)}
        current = self.hub.accounts() if self.hub is not None else {}
        for name, account in current.items():
            if wanted.get(name) != account:
                self.hub.remove(name)
        for name, account in wanted.items():
            if current.get(name) != account:
                self.hub.add(account)
        self._publish_jobs()

    def reload(self) -> None:
        """SIGHUP: load the config again; a broken one is reported and the running one kept."""
        old = self.cfg
        log.info("SIGHUP: reloading %s", old.path)
        self.notifier.reloading()
        try:
            new = load_config(old.path)
        except Mail2TicketError as exc:
            self._config_note = "config reload FAILED, running with the previous config"
            log.error("config reload failed, the running config stays in force: %s", exc.one_line())
            self.notifier.ready(self.summary())
            self._heartbeat()
            return
        if (new.database, new.attachments, new.object_store) != (old.database, old.attachments, old.object_store):
            log.warning("[storage] changed in %s: that takes a restart; still using %s",
                        new.path, old.database)
            new.database, new.attachments, new.object_store = old.database, old.attachments, old.object_store
        before = {a.name: a for a in old.accounts}
        after = {a.name: a for a in new.accounts}
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(n for n in set(after) & set(before) if after[n] != before[n])
        self.cfg = new
        self._config_note = ""
        if subscribe(new, self.db):
            log.info("hooks: now %s", ", ".join(h.name for h in new.hooks) or "none")
        with self._lock:
            for name in removed:
                self._results.pop(name, None)
        for name in removed:
            self._deferred.pop(name, None)
        self._apply_config(new, previous=old)
        check_secrets(new, [after[n] for n in added + changed], fail_if_none=False, seen=self._secrets)
        log.info("config reloaded: %d account(s) enabled; added: %s; removed: %s; changed: %s",
                 sum(a.enabled for a in new.accounts), ", ".join(added) or "none",
                 ", ".join(removed) or "none", ", ".join(config_changes(old, new)) or "none")
        self._poll_after_reload(new, set(added) | set(changed))
        self.notifier.ready(self.summary())
        self._heartbeat()

    def _poll_after_reload(self, cfg: Config, new_or_changed: set[str]) -> None:
        """A reload polls each enabled account once, but reloads poll an account at most once
        in RELOAD_POLL_SECONDS (a burst of SIGHUPs costs one poll, and one deferred, per account),
        and never around its backoff unless its config or its password changed (a login that
        failed is not repeated just because of a reload). A push account whose session is open
        needs no poll: its server tells us about new mail; an added or changed one is polled
        when its new session opens."""
        now = time.monotonic()
        for account in cfg.accounts:
            if not account.enabled:
                continue
            name = account.name
            if _pushed(account):
                session = self.hub.session(name) if self.hub is not None else None
                if name in new_or_changed or (session is not None and session.state in ("idle", "busy")):
                    continue
            retry = name in new_or_changed or (_backing_off(self.db, name) and self._password_changed(account))
            last = self._last_reload_poll.get(name)
            if retry or last is None or now - last >= RELOAD_POLL_SECONDS:
                self._deferred.pop(name, None)
                self._last_reload_poll[name] = now
                self.request_poll(name, "reload", ignore_backoff=retry)
            else:
                self._deferred.setdefault(name, last + RELOAD_POLL_SECONDS)

    def _run_deferred(self) -> None:
        if not self._deferred:
            return
        now = time.monotonic()
        for name, due in list(self._deferred.items()):
            if due <= now:
                del self._deferred[name]
                self._last_reload_poll[name] = now
                self.request_poll(name, "reload")

    def _password_changed(self, account: Account) -> bool:
        """Whether ``account``'s password differs from the one last looked up (after 'accounts
        set-password' and a reload, an account in backoff is tried at once)."""

        if account.source != "imap" or account.name not in self._secrets:
            return False
        try:
            digest = _digest(sign_in_secret(account))
        except Exception:
            return False
        if digest != self._secrets.get(account.name):
            self._secrets[account.name] = digest
            return True
        return False

    # --- running jobs ----------------------------------------------------------------------------
    def request_poll(self, name: str, reason: str = "schedule", *, ignore_backoff: bool = False) -> None:
        """Start a poll of account ``name`` unless one is running (never two at once). New mail
        announced by push, or a reload, during a poll makes it run once more afterwards."""
        if self.stop_event.is_set():
            return
        pool = "backlog" if reason == "continue" else "poll"
        started = self.runner.submit(
            pool, f"poll:{name}", partial(self._poll_job, name, reason, ignore_backoff),
            again=reason in ("push", "reload", "continue"), priority=PRIORITY.get(reason, 2),
        )
        if not started and reason == "schedule":
            log.debug("account %s: previous poll still running; this run skipped", name)

    def request_job(self, job: Job, *, again: bool = False) -> None:
        """Start ``job`` unless it is running; with ``again``, it then runs once more afterwards."""
        if self.stop_event.is_set():
            return
        if not self.runner.submit(job.pool, f"job {job.name}", partial(self._run_job, job), again=again):
            log.debug("job %s still running; this run skipped", job.name)

    def _poll_job(self, name: str, reason: str, ignore_backoff: bool) -> None:
        cfg = self.cfg
        account = next((a for a in cfg.accounts if a.name == name and a.enabled), None)
        if account is None:
            return  # removed or disabled by a reload since it was scheduled
        if not self.share.may_touch(name):
            log.debug("account %s: held by another daemon (or our lease may have expired); poll skipped", name)
            return
        fence = self.share.fence(name)  # the lease's epoch now: a takeover during the poll refuses its commit
        db = open_store(cfg)  # one connection per worker thread
        box = None
        result = None
        pool = "backlog" if reason == "continue" else "poll"
        cut = _Slice(self.stop_event, self.runner, pool, PRIORITY.get(reason, 2),
                     partial(self.share.may_touch, name))
        try:
            if not ignore_backoff and _backing_off(db, name):
                log.debug("account %s: backing off after failures; poll skipped", name)
                return
            if _pushed(account) and self.hub is not None:
                box = self.hub.borrow(name, wait=5)  # import over the open IDLE connection: no login
                session = self.hub.session(name) if box is None else None
                if box is None and (reason == "push" or (session is not None and session.state == "connecting")):
                    # Its session is (re)opening and polls once open: no second connection now.
                    log.debug("account %s: push session not open; poll left to it", name)
                    return
            if box is None and account.source == "imap" and not self.gate.wait(account.imap_host, self.stop_event):
                return
            log.debug("account %s: polling (%s%s)", name, reason, ", over the IDLE connection" if box else "")
            if pool == "poll" and account.batch_size > FIRST_SLICE_BATCH:
                # On the main pool a burst commits in small batches, so its slice ends quickly
                # and the rest goes to the backlog pool with the account's own batch size.
                account = dataclasses.replace(account, batch_size=FIRST_SLICE_BATCH)
            result = run_poll(cfg, db, account, stop=cut, box=box, fence=fence)
        finally:
            if box is not None:
                self.hub.release(name, box, ok=result is not None and result.ok)
            db.close()
        self._poll_done(account, result)
        if cut.cut and not self.stop_event.is_set() and self.share.may_touch(name):
            self.request_poll(name, "continue", ignore_backoff=True)  # the rest, after the others

    def _run_job(self, job: Callable) -> None:
        cfg = self.cfg
        db = open_store(cfg)
        try:
            if getattr(job, "group", False) and self.share.shared and not self._claim_group_run(job, db):
                log.debug("job %s: another daemon of the group ran it this period; skipped", job.name)
                return
            if getattr(job, "claims", False):
                job(cfg, db, Claimer.for_daemon(self.share.daemon_id, self._may_send))
            else:
                job(cfg, db)
        finally:
            db.close()

    def _may_send(self) -> bool:
        """Whether this daemon may claim and send outbox mail now: not stopping, and (several
        daemons) its heartbeat cannot have gone stale for the others (outgoing/sender.py)."""
        return not self.stop_event.is_set() and self.share.alive()

    def _claim_group_run(self, job: Job, db: Database) -> bool:
        """Whether this daemon runs the group-wide ``job`` now: once per period of its [schedule]
        key for all the daemons on the database (the first to ask; a little early is fine)."""
        return claim_group_job(self.cfg, db, job, self.share.daemon_id)

    # --- leases: which accounts this daemon polls (service/sharing.py, docs/scaling.md) ----------
    @property
    def _shared(self) -> bool:
        """Several daemons may share this database (PostgreSQL): leases decide who polls what."""
        return getattr(self.db, "engine", "sqlite") == "postgresql"

    def _start_leases(self) -> None:
        cfg = self.cfg
        self.share = AccountShare(new_daemon_id(), host=socket.gethostname(), pid=os.getpid(),
                                  settings=cfg.daemon, shared=self._shared)
        self.share.start(self.db)
        self._renew_leases(self.db)  # before the first polls and push sessions: what we hold
        self._polled_since_lease = set(self.share.held)  # run() polls these first
        self._lease_thread = threading.Thread(target=self._lease_loop, name="leases", daemon=True)
        self._lease_thread.start()

    def _leased_accounts(self) -> list[str]:
        return [a.name for a in self.cfg.accounts if a.enabled and a.source != "pipe"]

    def _renew_leases(self, db: Database) -> None:
        busy = {key.split(":", 1)[1] for key in self.runner.running() if key.startswith("poll:")}
        gained, lost = self.share.renew(db, self._leased_accounts(), busy)
        if gained or lost:
            if self.share.shared:
                log.info("account leases: %s", "; ".join(
                    part for part in (f"taken {', '.join(sorted(gained))}" if gained else "",
                                      f"given up {', '.join(sorted(lost))}" if lost else "") if part))
            self._leases_changed = True
            with contextlib.suppress(OSError):
                self._wake_w.send(b"l")  # the main loop opens and closes push sessions, polls what it took

    def _lease_loop(self) -> None:
        """Renew every [daemon] lease_renew on a thread and connection of its own: a database that
        hangs (a partition) never holds up the main loop, which goes by the monotonic clock."""
        db = None
        while not self.stop_event.wait(self.share.settings.lease_renew):
            try:
                if db is None:
                    db = open_store(self.cfg, busy_timeout_ms=5000)
                self._renew_leases(db)
            except Exception as exc:  # opening failed: renew() itself never raises
                log.warning("could not renew the account leases: %s", exc)
                self._renew_leases_failed()
                if db is not None:
                    with contextlib.suppress(Exception):
                        db.close()
                    db = None
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()

    def _renew_leases_failed(self) -> None:
        if self.share.shared and self.share.held and not self.share.may_touch(next(iter(self.share.held))):
            self._leases_changed = True
            with contextlib.suppress(OSError):
                self._wake_w.send(b"l")

    def _follow_leases(self) -> None:
        """Push sessions only for the accounts this daemon may touch; a first poll of each account
        it has just taken (the others are left alone)."""
        if not self.share.shared:
            return
        held = {name for name in self.share.held if self.share.may_touch(name)}
        if self.share.held and not held:
            self.share.held = {}  # our monotonic clock says they may have expired: drop them all
        enabled = {a.name: a for a in self.cfg.accounts if a.enabled}
        current = self.hub.accounts() if self.hub is not None else {}
        for name in current:
            if name not in held:
                log.info("account %s: no longer held by this daemon; its push session is closed", name)
                self.hub.remove(name)
        for name in sorted(held):
            account = enabled.get(name)
            if account is None:
                continue
            if _pushed(account):
                if name not in current:
                    self.hub.add(account)
            elif name not in self._polled_since_lease:
                self.request_poll(name, "start", ignore_backoff=True)
        self._polled_since_lease = held

    def _poll_done(self, account: Account, result) -> None:
        with self._lock:
            self._results[account.name] = result
            self.imported += result.stored
            self._last_poll = (account.name, datetime.now().strftime("%H:%M:%S"))
        self._status_due = True  # sent by the main loop, at most once a second: not per poll
        if self.cfg.hooks and result.stored and self._hooks_job is not None:
            self.request_job(self._hooks_job, again=True)  # new events go out now, not at the next run

    def summary(self) -> str:
        """The one-line STATUS= for systemctl status."""
        cfg = self.cfg
        enabled = [a.name for a in cfg.accounts if a.enabled] if cfg else []
        with self._lock:
            failing = [n for n in enabled if n in self._results and not self._results[n].ok]
            last = self._last_poll
        parts = [f"{len(enabled)} account{'s' if len(enabled) != 1 else ''}"]
        if len(failing) > 5:
            parts.append(f"{len(failing)} failing ({', '.join(failing[:5])}, ...)")
        else:
            parts.append(f"{len(failing)} failing ({', '.join(failing)})" if failing else "all ok")
        parts.append(f"{self.imported} message{'s' if self.imported != 1 else ''} imported since start")
        if last:
            parts.append(f"last poll {last[1]} ({last[0]})")
        if self.hub is not None:
            counts = self.hub.counts()
            total = sum(counts.values())
            if total:
                opened = counts.get("idle", 0) + counts.get("busy", 0)
                text = f"push sessions {opened} of {total} open"
                if counts.get("waiting"):
                    text += f" ({counts['waiting']} could not open, see status)"
                parts.append(text)
        if self._config_note:
            parts.append(self._config_note)
        return "; ".join(parts)

    # --- heartbeat -------------------------------------------------------------------------------
    def _start_heartbeat(self) -> int:
        cfg = self.cfg
        now = now_iso()
        with transaction(self.db):
            # Keep a short history of starts; the newest row is the one 'status' reads.
            return record_start(self.db, pid=os.getpid(), host=socket.gethostname(), version=__version__,
                                clear=not self._shared,
                                config=str(cfg.path), now=now)

    def _heartbeat(self) -> None:
        try:
            with transaction(self.db):
                record_heartbeat(self.db, self.daemon_id, now_iso(), self.summary())
            self._publish_jobs()
            self._publish_push()
        except Exception as exc:
            log.warning("could not write the heartbeat: %s", exc)

    def _publish_push(self) -> None:
        """Write each push session's state (open, waiting after a failure and why) for 'status';
        only the rows that changed since the last heartbeat."""
        if self.hub is None:
            return
        rows = {snap["account"]: snap for snap in self.hub.snapshot()}
        changed = [row for name, row in rows.items() if self._published_push.get(name) != row]
        gone = [name for name in self._published_push if name not in rows]
        if not changed and not gone:
            return
        with transaction(self.db):
            publish_push_sessions(self.db, gone, changed)
        self._published_push = rows

    def _publish_jobs(self) -> None:
        """Write each job's next run, so 'status' can show every account's next poll (only the
        rows that changed since the last time)."""
        rows: dict[str, dict] = {}
        for job in self.scheduler.get_jobs():
            if job.next_run is None:
                continue
            tag = next(iter(job.tags), None)
            if tag is None:
                continue
            at = _iso(job.next_run.astimezone(UTC))
            if tag in rows and rows[tag]["next_run_at"] <= at:
                continue
            rows[tag] = {"name": tag, "account": None, "schedule": None, "next_run_at": at}
        cfg = self.cfg
        accounts = {a.name: a for a in cfg.accounts}
        for name, when in self.plan.next_runs().items():
            acct = accounts.get(name)
            rows[f"poll:{name}"] = {"name": f"poll:{name}", "account": name, "next_run_at": _iso(when),
                                    "schedule": (acct.poll if acct else None) or cfg.schedule["poll"]}
        changed = [row for name, row in rows.items() if self._published.get(name) != row]
        gone = [name for name in self._published if name not in rows]
        if not changed and not gone:
            return
        try:
            with transaction(self.db):
                publish_jobs(self.db, gone, changed, first=not self._published and not self._shared)
            self._published = rows
        except Exception as exc:
            log.warning("could not record the schedule: %s", exc)




def _iso(when: datetime) -> str:
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _pushed(account: Account) -> bool:
    return account.push and account.source == "imap"


def _digest(password: str) -> str:

    return hashlib.sha256(password.encode("utf-8", "surrogateescape")).hexdigest()


def _login_rate(cfg: Config) -> float:

    return float(getattr(cfg, "logins_per_second", None) or DEFAULT_LOGINS_PER_SECOND)


def raise_open_files_limit() -> None:
    """One socket per push account: raise the soft limit on open files to the hard one (systemd
    gives services 1024 soft, 524288 hard), so a thousand accounts do not run out."""

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.debug("could not raise the open files limit: %s", exc)


_ACCOUNT_SECRET_KEYS = {"password_command", "oauth_client_secret"}


def config_changes(old: Config, new: Config) -> list[str]:
    """What a reload changed, in words for the log: each changed account with the keys that
    changed (never their values: some are secrets), each changed [schedule] key with its old
    and new value, and the other sections by name."""

    out: list[str] = []
    before = {a.name: a for a in old.accounts}
    for account in new.accounts:
        prev = before.get(account.name)
        if prev is None or prev == account:
            continue
        keys = [f.name for f in dataclasses.fields(account)
                if f.name not in ("defined_in",) and getattr(prev, f.name) != getattr(account, f.name)]
        if not keys and prev.defined_in != account.defined_in:
            keys = ["moved to " + account.defined_in]
        out.append(f"account {account.name} ({', '.join(keys)})")
    for key in sorted(set(old.schedule) | set(new.schedule)):
        a, b = old.schedule.get(key), new.schedule.get(key)
        if a != b:
            out.append(f"[schedule] {key} {a!r} -> {b!r}")
    for attr, label in (("sla", "[sla]"), ("rules", "rules"), ("conversations", "[conversations]"),
                        ("max_message_size", "[limits] max_message_size"),
                        ("max_attachment_size", "[limits] max_attachment_size"),
                        ("workers", "[performance] workers"), ("parse_timeout", "[performance] parse_timeout"),
                        ("logins_per_second", "[performance] logins_per_second"),
                        ("metrics_textfile", "[metrics] textfile"), ("hooks", "[[hooks]]")):
        a, b = getattr(old, attr, None), getattr(new, attr, None)
        if a != b:
            if attr in ("sla", "rules", "conversations", "hooks"):
                out.append(label)
            else:
                out.append(f"{label} {a!r} -> {b!r}")
    return out


def _backing_off(db: Database, account: str) -> bool:
    retry_at = next_attempt_at(db, account)
    return bool(retry_at and retry_at > now_iso())


def check_secrets(cfg: Config, accounts: list[Account], *, fail_if_none: bool,
                  seen: dict[str, str] | None = None) -> None:
    """Look up each enabled IMAP account's password once. Each missing one is logged (naming
    every source tried); with ``fail_if_none``, no password at all is fatal: nothing could run."""

    wanted = [a for a in accounts if a.enabled and a.source == "imap"]
    errors: list[SecretError] = []
    for account in wanted:
        try:
            password = sign_in_secret(account)
        except SecretError as exc:
            errors.append(exc)
        else:
            if seen is not None:
                seen[account.name] = _digest(password)
    if fail_if_none and wanted and len(errors) == len(wanted):
        first = errors[0]  # one line from the CLI's error boundary, nothing else
        if len(errors) > 1:
            raise SecretError(f"no password found for any of the {len(errors)} accounts; first: {first}",
                              first.hint)
        raise first
    for exc in errors:
        log.error("%s", exc.one_line())


def acquire_lock(database: Path) -> object:
    """One daemon per database: an flock beside it, released by the kernel when we exit."""
    path = Path(f"{database}.daemon.lock")

    fileperms.makedirs(path.parent)
    f = os.fdopen(fileperms.create(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, mode=0o600), "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "unknown"
        f.close()
        raise DaemonError(
            f"another mail2ticket daemon (pid {other}) is already running on {database}",
            "stop it first (systemctl stop mail2ticket), or give this one another [storage] database",
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
