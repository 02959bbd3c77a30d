"""Push: the IMAP IDLE sessions of every account with push = true, waited on by one thread.

One thread (the hub) waits on all IDLE sockets at once with a selector: an idle daemon costs a
socket per account, not a thread, and wakes only when a server says something or an IDLE is due
for renewal. Logging in happens on a small pool, spread by a LoginGate (a few logins a second
per server), so a start, a reload or a reconnect after an outage never opens hundreds of
connections at once. When a server announces new mail, the daemon's poll borrows the session's
connection (DONE), imports over it with the ordinary poll code and gives it back (IDLE again):
no new connection, no login, no queueing behind other accounts' connection set-up.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from functools import partial

from mail2ticket.accounts.credentials import imap_mailbox
from mail2ticket.config.model import Account
from mail2ticket.errors import Mail2TicketError

log = logging.getLogger(__name__)

# RFC 2177: servers may drop an IDLE after 30 minutes, many after 29 or fewer. Renew well before.
IDLE_RENEW_SECONDS = 24 * 60
RETRY_MIN, RETRY_MAX = 5, 15 * 60
CONNECT_THREADS = 4  # sessions being opened at the same time (the LoginGate sets the pace)
DEFAULT_LOGINS_PER_SECOND = 5.0
HUB_MAX_SLEEP = 60.0  # the hub wakes at least this often (nothing to do then: a few microseconds)


class NoIdle(Mail2TicketError):
    """The server does not offer IDLE: the account is polled on its schedule only."""


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def retry_delay(failures: int) -> float:
    """5 s, 10 s, 20 s ... up to 15 minutes, with +-20 % jitter so that sessions dropped together
    (a server restart, a network outage) do not come back together."""
    base = min(RETRY_MAX, RETRY_MIN * 2 ** max(0, failures - 1))
    return base * random.uniform(0.8, 1.2)


class WorkerPool:
    """A fixed set of threads that always take the most urgent work first (lowest priority
    number, then first come): a push announcement never waits behind scheduled polls."""

    def __init__(self, size: int, name: str):
        self._heap: list = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self.active = 0
        self.threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(size)]
        for thread in self.threads:
            thread.start()

    def submit(self, priority: int, fn: Callable[[], object]) -> Future:
        future: Future = Future()
        with self._cond:
            heapq.heappush(self._heap, (priority, next(self._seq), future, fn))
            self._cond.notify()
        return future

    def busy(self) -> bool:
        """Whether anything runs or waits on this pool."""
        with self._cond:
            return bool(self._heap) or self.active > 0

    def waiting(self, below: int) -> bool:
        """Whether work more urgent than ``below`` waits for a thread."""
        with self._cond:
            return bool(self._heap) and self._heap[0][0] < below

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return
                _, _, future, fn = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            with self._cond:
                self.active += 1
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._cond:
                    self.active -= 1

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            for _, _, future, _ in self._heap:
                future.cancel()
            self._heap.clear()
            self._cond.notify_all()


class LoginGate:
    """At most ``rate`` logins a second to each server: each caller gets the next free slot of
    its host and sleeps until then. Start-up, reloads and reconnects after an outage are spread
    this way instead of hitting the server's process and rate limits all at once."""

    def __init__(self, rate: float = DEFAULT_LOGINS_PER_SECOND):
        self.rate = max(0.01, float(rate))
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self.waited = 0.0  # seconds callers spent waiting for a slot (for tests and benchmarks)

    def wait(self, host: str | None, stop: threading.Event | None = None) -> bool:
        """Sleep until this caller's slot; False when ``stop`` was set meanwhile."""
        key = (host or "").lower()
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(key, now))
            self._next[key] = slot + 1.0 / self.rate
        delay = slot - now
        if delay > 0:
            self.waited += delay
            if stop is not None:
                return not stop.wait(delay)
            time.sleep(delay)
        return stop is None or not stop.is_set()


class Session:
    """The IDLE session of one account. ``state``: connecting, idle (in IDLE, watched by the
    hub), busy (lent to a poll), waiting (to reconnect after a failure), no-idle, closed."""

    def __init__(self, account: Account):
        self.account = account
        self.name = account.name
        self.lock = threading.Lock()
        self.box = None  # mail2ticket.transport.imap.Mailbox while connected
        self.state = "connecting"
        self.since = _now_iso()
        self.error: str | None = None
        self.failures = 0
        self.retry_at: str | None = None
        self.idle_since = 0.0
        self.idle_started = 0  # IDLE commands sent: renewals show here
        self.logins = 0
        self.empty_reads = 0
        self.news = False  # new mail announced in the answer to DONE
        self.removed = False
        self.registered = False

    def snapshot(self) -> dict:
        return {"account": self.name, "state": self.state, "since": self.since, "error": self.error,
                "failures": self.failures, "retry_at": self.retry_at if self.state == "waiting" else None}


