"""The [sla] table: targets, business hours, time zone and holidays, checked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mail2ticket.config.checks import is_date_list, is_hours_or_false, is_str, is_str_list, is_table
from mail2ticket.errors import ConfigError

if TYPE_CHECKING:
    pass
import re
from typing import TYPE_CHECKING

from mail2ticket.config.checks import check_duration, check_table
from mail2ticket.config.fields import PRIORITIES

if TYPE_CHECKING:
    pass


SLA_KEYS: dict[str, tuple[Any, Any, str]] = {
    "response": (is_str, None, 'a duration such as "4h"'),
    "resolution": (is_str, None, 'a duration such as "3d"'),
    # Issue 7 (docs/triage.md): business hours, notices, per-priority and per-account targets.
    "business_hours": (is_str, None, 'a time range such as "09:00-17:00"'),
    "business_days": (is_str_list, None, 'a list of days such as ["mon", "tue", "wed", "thu", "fri"]'),
    "timezone": (is_str, None, 'an IANA time zone such as "Europe/Berlin"'),
    "holidays": (is_date_list, None, "a list of dates such as [2026-12-25]"),
    "notify": (is_str, None, "an e-mail address that gets a notice when targets are missed"),
    "notify_account": (is_str, None, "the account that sends the notice"),
    "priority": (is_table, None, "tables [sla.priority.NAME] with response and resolution"),
    "account": (is_table, None, "tables [sla.account.NAME] with response and resolution"),
}


# [sla.priority.NAME] and [sla.account.NAME].
SLA_TARGET_KEYS: dict[str, tuple[Any, Any, str]] = {
    "response": (is_str, None, 'a duration such as "30m"'),
    "resolution": (is_str, None, 'a duration such as "1d"'),
    "business_hours": (is_hours_or_false, None, 'a time range such as "09:00-17:00", or false for all hours'),
}


@dataclass(frozen=True)
class Calendar:
    """Business hours: [open, close) local time on ``days`` (0 = Monday) except ``holidays``."""

    tz: Any  # a zoneinfo.ZoneInfo
    open: time
    close: time
    days: frozenset[int]
    holidays: frozenset[date]

    @property
    def day_seconds(self) -> int:
        return (self.close.hour * 3600 + self.close.minute * 60) - (self.open.hour * 3600 + self.open.minute * 60)

    def is_business_day(self, day: date) -> bool:
        return day.weekday() in self.days and day not in self.holidays

    def add(self, start: datetime, seconds: int) -> datetime:
        """``start`` plus ``seconds`` of business time (UTC in, UTC out)."""
        local = start.astimezone(self.tz)
        day = local.date()
        remaining = timedelta(seconds=seconds)
        for _ in range(3660):  # ten years of days: ample, and no endless loop on a bad calendar
            if self.is_business_day(day):
                opens = datetime.combine(day, self.open, self.tz)
                closes = datetime.combine(day, self.close, self.tz)
                begin = max(local, opens)
                if begin < closes:
                    available = closes.astimezone(UTC) - begin.astimezone(UTC)
                    if remaining <= available:
                        return (begin.astimezone(UTC) + remaining).astimezone(UTC)
                    remaining -= available
            day += timedelta(days=1)
            local = datetime.combine(day, time(0), self.tz)
        raise ValueError("no business hours within ten years")  # pragma: no cover


def parse_hours(text: str) -> tuple[time, time]:
    """'09:00-17:00' -> (09:00, 17:00). Raises ValueError."""
    m = _HOURS_RE.match(text or "")
    if not m:
        raise ValueError(f"{text!r} is not a time range like 09:00-17:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h2 == 24 and m2 == 0:
        h2, m2 = 23, 59
    if not (0 <= h1 <= 23 and 0 <= h2 <= 23 and m1 < 60 and m2 < 60):
        raise ValueError(f"{text!r}: hours are 00:00 to 24:00")
    opens, closes = time(h1, m1), time(h2, m2)
    if closes <= opens:
        raise ValueError(f"{text!r}: the end must be after the start (ranges over midnight are not supported)")
    return opens, closes


def check_config(path: Path, sla: dict[str, Any], account_names: list[str]) -> dict[str, Any]:
    """Validate [sla] (already type-checked against config.SLA_KEYS); return it normalised."""

    out = dict(sla)
    for key in TARGETS:
        check_duration(path, f"sla.{key}", out[key])
    if out["business_hours"] is not None:
        _check_hours(path, "sla.business_hours", out["business_hours"])
    days = [d.lower()[:3] for d in (out["business_days"] or DEFAULT_DAYS)]
    for d in days:
        if d not in DAY_NAMES:
            raise ConfigError(f"{path}: 'sla.business_days' has {d!r}", f"expected names from: {', '.join(DAY_NAMES)}")
    out["business_days"] = days
    holidays = []
    for h in out["holidays"] or []:
        try:
            holidays.append(h if isinstance(h, date) else date.fromisoformat(h))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: 'sla.holidays' has {h!r}, not a date", "expected dates such as 2026-12-25") from None
    out["holidays"] = holidays
    if out["timezone"] is not None:
        time_zone(path, out["timezone"])
    if out["notify"] is not None and "@" not in out["notify"]:
        raise ConfigError(f"{path}: 'sla.notify' = {out['notify']!r} is not an e-mail address")
    if out["notify_account"] is not None and out["notify_account"] not in account_names:
        raise ConfigError(
            f"{path}: 'sla.notify_account' = {out['notify_account']!r} is not a configured account",
            f"known accounts: {', '.join(account_names) or 'none'}",
        )
    uses_hours = out["business_hours"] is not None
    for table, known, what in (("priority", PRIORITIES, "priority"), ("account", account_names, "account")):
        sub = {}
        if not isinstance(out[table] or {}, dict):
            raise ConfigError(f"{path}: 'sla.{table}' must be a table of tables ([sla.{table}.NAME])")
        for name, values in (out[table] or {}).items():
            where = f"sla.{table}.{name}"
            if name not in known:
                raise ConfigError(f"{path}: [{where}]: {name!r} is not a known {what}",
                                  f"expected one of: {', '.join(known) or 'none'}")
            values = check_table(path, where, values, SLA_TARGET_KEYS)
            for key in TARGETS:
                check_duration(path, f"{where}.{key}", values[key])
            if isinstance(values["business_hours"], str):
                _check_hours(path, f"{where}.business_hours", values["business_hours"])
                uses_hours = True
            elif values["business_hours"] is True:
                raise ConfigError(f"{path}: '{where}.business_hours' = true", 'expected a range such as "09:00-17:00", or false')
            sub[name] = {k: v for k, v in values.items() if v is not None}
        out[table] = sub
    if uses_hours and out["timezone"] is None:
        raise ConfigError(
            f"{path}: 'sla.timezone' is required with business_hours",
            'set it to your zone, such as timezone = "Europe/Berlin"',
        )
    if out["notify"] is not None and out["notify_account"] is None and not account_names:
        raise ConfigError(f"{path}: 'sla.notify' needs an account to send from", "add an account, or set sla.notify_account")
    return out


def _check_hours(path: Path, key: str, value: str) -> None:
    try:
        parse_hours(value)
    except ValueError as exc:
        raise ConfigError(f"{path}: '{key}' = {value!r} is not valid: {exc}", 'expected e.g. "09:00-17:00"') from None


def time_zone(path: Path | None, name: str) -> Any:
    from zoneinfo import (  # the time zone database loads only for [sla] business hours
        ZoneInfo,
        ZoneInfoNotFoundError,
    )

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{path}: 'sla.timezone' = {name!r} is not a known time zone",
            'use an IANA name such as "Europe/Berlin" or "America/New_York"',
        ) from None


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


DEFAULT_DAYS = ["mon", "tue", "wed", "thu", "fri"]


TARGETS = ("response", "resolution")


_HOURS_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
