"""The long-running process behind 'mail2ticket run': schedules, worker pools, push, signals, heartbeat."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import schedule
from sqlite_utils import Database

from mail2ticket import __version__
from mail2ticket.config import Account, Config, load_config
from mail2ticket.errors import Mail2TicketError, SecretError
from mail2ticket.notify import Notifier
from mail2ticket.schedules import add_jobs, frequency_warning, parse_schedule
from mail2ticket.store import now_iso, open_db, transaction

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4  # accounts polled at the same time; each poll holds one IMAP connection
JOB_WORKERS = 2  # outbox sender, overdue check: their own pool, so slow polls never delay them
HEARTBEAT_SECONDS = 10  # how often the daemon row is refreshed
STALE_AFTER_SECONDS = 60  # a heartbeat older than this means the daemon is not running
STOP_GRACE_SECONDS = 10  # how long a stop waits for the batch being imported


class DaemonError(Mail2TicketError):
    """The daemon cannot start: another one serves the same database, or no account has a secret."""


# --- heartbeat: whether a daemon serves this database ----------------------------------------------


def _iso_age(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    try:
        then = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def daemon_state(db: Database, now: datetime | None = None) -> dict:
    """Whether a daemon is running on this database, from its heartbeat row (for 'status')."""
    now = now or datetime.now(UTC)
    if not db["daemon"].exists():
        rows = []
    else:
        rows = list(db.query("select * from daemon order by id desc limit 1"))
    if not rows:
        return {"running": False, "state": "never started", "pid": None, "host": None,
                "version": None, "started_at": None, "heartbeat_at": None, "stopped_at": None,
                "status": None}
    row = rows[0]
    age = _iso_age(row["heartbeat_at"], now)
    fresh = age is not None and age < STALE_AFTER_SECONDS
    alive = row["host"] != socket.gethostname() or _pid_alive(row["pid"])
    if row["stopped_at"]:
        state = "stopped"
    elif fresh and alive:
        state = "running"
    else:
        state = "dead"  # no clean stop and no heartbeat: killed, crashed or hung
    return {
        "running": state == "running",
        "state": state,
        "pid": row["pid"],
        "host": row["host"],
        "version": row["version"],
        "started_at": row["started_at"],
        "heartbeat_at": row["heartbeat_at"],
        "stopped_at": row["stopped_at"],
        "status": row["status"],
    }


def next_polls(db: Database) -> dict[str, str]:
    """{account: the running daemon's next scheduled poll (ISO 8601 UTC)}."""
    if not db["daemon_jobs"].exists():
        return {}
    return {
        row["account"]: row["next_run_at"]
        for row in db.query(
            "select account, min(next_run_at) as next_run_at from daemon_jobs "
            "where account is not null group by account"
        )
    }


# --- jobs registered by other modules ----------------------------------------------------------------


def job_name(job: Callable) -> str:
    return f"{getattr(job, '__module__', '')}.{getattr(job, '__name__', repr(job))}".strip(".")


def job_schedule_key(job: Callable) -> str:
    """Which [schedule] key times a job of service.AFTER_POLL_JOBS: its ``schedule_key``, or a
    guess from its name (outbox/overdue), else the poll schedule."""
    key = getattr(job, "schedule_key", None)
    if key:
        return key
    name = job_name(job).lower()
    if "overdue" in name or "sla" in name:
        return "overdue"
    if "outbox" in name or "send" in name:
        return "outbox"
    return "poll"


# --- running jobs: bounded pools, never the same job twice at once -------------------------------


class JobRunner:
    """Runs keyed work on bounded thread pools: a key that is still running is never started
    again (a later request is skipped, or with ``again=True`` remembered and run once more
    after it), and each pool is separate so slow polls never hold up the other jobs."""

    def __init__(self, pools: dict[str, int]):
        self._pools = {name: ThreadPoolExecutor(size, thread_name_prefix=name) for name, size in pools.items()}
        self._lock = threading.Lock()
        self._running: dict[str, Future] = {}
        self._again: set[str] = set()
        self.closed = False

    def submit(self, pool: str, key: str, func: Callable[[], object], *, again: bool = False) -> bool:
        """Start ``func`` on ``pool`` under ``key``; False when ``key`` is still running."""
        with self._lock:
            if self.closed:
                return False
            if key in self._running:
                if again:
                    self._again.add(key)
                return False
            self._running[key] = self._pools[pool].submit(self._call, pool, key, func)
            return True

    def _call(self, pool: str, key: str, func: Callable[[], object]) -> None:
        try:
            func()
        except Exception as exc:  # every job is wrapped: one exception is logged, the daemon lives on
            log.error("%s failed: %s: %s", key, exc.__class__.__name__, exc)
            log.debug("%s", key, exc_info=True)
        finally:
            with self._lock:
                self._running.pop(key, None)
                rerun = key in self._again and not self.closed
                self._again.discard(key)
            if rerun:
                self.submit(pool, key, func)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    def close(self, timeout: float) -> list[str]:
        """Start nothing new, wait up to ``timeout`` s for what runs; the keys still running."""
        with self._lock:
            self.closed = True
            running = dict(self._running)
        wait_futures(list(running.values()), timeout=timeout)
        for executor in self._pools.values():
            executor.shutdown(wait=False, cancel_futures=True)
        return sorted(key for key, fut in running.items() if not fut.done())


# --- the daemon ----------------------------------------------------------------------------------------


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
        self.scheduler = schedule.Scheduler()
        self.cfg: Config | None = None
        self._lock = threading.Lock()
        self._watchers: dict[str, object] = {}
        self._warned: set[tuple[str, str]] = set()
        self._signal: int | None = None
        self._reload_requested = False
        self._results: dict[str, object] = {}
        self._last_poll: tuple[str, str] | None = None
        self._config_note = ""
        self.imported = 0
        self.daemon_id: int | None = None

    # --- start and stop ----------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; returns the exit code (0 after a clean stop)."""
        self.cfg = cfg = load_config(self.config_path)
        check_secrets(cfg, cfg.accounts, fail_if_none=True)
        self._lock_file = acquire_lock(cfg.database)
        self.db = open_db(cfg.database, busy_timeout_ms=5000)
        self._install_signals()
        self.runner = JobRunner({"poll": self.workers, "job": JOB_WORKERS})
        self.daemon_id = self._start_heartbeat()
        try:
            self._apply_config(cfg, previous=None)
            enabled = [a.name for a in cfg.accounts if a.enabled]
            if not enabled:
                log.warning("no enabled accounts in %s: waiting for a reload (SIGHUP)", cfg.path)
            log.info("mail2ticket %s started (pid %d): %d account(s), %d worker(s), database %s",
                     __version__, os.getpid(), len(enabled), self.workers, cfg.database)
            for name in enabled:  # a first poll right away, then on schedule
                self.request_poll(name, "start", ignore_backoff=True)
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
            try:
                self.scheduler.run_pending()
            except Exception as exc:  # a job only submits work; still, the loop lives on
                log.error("scheduler: %s: %s", exc.__class__.__name__, exc)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_SECONDS
                self._heartbeat()
            interval = self.notifier.watchdog_interval
            if interval and now >= next_watchdog:
                next_watchdog = now + interval
                self.notifier.watchdog()
            idle = self.scheduler.idle_seconds
            timeout = 1.0 if idle is None else max(0.0, min(1.0, idle))
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
        watchers = list(self._watchers.values())
        for watcher in watchers:
            watcher.stop()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        unfinished = self.runner.close(STOP_GRACE_SECONDS)
        for watcher in watchers:
            watcher.join(timeout=max(0.1, deadline - time.monotonic()))
        try:
            with transaction(self.db):
                self.db.execute(
                    "update daemon set stopped_at = ?, heartbeat_at = ?, status = ? where id = ?",
                    [now_iso(), now_iso(), f"stopped ({name})", self.daemon_id],
                )
        except Exception as exc:
            log.warning("could not record the stop in the database: %s", exc)
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
        """(Re)build every scheduled job and push session from ``cfg``."""
        from mail2ticket import service
        from mail2ticket.push import PushWatcher

        self.scheduler.clear()
        enabled = [a for a in cfg.accounts if a.enabled]
        for account in enabled:
            text = account.poll or cfg.schedule["poll"]
            sched = parse_schedule(text)
            if (account.name, text) not in self._warned:
                self._warned.add((account.name, text))
                warning = frequency_warning(f"account {account.name}", sched)
                if warning:
                    log.warning("%s", warning)
            add_jobs(self.scheduler, sched, partial(self.request_poll, account.name, "schedule"),
                     tag=f"poll:{account.name}")
        for job in service.AFTER_POLL_JOBS:
            key = job_schedule_key(job)
            text = cfg.schedule.get(key) or cfg.schedule["poll"]
            add_jobs(self.scheduler, parse_schedule(text), partial(self.request_job, job),
                     tag=f"job:{job_name(job)}")
            log.debug("job %s scheduled on [schedule] %s = %r", job_name(job), key, text)
        # Push: one IDLE session per account with push = true; restarted when the account changed.
        wanted = {a.name: a for a in enabled if a.push and a.source == "imap"}
        for name, watcher in list(self._watchers.items()):
            if wanted.get(name) != watcher.account:
                watcher.stop()
                del self._watchers[name]
        for name, account in wanted.items():
            if name not in self._watchers:
                watcher = PushWatcher(account, partial(self.request_poll, reason="push"), self.stop_event)
                self._watchers[name] = watcher
                watcher.start()
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
        if (new.database, new.attachments) != (old.database, old.attachments):
            log.warning("[storage] changed in %s: that takes a restart; still using %s",
                        new.path, old.database)
            new.database, new.attachments = old.database, old.attachments
        before = {a.name: a for a in old.accounts}
        after = {a.name: a for a in new.accounts}
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(n for n in set(after) & set(before) if after[n] != before[n])
        self.cfg = new
        self._config_note = ""
        with self._lock:
            for name in removed:
                self._results.pop(name, None)
        self._apply_config(new, previous=old)
        check_secrets(new, [after[n] for n in added + changed], fail_if_none=False)
        log.info("config reloaded: %d account(s) enabled; added: %s; removed: %s; changed: %s",
                 sum(a.enabled for a in new.accounts), ", ".join(added) or "none",
                 ", ".join(removed) or "none", ", ".join(changed) or "none")
        # A reload is an explicit request: poll every enabled account now, backoff or not
        # (after 'accounts set-password', the account is tried at once).
        for account in new.accounts:
            if account.enabled:
                self.request_poll(account.name, "reload", ignore_backoff=True)
        self.notifier.ready(self.summary())
        self._heartbeat()

    # --- running jobs ----------------------------------------------------------------------------
    def request_poll(self, name: str, reason: str = "schedule", *, ignore_backoff: bool = False) -> None:
        """Start a poll of account ``name`` unless one is running (never two at once). New mail
        announced by push, or a reload, during a poll makes it run once more afterwards."""
        if self.stop_event.is_set():
            return
        started = self.runner.submit(
            "poll", f"poll:{name}", partial(self._poll_job, name, reason, ignore_backoff),
            again=reason in ("push", "reload"),
        )
        if not started and reason == "schedule":
            log.debug("account %s: previous poll still running; this run skipped", name)

    def request_job(self, job: Callable) -> None:
        if self.stop_event.is_set():
            return
        if not self.runner.submit("job", f"job {job_name(job)}", partial(self._run_job, job)):
            log.debug("job %s still running; this run skipped", job_name(job))

    def _poll_job(self, name: str, reason: str, ignore_backoff: bool) -> None:
        from mail2ticket.poller import run_poll

        cfg = self.cfg
        account = next((a for a in cfg.accounts if a.name == name and a.enabled), None)
        if account is None:
            return  # removed or disabled by a reload since it was scheduled
        db = open_db(cfg.database)  # one connection per worker thread
        try:
            if not ignore_backoff and _backing_off(db, name):
                log.debug("account %s: backing off after failures; poll skipped", name)
                return
            log.debug("account %s: polling (%s)", name, reason)
            result = run_poll(cfg, db, account, stop=self.stop_event)
        finally:
            db.close()
        self._poll_done(account, result)

    def _run_job(self, job: Callable) -> None:
        cfg = self.cfg
        db = open_db(cfg.database)
        try:
            job(cfg, db)
        finally:
            db.close()

    def _poll_done(self, account: Account, result) -> None:
        with self._lock:
            self._results[account.name] = result
            self.imported += result.stored
            self._last_poll = (account.name, datetime.now().strftime("%H:%M:%S"))
        self.notifier.status(self.summary())

    def summary(self) -> str:
        """The one-line STATUS= for systemctl status."""
        cfg = self.cfg
        enabled = [a.name for a in cfg.accounts if a.enabled] if cfg else []
        with self._lock:
            failing = [n for n in enabled if n in self._results and not self._results[n].ok]
            last = self._last_poll
        parts = [f"{len(enabled)} account{'s' if len(enabled) != 1 else ''}"]
        parts.append(f"{len(failing)} failing ({', '.join(failing)})" if failing else "all ok")
        parts.append(f"{self.imported} message{'s' if self.imported != 1 else ''} imported since start")
        if last:
            parts.append(f"last poll {last[1]} ({last[0]})")
        if self._config_note:
            parts.append(self._config_note)
        return "; ".join(parts)

    # --- heartbeat -------------------------------------------------------------------------------
    def _start_heartbeat(self) -> int:
        cfg = self.cfg
        now = now_iso()
        with transaction(self.db):
            # Keep a short history of starts; the newest row is the one 'status' reads.
            self.db.execute("delete from daemon where id not in (select id from daemon order by id desc limit 19)")
            self.db.execute("delete from daemon_jobs")
            cursor = self.db.execute(
                "insert into daemon (pid, host, version, config, started_at, heartbeat_at, status) "
                "values (?, ?, ?, ?, ?, ?, ?)",
                [os.getpid(), socket.gethostname(), __version__, str(cfg.path), now, now, "starting"],
            )
        return cursor.lastrowid

    def _heartbeat(self) -> None:
        try:
            with transaction(self.db):
                self.db.execute(
                    "update daemon set heartbeat_at = ?, status = ? where id = ?",
                    [now_iso(), self.summary(), self.daemon_id],
                )
            self._publish_jobs()
        except Exception as exc:
            log.warning("could not write the heartbeat: %s", exc)

    def _publish_jobs(self) -> None:
        """Write each job's next run, so 'status' can show every account's next poll."""
        rows: dict[str, dict] = {}
        for job in self.scheduler.get_jobs():
            if job.next_run is None:
                continue
            tag = next(iter(job.tags), None)
            if tag is None:
                continue
            at = job.next_run.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
            if tag in rows and rows[tag]["next_run_at"] <= at:
                continue
            kind, _, rest = tag.partition(":")
            rows[tag] = {"name": tag, "account": rest if kind == "poll" else None,
                         "schedule": None, "next_run_at": at}
        cfg = self.cfg
        for row in rows.values():
            if row["account"]:
                acct = next((a for a in cfg.accounts if a.name == row["account"]), None)
                row["schedule"] = (acct.poll if acct else None) or cfg.schedule["poll"]
        try:
            with transaction(self.db):
                self.db.execute("delete from daemon_jobs")
                if rows:
                    self.db["daemon_jobs"].insert_all(rows.values())
        except Exception as exc:
            log.warning("could not record the schedule: %s", exc)


def _backing_off(db: Database, account: str) -> bool:
    row = db.execute("select next_attempt_at from account_status where account = ?", [account]).fetchone()
    return bool(row and row[0] and row[0] > now_iso())


def check_secrets(cfg: Config, accounts: list[Account], *, fail_if_none: bool) -> None:
    """Look up each enabled IMAP account's password once. Each missing one is logged (naming
    every source tried); with ``fail_if_none``, no password at all is fatal: nothing could run."""
    from mail2ticket.secrets import get_password

    wanted = [a for a in accounts if a.enabled and a.source == "imap"]
    errors: list[SecretError] = []
    for account in wanted:
        try:
            get_password(account)
        except SecretError as exc:
            errors.append(exc)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held open for the daemon's lifetime
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
