"""The public checkers every table of the config uses: value kinds, check_table, durations, schedules, sizes."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from mail2ticket.config.periods import parse_duration, parse_schedule
from mail2ticket.errors import ConfigError

# --- schema -------------------------------------------------------------------------------------
# Each key: (type or tuple of types, default, description). ``REQUIRED`` marks required keys.
REQUIRED = object()


def is_str(v):
    return isinstance(v, str)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_bool(v):
    return isinstance(v, bool)


def is_date(v):
    return isinstance(v, date) or (isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v))


def is_str_list(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def is_str_or_list(v):
    return isinstance(v, str) or is_str_list(v)


def is_table(v):
    return isinstance(v, dict)


def is_hours_or_false(v):
    return isinstance(v, str) or v is False


def is_date_list(v):
    return isinstance(v, list) and all(is_date(x) for x in v)


def is_header_patterns(v):
    return isinstance(v, dict) and all(isinstance(k, str) and is_str_or_list(x) for k, x in v.items())


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*$", re.I)


def parse_size(text: str) -> int:
    """'50MB' -> bytes. Raises ValueError."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
    return int(float(m.group(1)) * factor)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found",
            "create it from config.example.toml or run 'mail2ticket add-account'",
        ) from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied", "check the file's owner and mode") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", "fix the syntax at that line") from None


def check_table(path: Path, where: str, data: Any, schema: dict) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{where}] must be a table")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(
                f"{path}: unknown key '{where}.{key}'", f"expected one of: {known}"
            )
        check, _default, expected = schema[key]
        if not check(value):
            raise ConfigError(
                f"{path}: '{where}.{key}' has the wrong type ({type(value).__name__})",
                f"expected {expected}",
            )
        out[key] = value
    for key, (_check, default, expected) in schema.items():
        if key not in out:
            if default is REQUIRED:
                raise ConfigError(f"{path}: '{where}.{key}' is required", f"expected {expected}")
            out[key] = default
    return out


def check_schedule(path: Path, key: str, value: str) -> None:

    try:
        parse_schedule(value)
    except ValueError as exc:
        raise ConfigError(f"{path}: '{key}' = {value!r} is not a schedule: {exc}",
                          'expected a cron minute field such as "*/5" or "0,30", or an interval such as "10m"') from None


def check_duration(path: Path, key: str, value: str | None) -> None:
    if value is None:
        return

    try:
        parse_duration(value)
    except ValueError:
        raise ConfigError(f"{path}: '{key}' = {value!r} is not a duration", 'expected e.g. "30m", "4h" or "3d"') from None


def named_entries(path: Path, where: str, raw: Any, schema: dict, what: str) -> Iterator[tuple[str, dict]]:
    """Each table of the array ``where`` ([[where]]; one table counts as an array of one),
    checked against ``schema``, which has a "name": (its label for errors, such as
    "hooks.chat", and its values, the name stripped). A missing or empty name, or one used twice
    (``what``: "hooks", "monitoring formats"), is a ConfigError."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{path}: '{where}' must be an array of tables ([[{where}]])")
    seen: set[str] = set()
    for index, data in enumerate(raw, start=1):
        name = data.get("name")
        label = f"{where}.{name}" if isinstance(name, str) and name.strip() else f"{where}[{index}]"
        entry = check_table(path, label, data, schema)
        entry["name"] = entry["name"].strip()
        if not entry["name"]:
            raise ConfigError(f"{path}: '{label}.name' is empty", "give each entry a name")
        if entry["name"].lower() in seen:
            raise ConfigError(f"{path}: two {what} are named {entry['name']!r}",
                              f"give each [[{where}]] entry its own name")
        seen.add(entry["name"].lower())
        yield label, entry


def accounts_array(path: Path, value: Any) -> list:
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: 'accounts' must be an array of tables ([[accounts]])")
    return value
