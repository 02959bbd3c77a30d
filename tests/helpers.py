"""Helpers shared by the test files: configs, the CLI, mail as bytes, the database, processes.

The real servers live in tests/servers.py, the pseudo-terminal reader in tests/ptys.py, the
fixtures in tests/conftest.py. A helper used by two test files or more belongs here, not copied.

Sections: hashes, configs, the CLI, the database, mail, a desk (one installation on Dovecot and
SMTP), IMAP session transcripts, processes (peak memory, the daemon).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from mail2ticket.accounts.secrets import store_password
from mail2ticket.cli import cli
from mail2ticket.tickets.db import open_db
from tests.postgres import TEST_PASSWORD, engine_under_test, fresh_database
from tests.servers import Dovecot, User, find_dovecot

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024

# ----------------------------------------------------------------------------------- hashes


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as hex, as the ledger and the attachment store record it."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``, read 1 MB at a time."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------- configs


def write_config(root: Path, *accounts: dict, storage: dict | None = None, **tables: object) -> Path:
    """``root/config.toml``: ``storage`` (default: m2t.db and files/ in ``root``), ``tables``, ``accounts``.
    With MAIL2TICKET_TEST_ENGINE=postgresql the database m2t.db is a fresh PostgreSQL database instead."""
    config = root / "config.toml"
    data: dict = {
        "storage": engine_storage(root, storage or {"database": str(root / "m2t.db"), "attachments": str(root / "files")}),
        **tables,
        "accounts": list(accounts),
    }
    config.write_text(tomli_w.dumps(data))
    return config


def engine_storage(root: Path, storage: dict, *, replaces: str | None = None) -> dict:
    """``storage`` (of the config in ``root``) as the engine under test wants it: on PostgreSQL
    (MAIL2TICKET_TEST_ENGINE), a database named ``m2t.db`` (in any directory; or ``replaces``)
    becomes a fresh database of this test's own, its password in the keyring entry 'database'
    (the password chain of a real installation). Another name stays a SQLite file."""
    database = storage.get("database")
    if engine_under_test() != "postgresql" or \
            (database is not None and Path(database).name != "m2t.db" and database != replaces):
        return storage
    store_password("database", TEST_PASSWORD)
    # A config written again (a test changing its accounts) keeps its database, as m2t.db would.
    return {**storage, "database": database_url(root) or fresh_database()}


def storage_toml(root: Path, database: str = "m2t.db", **storage: str) -> str:
    """The ``[storage]`` table of a test's own config file in ``root`` (TOML text): ``database``
    and ``storage``'s keys, the database on the engine under test (engine_storage)."""
    return "[storage]\n" + tomli_w.dumps(engine_storage(root, {"database": database, **storage}, replaces=database))


def database_url(root: Path) -> str | None:
    """The PostgreSQL URL of the config in ``root``, or None (SQLite: sqlite_path)."""
    value = _configured_database(root)
    return value if value.startswith(("postgresql://", "postgres://")) else None


def sqlite_path(root: Path) -> Path:
    """The SQLite file of the config in ``root`` ([storage] database, relative to ``root``), or
    root/m2t.db (no config, or none named there)."""
    value = _configured_database(root)
    return root / value if value and not value.startswith(("postgresql://", "postgres://")) else root / "m2t.db"


_last_read: dict[Path, str] = {}  # root -> its config's database, as last read (_configured_database)


def _configured_database(root: Path) -> str:
    """[storage] database of root/config.toml ("" without one); while a test has broken the file
    (a daemon's reload of bad TOML), what it said before."""
    config = root / "config.toml"
    if not config.exists():
        return ""
    try:
        value = tomllib.loads(config.read_text()).get("storage", {}).get("database", "")
    except tomllib.TOMLDecodeError:
        return _last_read.get(root, "")
    _last_read[root] = value
    return value


# ---------------------------------------------------------------------------------- the CLI


def run_cli(config: Path, *args: str, input: str | bytes | None = None, **kwargs):
    """``mail2ticket --config CONFIG ARGS`` in-process (click's CliRunner, stdout and stderr apart)."""
    return CliRunner().invoke(cli, ["--config", str(config), *args], input=input, **kwargs)


