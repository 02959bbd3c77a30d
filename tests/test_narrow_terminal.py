"""Tables on an 80-column terminal: one line per row, the least useful columns given up first
(issue 14, point 3). The commands run as a user runs them: the installed CLI with its stdout on a
real pseudo-terminal of the given size, on a database filled by a real poll of Dovecot."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from mail2ticket.accounts.secrets import store_password
from mail2ticket.cli import cli
from mail2ticket.cli.output import display_width
from tests.helpers import engine_storage, make_mail
from tests.ptys import read_all

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
CAPTURES = Path(os.environ.get("MAIL2TICKET_CAPTURES", "")) if os.environ.get("MAIL2TICKET_CAPTURES") else None


def on_terminal(config: Path, *args: str, columns: int = 80, rows: int = 50) -> list[str]:
    """The lines the installed CLI prints on a pseudo-terminal of ``columns`` x ``rows``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "mail2ticket", "--config", str(config), *args],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    output = read_all(master)
    proc.wait(timeout=60)
    text = ANSI.sub("", output.decode()).replace("\r\n", "\n")
    if CAPTURES:
        name = "-".join(a for a in args if not a.startswith("-")).replace(" ", "_")
        (CAPTURES / f"{name}-{columns}.txt").write_text(text)
    assert proc.returncode in (0, 1), proc.stderr.read().decode()
    return text.rstrip("\n").split("\n")


def cli_ok(config: Path, *args: str, input: str | None = None):
    result = CliRunner().invoke(cli, ["--config", str(config), *args], input=input)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def desk(tmp_path, dovecot, imap_user, smtp_server, account_config):
    """A desk filled by a real poll: long subjects and names, a tag, an assignee, an SLA, a
    quarantined message, a reply in the outbox; a second account with a long name."""
    store_password(imap_user.name, imap_user.password)
    other = dovecot.add_user()
    store_password("customer-support-europe-" + other.name, other.password)
    config = tmp_path / "config.toml"
    accounts = [
        account_config(imap_user, smtp_server, max_message_size="4KB"),
        account_config(other, smtp_server, name="customer-support-europe-" + other.name),
    ]
    config.write_text(tomli_w.dumps({
        "storage": engine_storage(tmp_path, {"database": str(tmp_path / "m2t.db"), "attachments": str(tmp_path / "files")}),
        "sla": {"response": "4h", "resolution": "3d"},
        "accounts": accounts,
    }))
    subjects = [
        "The printer on the second floor prints every page twice and then jams completely",
        "VPN drops every ten minutes since the upgrade of the office router last Tuesday",
        "Invoice 2026-0117: the total does not match the order confirmation we received",
        "Kurz",
    ]
    for n, subject in enumerate(subjects):
        dovecot.append(imap_user, make_mail(subject, sender=f"Customer Number {n} With A Long Name "
                                                          f"<customer.number.{n}@a-rather-long-domain.example>"))
    dovecot.append(imap_user, make_mail("Too big", body="x" * 10_000))
    dovecot.append(other, make_mail("Laptop screen flickers when the docking station is connected"))
    poll = CliRunner().invoke(cli, ["--config", str(config), "poll"])
    assert "1 quarantined" in poll.stdout, poll.output
    tickets = json.loads(cli_ok(config, "tickets", "list", "--json").stdout)
    assert len(tickets) == 5
    first = min(t["id"] for t in tickets)
    cli_ok(config, "tickets", "tag", str(first), "billing", "vip", "hardware")
    cli_ok(config, "tickets", "assign", str(first), "alice.administrator")
    cli_ok(config, "tickets", "reply", str(first), "--message", "We are on it.")
    return config, tickets


def assert_fits(lines: list[str], columns: int) -> None:
    too_wide = [line for line in lines if display_width(line) > columns]
    assert not too_wide, f"lines wider than {columns} columns:\n" + "\n".join(too_wide)


def test_tickets_list_at_80_columns_is_one_line_per_ticket_with_the_subject_cut_by_an_ellipsis(desk):
    config, tickets = desk
    lines = on_terminal(config, "tickets", "list", columns=80)
    assert_fits(lines, 80)
    for t in tickets:
        mine = [line for line in lines if re.match(rf"\s*#{t['id']}\s", line)]
        assert len(mine) == 1, (t["id"], lines)
    body = [line for line in lines if re.match(r"\s*#\d+\s", line)]
    assert len(body) == len(tickets)
    assert any(re.search(r"The printer on the s[^…]*…", line) for line in body), lines
    assert any("Kurz" in line for line in body)
    header = lines[0]
    for hidden in ("tags", "assignee", "account"):
        assert hidden not in header.split(), header  # given up first
    for kept in ("id", "status", "priority", "subject"):
        assert kept in header.split(), header


def test_tickets_list_on_a_wide_terminal_shows_every_column_in_full(desk):
    config, tickets = desk
    lines = on_terminal(config, "tickets", "list", columns=120)
    assert_fits(lines, 120)
    assert "requester" in lines[0].split()
    assert any("The printer on the second floor prints" in line and "customer.number.0@a-rat" in line
               for line in lines), lines
    lines = on_terminal(config, "tickets", "list", columns=300)
    assert_fits(lines, 300)
    assert lines[0].split() == ["id", "status", "priority", "due", "account", "requester", "assignee",
                                "subject", "tags", "msgs", "updated"]
    assert any("The printer on the second floor prints every page twice and then jams completely" in line
               and "alice.administrator" in line and "billing hardware vip" in line for line in lines), lines
    assert len([line for line in lines if re.match(r"\s*#\d+\s", line)]) == len(tickets)


def test_status_at_80_columns_is_one_line_per_account_and_no_line_wider(desk):
    config, _ = desk
    lines = on_terminal(config, "status", columns=80)
    assert_fits(lines, 80)
    names = [a["name"] for a in json.loads(cli_ok(config, "accounts", "list", "--json").stdout)]
    for name in names:
        assert len([line for line in lines if line.lstrip().startswith(name[:10])]) == 1, (name, lines)
    assert any("quarantine: 1 waiting" in line for line in lines)
    assert not any("last error" in line for line in lines), "an empty column is the first to go"


@pytest.mark.parametrize(
    "args", [("outbox", "list", "--all"), ("quarantine", "list"), ("accounts", "list")], ids=" ".join
)
def test_other_tables_at_80_columns_are_one_line_per_row(desk, args):
    config, _ = desk
    rows = json.loads(cli_ok(config, *args, "--json").stdout)
    assert rows, "nothing to show: the test would prove nothing"
    lines = on_terminal(config, *args, columns=80)
    assert_fits(lines, 80)
    assert len(lines) == 2 + len(rows), lines  # a header, its rule, then one line per row
