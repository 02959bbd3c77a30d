"""The [[rules]] table: each rule checked and compiled, and how it matches a mail."""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mail2ticket.config.checks import (
    check_table,
    is_bool,
    is_header_patterns,
    is_str,
    is_str_or_list,
)
from mail2ticket.config.fields import PRIORITIES, normalise_tag
from mail2ticket.errors import ConfigError

# [[rules]] (mail2ticket/tickets/rules.py, docs/triage.md): conditions, then actions.
RULE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (is_str, None, "a short name, shown in the ticket's history"),
    "match": (is_str, "substring", '"substring", "glob" or "regex"'),
    "account": (is_str_or_list, None, "an account name or a list of them"),
    "from": (is_str_or_list, None, "a pattern or a list of patterns"),
    "to": (is_str_or_list, None, "a pattern or a list of patterns"),
    "subject": (is_str_or_list, None, "a pattern or a list of patterns"),
    "body": (is_str_or_list, None, "a pattern or a list of patterns"),
    # A monitoring mail's fields (docs/monitoring.md); a rule with one never matches other mail.
    "tool": (is_str_or_list, None, "a pattern or a list of patterns (nagios, icinga2, zabbix, ...)"),
    "host": (is_str_or_list, None, "a pattern or a list of patterns"),
    "service": (is_str_or_list, None, "a pattern or a list of patterns"),
    "state": (is_str_or_list, None, "a pattern or a list of patterns (CRITICAL, DOWN, FIRING, ...)"),
    "headers": (is_header_patterns, None, 'a table of header = pattern, such as { "X-Spam-Flag" = "YES" }'),
    "priority": (is_str, None, '"low", "normal", "high" or "urgent"'),
    "tags": (is_str_or_list, None, "a tag or a list of tags"),
    "assignee": (is_str, None, "a name"),
    "queue": (is_str, None, "an account name"),
    "acknowledge": (is_bool, None, "true or false"),
    "ignore": (is_bool, False, "true or false"),
    "stop": (is_bool, False, "true or false"),
}


class RuleSkipped(Exception):
    """A rule ran out of time or failed on one mail: it is skipped for that mail."""