def status_json(config: Path) -> dict:
    """What ``mail2ticket status --json`` reports."""
    return json.loads(run_cli(config, "status", "--json").stdout)


def accounts_status(config: Path) -> dict[str, dict]:
    """The accounts of ``mail2ticket status --json``, by name."""
    return {a["name"]: a for a in status_json(config)["accounts"]}


def all_tickets(config: Path) -> list[dict]:
    """``mail2ticket tickets list --status all --json``, checked to succeed."""
    result = run_cli(config, "tickets", "list", "--status", "all", "--json", catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def command(config: Path, *args: str) -> list[str]:
    """The command line that runs ``mail2ticket --config CONFIG ARGS`` as its own process."""
    return [sys.executable, "-m", "mail2ticket", "--config", str(config), *args]


# ----------------------------------------------------------------------------- the database


def rows(root: Path, sql: str, params=()) -> list[tuple]:
    """The rows of ``sql`` in root/m2t.db (the database write_config puts there; sqlite_path), or in the
    PostgreSQL database of ``root``'s config (the SQL translated as mail2ticket translates it)."""
    url = database_url(root)
    if url is not None:
        db = open_db(url, password=TEST_PASSWORD)
        try:
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in db.execute(sql, list(params)).fetchall()]
        finally:
            db.close()
    with contextlib.closing(sqlite3.connect(sqlite_path(root))) as conn:
        return conn.execute(sql, params).fetchall()


def open_store(root: Path):
    """mail2ticket's database for a test that opens the store itself (open_db): root/m2t.db, or
    with MAIL2TICKET_TEST_ENGINE=postgresql the database of root's config, made (write_config:
    a config.toml with just [storage]) when root has none yet, so rows and connect find it too."""
    if engine_under_test() == "postgresql" and database_url(root) is None:
        root.mkdir(parents=True, exist_ok=True)
        write_config(root)
    return open_db(database_url(root) or sqlite_path(root), password=TEST_PASSWORD)


def has_database(root: Path) -> bool:
    """Whether the database of ``root`` exists yet: root/m2t.db, or the PostgreSQL database of
    ``root``'s config (made with its schema by write_config)."""
    return database_url(root) is not None or sqlite_path(root).exists()


@contextlib.contextmanager
def connect(root: Path, *, by_name: bool = False) -> Iterator:
    """``with connect(root) as conn``: the database of ``root`` with ``execute(sql, params)`` in
    SQLite's dialect (sqlite3 on root/m2t.db, or mail2ticket's PostgreSQL engine), committed
    and closed at the end of the block. ``by_name``: rows read by column name too (sqlite3.Row)."""
    url = database_url(root)
    conn = open_db(url, password=TEST_PASSWORD) if url is not None else sqlite3.connect(sqlite_path(root), timeout=30)
    if by_name and url is None:
        conn.row_factory = sqlite3.Row
    try:
        yield _NamedRows(conn) if by_name and url is not None else conn
        if url is None:
            conn.commit()
    finally:
        conn.close()


