"""The daemon's timetable: clock-aligned jobs, and polls of many accounts spread over their period."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from mail2ticket.config.periods import Schedule

if TYPE_CHECKING:  # the schedule package is only needed by the daemon
    import schedule


def add_jobs(
    scheduler: schedule.Scheduler, sched: Schedule, func: Callable[[], object], tag: Hashable
) -> list[schedule.Job]:
    """Schedule ``func``: every N seconds for an interval, at the listed minutes of every hour
    (aligned to the clock) for the cron minute form. Every job gets ``tag``."""
    if sched.interval:
        jobs = [scheduler.every(sched.interval).seconds.do(func)]
    elif len(sched.minutes) == 60:
        jobs = [scheduler.every().minute.at(":00").do(func)]
    else:
        jobs = [scheduler.every().hour.at(f":{m:02d}").do(func) for m in sched.minutes]
    for job in jobs:
        job.tag(tag)
    return jobs


def next_aligned_run(sched: Schedule, after: datetime) -> datetime | None:
    """The next clock-aligned run of a cron-minute schedule strictly after ``after``, in UTC
    (minutes are those of the local clock, as for cron); None for an interval, whose runs
    depend on when the daemon started."""
    if sched.interval:
        return None
    start = after.astimezone().replace(second=0, microsecond=0) + timedelta(minutes=1)
    for step in range(61):
        candidate = start + timedelta(minutes=step)
        if candidate.minute in sched.minutes:
            return candidate.astimezone(UTC)
    return None  # pragma: no cover - every hour has one of the minutes


def spread_offsets(names: list[str], sched: Schedule) -> dict[str, int]:
    """Seconds each of ``names`` (accounts sharing ``sched``) is shifted within the schedule's
    period, so that a thousand accounts on "*/5" do not all poll at :00, :05 ...: the i-th of n
    (by name) runs i * period / n seconds later. One account alone keeps the clock-aligned time."""
    ordered = sorted(names)
    n = len(ordered)
    return {name: (i * sched.period) // n for i, name in enumerate(ordered)}


class PollPlan:
    """When each account is polled next: a heap of (time, account), so a thousand accounts cost
    nothing between their runs (the ``schedule`` package would check every job every second).

    Cron-minute schedules run at the listed minutes of the local clock plus the account's
    offset; intervals run every N seconds from the start plus the offset."""

    def __init__(self) -> None:
        self._heapq = heapq
        self._heap: list[tuple[float, int, str]] = []
        self._plans: dict[str, tuple[Schedule, int, int]] = {}  # name -> (schedule, offset, generation)
        self._next: dict[str, float] = {}
        self._gen = 0

    def set(self, name: str, sched: Schedule, offset: int = 0, now: float | None = None) -> None:
        """(Re)plan ``name``; an unchanged schedule and offset keep their next run."""

        now = time.time() if now is None else now
        old = self._plans.get(name)
        if old is not None and old[:2] == (sched, offset):
            return
        self._gen += 1
        self._plans[name] = (sched, offset, self._gen)
        if sched.interval:
            first = now + sched.interval + offset
        else:
            first = self._aligned_after(sched, offset, now)
        self._push(name, first)

    def remove(self, name: str) -> None:
        self._plans.pop(name, None)
        self._next.pop(name, None)

    def names(self) -> set[str]:
        return set(self._plans)

    def _push(self, name: str, when: float) -> None:
        self._next[name] = when
        self._heapq.heappush(self._heap, (when, self._plans[name][2], name))

    @staticmethod
    def _aligned_after(sched: Schedule, offset: int, now: float) -> float:
        after = datetime.fromtimestamp(now - offset, UTC)
        nxt = next_aligned_run(sched, after)
        assert nxt is not None
        return nxt.timestamp() + offset

    def due(self, now: float | None = None) -> list[str]:
        """The accounts whose time has come (each once), planned again for their next run."""
        now = time.time() if now is None else now
        out = []
        while self._heap and self._heap[0][0] <= now:
            when, gen, name = self._heapq.heappop(self._heap)
            plan = self._plans.get(name)
            if plan is None or plan[2] != gen or self._next.get(name) != when:
                continue  # replanned or removed since
            out.append(name)
            sched, offset, _ = plan
            if sched.interval:
                nxt = max(when + sched.interval, now + 1)
            else:
                nxt = self._aligned_after(sched, offset, max(now, when))
            self._push(name, nxt)
        return out

    def idle_seconds(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        while self._heap:
            when, gen, name = self._heap[0]
            plan = self._plans.get(name)
            if plan is None or plan[2] != gen or self._next.get(name) != when:
                self._heapq.heappop(self._heap)
                continue
            return max(0.0, when - now)
        return None

    def next_runs(self) -> dict[str, datetime]:
        """{account: its next run, in UTC}."""
        return {name: datetime.fromtimestamp(when, UTC) for name, when in self._next.items()}