class PushHub:
    """Keeps an IDLE session open for each account given to ``add`` and calls
    ``on_new_mail(name)`` when its server announces new mail (and once each time a session
    opens, for mail that came while none was open). It never imports anything itself: the
    daemon's poll does, over the connection it borrows with ``borrow``/``release``, so a message
    is still imported exactly once, by the same code as any poll."""

    def __init__(
        self,
        on_new_mail: Callable[[str], object],
        stop: threading.Event,
        *,
        gate: LoginGate | None = None,
        renew_after: float = IDLE_RENEW_SECONDS,
        connect_threads: int = CONNECT_THREADS,
    ):
        self.on_new_mail = on_new_mail
        self.gate = gate or LoginGate()
        self.renew_after = renew_after
        self._stop = stop
        self._closing = False
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()  # the sessions dict and the timers
        self._timers: list[tuple[float, int, str, Session, object]] = []
        self._seq = itertools.count()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pool = WorkerPool(max(1, connect_threads), "push-connect")
        self._thread = threading.Thread(target=self._run, name="push-hub", daemon=True)
        self._thread.start()

    # --- the sessions -------------------------------------------------------------------------
    def add(self, account: Account) -> None:
        """Open (in the background, at the gate's pace) an IDLE session for ``account``."""
        session = Session(account)
        with self._lock:
            old = self._sessions.get(account.name)
            self._sessions[account.name] = session
        if old is not None:
            self._drop(old)
        self._pool.submit(0, partial(self._connect, session))

    def remove(self, name: str) -> None:
        """Close ``name``'s session (its account was removed, disabled or changed)."""
        with self._lock:
            session = self._sessions.pop(name, None)
        if session is not None:
            self._drop(session)

    def accounts(self) -> dict[str, Account]:
        with self._lock:
            return {name: s.account for name, s in self._sessions.items()}

    def session(self, name: str) -> Session | None:
        with self._lock:
            return self._sessions.get(name)

    def snapshot(self) -> list[dict]:
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.snapshot() for s in sessions]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for snap in self.snapshot():
            out[snap["state"]] = out.get(snap["state"], 0) + 1
        return out

    @property
    def logins(self) -> int:
        with self._lock:
            return sum(s.logins for s in self._sessions.values())

    # --- lending the connection to a poll -------------------------------------------------------
    def borrow(self, name: str, wait: float = 0.0):
        """The open connection of ``name`` (IDLE ended, folder selected), or None when it has no
        session open right now. Give it back with ``release``. New mail the server announced
        just before the DONE is remembered: ``release(..., polled=False)`` asks for a poll then."""
        session = self.session(name)
        if session is None:
            return None
        deadline = time.monotonic() + wait
        while session.state == "busy" and time.monotonic() < deadline:
            time.sleep(0.01)  # a renewal (DONE, IDLE) has it for a few milliseconds
        with session.lock:
            if session.state != "idle" or session.box is None:
                return None
            session.state = "busy"
            self._unregister(session)
            box = session.box
        try:
            _, responses = box.client.idle_done()
            session.news = any(_announces_mail(r) for r in responses)
        except Exception as exc:
            with session.lock:
                self._fail(session, _describe(exc, session.account))
            return None
        box.client._imap.untagged_responses.clear()
        box.folder = None  # set again if the poll SELECTs: then its own EXISTS is not news
        return box

    def release(self, name: str, box, *, ok: bool = True, polled: bool = True) -> None:
        """Give back a borrowed connection: IDLE again, or closed when the poll failed, the
        session was removed meanwhile or the daemon stops. Mail announced while the poll ran
        (an EXISTS answer to one of its commands) asks for one more poll."""
        session = self.session(name)
        announced = False
        with (session.lock if session is not None else threading.Lock()):
            if session is None or session.box is not box or session.removed or self._stopping:
                _logout(box)
                if session is not None and session.box is box:
                    session.box = None
                    session.state = "closed"
                return
            if not ok:
                self._fail(session, "the poll over the IDLE connection failed; reconnecting")
                return
            exists = box.client._imap.untagged_responses.pop("EXISTS", [])
            box.client._imap.untagged_responses.pop("RECENT", None)
            announced = len(exists) > (1 if box.folder else 0) or (session.news and not polled)
            session.news = False
            try:
                announced = self._idle(session) or announced
            except Exception as exc:
                self._fail(session, _describe(exc, session.account))
                return
        if announced:
            log.debug("account %s: new mail announced during the poll", name)
            self.on_new_mail(name)

    # --- stopping -------------------------------------------------------------------------------
    @property
    def _stopping(self) -> bool:
        return self._closing or self._stop.is_set()

    def close(self) -> None:
        """Log every session out without waiting for answers (a thousand sessions close in well
        under a second), stop the hub thread and the connect pool."""
        self._closing = True
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            self._drop(session)
        self._pool.shutdown()
        self._wake()
        self._thread.join(timeout=5)

    def _drop(self, session: Session) -> None:
        with session.lock:
            session.removed = True
            if session.state == "idle" and session.box is not None:
                self._unregister(session)
                _logout(session.box, in_idle=True)
                session.box = None
                session.state = "closed"
            # busy: release() closes it; connecting: _connect() closes it; waiting: no timer fires

    # --- opening a session (connect pool) ---------------------------------------------------------
    def _connect(self, session: Session) -> None:

        account = session.account
        if session.removed or self._stopping:
            return
        if not self.gate.wait(account.imap_host, self._stop) or session.removed or self._closing:
            return
        box = None
        try:
            box = imap_mailbox(account)
            session.logins += 1
            box.connect()
            if b"IDLE" not in box.capabilities():
                raise NoIdle(
                    f"push = true but {account.imap_host} does not offer IMAP IDLE",
                    "new mail is picked up by the scheduled poll only",
                )
            box.select(account.folder)  # read-write: polls import over this connection
            with session.lock:
                if session.removed or self._stopping:
                    _logout(box)
                    return
                session.box = box
                self._idle(session)
                session.error = None
                session.retry_at = None
        except NoIdle as exc:
            if box is not None:
                _logout(box)
            log.warning("account %s: %s", account.name, exc.one_line())
            with session.lock:
                session.state, session.error, session.since = "no-idle", exc.one_line(), _now_iso()
            return
        except Exception as exc:
            if box is not None:
                box.close(quick=True)
            with session.lock:
                session.box = None
                if not (session.removed or self._stopping):
                    self._fail(session, _describe(exc, account))
            return
        log.info("account %s: push (IDLE) session open on %s", account.name, account.folder)
        self.on_new_mail(account.name)  # whatever came while we were not listening

    # --- under session.lock ------------------------------------------------------------------------
    def _idle(self, session: Session) -> bool:
        """IDLE on the session's connection, its socket watched by the hub. True when the server
        announced new mail together with its '+ idling' (catalogue 125)."""
        client = session.box.client
        client.idle()
        session.idle_started += 1
        session.idle_since = time.monotonic()
        if session.state != "idle":
            session.state, session.since = "idle", _now_iso()
        session.empty_reads = 0
        session.registered = True
        self._selector.register(client.socket(), selectors.EVENT_READ, session)
        self._at(session.idle_since + self.renew_after, "renew", session, session.idle_started)
        return _buffered_announce(client)

    def _unregister(self, session: Session) -> None:
        if session.registered:
            session.registered = False
            try:
                self._selector.unregister(session.box.client.socket())
            except (KeyError, ValueError, OSError, AttributeError):
                pass

    def _fail(self, session: Session, why: str) -> None:
        """Close the connection and try again after a growing, jittered delay."""
        self._unregister(session)
        if session.box is not None:
            session.box.close(quick=True)
            session.box = None
        if session.removed or self._stopping:
            session.state = "closed"
            return
        session.failures += 1
        delay = retry_delay(session.failures)
        session.state, session.error, session.since = "waiting", why, _now_iso()
        session.retry_at = datetime.fromtimestamp(time.time() + delay, UTC).replace(microsecond=0) \
            .isoformat().replace("+00:00", "Z")
        log.warning("account %s: push (IDLE) session: %s; retrying in %d s", session.name, why, delay)
        self._at(time.monotonic() + delay, "retry", session, session.failures)

    # --- the hub thread ------------------------------------------------------------------------------
    def _at(self, when: float, kind: str, session: Session, token: object) -> None:
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), kind, session, token))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closed

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                first = self._timers[0][0] if self._timers else None
            timeout = HUB_MAX_SLEEP if first is None else max(0.0, min(HUB_MAX_SLEEP, first - time.monotonic()))
            try:
                events = self._selector.select(timeout)
            except (OSError, ValueError):
                events = []
            for key, _ in events:
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                try:
                    self._readable(key.data)
                except Exception as exc:  # never let one session end the hub
                    log.error("push hub: %s: %s", exc.__class__.__name__, exc)
            self._fire_timers()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _fire_timers(self) -> None:
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers))
        for _, _, kind, session, token in due:
            if session.removed or self._stopping:
                continue
            if kind == "renew" and session.state == "idle" and session.idle_started == token:
                self._pool.submit(1, partial(self._renew, session))
            elif kind == "retry" and session.state == "waiting" and session.failures == token:
                with session.lock:
                    session.state, session.since = "connecting", _now_iso()
                self._pool.submit(0, partial(self._connect, session))

    def _renew(self, session: Session) -> None:
        """DONE, then IDLE again on the same connection (skipped when a poll has it)."""
        box = self.borrow(session.name) if self.session(session.name) is session else None
        if box is not None:
            self.release(session.name, box, polled=False)

    def _readable(self, session: Session) -> None:
        announced = False
        with session.lock:
            if session.state != "idle" or session.box is None or not session.registered:
                return
            try:
                responses = session.box.client.idle_check(timeout=0)
            except Exception as exc:
                self._fail(session, _describe(exc, session.account))
                return
            if not responses:
                # idle_check swallows EOF: a readable socket that yields nothing, again and again,
                # is a connection the server closed.
                session.empty_reads += 1
                if session.empty_reads >= 3:
                    self._fail(session, f"{session.account.imap_host} closed the IDLE connection")
                return
            session.empty_reads = 0
            for response in responses:
                if response and response[0] == b"BYE":
                    words = " ".join(_text(x) for x in response[1:])
                    self._fail(session, f"the server ended the IDLE session: {words}")
                    return
            announced = any(_announces_mail(r) for r in responses)
        if announced:
            log.debug("account %s: IDLE announced new mail", session.name)
            self.on_new_mail(session.name)


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException, account: Account) -> str:
    """One line for the log and 'status', with the server's own words where it gave any."""
    if isinstance(exc, Mail2TicketError):
        return exc.one_line()
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"connection to {account.imap_host}:{account.imap_port} lost: {text}"


