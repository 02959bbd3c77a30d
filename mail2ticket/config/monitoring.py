"""The [monitoring] table: recognising monitoring mail on or off, what a recovery does
(on_recovery), the flap window, the priority of each severity, and the custom formats of
[[monitoring.formats]] (a homegrown tool's mail, by regular expressions), checked.

What a recognised mail is, and the stock formats of Nagios, Icinga 2, Zabbix, Alertmanager, Monit
and Checkmk, are in mail2ticket/parse/monitoring.py; docs/monitoring.md describes both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mail2ticket.config.checks import (
    REQUIRED,
    check_duration,
    check_table,
    is_bool,
    is_str,
    is_str_list,
    is_table,
    named_entries,
)
from mail2ticket.config.fields import PRIORITIES
from mail2ticket.config.model import Account
from mail2ticket.config.periods import parse_duration
from mail2ticket.config.rules import nested_quantifier
from mail2ticket.errors import ConfigError

MONITORING_KEYS: dict[str, tuple[Any, Any, str]] = {
    "enabled": (is_bool, True, "true or false"),
    "formats": (lambda v: isinstance(v, (list, dict)), None, "an array of tables ([[monitoring.formats]])"),
    "on_recovery": (is_str, "close", '"close" (the default) or "mark" (leave it open, marked recovered)'),
    "flap_window": (is_str, "1h", 'a duration such as "1h" or "30m"'),
    "priorities": (is_table, None, 'a table of severity = priority, such as { critical = "urgent", warning = "normal" }'),
}

# What a recovery does to its problem's ticket: closes it, or marks it recovered and leaves it open.
ON_RECOVERY = ("close", "mark")
# The priority of a monitoring ticket by the severity of its problem (docs/monitoring.md); the
# [monitoring] priorities table changes or adds entries. A severity not listed leaves "normal".
DEFAULT_PRIORITIES = {"critical": "urgent", "warning": "normal", "unknown": "normal", "info": "low"}

# [[monitoring.formats]]: one homegrown tool's mail.
FORMAT_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (is_str, REQUIRED, "the tool's name, shown as the monitoring mail's tool"),
    "subject": (is_str, None, "a regular expression the subject must match, with named groups"),
    "body": (is_str, None, "a regular expression the text must match, with named groups"),
    "problem_states": (is_str_list, None, 'a list of states that mean a problem, such as ["DOWN", "FAILED"]'),
    "recovery_states": (is_str_list, None, 'a list of states that mean a recovery, such as ["UP", "OK"]'),
}

# The named groups a custom format may capture (docs/monitoring.md).
GROUPS = ("host", "service", "state", "event_id")


@dataclass(frozen=True)
class MonitoringFormat:
    """One checked [[monitoring.formats]] entry. The patterns are kept as text: they are valid
    (checked at load) and compiled where a mail is read (parse/monitoring.py), case-insensitive,
    ``^`` and ``$`` matching at each line."""

    name: str
    subject: str | None = None
    body: str | None = None
    problem_states: tuple[str, ...] = ()
    recovery_states: tuple[str, ...] = ()


@dataclass
class MonitoringConfig:
    """[monitoring]: whether monitoring mail is recognised (each account may say otherwise with
    ``monitoring = false`` or ``true``), and the custom formats, tried before the stock ones."""

    enabled: bool = True
    formats: list[MonitoringFormat] = field(default_factory=list)
    on_recovery: str = "close"
    flap_window: int = 3600  # seconds: a new problem this soon after the recovery reopens its ticket
    priorities: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))

    def enabled_for(self, account: Account | None) -> bool:
        """Whether mail of ``account`` (None: no account, as for 'parse FILE') is recognised."""
        if account is not None and account.monitoring is not None:
            return account.monitoring
        return self.enabled

    def on_recovery_for(self, account: Account | None) -> str:
        """"close" or "mark": the account's monitoring_on_recovery, else [monitoring] on_recovery."""
        if account is not None and account.monitoring_on_recovery is not None:
            return account.monitoring_on_recovery
        return self.on_recovery

    def priority_of(self, severity: str | None) -> str | None:
        """The priority a problem of ``severity`` gets (None: leave the priority as it is)."""
        return self.priorities.get((severity or "").lower()) if severity else None


def check_monitoring(path: Path, raw: Any) -> MonitoringConfig:
    """Validate [monitoring]; one clear ConfigError naming the format and the key."""
    values = check_table(path, "monitoring", raw, MONITORING_KEYS)
    out: list[MonitoringFormat] = []
    for label, entry in named_entries(path, "monitoring.formats", values["formats"] or [], FORMAT_KEYS,
                                      "monitoring formats"):
        name = entry["name"]
        if entry["subject"] is None and entry["body"] is None:
            raise ConfigError(f"{path}: monitoring format {name!r} has neither 'subject' nor 'body'",
                              "add a regular expression for the subject, the body or both")
        groups: set[str] = set()
        for key in ("subject", "body"):
            if entry[key] is not None:
                groups |= _check_pattern(path, f"{label}.{key}", entry[key])
        if not groups & {"host", "service"}:
            raise ConfigError(
                f"{path}: monitoring format {name!r} captures neither a host nor a service",
                "add a named group such as (?P<host>\\S+) or (?P<service>.+) to 'subject' or 'body'",
            )
        out.append(MonitoringFormat(
            name=name,
            subject=entry["subject"],
            body=entry["body"],
            problem_states=tuple(s.strip().upper() for s in entry["problem_states"] or ()),
            recovery_states=tuple(s.strip().upper() for s in entry["recovery_states"] or ()),
        ))
    on_recovery = values["on_recovery"]
    if on_recovery not in ON_RECOVERY:
        raise ConfigError(f"{path}: 'monitoring.on_recovery' = {on_recovery!r} is not valid",
                          '"close" closes the ticket of a problem that recovered, "mark" only marks it recovered')
    check_duration(path, "monitoring.flap_window", values["flap_window"])
    priorities = dict(DEFAULT_PRIORITIES)
    for severity, priority in (values["priorities"] or {}).items():
        if priority not in PRIORITIES:
            raise ConfigError(f"{path}: 'monitoring.priorities.{severity}' = {priority!r} is not a priority",
                              f"expected one of: {', '.join(PRIORITIES)}")
        priorities[severity.strip().lower()] = priority
    return MonitoringConfig(enabled=values["enabled"], formats=out, on_recovery=on_recovery,
                            flap_window=parse_duration(values["flap_window"]), priorities=priorities)


def _check_pattern(path: Path, where: str, pattern: str) -> set[str]:
    """The named groups of a valid pattern; a ConfigError for a broken or unsafe one."""
    try:
        compiled = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    except re.error as exc:
        raise ConfigError(f"{path}: '{where}' = {pattern!r} is not a valid regular expression: {exc}",
                          "fix the pattern (Python syntax, named groups as (?P<host>...))") from None
    if nested_quantifier(pattern):
        raise ConfigError(
            f"{path}: '{where}' = {pattern!r} nests one unbounded repeat in another, which can take "
            "exponential time on a mail that almost matches",
            "rewrite it without a repeat inside a repeated group (e.g. ^[\\w\\s]+$ for ^(\\w+\\s?)+$)",
        )
    unknown = sorted(set(compiled.groupindex) - set(GROUPS))
    if unknown:
        raise ConfigError(f"{path}: '{where}' has the named group {unknown[0]!r}, which is not known",
                          f"use only: {', '.join(GROUPS)} (other groups can be left unnamed)")
    return set(compiled.groupindex)