class _Row(tuple):
    """A row read by position or by column name, as sqlite3.Row (bytea as bytes)."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key):  # type: ignore[override]
        return super().__getitem__(self.names.index(key) if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self.names)


class _NamedRows:
    """A PostgreSQL database (tickets/pg.py) whose rows are read by column name too (connect)."""

    def __init__(self, db) -> None:
        self.db = db

    def execute(self, sql: str, params=()):
        cursor = self.db.execute(sql, list(params))
        names = tuple(c.name for c in cursor.description or ())
        result = []
        for values in cursor.fetchall():
            row = _Row(bytes(v) if isinstance(v, memoryview) else v for v in values)
            row.names = names
            result.append(row)
        return _Result(result, cursor.rowcount)

    def close(self) -> None:
        self.db.close()

    def __getattr__(self, name: str):
        return getattr(self.db, name)


class _Result(list):
    def __init__(self, rows: list, rowcount: int) -> None:
        super().__init__(rows)
        self.rowcount = rowcount

    def fetchone(self):
        return self[0] if self else None

    def fetchall(self) -> list:
        return list(self)


def raw_sha(conn: sqlite3.Connection, digest: str) -> str | None:
    """SHA-256 of the raw bytes stored for ``digest``, read 1 MB at a time (None: not stored)."""
    if getattr(conn, "engine", None) == "postgresql":
        from mail2ticket.tickets.pg import read_raw

        if conn.execute("select 1 from raw_messages where sha256 = ?", [digest]).fetchone() is None:
            return None
        hasher = hashlib.sha256()
        for chunk in read_raw(conn, digest, MiB):
            hasher.update(chunk)
        return hasher.hexdigest()
    row = conn.execute("select rowid from raw_messages where sha256 = ?", [digest]).fetchone()
    if row is None:
        return None
    hasher = hashlib.sha256()
    with conn.blobopen("raw_messages", "raw", row[0], readonly=True) as blob:
        while chunk := blob.read(MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


# ------------------------------------------------------------------------------------- mail


def numbered_mail(
    n: int,
    subject: bytes,
    message_id: bytes | None,
    *,
    to: bytes = b"support@example.test",
    extra: bytes = b"",
    text: bytes | None = None,
    body: bytes = b"",
) -> bytes:
    """Customer ``n``'s mail as CRLF bytes: "SUBJECT n", ``extra`` headers, ``text`` (or "Request number n.")."""
    head = b"From: customer%d@example.org\r\nTo: %s\r\nSubject: %s %d\r\n" % (n, to, subject, n)
    if message_id is not None:
        head += b"Message-ID: " + message_id + b"\r\n"
    return head + extra + b"\r\n" + (b"Request number %d." % n if text is None else text) + b"\r\n" + body


def hashed_lines(n: int, size: int = 20_000) -> bytes:
    """About ``size`` bytes of pseudo-random hex text in 76-character lines, the same for the same ``n``."""
    text = hashlib.sha256(b"%d" % n).hexdigest().encode() * (size // 64)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def request_mail(n: int, subject: str | None, sender: str, message_id: str, headers: dict[str, str],
                 return_path: str | None = None) -> bytes:
    """Request ``n`` as an MTA delivers it; ``headers`` keys use "_" for "-" (Return-Path: as pipe(8) flags=R)."""
    msg = EmailMessage()
    if return_path:
        msg["Return-Path"] = return_path
    msg["From"] = sender
    msg["To"] = "support@example.com"
    msg["Subject"] = subject or f"Request number {n}"
    msg["Message-ID"] = message_id
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content(f"Hello, this is request {n}.\n")
    return bytes(msg)


def make_mail(
    subject: str = "Printer on fire",
    sender: str = "Ann Customer <ann@customer.test>",
    to: str = "support@example.test",
    body: str = "It is on fire.",
    *,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
    date: datetime | None = None,
    attachment: bytes | None = None,
) -> bytes:
    """A customer's mail as bytes (a fresh Message-ID, dated now); ``attachment``: a PDF part."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="customer.test")
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg.as_bytes()


def files_mail(n: int, attachments: list[tuple[str, bytes]], tag: str) -> bytes:
    """Request ``n`` with ``attachments`` ((file name, bytes): octet-stream parts), Message-ID
    ``<TAG-N@customer.example>``."""
    msg = EmailMessage()
    msg["From"] = f"user{n}@customer.example"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Request {n} with files"
    msg["Message-ID"] = f"<{tag}-{n}@customer.example>"
    msg.set_content(f"Request {n}: see the attached files.\n")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def reply_to(sent: bytes, *, sender: str = "ann@customer.test", body: str = "Thanks!", **kw) -> bytes:
    """What a mail client makes when its user answers ``sent``: Re: subject, threading headers."""
    from email import message_from_bytes, policy

    original = message_from_bytes(sent, policy=policy.default)
    refs = " ".join([*(original.get("References", "").split()), original["Message-ID"]])
    return make_mail(
        f"Re: {original['Subject']}", sender, str(original["From"]), body,
        in_reply_to=original["Message-ID"], references=refs, **kw,
    )


# ----------------------------------------------------------------------- monitoring mail
# The stock notification mails of monitoring tools, each in its tool's default format (the source
# of each format is named beside its builder and in tests/test_monitoring.py).


def monitoring_mail(subject: str, body: str, *, sender: str = "monitoring@example.com", html: bool = False,
                    date: datetime | None = None) -> bytes:
    """A real message as the tool's mailer sends it: headers, then the text (or HTML) body."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "ops@example.com"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime(2026, 12, 2, 3, 10, tzinfo=UTC))
    msg["Message-ID"] = make_msgid(domain="monitor.example.com")
    msg.set_content(body, subtype="html" if html else "plain")
    return msg.as_bytes()


