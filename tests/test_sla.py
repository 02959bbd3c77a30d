"""SLA targets, due times, business hours and the overdue check (issue 7, point 1)."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.triage_support import deliver, load, mail, run, run_json, sql, write_config

SLA = """
[sla]
response = "4h"
resolution = "3d"

[sla.priority.urgent]
response = "30m"
resolution = "8h"

[sla.account.sales]
response = "1d"

[[rules]]
name = "urgent"
subject = "URGENT"
priority = "urgent"
"""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check(cfg_path: Path, when: datetime, **kw) -> dict:
    """The overdue check as the daemon runs it, at the time ``when``."""
    from mail2ticket.outgoing.notices import check_overdue

    cfg, db = load(cfg_path)
    try:
        return check_overdue(cfg, db, now=when, **kw)
    finally:
        db.close()


def ticket(cfg_path: Path, ticket_id: int) -> dict:
    return run_json(cfg_path, "tickets", "show", str(ticket_id))


def events(cfg_path: Path, ticket_id: int, kind: str) -> list[str]:
    return [e["detail"] for e in ticket(cfg_path, ticket_id)["events"] if e["kind"] == kind]


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, SLA)


def test_each_new_ticket_gets_due_times_from_its_priority_and_account(cfg: Path):
    deliver(cfg, mail("Printer broken"), mail("URGENT: server down"))
    deliver(cfg, mail("Quote please", to="sales@example.com"), mail("URGENT quote", to="sales@example.com"),
            account="sales")
    due = {t["id"]: t for t in run_json(cfg, "tickets", "list")}
    for ticket_id, response, resolution in [
        (1, timedelta(hours=4), timedelta(days=3)),  # [sla]
        (2, timedelta(minutes=30), timedelta(hours=8)),  # [sla.priority.urgent], set by a rule
        (3, timedelta(days=1), timedelta(days=3)),  # [sla.account.sales], resolution from [sla]
        (4, timedelta(minutes=30), timedelta(hours=8)),  # priority wins over account
    ]:
        t = due[ticket_id]
        created = at(t["created_at"])
        assert at(t["due_response_at"]) - created == response, ticket_id
        assert at(t["due_resolution_at"]) - created == resolution, ticket_id
        assert t["due_at"] == t["due_response_at"]


def test_without_sla_targets_tickets_have_no_due_times_and_are_never_overdue(tmp_path: Path):
    cfg = write_config(tmp_path)
    deliver(cfg, mail())
    [t] = run_json(cfg, "tickets", "list")
    assert t["due_response_at"] is None and t["due_resolution_at"] is None
    report = check(cfg, datetime.now(UTC) + timedelta(days=365))
    assert report["new_breaches"] == [] and report["overdue"] == 0


def test_the_check_marks_each_breach_once_with_one_event(cfg: Path):
    deliver(cfg, mail("Printer broken"))
    created = at(ticket(cfg, 1)["created_at"])
    assert check(cfg, created + timedelta(hours=3))["new_breaches"] == []
    assert ticket(cfg, 1)["overdue"] is False

    first = check(cfg, created + timedelta(hours=5))
    assert [(b["id"], b["target"]) for b in first["new_breaches"]] == [(1, "response")]
    assert ticket(cfg, 1)["overdue"] is True
    assert check(cfg, created + timedelta(hours=6))["new_breaches"] == []  # the same breach: no event
    assert check(cfg, created + timedelta(hours=7))["overdue"] == 1

    later = check(cfg, created + timedelta(days=4))
    assert [(b["id"], b["target"]) for b in later["new_breaches"]] == [(1, "resolution")]
    assert len(events(cfg, 1, "overdue")) == 2
    assert events(cfg, 1, "overdue")[0].startswith("response target passed (due ")


def test_answering_the_customer_meets_the_response_target(cfg: Path):
    from mail2ticket.outgoing.actions import queue_reply

    deliver(cfg, mail("Printer broken"))
    created = at(ticket(cfg, 1)["created_at"])
    check(cfg, created + timedelta(hours=5))
    assert ticket(cfg, 1)["overdue"] is True
    conf, db = load(cfg)
    try:
        queue_reply(conf, db, 1, "We are on it.", status="open")
    finally:
        db.close()
    report = check(cfg, created + timedelta(hours=6))
    assert report["cleared"] == 1 and ticket(cfg, 1)["overdue"] is False
    assert ticket(cfg, 1)["first_response_at"] is not None


def test_closing_a_ticket_ends_its_overdue_mark(cfg: Path):
    deliver(cfg, mail("Printer broken"))
    created = at(ticket(cfg, 1)["created_at"])
    check(cfg, created + timedelta(hours=5))
    assert run(cfg, "tickets", "close", "1").exit_code == 0
    assert ticket(cfg, 1)["overdue"] is False  # at once, not only after the next check
    assert run_json(cfg, "tickets", "list", "--overdue", "--status", "all") == []
    check(cfg, created + timedelta(days=5))
    due = ticket(cfg, 1)["due_response_at"]
    assert events(cfg, 1, "overdue") == [f"response target passed (due {due}, priority normal)"]


def test_a_new_priority_moves_the_due_times_and_a_later_breach_is_a_new_event(cfg: Path):
    deliver(cfg, mail("Printer broken"))
    created = at(ticket(cfg, 1)["created_at"])
    assert run(cfg, "tickets", "priority", "1", "urgent").exit_code == 0
    t = ticket(cfg, 1)
    assert at(t["due_response_at"]) - created == timedelta(minutes=30)
    check(cfg, created + timedelta(hours=1))
    assert ticket(cfg, 1)["overdue"] is True
    assert run(cfg, "tickets", "priority", "1", "normal").exit_code == 0  # back to 4h: not breached now
    assert ticket(cfg, 1)["overdue"] is False
    assert check(cfg, created + timedelta(hours=2))["new_breaches"] == []
    assert [b["target"] for b in check(cfg, created + timedelta(hours=5))["new_breaches"]] == ["response"]
    assert len(events(cfg, 1, "overdue")) == 2


def test_overdue_check_command_marks_tickets_that_list_overdue_and_status_show(tmp_path: Path):
    cfg = write_config(tmp_path, '[sla]\nresponse = "1s"\n')
    deliver(cfg, mail("Printer broken"), mail("Toner low"))
    run(cfg, "tickets", "close", "2")
    time.sleep(1.5)
    result = run(cfg, "overdue", "check")
    assert result.exit_code == 0
    assert "1 new breach(es):" in result.stdout and "#1 response target passed" in result.stdout
    assert result.stdout.rstrip().endswith("1 ticket(s) overdue.")
    assert [t["id"] for t in run_json(cfg, "tickets", "list", "--overdue")] == [1]
    assert run(cfg, "tickets", "list", "--overdue").stdout.splitlines()[1].split()[3] == "OVERDUE"
    # 'status' exits 1 here (no daemon runs in a test) but reports the tickets all the same.
    report = json.loads(run(cfg, "status", "--json").stdout)
    assert report["tickets"]["overdue"] == 1
    assert "1 overdue" in run(cfg, "status").stdout
    again = run_json(cfg, "overdue", "check")
    assert again["new_breaches"] == [] and again["overdue"] == 1


def test_a_poll_pass_runs_the_overdue_check(tmp_path: Path):
    from mail2ticket.service.jobs import poll_once

    cfg = write_config(tmp_path, '[sla]\nresolution = "1s"\n')
    deliver(cfg, mail())
    time.sleep(1.5)
    conf, db = load(cfg)
    try:
        poll_once(conf, db, [], run_poll=None)
    finally:
        db.close()
    assert ticket(cfg, 1)["overdue"] is True
    assert len(events(cfg, 1, "overdue")) == 1


def test_one_notice_lists_the_new_breaches_and_goes_through_the_outbox(tmp_path: Path):
    notify = '[sla]\nnotify = "oncall@example.com"\nnotify_account = "support"\n'
    cfg = write_config(tmp_path, SLA.replace("[sla]\n", notify, 1))
    deliver(cfg, mail("Printer broken"), mail("URGENT: server down"))
    created = at(ticket(cfg, 1)["created_at"])
    report = check(cfg, created + timedelta(hours=5))
    assert {b["id"] for b in report["new_breaches"]} == {1, 2}
    assert report["notice"]["to"] == "oncall@example.com"
    rows = sql(cfg, "select o.to_address, o.subject, coalesce(o.raw, r.raw) from outbox o "
                    "left join raw_messages r on r.sha256 = o.raw_sha256 where o.kind = 'sla-notice'")
    assert len(rows) == 1
    to, subject, raw = rows[0]
    assert to == "oncall@example.com" and subject == "[mail2ticket] 2 ticket(s) passed their SLA targets"
    raw = raw.decode()
    assert "#1 [normal] response due" in raw and "#2 [urgent] response due" in raw
    assert "Auto-Submitted: auto-generated" in raw and "From: support@example.com" in raw
    check(cfg, created + timedelta(hours=6))  # nothing new: no second notice
    assert sql(cfg, "select count(*) from outbox where kind = 'sla-notice'")[0][0] == 1
    assert events(cfg, 1, "overdue-notice")


def test_recompute_applies_changed_targets_to_open_tickets(tmp_path: Path):
    cfg = write_config(tmp_path, '[sla]\nresponse = "4h"\n')
    deliver(cfg, mail())
    created = at(ticket(cfg, 1)["created_at"])
    cfg.write_text(cfg.read_text().replace('response = "4h"', 'response = "1h"'))
    assert at(ticket(cfg, 1)["due_response_at"]) - created == timedelta(hours=4)
    assert check(cfg, created + timedelta(hours=2), recompute=True)["due_times_set"] == 1
    assert at(ticket(cfg, 1)["due_response_at"]) - created == timedelta(hours=1)
    assert ticket(cfg, 1)["overdue"] is True


def test_tickets_imported_before_sla_was_configured_get_due_times_at_the_next_check(tmp_path: Path):
    cfg = write_config(tmp_path)
    deliver(cfg, mail())
    cfg.write_text(cfg.read_text() + '\n[sla]\nresolution = "2d"\n')
    check(cfg, datetime.now(UTC))
    t = ticket(cfg, 1)
    assert at(t["due_resolution_at"]) - at(t["created_at"]) == timedelta(days=2)


# --- business hours ------------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")
HOURS = """
[sla]
response = "4h"
resolution = "2d"
business_hours = "09:00-17:00"
timezone = "Europe/Berlin"
holidays = [2026-12-25, "2026-12-28"]

