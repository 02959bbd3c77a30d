"""Push: an IMAP IDLE session per account with push = true that asks for a poll when mail arrives."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mail2ticket.config import Account
from mail2ticket.errors import ConnectError, Mail2TicketError

log = logging.getLogger(__name__)

# RFC 2177: servers may drop an IDLE after 30 minutes, many after 29 or fewer. Renew well before.
IDLE_RENEW_SECONDS = 24 * 60
# How long one idle_check waits: also how quickly a stop request is noticed.
CHECK_SECONDS = 1.0
RETRY_MIN, RETRY_MAX = 5, 15 * 60


class NoIdle(Mail2TicketError):
    """The server does not offer IDLE: the account is polled on its schedule only."""


class PushWatcher(threading.Thread):
    """Keeps one IDLE session open for ``account`` and calls ``on_new_mail(name)`` when the
    server announces new mail (and once after each (re)connect, for mail that arrived while no
    session was open). It never imports anything itself: the daemon's poll does, so a message
    is still imported exactly once. Reconnects with backoff; ends when ``stop`` is set."""

    def __init__(
        self,
        account: Account,
        on_new_mail: Callable[[str], object],
        stop: threading.Event,
        *,
        renew_after: float = IDLE_RENEW_SECONDS,
    ):
        super().__init__(name=f"push-{account.name}", daemon=True)
        self.account = account
        self.on_new_mail = on_new_mail
        self.renew_after = renew_after
        self._stop_event = stop
        self._own_stop = threading.Event()  # this watcher alone (account removed or changed)
        self.idle_started = 0  # how many IDLE commands were sent: renewals show here
        self.connected = threading.Event()

    def stop(self) -> None:
        self._own_stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set() or self._own_stop.is_set()

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(CHECK_SECONDS, max(0.0, deadline - time.monotonic())))

    def run(self) -> None:
        name = self.account.name
        failures = 0
        while not self.stopping:
            try:
                self._session()
                failures = 0
            except NoIdle as exc:
                log.warning("account %s: %s", name, exc.one_line())
                return
            except Mail2TicketError as exc:
                failures += 1
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** (failures - 1))
                log.warning("account %s: push (IDLE) session failed: %s; retrying in %d s",
                            name, exc.one_line(), delay)
                self._wait(delay)
            except Exception as exc:  # socket errors, IMAP protocol errors: reconnect
                failures += 1
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** (failures - 1))
                log.warning("account %s: push (IDLE) connection lost: %s: %s; reconnecting in %d s",
                            name, exc.__class__.__name__, exc, delay)
                log.debug("push session of %s", name, exc_info=True)
                self._wait(delay)
            finally:
                self.connected.clear()

    def _session(self) -> None:
        from mail2ticket.imap import Mailbox
        from mail2ticket.secrets import get_password

        account = self.account
        with Mailbox(account, get_password(account)) as box:
            if b"IDLE" not in box.capabilities():
                raise NoIdle(
                    f"push = true but {account.imap_host} does not offer IMAP IDLE",
                    "new mail is picked up by the scheduled poll only",
                )
            client = box.client
            client.select_folder(account.folder, readonly=True)
            self.connected.set()
            log.info("account %s: push (IDLE) session open on %s", account.name, account.folder)
            self.on_new_mail(account.name)  # whatever came while we were not listening
            while not self.stopping:
                client.idle()
                self.idle_started += 1
                started = time.monotonic()
                quiet_returns = 0
                while not self.stopping and time.monotonic() - started < self.renew_after:
                    t0 = time.monotonic()
                    responses = client.idle_check(timeout=CHECK_SECONDS)
                    if any(_announces_mail(r) for r in responses):
                        log.debug("account %s: IDLE announced new mail", account.name)
                        self.on_new_mail(account.name)
                    # idle_check swallows EOF: an empty answer long before the timeout, again and
                    # again, means the server closed the connection.
                    if not responses and time.monotonic() - t0 < CHECK_SECONDS / 2:
                        quiet_returns += 1
                        if quiet_returns >= 3:
                            raise ConnectError(f"{account.imap_host} closed the IDLE connection")
                    else:
                        quiet_returns = 0
                # Renewal (or stop): DONE, then IDLE again on the same connection.
                client.idle_done()


def _announces_mail(response: tuple) -> bool:
    return len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT")
