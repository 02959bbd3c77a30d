"""Schedules: the cron minute form aligned to the clock, intervals, and the too-frequent warning (issue 6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import schedule

from mail2ticket.config.periods import frequency_warning, parse_duration, parse_schedule
from mail2ticket.service.schedules import add_jobs, next_aligned_run


@pytest.mark.parametrize(
    ("text", "interval", "minutes", "period"),
    [
        ("*/5", None, tuple(range(0, 60, 5)), 300),
        ("0,30", None, (0, 30), 1800),
        ("15", None, (15,), 3600),
        ("*", None, tuple(range(60)), 60),
        ("10-20/5", None, (10, 15, 20), 300),
        ("10m", 600, (), 600),
        ("30s", 30, (), 30),
        ("1h", 3600, (), 3600),
    ],
)
def test_schedules_read_the_cron_minute_form_and_intervals(text, interval, minutes, period):
    sched = parse_schedule(text)
    assert (sched.interval, sched.minutes, sched.period) == (interval, minutes, period)


@pytest.mark.parametrize("text", ["", "61", "*/0", "5x", "every 5 minutes", "30-10", "0s"])
def test_a_bad_schedule_is_refused(text):
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_durations_are_seconds():
    assert [parse_duration(t) for t in ("30s", "10m", "4h", "3d", "1w")] == [30, 600, 14400, 259200, 604800]


@pytest.mark.parametrize("text", ["*/5", "0,30", "7", "*"])
def test_the_cron_minute_form_runs_at_those_minutes_of_the_clock(text):
    sched = parse_schedule(text)
    scheduler = schedule.Scheduler()
    jobs = add_jobs(scheduler, sched, lambda: None, tag="poll:a")
    assert jobs and all("poll:a" in job.tags for job in jobs)
    runs = sorted(job.next_run for job in jobs)
    assert all(run.second == 0 and run.minute in sched.minutes for run in runs)
    assert 0 < (runs[0] - datetime.now()).total_seconds() <= sched.period + 1
    assert {run.minute for run in runs} == set(sched.minutes) or len(sched.minutes) == 60


def test_an_interval_runs_that_many_seconds_after_the_start():
    scheduler = schedule.Scheduler()
    [job] = add_jobs(scheduler, parse_schedule("10m"), lambda: None, tag="x")
    assert 599 <= (job.next_run - datetime.now()).total_seconds() <= 600


def test_the_next_aligned_run_is_the_next_listed_minute():
    after = datetime(2026, 3, 1, 10, 7, 30, tzinfo=UTC).astimezone()
    nxt = next_aligned_run(parse_schedule("0,30"), after)
    assert nxt.astimezone().minute == 30 and nxt > after and (nxt - after).total_seconds() <= 1800
    assert next_aligned_run(parse_schedule("5m"), after) is None


@pytest.mark.parametrize(("text", "warned"), [("30s", True), ("*/2", True), ("4m", True),
                                              ("*/5", False), ("5m", False), ("0,30", False)])
def test_polling_more_often_than_every_5_minutes_is_allowed_but_warned_about(text, warned):
    warning = frequency_warning("account support", parse_schedule(text))
    assert bool(warning) == warned
    if warned:
        assert "account support" in warning and text in warning and "push" in warning


def test_accounts_sharing_a_schedule_are_spread_over_its_period():
    from mail2ticket.service.schedules import PollPlan, spread_offsets

    sched = parse_schedule("*/5")
    names = [f"acct{i:04d}" for i in range(1000)]
    offsets = spread_offsets(names, sched)
    assert sorted(offsets.values()) == [i * 300 // 1000 for i in range(1000)]
    assert spread_offsets(["alone"], sched) == {"alone": 0}  # one account keeps the clock time

    plan = PollPlan()
    now = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC).timestamp()
    for name in names:
        plan.set(name, sched, offsets[name], now=now)
    runs = sorted(when.timestamp() - now for when in plan.next_runs().values())
    assert 0 < runs[0] and runs[-1] <= 300  # every account once within the next period
    per_second = [sum(1 for r in runs if s <= r < s + 1) for s in range(300)]
    assert max(per_second) <= 4  # not 1,000 on the same second
    due = plan.due(now + 300)
    assert sorted(due) == names  # each once, and planned again a period later
    assert all(300 < when.timestamp() - now <= 600 for when in plan.next_runs().values())
