"""A canary password through every command that touches it, at DEBUG level (RELIABILITY figure 12,
item 52): it must appear nowhere but in the keyring file.

The commands run as real processes (``python -m mail2ticket --debug ...``) against the real
Dovecot and aiosmtpd: add-account, accounts test, poll (with the acknowledgement sent over
STARTTLS + AUTH), a reply, and failures (a refused IMAP login, a refused SMTP login, an
unreachable server). Then their stdout and stderr, and every file under this test's directories
(config, database and its WAL, attachments, XDG dirs) are searched for the canary in raw,
base64 and ``\\0user\\0pass`` form.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import database_url, engine_under_test, rows, storage_toml
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
CANARY = "Kanari-51gh7-nur-im-schluesselbund"  # noqa: S105 - the value searched for


def canary_forms(users: list[str], secret: str = CANARY) -> dict[str, bytes]:
    """The canary as it could leak: raw, base64, and as AUTH PLAIN / AUTH LOGIN put it."""
    forms = {"raw": secret.encode(), "base64": base64.b64encode(secret.encode())}
    for shift in range(3):  # base64 of the secret at any alignment inside a longer string
        forms[f"base64-in-stream-{shift}"] = base64.b64encode(b"x" * shift + secret.encode())[4:-4]
    for user in users:
        plain = f"\0{user}\0{secret}".encode()
        forms[f"plain {user}"] = plain
        forms[f"AUTH PLAIN {user}"] = base64.b64encode(plain)
    forms["repr"] = repr(secret).encode()
    forms["utf-16"] = secret.encode("utf-16-le")
    return forms


def stored_in_database(root: Path) -> bytes:
    """On PostgreSQL, every value of every table of the database of root's config (its rows, as
    text or bytes): the twin of searching the SQLite file, which the files' search covers."""
    assert database_url(root) is not None
    tables = rows(root, "select table_name from information_schema.tables "
                        "where table_schema = current_schema() and table_type = 'BASE TABLE'")
    assert tables, "no tables in the database"
    found = bytearray()
    for (table,) in tables:
        for row in rows(root, f'select * from "{table}"'):
            for value in row:
                found += (value if isinstance(value, bytes) else str(value).encode()) + b"\0"
    return bytes(found)


def search_the_database(root: Path, forms: dict[str, bytes]) -> list[str]:
    """The canary's forms found in the database on PostgreSQL ([] on SQLite: its file is searched)."""
    if engine_under_test() != "postgresql":
        return []
    data = stored_in_database(root)
    assert b"Printer on fire" in data  # the ticket's rows were among those searched
    return [f"database {database_url(root)}: {form}" for form, needle in forms.items() if needle in data]