# Nagios Core's sample commands.cfg (sample-config/template-object/commands.cfg.in):
# notify-service-by-email and notify-host-by-email (subject and text as quoted in tests/test_monitoring.py).
def nagios_service(kind: str, host: str, service: str, state: str, output: str, *, date: datetime | None = None) -> bytes:
    body = (f"***** Nagios *****\n\nNotification Type: {kind}\n\nService: {service}\nHost: {host}\n"
            f"Address: 192.0.2.10\nState: {state}\n\nDate/Time: Wed Dec 2 03:10:00 UTC 2026\n\n"
            f"Additional Info:\n\n{output}\n")
    return monitoring_mail(f"** {kind} Service Alert: {host}/{service} is {state} **", body, sender="nagios@example.com",
                           date=date)


def nagios_host(kind: str, host: str, state: str, output: str, *, date: datetime | None = None) -> bytes:
    body = (f"***** Nagios *****\n\nNotification Type: {kind}\nHost: {host}\nState: {state}\n"
            f"Address: 192.0.2.20\nInfo: {output}\n\nDate/Time: Wed Dec 2 03:10:00 UTC 2026\n")
    return monitoring_mail(f"** {kind} Host Alert: {host} is {state} **", body, sender="nagios@example.com",
                           date=date)


# Alertmanager's default e-mail template, template/default.tmpl (email.default.subject and
# email.default.html; the inline styles left out).
def alertmanager(status: str, alerts: list[dict[str, str]], group: dict[str, str], *,
                 date: datetime | None = None) -> bytes:
    common = {k: v for k, v in alerts[0].items() if all(a.get(k) == v for a in alerts) and k not in group}
    subject = f"[{status.upper()}{':' + str(len(alerts)) if status == 'firing' else ''}] " + " ".join(group.values())
    if common:
        subject += " (" + " ".join(v for _k, v in sorted(common.items())) + ")"
    rows = []
    for alert in alerts:
        labels = "".join(f"{k} = {v}<br />" for k, v in sorted(alert.items()))
        rows.append(f'<tr><td valign="top"><strong>Labels</strong><br />\n{labels}\n'
                    f'<strong>Annotations</strong><br />\nsummary = {alert["alertname"]} on {alert["instance"]}<br />\n'
                    f'<a href="http://prometheus.example.com:9090/graph?g0.expr=up">Source</a><br />\n</td></tr>')
    html = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        f'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>{subject}</title></head>\n'
        '<body itemscope="" itemtype="http://schema.org/EmailMessage"><table><tr><td></td><td width="600">'
        '<div><table width="100%" cellpadding="0" cellspacing="0">\n'
        f'<tr><td align="center" bgcolor="#E6522C" valign="top">{len(alerts)} alert{"s" if len(alerts) > 1 else ""} for '
        + " ".join(f"{k}={v}" for k, v in group.items()) + "</td></tr>\n"
        '<tr><td valign="top"><table width="100%" cellpadding="0" cellspacing="0">\n'
        '<tr><td valign="top"><a href="http://am.example.com:9093/#/alerts">View in AlertManager</a></td></tr>\n'
        f'<tr><td valign="top"><strong>[{len(alerts)}] {status.title()}</strong></td></tr>\n'
        + "\n".join(rows) +
        '\n</table></td></tr></table>\n<div><table width="100%"><tr><td align="center" valign="top">'
        '<a href="http://am.example.com:9093">Sent by AlertManager</a></td></tr></table></div></div>'
        '</td><td></td></tr></table></body></html>\n'
    )
    return monitoring_mail(subject, html, sender="alertmanager@example.com", html=True, date=date)