def _logout(box, *, in_idle: bool = False) -> None:
    """End a session at once: DONE (when in IDLE) and LOGOUT are sent without waiting for the
    answers, then the socket is closed. The server sees a clean logout."""
    client = box.client
    box.client = None
    if client is None:
        return
    try:
        sock = client.socket()
        sock.settimeout(1)
        client._imap.send((b"DONE\r\n" if in_idle else b"") + b"Z9 LOGOUT\r\n")
    except Exception:
        pass
    try:
        client.shutdown()
    except Exception:
        pass


def _buffered_announce(client) -> bool:
    """Whether the lines the client has read from the socket already, without handing them out,
    announce new mail: what came in the same packet as the '+ idling' that ``idle()`` waited
    for. They sit in imaplib's buffer, where the hub's select() never sees them: the socket is
    not readable again until the server says something more (Dovecot's 'Still here' after two
    minutes; some servers nothing before IDLE is renewed). Reading never waits on the socket."""
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    announced = False
    try:
        while True:
            try:
                line = client._imap._get_line()  # from the buffer; an empty buffer raises
            except OSError:  # would block (TLS: SSLWantReadError)
                break
            except client.AbortError:  # a plain socket's would-block reads as EOF to imaplib
                break
            announced = announced or _ANNOUNCE.match(line) is not None
    finally:
        sock.settimeout(timeout)
    return announced