class Run:
    """Runs the CLI as a process with --debug and keeps every byte it printed."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.outputs: list[tuple[str, bytes]] = []

    def __call__(self, *args: str, input: str | None = None, ok: bool | None = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "mail2ticket", "--debug", "--config", str(self.config), *args],
            input=input.encode() if input is not None else None,
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
        )
        self.outputs.append((" ".join(args) + " (stdout)", result.stdout))
        self.outputs.append((" ".join(args) + " (stderr)", result.stderr))
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        elif ok is False:
            assert result.returncode != 0, (args, result.stdout, result.stderr)
        return result


def mail(to: str, subject: str) -> bytes:
    return (
        f"From: Ann <ann@customer.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@customer.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        "Please help.\r\n--b\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="log.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\n--b--\r\n"
    ).encode()


def test_a_canary_password_appears_nowhere_but_the_keyring_after_every_command_at_debug_level(
    tmp_path, isolated_env, dovecot, smtp_server
):
    user = dovecot.add_user(password=CANARY)
    smtp_server.add_user(user)
    config = isolated_env.config_home / "mail2ticket" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(storage_toml(config.parent, "../../var/m2t.db", attachments="../../var/att"))
    run = Run(config)
    common = [
        "--imap-host", dovecot.host, "--imap-port", str(dovecot.imaps_port),
        "--smtp-host", smtp_server.host, "--smtp-port", str(smtp_server.port),
        "--smtp-security", "starttls", "--ca-file", str(dovecot.ca_file), "--password-stdin",
    ]
    run("add-account", "desk", "--email", user.email, *common, input=CANARY + "\n")
    run("accounts", "test", "desk", "-v")

    dovecot.append(user, mail(user.email, "Printer on fire"))
    run("poll")
    run("tickets", "reply", "1", "--message", "We are on it.")
    run("outbox", "list", "--json")
    run("tickets", "show", "1", "--json")
    assert len(smtp_server.messages) >= 1  # the acknowledgement and the reply went out with AUTH

    # Failures, each of which has the canary in hand: a refused IMAP login (another user's
    # mailbox, the canary as its password), a refused SMTP login, and a server that is gone.
    other = dovecot.add_user()
    smtp_server.add_user(other.email, "not-the-canary")
    run("add-account", "broken", "--email", other.email, "--no-verify", *common, input=CANARY + "\n")
    run("accounts", "test", "broken", "-v", ok=False)
    run("poll", "broken", ok=False)
    closed = free_port()
    gone = [str(closed) if a == str(dovecot.imaps_port) else a for a in common]
    run("add-account", "gone", "--email", "gone@example.test", "--no-verify", *gone, input=CANARY + "\n")
    run("poll", "gone", ok=False)
    run("accounts", "test", "gone", ok=False)
    smtp_server.users[user.email] = "changed-on-the-server"  # the next reply is refused at AUTH
    run("tickets", "reply", "1", "--message", "Second answer, refused by SMTP.", ok=None)
    run("outbox", "retry", "--all", ok=False)

    forms = canary_forms([user.email, user.name, other.email, "gone@example.test"])
    hits: list[str] = []
    for name, data in run.outputs:
        hits += [f"{name}: {form}" for form, needle in forms.items() if needle in data]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != isolated_env.keyring_file]
    for path in files:
        data = path.read_bytes()
        hits += [f"{path}: {form}" for form, needle in forms.items() if needle in data]
    hits += search_the_database(config.parent, forms)
    print(f"canary: {len(hits)} hits in {len(files)} files and {len(run.outputs)} outputs")
    assert hits == []
    assert forms["base64"] in isolated_env.keyring_file.read_bytes()  # stored there, and only there
    # the database was among the places searched (on PostgreSQL, its rows: search_the_database)
    assert engine_under_test() == "postgresql" or any(p.suffix == ".db" for p in files)


@pytest.mark.parametrize("where", ["imap", "smtp"])
def test_a_refused_login_at_debug_level_names_the_account_but_not_the_password(
    where, tmp_path, isolated_env, dovecot, smtp_server
):
    user = dovecot.add_user(password=CANARY)
    smtp_server.add_user(user.email, "the-server-wants-another")
    config = tmp_path / "config.toml"
    config.write_text(storage_toml(tmp_path))
    run = Run(config)
    imap_password = CANARY if where == "smtp" else CANARY + "-wrong"
    dovecot_user = user if where == "smtp" else dovecot.add_user(password="another-one")
    run(
        "add-account", "desk", "--email", dovecot_user.email, "--no-verify",
        "--imap-host", dovecot.host, "--imap-port", str(dovecot.imaps_port),
        "--smtp-host", smtp_server.host, "--smtp-port", str(smtp_server.port),
        "--ca-file", str(dovecot.ca_file), "--password-stdin", input=imap_password + "\n",
    )
    result = run("accounts", "test", "desk", ok=False)
    assert f"{where.upper()} " in result.stderr.decode() and "refused" in result.stderr.decode()
    forms = canary_forms([dovecot_user.email, dovecot_user.name], imap_password)
    leaked = [f for f, needle in forms.items() for _, data in run.outputs if needle in data]
    assert leaked == []


def test_a_hooks_signing_secret_appears_nowhere_but_the_keyring(tmp_path, isolated_env, test_ca):
    """The same search for a webhook's signing secret (issue 18.3): set from standard input,
    used to sign a delivery a real HTTPS receiver checks, and in a chat URL's {secret} that
    points at a port where nothing listens (the failure path: the error is printed, logged and
    kept in the hook queue)."""
    from tests.test_hooks import Receiver

    receiver = Receiver(test_ca, secret=CANARY)
    try:
        closed = free_port()
        config = tmp_path / "config.toml"
        config.write_text(
            storage_toml(tmp_path) + '\n'
            '[[accounts]]\nname = "support"\nemail = "support@example.test"\nsource = "pipe"\n'
            'acknowledge = false\n\n'
            f'[[hooks]]\nname = "signed"\nevents = ["ticket.created"]\n'
            f'url = "https://127.0.0.1:{receiver.port}/hooks/m2t"\nca_file = "{test_ca.ca_file}"\n\n'
            f'[[hooks]]\nname = "chat"\nevents = ["ticket.created"]\nformat = "chat"\ntimeout = 2\n'
            f'url = "https://127.0.0.1:{closed}/hooks/{{secret}}"\nca_file = "{test_ca.ca_file}"\n'
        )
        run = Run(config)
        run("hooks", "set-secret", "signed", "--secret-stdin", input=CANARY + "\n")
        run("hooks", "set-secret", "chat", "--secret-stdin", input=CANARY + "\n")
        run("config", "check")
        run("ingest", "--account", "support", input=mail("support@example.test", "Printer on fire").decode())
        run("poll")  # delivers: the signed hook succeeds, the chat hook fails and is kept for a retry
        run("hooks", "test", "signed")
        run("hooks", "test", "chat", ok=False)
        run("hooks", "retry", ok=False)
        for listing in (("hooks", "list", "--all"), ("hooks", "list", "--all", "--json"), ("status", "--json"),
                        ("status", "--prometheus")):
            run(*listing, ok=None)
    finally:
        receiver.close()
    assert len(receiver.posts) >= 2 and all(p["signed"] for p in receiver.posts)  # the secret was used
    forms = canary_forms([])
    hits = [f"{name}: {form}" for name, data in run.outputs for form, needle in forms.items() if needle in data]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != isolated_env.keyring_file]
    for path in files:
        data = path.read_bytes()
        hits += [f"{path}: {form}" for form, needle in forms.items() if needle in data]
    hits += search_the_database(tmp_path, forms)
    assert hits == []
    assert engine_under_test() == "postgresql" or any(p.name == "m2t.db" for p in files)
    assert forms["base64"] in isolated_env.keyring_file.read_bytes() or forms["raw"] in \
        isolated_env.keyring_file.read_bytes()
