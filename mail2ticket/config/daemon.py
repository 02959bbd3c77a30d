"""The [daemon] table: the leases by which several daemons share one database's accounts
(docs/scaling.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mail2ticket.config.checks import check_table
from mail2ticket.config.periods import parse_duration
from mail2ticket.errors import ConfigError


def _is_duration(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))


DAEMON_KEYS: dict[str, tuple[Any, Any, str]] = {
    "lease_renew": (_is_duration, "10s", 'a duration such as "10s" (how often a daemon renews its leases)'),
    "lease_ttl": (_is_duration, "30s", 'a duration such as "30s" (how long a lease lasts unrenewed)'),
}


@dataclass(frozen=True)
class DaemonSettings:
    lease_renew: float = 10.0  # seconds between two renewals of a daemon's leases (and its heartbeat)
    lease_ttl: float = 30.0  # seconds a lease lasts without renewal: another daemon may take it then


def _seconds(path: Path, key: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(parse_duration(value))
        except ValueError as exc:
            raise ConfigError(f"{path}: 'daemon.{key}': {exc}") from None
    if value <= 0:
        raise ConfigError(f"{path}: 'daemon.{key}' must be more than 0 seconds")
    return float(value)


def check_daemon(path: Path, data: Any) -> DaemonSettings:
    """[daemon] checked: lease_ttl must be at least twice lease_renew (a daemon stops touching
    its accounts lease_renew before its lease may expire, so it needs one renew in between)."""
    table = check_table(path, "daemon", data, DAEMON_KEYS)
    renew, ttl = _seconds(path, "lease_renew", table["lease_renew"]), _seconds(path, "lease_ttl", table["lease_ttl"])
    if ttl < 2 * renew:
        raise ConfigError(
            f"{path}: 'daemon.lease_ttl' ({ttl:g} s) must be at least twice 'daemon.lease_renew' ({renew:g} s)",
            'for example lease_renew = "10s" and lease_ttl = "30s" (the defaults)',
        )
    return DaemonSettings(lease_renew=renew, lease_ttl=ttl)