# The Email media type's default Problem and Problem recovery templates of Zabbix
# (ui/include/classes/helpers/CMediatypeHelper.php), as in tests/test_monitoring.py.
def zabbix_problem(name: str, host: str, severity: str, event_id: str, *, date: datetime | None = None) -> bytes:
    return monitoring_mail(
        f"Problem: {name}",
        f"Problem started at 03:05:12 on 2026.12.02\nProblem name: {name}\nHost: {host}\n"
        f"Severity: {severity}\nOperational data: Current utilization: 97.3 %\nOriginal problem ID: {event_id}\n",
        sender="zabbix@example.com", date=date)


def zabbix_recovery(name: str, host: str, severity: str, event_id: str, duration: str, *,
                    date: datetime | None = None) -> bytes:
    return monitoring_mail(
        f"Resolved in {duration}: {name}",
        f"Problem has been resolved at 03:17:15 on 2026.12.02\nProblem name: {name}\n"
        f"Problem duration: {duration}\nHost: {host}\nSeverity: {severity}\nOriginal problem ID: {event_id}\n",
        sender="zabbix@example.com", date=date)


# ------------------------------------------------------------------------------------- desk

LONG_AGO = "2000-01-01T00:00:00Z"  # accounts "added" long ago: every test mail is new mail


class Desk:
    """One mail2ticket installation: its config and database under ``root``, one account."""

    def __init__(self, root: Path, dovecot, user, smtp, account_config, *, conversations=None, **account):
        self.root, self.dovecot, self.user, self.smtp = root, dovecot, user, smtp
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.toml"
        acc = account_config(user, smtp, **{"added_at": LONG_AGO, **account})
        self.account = acc
        data: dict = {"storage": engine_storage(root, {"database": "m2t.db", "attachments": "att"}), "accounts": [acc]}
        if conversations:
            data["conversations"] = conversations
        self.config.write_text(tomli_w.dumps(data))
        store_password(acc["name"], user.password)

    @property
    def email(self) -> str:
        """The account's address."""
        return self.user.email

    def invoke(self, *args: str, input: str | None = None, env=None):
        """The CLI on this desk's config."""
        return CliRunner().invoke(cli, ["--config", str(self.config), *args], input=input, env=env)

    def ok(self, *args: str, **kw):
        """The CLI on this desk's config, checked to exit 0."""
        result = self.invoke(*args, **kw)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def poll(self):
        """``mail2ticket poll``, checked to succeed."""
        return self.ok("poll")

    def deliver(self, raw: bytes) -> int:
        """Put ``raw`` in the account's INBOX on Dovecot; its UID."""
        return self.dovecot.append(self.user, raw)

    def tickets(self) -> list[dict]:
        """Every ticket, by id."""
        return json.loads(self.ok("tickets", "list", "--status", "all", "--json", "--sort", "id").stdout)

    def show(self, ticket_id: int) -> dict:
        """``tickets show ID --json``."""
        return json.loads(self.ok("tickets", "show", str(ticket_id), "--json").stdout)

    def db(self):
        """The desk's database, opened as mail2ticket opens it."""
        url = database_url(self.root)
        return open_db(url, password=TEST_PASSWORD) if url else open_db(self.root / "m2t.db")

    def sent_to(self, address: str) -> list:
        """The mails the SMTP server received for ``address``."""
        return [m for m in self.smtp.messages if address in m.rcpt_tos]


# ------------------------------------------------------------------ IMAP session transcripts


@contextlib.contextmanager
def rawlogged_dovecot(test_ca, prefix: str, extra_conf: str = "") -> Iterator[tuple[Dovecot, Path]]:
    """(server, rawlogs): a private Dovecot (plus ``extra_conf``) writing each IMAP session's transcript."""
    if find_dovecot() is None:
        pytest.skip("Dovecot is not installed")
    # Not under pytest's tmp_path (mode 0700): Dovecot writes as the unprivileged mail user.
    rawlogs = Path(tempfile.mkdtemp(prefix=prefix))
    rawlogs.chmod(0o755)
    server = Dovecot(test_ca, extra_conf=extra_conf + f"protocol imap {{\n  rawlog_dir = {rawlogs}/%n\n}}\n")
    try:
        with server:
            yield server, rawlogs
    finally:
        shutil.rmtree(rawlogs, ignore_errors=True)


