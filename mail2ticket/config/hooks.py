"""The [[hooks]] table: which events each hook wants and what it does with them, checked.

A hook runs a command (an argument list, the event's JSON on standard input, no shell) or POSTs
the JSON to a URL (TLS verified, signed with HMAC-SHA256). The public event names and the event
kinds of the ticket history (tickets/db.log_event) they stand for are here; docs/hooks.md
describes both. Queueing and delivery: tickets/hookqueue.py and outgoing/hooks.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mail2ticket.config.checks import (
    REQUIRED,
    is_int,
    is_str,
    is_str_list,
    is_str_or_list,
    named_entries,
)
from mail2ticket.errors import ConfigError

# Public event name -> the kinds of history event (tickets/db.log_event) it is made of. Stable:
# a receiver relies on these names (docs/hooks.md).
EVENTS: dict[str, tuple[str, ...]] = {
    "ticket.created": ("created",),
    "ticket.followup": ("followup",),
    "ticket.status": ("closed", "reopened", "status"),
    "ticket.assigned": ("assigned",),
    "ticket.overdue": ("overdue",),
    "monitoring.problem": ("monitoring-problem",),
    "monitoring.recovery": ("monitoring-recovery",),
    "message.quarantined": ("quarantined",),
    "account.failing": ("account-failing",),
    "account.recovered": ("account-recovered",),
}
FORMATS = ("json", "chat", "text")
DEFAULT_TIMEOUT = 10
MAX_TIMEOUT = 300

HOOK_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (is_str, REQUIRED, "a short name (letters, digits, '-', '_'), shown by 'hooks list'"),
    "events": (is_str_list, REQUIRED, 'a list of event names, such as ["ticket.created", "ticket.status"]'),
    "command": (is_str_list, None, 'an argument list, such as ["/usr/local/bin/page-oncall", "--team", "ops"]'),
    "url": (is_str, None, 'an https:// URL (http:// only to a loopback address)'),
    "format": (is_str, "json", '"json" (the event), "chat" ({"text": ...}) or "text" (one line)'),
    "timeout": (is_int, DEFAULT_TIMEOUT, f"seconds, 1 to {MAX_TIMEOUT}"),
    "accounts": (is_str_or_list, None, "an account name or a list of them"),
    "ca_file": (is_str, None, "a path to an extra CA bundle (PEM) to trust"),
    "secret_command": (is_str_list, None, 'an argument list that prints the signing secret, such as ["pass", "show", "hooks/chat"]'),
}


@dataclass(frozen=True)
class Hook:
    """One checked [[hooks]] entry: exactly one of ``command`` and ``url`` is set."""

    name: str
    events: tuple[str, ...]
    command: tuple[str, ...] | None = None
    url: str | None = None
    format: str = "json"
    timeout: int = DEFAULT_TIMEOUT
    accounts: tuple[str, ...] = ()  # empty: every account
    ca_file: str | None = None
    secret_command: tuple[str, ...] | None = None

    @property
    def action(self) -> str:
        """What it does, in words for 'hooks list': the command line or the URL."""
        return " ".join(self.command) if self.command else str(self.url)

    def kinds(self) -> list[tuple[str, str]]:
        """(history kind, public event name) for each event it wants."""
        return [(kind, event) for event in self.events for kind in EVENTS[event]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a URL's host) is this machine: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_hooks(path: Path, raw: Any, account_names: list[str]) -> list[Hook]:
    """Validate [[hooks]]; one clear ConfigError naming the hook and the key."""
    out: list[Hook] = []
    for label, entry in named_entries(path, "hooks", raw, HOOK_KEYS, "hooks"):
        name = entry["name"]
        if not all(c.isalnum() or c in "-_" for c in name):
            raise ConfigError(f"{path}: hook name {name!r} is not a plain name",
                              "use letters, digits, '-' and '_', such as \"chat\" or \"pager-ops\"")
        _check_events(path, label, entry["events"])
        if (entry["command"] is None) == (entry["url"] is None):
            raise ConfigError(f"{path}: hook {name!r} needs exactly one of 'command' and 'url'",
                              'give an argument list (command = ["..."]) or a URL (url = "https://...")')
        if entry["command"] is not None and (not entry["command"] or not entry["command"][0].strip()):
            raise ConfigError(f"{path}: '{label}.command' is empty", "give the program and its arguments as a list")
        if entry["url"] is not None:
            _check_url(path, label, entry["url"])
        elif entry["ca_file"] is not None or entry["secret_command"] is not None:
            key = "ca_file" if entry["ca_file"] is not None else "secret_command"
            raise ConfigError(f"{path}: '{label}.{key}' applies only to a hook with a 'url'",
                              "remove it: a command hook neither connects nor signs")
        if entry["format"] not in FORMATS:
            raise ConfigError(f"{path}: '{label}.format' = {entry['format']!r} is not a format",
                              f"expected one of: {', '.join(FORMATS)}")
        if not 1 <= entry["timeout"] <= MAX_TIMEOUT:
            raise ConfigError(f"{path}: '{label}.timeout' = {entry['timeout']} is out of range",
                              f"expected seconds from 1 to {MAX_TIMEOUT}")
        accounts = [entry["accounts"]] if isinstance(entry["accounts"], str) else list(entry["accounts"] or [])
        for account in accounts:
            if account not in account_names:
                raise ConfigError(f"{path}: '{label}.accounts' names {account!r}, which is no account",
                                  f"known accounts: {', '.join(account_names) or 'none'}")
        ca_file = entry["ca_file"]
        if ca_file is not None:
            ca_file = str((path.parent / Path(ca_file).expanduser()).resolve())
        out.append(Hook(
            name=name,
            events=tuple(dict.fromkeys(entry["events"])),
            command=tuple(entry["command"]) if entry["command"] is not None else None,
            url=entry["url"],
            format=entry["format"],
            timeout=entry["timeout"],
            accounts=tuple(accounts),
            ca_file=ca_file,
            secret_command=tuple(entry["secret_command"]) if entry["secret_command"] else None,
        ))
    return out


def _check_events(path: Path, label: str, events: list[str]) -> None:
    if not events:
        raise ConfigError(f"{path}: '{label}.events' is empty", f"name some of: {', '.join(EVENTS)}")
    for event in events:
        if event not in EVENTS:
            raise ConfigError(f"{path}: '{label}.events' has {event!r}, which is no event",
                              f"expected some of: {', '.join(EVENTS)}")


def _check_url(path: Path, label: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{path}: '{label}.url' = {url!r} is not an https:// URL",
                          'expected e.g. "https://chat.example.com/hooks/abc"')
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(
            f"{path}: '{label}.url' sends events in clear (http://) to {parts.hostname}",
            "use https://; http:// is allowed only to this machine (localhost, 127.0.0.1, ::1)",
        )
    if parts.username or parts.password:
        raise ConfigError(f"{path}: '{label}.url' holds a user name or password",
                          "never put a secret in the config: the body is signed with the hook's secret instead "
                          "(mail2ticket hooks set-secret NAME)")
