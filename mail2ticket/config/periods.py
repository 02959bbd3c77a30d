"""Durations ("4h", "3d") and poll schedules ("*/5", "0,30", "10m") as written in the config: parsed and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the schedule package is only needed by the daemon
    pass


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """'30s' -> 30, '10m' -> 600, '4h' -> 14400, '3d' -> 259200 (seconds). Raises ValueError."""
    m = _DURATION_RE.match(text or "")
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 4h or 3d")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Schedule:
    """Either every ``interval`` seconds, or at the listed ``minutes`` of every hour."""

    text: str
    interval: int | None = None
    minutes: tuple[int, ...] = ()

    @property
    def period(self) -> int:
        """The shortest gap between two runs, in seconds."""
        if self.interval:
            return self.interval
        mins = sorted(self.minutes)
        gaps = [b - a for a, b in zip(mins, mins[1:], strict=False)] + [60 - mins[-1] + mins[0]]
        return min(gaps) * 60


def parse_schedule(text: str) -> Schedule:
    """Parse the cron minute field ("*/5", "0,30", "15", "*") or an interval ("10m", "1h")."""
    text = (text or "").strip()
    if _DURATION_RE.match(text):
        return Schedule(text, interval=parse_duration(text))
    minutes: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", item)
        if not m:
            raise ValueError(f"{item!r} is not a cron minute field or an interval")
        rng, step = m.group(1), int(m.group(2) or 1)
        if step <= 0:
            raise ValueError("a step must be at least 1")
        if rng == "*":
            lo, hi = 0, 59
        elif "-" in rng:
            lo, hi = (int(x) for x in rng.split("-"))
        else:
            lo = hi = int(rng)
            if m.group(2):
                hi = 59
        if not (0 <= lo <= hi <= 59):
            raise ValueError(f"minutes must be between 0 and 59 in {item!r}")
        minutes.update(range(lo, hi + 1, step))
    if not minutes:
        raise ValueError("empty schedule")
    return Schedule(text, minutes=tuple(sorted(minutes)))


# A poll more frequent than this loads the provider (and may get the account throttled): warn once.
FREQUENT_POLL_SECONDS = 300


def human_period(seconds: int) -> str:
    """300 -> '5 minutes', 30 -> '30 seconds', 3600 -> '1 hour'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def frequency_warning(what: str, sched: Schedule) -> str | None:
    """The warning for a poll schedule more frequent than every 5 minutes, else None."""
    if sched.period >= FREQUENT_POLL_SECONDS:
        return None
    return (
        f"{what} polls every {human_period(sched.period)} ({sched.text!r}), more often than every "
        f"5 minutes: this loads the mail provider and may get the account throttled; "
        f"for fast delivery prefer push = true (IMAP IDLE) with a slower poll"
    )
