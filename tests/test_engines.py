"""Every test file is classified by storage engine (tests/engines.py), so CI's PostgreSQL run
cannot miss a storage-dependent file silently, and .ci/run, the README and the lists agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests import engines

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# What a test file uses when it opens mail2ticket's store: the helpers and fixtures that give it a
# database, open_db, the SQLite file's default name, the commands that read or write tickets.
STORE_SIGNS = re.compile(
    r"(?<![.\w])(Desk|open_db|open_store|fresh_database|start_daemon|DaemonProcess|all_tickets|status_json|"
    r"accounts_status|rows|connect)\(|\b(desk|make_desk|pg_url|postgres_server)\b\s*[,):]|m2t\.db|triage_support|"
    r"\b(run_cli|command|invoke)\((?:[^()]|\([^()]*\))*?"
    r"""["'](poll|ingest|tickets|outbox|quarantine|reply|close|reopen|status|run|reparse|hooks)["']"""
)


def _lists() -> dict[str, list[str]]:
    return {
        "BOTH_ENGINES": list(engines.BOTH_ENGINES),
        "POSTGRESQL_OUTSIDE_CI": list(engines.POSTGRESQL_OUTSIDE_CI),
        "SQLITE_ONLY": list(engines.SQLITE_ONLY),
        "NOT_YET_ON_POSTGRESQL": list(engines.NOT_YET_ON_POSTGRESQL),
        "POSTGRESQL_ITSELF": list(engines.POSTGRESQL_ITSELF),
        "STORAGE_FREE": list(engines.STORAGE_FREE),
    }


def test_every_test_file_is_in_exactly_one_list_of_tests_engines() -> None:
    files = sorted(p.name for p in TESTS.glob("test_*.py"))
    where: dict[str, list[str]] = {}
    for name, members in _lists().items():
        assert len(members) == len(set(members)), f"{name} names a file twice"
        for member in members:
            where.setdefault(member, []).append(name)
    unlisted = [f for f in files if f not in where]
    assert not unlisted, (
        f"not in tests/engines.py: {unlisted}. A file that opens the store goes in BOTH_ENGINES (run on "
        "PostgreSQL too), or SQLITE_ONLY with its reason; one that never does in STORAGE_FREE")
    assert not set(engines.NOT_YET_ON_POSTGRESQL) & set(engines.BOTH_ENGINES)
    assert not [f for f in where if f not in files], "tests/engines.py names files that do not exist"
    assert {f: w for f, w in where.items() if len(w) > 1} == {}


def test_a_storage_free_file_uses_none_of_the_stores_helpers() -> None:
    uses = {}
    for name in engines.STORAGE_FREE:
        if name == Path(__file__).name:  # its pattern names the signs
            continue
        found = STORE_SIGNS.search((TESTS / name).read_text())
        if found:
            uses[name] = found.group(0)
    assert uses == {}, f"declared STORAGE_FREE in tests/engines.py, but they open the store: {uses}"


def test_the_signs_of_the_store_are_found_in_files_that_open_it() -> None:  # the check above can fail
    for name in ("test_poll.py", "test_reply.py", "test_daemon.py", "test_sla.py", "test_ingest.py"):
        assert STORE_SIGNS.search((TESTS / name).read_text()), name
    assert not STORE_SIGNS.search("def test_parse(tmp_path):\n    assert parse_message(b'') is not None\n")


def test_ci_runs_the_postgresql_list_and_the_reasons_are_said() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^.*MAIL2TICKET_TEST_ENGINE=postgresql \.venv/bin/python -m pytest \|\| status=\$\?$", ci, re.M)
    assert all(reason.strip() for reason in {**engines.SQLITE_ONLY, **engines.NOT_YET_ON_POSTGRESQL,
                                              **engines.POSTGRESQL_OUTSIDE_CI,
                                              **engines.POSTGRESQL_ITSELF,
                                              **engines.STORAGE_FREE}.values())
    printed = subprocess.run([sys.executable, "-m", "tests.engines"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert printed == [f"tests/{name}" for name in engines.BOTH_ENGINES]
    everything = subprocess.run([sys.executable, "-m", "tests.engines", "all"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.split()
    assert everything == printed + [f"tests/{name}" for name in engines.POSTGRESQL_OUTSIDE_CI]