def rawlogged_user(server: Dovecot, rawlogs: Path) -> User:
    """A new mail user whose sessions are transcribed in ``rawlogs/NAME``; its password in the keyring."""
    user = server.add_user()
    own = rawlogs / user.name
    own.mkdir()
    if os.geteuid() == 0:  # Dovecot writes as the mail user
        os.chown(own, pwd.getpwnam("mail").pw_uid, pwd.getpwnam("mail").pw_gid)
    store_password(user.name, user.password)
    return user


def transcript_commands(paths: Iterable[Path]) -> list[str]:
    """The commands the client sent (tag stripped), from Dovecot's ``*.in`` transcripts, in path order."""
    commands = []
    for path in sorted(paths):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 2)  # timestamp, tag, command
            if len(parts) == 3 and re.fullmatch(r"[A-Za-z0-9]+", parts[1]):
                commands.append(parts[2])
    return commands


# -------------------------------------------------------------------------------- processes

PEAK_LIMIT_KIB = 150 * 1000 * 1000 // 1024  # large messages: 150 MB, whatever the attachment sizes


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> object:
    """Poll ``predicate`` every 50 ms until it returns something true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, read from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def hwm_kib(pid: int) -> int:
    """The peak resident memory (VmHWM, KiB) of ``pid`` so far; 0 once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def run_measured(cmd: list[str], stdin: Path | None = None) -> tuple[subprocess.CompletedProcess, dict[int, int], int]:
    """Run ``cmd``, sampling its and its children's peak RSS (VmHWM, KiB) every 20 ms: (result, {pid: peak}, pid)."""
    with open(stdin or "/dev/null", "rb") as source:
        proc = subprocess.Popen(cmd, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        hwm: dict[int, int] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for p in process_tree(proc.pid):
                    hwm[p] = max(hwm.get(p, 0), hwm_kib(p))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = proc.communicate(timeout=300)
        done.set()
        sampler.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode()), hwm, proc.pid


class NotifyListener:
    """The systemd side of sd_notify: an AF_UNIX datagram socket in tmp_path."""

    def __init__(self, directory: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = directory / f"notify-{secrets.token_hex(3)}.sock"
        if len(str(path)) < 100:
            self.sock.bind(str(path))
            self.address = str(path)
        else:  # sun_path holds 108 bytes: use an abstract socket for very long tmp paths
            name = f"mail2ticket-test-{secrets.token_hex(8)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def _receive(self) -> None:
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)

    def wait_for(self, key: str, value: str | None = None, *, timeout: float = 10,
                 contains: str | None = None, start: int = 0) -> int:
        """Index of the first message from ``start`` on with ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.messages)):
                got = self.messages[i].get(key)
                if got is not None and (value is None or got == value) and (
                    contains is None or contains in got
                ):
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value or contains or ''} from the daemon; got {self.messages}")
            self._receive()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class DaemonProcess:
    """``python -m mail2ticket --config MAIN run`` with a NOTIFY_SOCKET we listen on."""

    def __init__(self, main: Path, tmp_path: Path, *, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), journal: bool = False):
        self.notify = NotifyListener(tmp_path)
        self.log_path = tmp_path / f"daemon-{secrets.token_hex(3)}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": self.notify.address}
        if journal:  # what systemd sets when stderr is connected to journald
            st = os.fstat(self._log.fileno())
            full_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mail2ticket", "--config", str(main), *args, "run"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=full_env,
        )

    def log(self) -> str:
        """What the daemon wrote (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        """Send the daemon a signal."""
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, float]:
        """Send ``sig`` and wait: (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - t0

    def close(self) -> None:
        """Kill the daemon if it still runs; close the log and the socket."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        self.notify.close()