# An untagged EXISTS or RECENT as the server sends it ('* 23 EXISTS').
_ANNOUNCE = re.compile(rb"\* \d+ (EXISTS|RECENT)\b", re.IGNORECASE)


def _announces_mail(response: tuple) -> bool:
    return len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT")


class PushWatcher:
    """One account's push session on a hub of its own: ``start()``, ``connected`` (set once the
    session is open), ``idle_started``, and ``join()`` once ``stop`` is set. The daemon keeps all
    its accounts on one PushHub; this is for one account alone (and the tests)."""

    def __init__(
        self,
        account: Account,
        on_new_mail: Callable[[str], object],
        stop: threading.Event,
        *,
        renew_after: float = IDLE_RENEW_SECONDS,
    ):
        self.account = account
        self.on_new_mail = on_new_mail
        self.renew_after = renew_after
        self._stop_event = stop
        self.connected = threading.Event()
        self._hub: PushHub | None = None

    def start(self) -> None:
        def announce(name: str) -> None:
            self.connected.set()
            self.on_new_mail(name)

        self._hub = PushHub(announce, self._stop_event, renew_after=self.renew_after, connect_threads=1)
        self._hub.add(self.account)

    @property
    def idle_started(self) -> int:
        session = self._hub.session(self.account.name) if self._hub else None
        return session.idle_started if session else 0

    def stop(self) -> None:
        if self._hub is not None:
            self._hub.close()

    def join(self, timeout: float | None = None) -> None:
        self._stop_event.wait(timeout)
        self.stop()

    def is_alive(self) -> bool:
        return self._hub is not None and self._hub._thread.is_alive()
