"""The systemd notify protocol (READY, STATUS, WATCHDOG, RELOADING, STOPPING) over $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify(3) messages when systemd asked for them (``NOTIFY_SOCKET`` is set).

    Without ``NOTIFY_SOCKET`` every method does nothing, so the daemon runs the same outside
    systemd. A datagram that cannot be sent is logged once and never stops the daemon.
    """

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket (Linux)
        self.address = address
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if address and usec and usec.isdigit() and int(usec) > 0:
            if not pid or pid == str(os.getpid()):
                # systemd's advice: ping at half the timeout.
                self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when it was sent."""
        if not self.address:
            return False
        data = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(1.0)  # a reader that does not read must not stall the daemon
                sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([status_field(status)] if status else []))

    def status(self, text: str) -> bool:
        return self.send(status_field(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload match this message to the reload it asked for.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([status_field(status)] if status else []))


def status_field(text: str) -> str:
    """``STATUS=`` with the text on one line (systemctl status shows one line)."""
    return "STATUS=" + " ".join(text.split())