@dataclass
class Rule:
    """One validated [[rules]] entry. Conditions are all required (AND); the patterns of one
    condition are alternatives (OR). Matching is case-insensitive in every mode."""

    name: str
    mode: str = "substring"
    accounts: list[str] = field(default_factory=list)
    conditions: dict[str, list[Any]] = field(default_factory=dict)  # field -> patterns
    headers: dict[str, list[Any]] = field(default_factory=dict)  # lower-case header name -> patterns
    priority: str | None = None
    tags: list[str] = field(default_factory=list)
    assignee: str | None = None
    queue: str | None = None
    acknowledge: bool | None = None
    ignore: bool = False
    stop: bool = False

    def _test(self, patterns: list[Any], values: list[str], deadline: float | None = None) -> bool:
        for value in values:
            low = value.lower()
            for pattern in patterns:
                if self.mode == "regex":
                    left = RULE_TIME_LIMIT if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("regex timed out")
                    # concurrent: the engine lets go of the GIL, so signals (SIGTERM) and other
                    # threads run meanwhile; timeout bounds the search (RULE_TIME_LIMIT).
                    if pattern.search(value, concurrent=True, timeout=left):
                        return True
                elif self.mode == "glob":
                    if fnmatch.fnmatchcase(low, pattern):
                        return True
                elif pattern in low:
                    return True
        return False

    def matches(self, parsed: Any, account: str | None = None) -> bool:
        """Whether the mail (a ParsedMessage) meets every condition of this rule."""
        if self.accounts and account not in self.accounts:
            return False
        deadline = time.monotonic() + RULE_TIME_LIMIT
        for name, patterns in self.conditions.items():
            if not self._test(patterns, _values(parsed, name), deadline):
                return False
        for header, patterns in self.headers.items():
            values = (getattr(parsed, "headers", None) or {}).get(header, [])
            if not self._test(patterns, values, deadline):
                return False
        return True

    def actions(self) -> dict[str, Any]:
        """What the rule does, only the actions it sets."""
        out: dict[str, Any] = {}
        if self.priority:
            out["priority"] = self.priority
        if self.tags:
            out["tags"] = list(self.tags)
        if self.assignee:
            out["assignee"] = self.assignee
        if self.queue:
            out["queue"] = self.queue
        if self.acknowledge is not None:
            out["acknowledge"] = self.acknowledge
        if self.ignore:
            out["ignore"] = True
        if self.stop:
            out["stop"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        """For 'parse --json' and the docs: the rule's name and actions."""
        return {"name": self.name, **self.actions()}


def _values(parsed: Any, name: str) -> list[str]:
    if name == "from":
        return [v for v in (parsed.from_address, parsed.from_name) if v]
    if name == "to":
        return list(parsed.to or []) + list(parsed.cc or [])
    if name == "subject":
        return [parsed.subject or ""]
    if name == "body":
        return [parsed.body_text or ""]
    if name in MONITORING_FIELDS:  # set by the prepare step (parse/monitoring.py); None: not monitoring mail
        value = getattr(getattr(parsed, "monitoring", None), name, None)
        return [value] if value else []
    raise KeyError(name)


def _unbounded_repeats(items: Any) -> list[tuple[Any, Any]]:
    """Every unbounded repeat (``*``, ``+``, ``{n,}``) in a parsed pattern, as (op, av) pairs."""
    from re import _constants as c  # the regex parser's internals load only to check a pattern

    found: list[tuple[Any, Any]] = []
    for op, av in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            if av[1] == c.MAXREPEAT:
                found.append((op, av))
            found.extend(_unbounded_repeats(av[2]))
        elif op in (c.SUBPATTERN,):
            found.extend(_unbounded_repeats(av[-1]))
        elif op in (c.BRANCH,):
            for branch in av[1]:
                found.extend(_unbounded_repeats(branch))
        elif op in (c.ATOMIC_GROUP, c.ASSERT, c.ASSERT_NOT):
            found.extend(_unbounded_repeats(av[-1]))
    return found


def nested_quantifier(pattern: str) -> bool:
    """Whether ``pattern`` repeats without bound something that itself repeats without bound, as
    in ``(\\w+\\s?)+`` or ``(a*)*``: the shape that makes a backtracking engine take exponential
    time on a near miss. Bounded repeats (``(\\d{1,3}\\.){3}``) are fine."""
    from re import _parser  # the regex parser's internals load only to check a pattern

    try:
        parsed = _parser.parse(pattern)
    except Exception:  # noqa: BLE001 - syntax only the 'regex' engine knows: not checked here
        return False
    return any(_unbounded_repeats(av[2]) for _op, av in _unbounded_repeats(parsed))


def _patterns(path: Path, where: str, value: Any, mode: str) -> list[Any]:
    import regex  # the regex engine loads only when a rule needs it

    items = [value] if isinstance(value, str) else list(value)
    if mode != "regex":
        return [p.lower() for p in items]
    out = []
    for p in items:
        try:
            out.append(regex.compile(p, regex.IGNORECASE | regex.VERSION0))
        except (regex.error, re.error) as exc:
            raise ConfigError(
                f"{path}: '{where}' = {p!r} is not a valid regular expression: {exc}",
                'fix the pattern, or use match = "substring" or "glob"',
            ) from None
        if nested_quantifier(p):
            raise ConfigError(
                f"{path}: '{where}' = {p!r} nests one unbounded repeat in another, which can take "
                "exponential time on a mail that almost matches",
                "rewrite it without a repeat inside a repeated group (e.g. ^[\\w\\s]+$ for ^(\\w+\\s?)+$)",
            )
    return out


def compile_rules(path: Path, raw: Any, account_names: list[str]) -> list[Rule]:
    """Validate the [[rules]] array; one clear ConfigError naming the rule and the key."""

    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(f"{path}: 'rules' must be an array of tables ([[rules]])")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, data in enumerate(raw, start=1):
        name = data.get("name") if isinstance(data.get("name"), str) and data.get("name").strip() else None
        label = f"rules.{name}" if name else f"rules[{index}]"
        values = check_table(path, label, data, RULE_KEYS)
        name = (name or f"rule {index}").strip()
        if name in seen:
            raise ConfigError(f"{path}: two rules are named {name!r}", "give each [[rules]] entry its own name")
        seen.add(name)
        mode = values["match"]
        if mode not in MODES:
            raise ConfigError(f"{path}: '{label}.match' = {mode!r} is not valid", 'expected "substring", "glob" or "regex"')
        rule = Rule(name=name, mode=mode)
        for key in FIELDS:
            if values[key] is not None:
                rule.conditions[key] = _patterns(path, f"{label}.{key}", values[key], mode)
        for header, pats in (values["headers"] or {}).items():
            rule.headers[header.lower()] = _patterns(path, f"{label}.headers.{header}", pats, mode)
        for key in ("account", "queue"):
            names = values[key]
            for account in [names] if isinstance(names, str) else (names or []):
                if account not in account_names:
                    raise ConfigError(
                        f"{path}: '{label}.{key}' = {account!r} is not a configured account",
                        f"known accounts: {', '.join(account_names) or 'none'}",
                    )
        account = values["account"]
        rule.accounts = [account] if isinstance(account, str) else list(account or [])
        if not rule.conditions and not rule.headers and not rule.accounts:
            raise ConfigError(
                f"{path}: rule {name!r} has no condition",
                'add from, to, subject, body, tool, host, service, state, headers or account '
                '(subject = "*" with match = "glob" matches every mail)',
            )
        if values["priority"] is not None and values["priority"] not in PRIORITIES:
            raise ConfigError(
                f"{path}: '{label}.priority' = {values['priority']!r} is not a priority",
                f"expected one of: {', '.join(PRIORITIES)}",
            )
        tags = values["tags"]
        rule.tags = [t for t in (normalise_tag(t) for t in ([tags] if isinstance(tags, str) else tags or [])) if t]
        rule.priority = values["priority"]
        rule.assignee = (values["assignee"] or "").strip() or None
        rule.queue = values["queue"]
        rule.acknowledge = values["acknowledge"]
        rule.ignore = values["ignore"]
        rule.stop = values["stop"]
        if not rule.actions():
            raise ConfigError(
                f"{path}: rule {name!r} has no action",
                "add priority, tags, assignee, queue, acknowledge = false, ignore = true or stop = true",
            )
        rules.append(rule)
    return rules


MODES = ("substring", "glob", "regex")


# The parts of a mail a rule can test, besides 'headers' and 'account'; the last four are those of
# a monitoring mail (its tool, host, service or alert, and state word).
MONITORING_FIELDS = ("tool", "host", "service", "state")
FIELDS = ("from", "to", "subject", "body", *MONITORING_FIELDS)


# How long one rule may take on one mail. Regex rules run on the 'regex' engine with this as its
# timeout (its check is coarse: under load a search may overrun it a few times); a rule that runs
# out of time, or fails, is skipped for that mail with a warning on the ticket.
RULE_TIME_LIMIT = 0.25