[sla.priority.urgent]
response = "1h"
business_hours = false
"""


def due(cfg_path: Path, created_local: datetime, priority: str = "normal") -> tuple[datetime, datetime]:
    from mail2ticket.tickets.sla import due_times

    cfg, db = load(cfg_path)
    db.close()
    response, resolution = due_times(cfg, iso(created_local), priority, "support")
    return at(response).astimezone(BERLIN), at(resolution).astimezone(BERLIN)


@pytest.fixture
def hours(tmp_path: Path) -> Path:
    return write_config(tmp_path, HOURS)


@pytest.mark.parametrize(
    ("created", "response"),
    [
        ("2026-11-24 10:00", "2026-11-24 14:00"),  # Tuesday, inside the day
        ("2026-11-24 15:00", "2026-11-25 11:00"),  # 2h today, 2h tomorrow
        ("2026-11-24 20:00", "2026-11-25 13:00"),  # after hours: the clock starts at 09:00
        ("2026-11-24 06:00", "2026-11-24 13:00"),  # before hours
        ("2026-11-27 16:00", "2026-11-30 12:00"),  # Friday afternoon: over the weekend
        ("2026-11-28 12:00", "2026-11-30 13:00"),  # Saturday
        ("2026-12-24 15:00", "2026-12-29 11:00"),  # over Christmas (25th, weekend, 28th off)
    ],
)
def test_business_hours_skip_nights_weekends_and_holidays(hours: Path, created: str, response: str):
    created_at = datetime.fromisoformat(created).replace(tzinfo=BERLIN)
    assert due(hours, created_at)[0] == datetime.fromisoformat(response).replace(tzinfo=BERLIN)


def test_a_day_of_business_time_is_one_business_day(hours: Path):
    created_at = datetime(2026, 11, 26, 11, 30, tzinfo=BERLIN)  # Thursday
    assert due(hours, created_at)[1] == datetime(2026, 11, 30, 11, 30, tzinfo=BERLIN)  # Monday


def test_business_hours_keep_the_local_clock_across_a_dst_change(hours: Path):
    created_at = datetime(2026, 10, 23, 16, 0, tzinfo=BERLIN)  # Friday before the clocks go back
    response, _ = due(hours, created_at)
    assert response == datetime(2026, 10, 26, 12, 0, tzinfo=BERLIN)
    assert response.utcoffset() == timedelta(hours=1)


def test_a_priority_can_count_around_the_clock(hours: Path):
    created_at = datetime(2026, 11, 28, 23, 30, tzinfo=BERLIN)  # Saturday night
    response, resolution = due(hours, created_at, "urgent")
    assert response == datetime(2026, 11, 29, 0, 30, tzinfo=BERLIN)
    # 2 days from [sla], around the clock like the rest of the urgent layer.
    assert resolution == datetime(2026, 11, 30, 23, 30, tzinfo=BERLIN)


def test_calendar_adds_business_seconds_exactly():
    from mail2ticket.config.sla import Calendar, parse_hours

    opens, closes = parse_hours("08:30-12:00")
    cal = Calendar(tz=BERLIN, open=opens, close=closes, days=frozenset({0, 2}), holidays=frozenset({date(2026, 11, 25)}))
    start = datetime(2026, 11, 23, 11, 0, tzinfo=BERLIN)  # Monday
    assert cal.add(start, 3600) == datetime(2026, 11, 23, 12, 0, tzinfo=BERLIN)
    assert cal.add(start, 3601) == datetime(2026, 11, 30, 8, 30, 1, tzinfo=BERLIN)  # Wed is a holiday


# --- config errors: one line, naming the key -------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[sla]\nresponse = "soon"', "'sla.response' = 'soon' is not a duration"),
        ('[sla.priority.urgent]\nresponse = "5 mins"', "'sla.priority.urgent.response' = '5 mins' is not a duration"),
        ('[sla.priority.critical]\nresponse = "1h"', "[sla.priority.critical]: 'critical' is not a known priority"),
        ('[sla.account.nosuch]\nresponse = "1h"', "[sla.account.nosuch]: 'nosuch' is not a known account"),
        ('[sla]\nbusiness_hours = "9-5"', "'sla.business_hours' = '9-5' is not valid"),
        ('[sla]\nbusiness_hours = "09:00-17:00"', "'sla.timezone' is required with business_hours"),
        ('[sla]\ntimezone = "Mars/Olympus"', "'sla.timezone' = 'Mars/Olympus' is not a known time zone"),
        ('[sla]\nbusiness_days = ["mon", "funday"]', "'sla.business_days' has 'fun'"),
        ('[sla]\nnotify = "nobody"', "'sla.notify' = 'nobody' is not an e-mail address"),
        ('[sla]\nreponse = "4h"', "unknown key 'sla.reponse'"),
        ('[sla.priority.high]\nrespond = "4h"', "unknown key 'sla.priority.high.respond'"),
    ],
)
def test_a_wrong_sla_setting_is_one_line_naming_the_key(tmp_path: Path, toml: str, message: str):
    cfg = write_config(tmp_path, toml)
    result = run(cfg, "tickets", "list")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
