"""Smaller holes of issue 13, point 10 (catalogue item 62).

- 'tickets search disk:full' (a word:word that is no known column) failed with "no such column";
  it searches the words.
- 'status' counted only messages of successful polls: a poll that stored messages and then lost
  its connection counted 0 (through the real poll, the real Dovecot and a relay that cuts it).
- 'status' showed a pipe ('ingest') account as "never polled" after any number of deliveries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from mail2ticket.accounts.secrets import store_password
from tests.helpers import accounts_status, engine_storage, hashed_lines, numbered_mail, rows
from tests.triage_support import deliver, mail, run, write_config

# ------------------------------------------------------------------------------------ search


@pytest.mark.parametrize("query", ["disk:full", "Disk:Full", "error:disk full", "printer:stuck"])
def test_a_word_colon_word_that_is_no_column_searches_the_words(tmp_path: Path, query: str) -> None:
    cfg = write_config(tmp_path)
    deliver(cfg, mail("Server alert", "The disk is full and the printer is stuck: error 28."),
            mail("Other", "Nothing to see."))
    result = run(cfg, "tickets", "search", query, "--json")
    assert result.exit_code == 0, result.stderr
    assert [t["subject"] for t in json.loads(result.stdout)] == ["Server alert"]


# ------------------------------------------------------------------------------------ status


def _message(n: int, size: int = 20_000) -> bytes:
    return numbered_mail(n, b"status count", b"<status-count-%d@example.org>" % n, text=hashed_lines(n, size))


def test_a_poll_that_stored_messages_and_then_lost_its_connection_counts_them(
    dovecot, imap_user, account_config, tcp_relay, tmp_path: Path
) -> None:
    dovecot.append_many(imap_user, [_message(n) for n in range(1, 31)])
    store_password(imap_user.name, imap_user.password)
    relay = tcp_relay(dovecot.host, dovecot.imaps_port)
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({
        "storage": engine_storage(tmp_path, {"database": str(tmp_path / "m2t.db"),
                                             "attachments": str(tmp_path / "files")}),
        "accounts": [account_config(imap_user, imap_port=relay.port, batch_size=3, timeout=10)],
    }))
    relay.cut_after(250_000)  # a few batches are stored, then the connection dies
    polled = subprocess.run([sys.executable, "-m", "mail2ticket", "--config", str(config), "poll"],
                            capture_output=True, text=True, timeout=120)
    assert polled.returncode != 0 and "was lost" in polled.stderr, polled.stderr
    [(stored,)] = rows(tmp_path, "select count(*) from tickets")
    assert 0 < stored < 30
    acct = accounts_status(config)[imap_user.name]
    print(f"stored before the cut: {stored}; status counts {acct['imported_total']}")
    assert acct["imported_total"] == stored
    assert acct["last_error"] and "was lost" in acct["last_error"]


def test_status_shows_a_pipe_accounts_last_delivery_and_counts_them(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    for n in range(3):
        result = run(cfg, "ingest", "--account", "sales", input=mail(f"Delivered {n}").decode())
        assert result.exit_code == 0, result.stderr
    report = json.loads(run(cfg, "status", "--json").stdout)
    sales = next(a for a in report["accounts"] if a["name"] == "sales")
    assert sales["source"] == "pipe"
    assert sales["imported_total"] == 3
    assert sales["last_delivery_at"] and sales["last_delivery_at"] == sales["last_poll_at"]
    assert sales["last_result"].startswith("delivered")
    table = run(cfg, "status").stdout
    line = next(line for line in table.splitlines() if line.startswith("sales"))
    assert "never polled" not in line and "delivered" in line
