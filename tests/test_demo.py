"""The demo in examples/demo: the README's two commands work on a fresh machine and change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import unicodedata
from pathlib import Path

from mail2ticket.config.load import load_config

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo"
CONFIG = "examples/demo/config.toml"  # as the README's quick start spells it, from the checkout

# What the demo's Maildir holds, by ticket: (subject, number of messages).
EXPECTED = {
    "Printer on the 3rd floor jams on every page": 3,  # a reply (In-Reply-To) and a [#1] tag
    "Cannot connect to the VPN since this morning": 2,  # HTML only; a reply with References only
    "Invoice 2026-0117 charges the wrong VAT rate": 1,  # a CSV attachment
    "Automatic reply: Out of office until 9 March": 1,  # an auto-reply: a closed ticket
    "Lieferung für Bestellung 4711 verspätet": 1,  # German, quoted-printable
    "パスワードの再設定ができません": 1,  # Japanese, ISO-2022-JP
    "Fwd: Contract renewal for the copier lease": 1,  # a forwarded message
    "Error 0x80070005 when saving to the shared drive": 1,  # HTML with an inline image
    "New laptop and accounts for a new colleague starting 16 March": 1,
}


AUTO_REPLY = "Automatic reply: Out of office until 9 March"


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: its content hash and modification time."""
    return {
        str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def column(header: str, row: str, name: str) -> str:
    """One cell of the plain (piped) table: its columns start where their headings start."""
    names = header.split()
    start = header.index(name)
    following = names.index(name) + 1
    end = header.index(names[following], start) if following < len(names) else None
    # Columns are measured in terminal cells: a wide (East Asian) character takes two.
    cells = "".join(ch + ("\0" if unicodedata.east_asian_width(ch) in "WF" else "") for ch in row)
    return cells[start:end].replace("\0", "").strip()


def mail2ticket(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "mail2ticket", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )


def test_the_demo_runs_with_two_commands_and_lists_its_tickets(isolated_env) -> None:
    before = snapshot(DEMO)
    repo_files_before = set(os.listdir(REPO))

    polled = mail2ticket("--config", CONFIG, "poll")
    assert polled.returncode == 0, polled.stderr
    assert polled.stdout == "demo: 12 imported (9 new, 3 follow-ups)\n"
    listed = mail2ticket("--config", CONFIG, "tickets", "list")
    assert listed.returncode == 0, listed.stderr

    header, *rows = listed.stdout.splitlines()
    # The out-of-office answer is kept as a closed "auto-reply" ticket (issue 14.11): not listed.
    assert len(rows) == len(EXPECTED) - 1
    assert not [line for line in rows if AUTO_REPLY in line]
    for subject, count in EXPECTED.items():
        if subject == AUTO_REPLY:
            continue
        (row,) = [line for line in rows if subject in line]
        assert column(header, row, "account") == "demo"
        assert column(header, row, "msgs") == str(count), row
    everything = mail2ticket("--config", CONFIG, "tickets", "list", "--status", "all", "--tag", "auto-reply")
    header, row = everything.stdout.splitlines()
    assert AUTO_REPLY in row and column(header, row, "status") == "closed"

    # The database went to a directory of its own in the user's data directory (not the default
    # database a real config uses), and the source tree is as it was.
    assert (isolated_env.data_home / "mail2ticket" / "demo" / "mail2ticket.db").is_file()
    assert not (isolated_env.data_home / "mail2ticket" / "mail2ticket.db").exists()
    assert snapshot(DEMO) == before
    assert set(os.listdir(REPO)) == repo_files_before

    again = mail2ticket("--config", CONFIG, "poll")
    assert again.stdout == "demo: 0 imported (0 new, 0 follow-ups)\n"


def test_the_demo_config_keeps_its_own_storage_and_never_moves_its_sample_files(isolated_env) -> None:
    cfg = load_config(DEMO / "config.toml")
    (account,) = cfg.accounts
    assert account.source == "maildir" and Path(account.path) == DEMO / "Maildir"
    assert account.after_import == "none" and account.acknowledge is False
    assert tomllib.loads((DEMO / "config.toml").read_text())["storage"] == {"instance": "demo"}
    assert cfg.database == isolated_env.data_home / "mail2ticket" / "demo" / "mail2ticket.db"
    assert cfg.attachments == isolated_env.data_home / "mail2ticket" / "demo" / "attachments"
    assert not cfg.database.is_relative_to(REPO)


def test_the_demo_never_shows_in_the_users_own_queue(isolated_env) -> None:
    """Issue 14.2: the demo's tickets stayed in the default database and later showed as
    overdue next to real mail. A user's config without [storage] never sees them, and the
    documented removal (the demo's directory) leaves the user's own database alone."""
    own = isolated_env.config_home / "mail2ticket" / "config.toml"
    own.parent.mkdir(parents=True)
    own.write_text('[[accounts]]\nname = "support"\nemail = "support@example.com"\nimap_host = "127.0.0.1"\n')
    assert mail2ticket("tickets", "list").returncode == 0  # the user's own database exists first

    assert mail2ticket("--config", CONFIG, "poll").returncode == 0
    mine = mail2ticket("tickets", "list", "--status", "all", "--json")
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout) == []
    assert mail2ticket("tickets", "count", "--status", "all").stdout == "0\n"
    where = mail2ticket("--config", CONFIG, "config", "check")
    assert str(isolated_env.data_home / "mail2ticket" / "demo" / "mail2ticket.db") in where.stdout

    # Removing the demo as docs/local-sources.md says: one directory, the user's database stays.
    shutil.rmtree(isolated_env.data_home / "mail2ticket" / "demo")
    assert (isolated_env.data_home / "mail2ticket" / "mail2ticket.db").is_file()


def test_the_demo_maildir_holds_a_dozen_messages_in_new() -> None:
    names = sorted(f for f in os.listdir(DEMO / "Maildir" / "new") if not f.startswith("."))
    assert len(names) == 12
    assert all(":" not in name for name in names)  # also checks out on filesystems without ':'
