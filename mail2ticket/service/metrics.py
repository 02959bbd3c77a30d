"""Our metrics in the Prometheus text format: what 'status --prometheus' prints and what the daemon
writes to the [metrics] textfile for node_exporter's textfile collector. Every metric, its labels
and meaning are in docs/metrics.md; a few indexed queries compute them all (no table is scanned)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mail2ticket import __version__
from mail2ticket.config.fields import PRIORITIES, STATUSES
from mail2ticket.config.model import Config
from mail2ticket.intake.results import FAILURE_CAUSES
from mail2ticket.tickets.db import (
    account_status,
    now_iso,
    open_ticket_counts,
    set_state_value,
    state_value,
    transaction,
)
from mail2ticket.tickets.failure_causes import poll_failure_counts
from mail2ticket.tickets.hookqueue import QUEUE_STATUSES, queue_summary
from mail2ticket.tickets.ledger import open_quarantine_summary
from mail2ticket.tickets.mailqueue import UNSENT_STATUSES, unsent_summary

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)

PREFIX = "mail2ticket_"
TEXTFILE_MODE = 0o644  # node_exporter runs as another user; the file holds no secret
_ERROR_KEY = "metrics.textfile_error"  # conversation_state: why the textfile could not be written


@dataclass
class Family:
    """One metric: its name (with PREFIX, and _total for a counter), type, help and samples."""

    name: str
    type: str  # "gauge" or "counter"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, value))
        return self


def _seconds(value: str | None) -> float:
    """An ISO 8601 time of the database as Unix seconds; 0 for none (never)."""
    if not value:
        return 0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0


def collect(cfg: Config, db: Database, daemon: dict, now: datetime | None = None) -> list[Family]:
    """Every metric, from the config, the database and ``daemon`` (service/daemon.daemon_state)."""
    now_s = (now or datetime.now(UTC)).timestamp()

    def family(name: str, kind: str, text: str) -> Family:
        return Family(PREFIX + name, kind, text)

    def age(oldest: str | None) -> float:
        return max(0.0, now_s - _seconds(oldest)) if oldest else 0

    out = [
        family("build_info", "gauge", "Always 1; the label says the version of mail2ticket.").add(1, version=__version__),
        family("daemon_running", "gauge", "1 when a daemon ('mail2ticket run') serves this database: its "
               "heartbeat is fresh; 0 when stopped, dead or never started.").add(int(bool(daemon["running"]))),
        family("daemon_heartbeat_timestamp_seconds", "gauge", "When the daemon last wrote its heartbeat "
               "(every 10 s while it runs); 0: never started.").add(_seconds(daemon.get("heartbeat_at"))),
        family("daemon_start_time_seconds", "gauge", "When the daemon last started; 0: never started.")
        .add(_seconds(daemon.get("started_at"))),
    ]
    out += _account_families(cfg, db, family, now_s)
    out += _queue_families(
        family("outbox_messages", "gauge", "Mail in the outbox not sent yet, by status (queued, sending, "
               "failed: refused or given up, held: stopped by loop protection)."),
        family("outbox_oldest_age_seconds", "gauge", "Age of the oldest mail in the outbox with this "
               "status; 0 when there is none."),
        unsent_summary(db), UNSENT_STATUSES, age)
    n, first = open_quarantine_summary(db)
    out += [
        family("quarantine_messages", "gauge", "Messages in the quarantine (could not become tickets; "
               "'mail2ticket quarantine list').").add(n),
        family("quarantine_oldest_age_seconds", "gauge", "Age of the oldest message waiting in the "
               "quarantine; 0 when it is empty.").add(age(first)),
    ]
    out += hook_queue_families(db, family, age)
    out += _ticket_families(db, family)
    out.append(family("database_size_bytes", "gauge", "Size of the SQLite database and its write-ahead log.")
               .add(_database_bytes(cfg.database)))
    return out


def _account_families(cfg: Config, db: Database, family, now_s: float) -> list[Family]:
    """Per configured account (label account): enabled, polls, imports, failures, backoff."""
    status = account_status(db)
    failures = poll_failure_counts(db)
    enabled = family("account_enabled", "gauge", "1 when the account is enabled in the config.")
    last_ok = family("account_last_success_timestamp_seconds", "gauge", "When the account was last polled "
                     "successfully (a pipe account: its last delivery by 'ingest'); 0: never.")
    last = family("account_last_poll_timestamp_seconds", "gauge", "When the account was last polled, "
                  "whatever the result; 0: never.")
    imported = family("account_messages_imported_total", "counter", "Messages imported from the account "
                      "(new tickets and follow-ups), since the database was created.")
    failed = family("account_poll_failures_total", "counter", "Failed polls of the account by cause: "
                    + ", ".join(FAILURE_CAUSES) + " (docs/metrics.md).")
    in_row = family("account_consecutive_failures", "gauge", "Failed polls in a row (0 after a good one).")
    backoff = family("account_backoff", "gauge", "1 while the account is backing off after failures "
                     "(no poll before backoff_until).")
    until = family("account_backoff_until_timestamp_seconds", "gauge", "When a backing-off account may be "
                   "polled again; 0 when not backing off.")
    for account in cfg.accounts:
        name = account.name
        st = status.get(name, {})
        retry_at = _seconds(st.get("next_attempt_at"))
        enabled.add(int(account.enabled), account=name)
        last_ok.add(_seconds(st.get("last_success_at")), account=name)
        last.add(_seconds(st.get("last_poll_at")), account=name)
        imported.add(st.get("imported_total") or 0, account=name)
        counts = failures.get(name, {})
        for cause in (*FAILURE_CAUSES, *sorted(set(counts) - set(FAILURE_CAUSES))):
            failed.add(counts.get(cause, 0), account=name, cause=cause)
        in_row.add(st.get("failures") or 0, account=name)
        backoff.add(int(retry_at > now_s), account=name)
        until.add(retry_at if retry_at > now_s else 0, account=name)
    return [enabled, last_ok, last, imported, failed, in_row, backoff, until]


def hook_queue_families(db: Database, family, age) -> list[Family]:
    """The hook queue (issue 18.3, [[hooks]], docs/hooks.md): its size by status and its oldest
    age, from tickets/hookqueue.queue_summary (pending: waiting for an attempt or a retry;
    failed: given up after every retry, waiting for 'hooks retry')."""
    return _queue_families(
        family("hook_deliveries", "gauge", "Hook events not delivered yet, by status (pending: waiting "
               "for an attempt or a retry; failed: given up, waiting for 'mail2ticket hooks retry')."),
        family("hook_oldest_age_seconds", "gauge", "Age of the oldest hook event with this status; "
               "0 when there is none."),
        queue_summary(db), QUEUE_STATUSES, age)


def _queue_families(size: Family, oldest: Family, summary: dict, statuses, age) -> list[Family]:
    """A queue's size and oldest age by status (label status), from its owner's summary
    ({status: (count, oldest time)}); every status present, 0 when it has none."""
    for status in statuses:
        n, first = summary.get(status, (0, None))
        size.add(n, status=status)
        oldest.add(age(first), status=status)
    return [size, oldest]


def _ticket_families(db: Database, family) -> list[Family]:
    tickets = family("tickets", "gauge", "Tickets not closed, by status and priority.")
    overdue = family("tickets_overdue", "gauge", "Tickets not closed and past an SLA target, by priority.")
    counts: dict[tuple[str, str], int] = {(s, p): 0 for s in STATUSES if s != "closed" for p in PRIORITIES}
    late: dict[str, int] = dict.fromkeys(PRIORITIES, 0)
    for status, priority, is_overdue, n in open_ticket_counts(db):
        priority = priority or ""
        counts[(status, priority)] = counts.get((status, priority), 0) + n
        if is_overdue:
            late[priority] = late.get(priority, 0) + n
    for (status, priority), n in counts.items():
        tickets.add(n, status=status, priority=priority)
    for priority, n in late.items():
        overdue.add(n, priority=priority)
    return [tickets, overdue]


def _database_bytes(path: Path) -> int:
    total = 0
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


# --- the text format ------------------------------------------------------------------------------


def render(families: list[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4): HELP and TYPE, then the samples."""
    lines: list[str] = []
    for f in families:
        lines.append(f"# HELP {f.name} {_help_text(f.help)}")
        lines.append(f"# TYPE {f.name} {f.type}")
        for labels, value in f.samples:
            text = ",".join(f'{key}="{_label_value(v)}"' for key, v in labels.items())
            lines.append(f"{f.name}{{{text}}} {_number(value)}" if text else f"{f.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_value(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() else repr(value)


def prometheus_text(cfg: Config, db: Database, daemon: dict) -> str:
    """What 'status --prometheus' prints."""
    return render(collect(cfg, db, daemon))


# --- the textfile ---------------------------------------------------------------------------------


def write_textfile(cfg: Config, db: Database, daemon: dict) -> str | None:
    """Write the metrics to [metrics] textfile atomically (a temporary file in the same directory,
    then a rename: node_exporter never reads half a file), mode 0644. Never raises: a failure is
    logged when it starts or changes, kept for 'status' (textfile_error), and returned."""
    path = cfg.metrics_textfile
    if path is None:
        return None
    try:
        _replace(path, prometheus_text(cfg, db, daemon).encode())
        error = None
    except OSError as exc:
        error = f"cannot write the metrics textfile {path}: {exc.strerror or exc} ({_hint(exc, path)})"
    except Exception as exc:  # noqa: BLE001 - the metrics never stop the daemon
        error = f"cannot write the metrics textfile {path}: {exc.__class__.__name__}: {exc}"
    try:
        _remember(db, path, error)
    except Exception as exc:  # noqa: BLE001 - e.g. the database is locked: say it, carry on
        log.warning("could not record the metrics textfile's state: %s", exc)
    return error


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # not *.prom
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), TEXTFILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _hint(exc: OSError, path: Path) -> str:
    folder = path.parent
    if exc.errno == errno.ENOENT:
        return f"create the directory {folder}, the one node_exporter's --collector.textfile.directory names"
    if exc.errno == errno.EROFS:
        return (f"under systemd with ProtectSystem=strict, add ReadWritePaths={folder} to the unit "
                "(systemctl edit mail2ticket)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"let the user mail2ticket runs as write to {folder}, e.g. chgrp mail2ticket and chmod g+w"
    return "check the directory and the disk"


def _remember(db: Database, path: Path, error: str | None) -> None:
    before = textfile_error(db)
    if error is None:
        if before is not None:
            log.info("metrics textfile %s written again", path)
            with transaction(db):
                set_state_value(db, _ERROR_KEY, "")
        return
    if before is None or before["error"] != error:
        log.warning("%s", error)
        with transaction(db):
            set_state_value(db, _ERROR_KEY, json.dumps({"error": error, "since": now_iso()}))


def textfile_error(db: Database) -> dict | None:
    """Why the last write of the metrics textfile failed ({error, since}), or None."""
    value = state_value(db, _ERROR_KEY)
    return json.loads(value) if value else None
