"""'accounts remove' on a file that holds several [[accounts]] (issue 13, point 9; catalogue item 61).

It used to delete the whole file, with its comments, and so every other account in it, whose
keyring entries were left orphaned. Now only that entry goes, and only that account's secret.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import keyring

from mail2ticket.accounts.secrets import store_password
from tests.helpers import run_cli

SHARED = """\
# Accounts of the Berlin office: ask Ines before changing them.

# The help desk.
[[accounts]]
name = "desk"
email = "desk@example.test"
source = "pipe"  # delivered by Postfix

# Sales: remove after the merger.
[[accounts]]
name = "sales"
email = "sales@example.test"
source = "pipe"

# Billing has its own SLA.
[[accounts]]
name = "billing"
email = "billing@example.test"
source = "pipe"
"""


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    main = tmp_path / "config.toml"
    main.write_text(f'[storage]\ndatabase = "{tmp_path / "m2t.db"}"\n')
    shared = tmp_path / "accounts.d" / "berlin.toml"
    shared.parent.mkdir()
    shared.write_text(SHARED)
    for name in ("desk", "sales", "billing"):
        store_password(name, f"secret-of-{name}")
    return main, shared


def test_remove_takes_only_that_entry_out_of_a_shared_file_and_keeps_the_comments(tmp_path: Path) -> None:
    main, shared = _setup(tmp_path)

    result = run_cli(main, "accounts", "remove", "sales", "--yes")

    assert result.exit_code == 0, result.output
    assert shared.exists()
    text = shared.read_text()
    names = [a["name"] for a in tomllib.loads(text)["accounts"]]
    assert names == ["desk", "billing"]
    assert "# Accounts of the Berlin office: ask Ines before changing them." in text
    assert "# The help desk." in text and 'source = "pipe"  # delivered by Postfix' in text
    assert "# Billing has its own SLA." in text
    assert "sales" not in text and "Sales: remove after the merger." not in text
    assert keyring.get_password("mail2ticket", "sales") is None
    assert keyring.get_password("mail2ticket", "desk") == "secret-of-desk"
    assert keyring.get_password("mail2ticket", "billing") == "secret-of-billing"
    listed = run_cli(main, "accounts", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert sorted(a["name"] for a in json.loads(listed.stdout)) == ["billing", "desk"]


def test_removing_the_first_and_then_the_last_entries_leaves_the_file_and_then_deletes_it(tmp_path: Path) -> None:
    main, shared = _setup(tmp_path)
    assert run_cli(main, "accounts", "remove", "desk", "--yes").exit_code == 0
    assert [a["name"] for a in tomllib.loads(shared.read_text())["accounts"]] == ["sales", "billing"]
    assert shared.read_text().startswith("# Accounts of the Berlin office")
    assert run_cli(main, "accounts", "remove", "billing", "--yes").exit_code == 0
    assert [a["name"] for a in tomllib.loads(shared.read_text())["accounts"]] == ["sales"]
    assert run_cli(main, "accounts", "remove", "sales", "--yes").exit_code == 0
    assert not shared.exists()
    assert keyring.get_password("mail2ticket", "sales") is None
