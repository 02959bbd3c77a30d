"""'tickets list/count/show/assign/priority/tag/note' from the shell (issue 7, points 2, 3 and 6)."""

from __future__ import annotations

import csv
import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres import TEST_PASSWORD, engine_under_test
from tests.ptys import read_all
from tests.triage_support import deliver, load, mail, run, run_json, sql, write_config

INTERFACE_FIELDS = {
    "id": int, "subject": str, "requester": str, "status": str, "priority": str, "account": str,
    "created_at": str, "updated_at": str, "message_count": int, "incoming_count": int, "overdue": bool,
}
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def desk(cfg: Path) -> Path:
    """Five tickets: #1 Printer (bob, support), #2 VPN (carol@corp, sales), #3 Invoice (dave@corp),
    #4 Laptop (erin), #5 Closed matter (bob, closed). #1 has a follow-up."""
    first = mail("Printer broken", sender="Bob Example <bob@example.com>", message_id="<p1@customer.example>")
    deliver(cfg, first)
    deliver(cfg, mail("VPN down", "Cannot connect to the VPN.", sender="Carol <carol@corp.example>"),
            account="sales")
    deliver(
        cfg,
        mail("Invoice 2026-17 wrong", "The invoice total is wrong.", sender="Dave <dave@corp.example>"),
        mail("Laptop screen flickers", sender="Erin <erin@example.org>"),
        mail("Closed matter", sender="bob@example.com"),
        mail("Re: Printer broken", "Still broken.", sender="bob@example.com", in_reply_to="<p1@customer.example>"),
    )
    sql(cfg, "update tickets set status = 'closed', closed_at = updated_at where id = 5")
    # A history spread over January 2026 (the import stamps 'now'): as a sysadmin would see it.
    for ticket_id, day in [(1, "05"), (2, "10"), (3, "15"), (4, "20"), (5, "25")]:
        sql(cfg, "update tickets set created_at = ?, updated_at = ? where id = ?",
            [f"2026-01-{day}T10:00:00Z", f"2026-01-{day}T12:00:00Z", ticket_id])
    return cfg


def ids(cfg: Path, *args: str) -> list[int]:
    return [t["id"] for t in run_json(cfg, "tickets", "list", *args)]


def test_list_json_keeps_every_field_of_the_interface_with_its_type(desk: Path):
    tickets = run_json(desk, "tickets", "list", "--status", "all")
    assert len(tickets) == 5
    for t in tickets:
        for name, kind in INTERFACE_FIELDS.items():
            assert isinstance(t[name], kind), (name, t[name])
        assert ISO_UTC.match(t["created_at"]) and ISO_UTC.match(t["updated_at"])
    printer = next(t for t in tickets if t["id"] == 1)
    assert printer["requester"] == "bob@example.com"
    assert (printer["message_count"], printer["incoming_count"]) == (2, 2)
    assert printer["tags"] == [] and printer["assignee"] is None


def test_list_hides_closed_tickets_unless_asked_and_sorts_newest_activity_first(desk: Path):
    assert ids(desk) == [4, 3, 2, 1]
    assert ids(desk, "--status", "all") == [5, 4, 3, 2, 1]
    assert ids(desk, "--status", "closed") == [5]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--account", "sales"], [2]),
        (["--account", "sales", "--account", "support"], [4, 3, 2, 1]),
        (["--requester", "bob@example.com"], [1]),
        (["--requester", "BOB@example.com", "--status", "all"], [5, 1]),
        (["--requester", "@corp.example"], [3, 2]),
        (["--since", "2026-01-10", "--until", "2026-01-15"], [3, 2]),
        (["--since", "2026-01-16"], [4]),
        (["--updated-since", "2026-01-15T11:00:00Z", "--updated-until", "2026-01-20"], [4, 3]),
    ],
)
def test_list_filters_combine(desk: Path, args: list[str], expected: list[int]):
    assert ids(desk, *args) == expected


def test_list_filters_by_priority_assignee_and_tags_set_from_the_shell(desk: Path):
    assert run(desk, "tickets", "priority", "3", "urgent").exit_code == 0
    assert run(desk, "tickets", "priority", "4", "high").exit_code == 0
    assert run(desk, "tickets", "assign", "3", "alice").exit_code == 0
    assert run(desk, "tickets", "tag", "3", "billing", "VIP").exit_code == 0
    assert run(desk, "tickets", "tag", "2", "vip").exit_code == 0
    assert ids(desk, "--priority", "urgent") == [3]
    assert sorted(ids(desk, "--priority", "urgent", "--priority", "high")) == [3, 4]
    assert ids(desk, "--assignee", "alice") == [3]
    assert sorted(ids(desk, "--unassigned")) == [1, 2, 4]
    assert sorted(ids(desk, "--tag", "vip")) == [2, 3]
    assert ids(desk, "--tag", "vip", "--tag", "billing") == [3]
    assert ids(desk, "--tag", "nosuchtag") == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sort", "created"], [4, 3, 2, 1]),
        (["--sort", "created", "--reverse"], [1, 2, 3, 4]),
        (["--sort", "id"], [1, 2, 3, 4]),
        (["--sort", "priority"], [3, 4, 2, 1]),
    ],
)
def test_list_sorts(desk: Path, args: list[str], expected: list[int]):
    run(desk, "tickets", "priority", "3", "urgent")
    run(desk, "tickets", "priority", "4", "high")
    run(desk, "tickets", "priority", "1", "low")
    sql(desk, "update tickets set updated_at = '2026-01-01T00:00:00Z'")  # priority ties: by updated, id
    got = ids(desk, *args)
    if args[1] == "priority":
        assert got[:2] == [3, 4] and got[-1] == 1
    else:
        assert got == expected


def test_limit_and_offset_page_through_the_listing(desk: Path):
    assert ids(desk, "--status", "all", "--limit", "2") == [5, 4]
    assert ids(desk, "--status", "all", "--limit", "2", "--offset", "2") == [3, 2]
    assert ids(desk, "--status", "all", "--limit", "2", "--offset", "4") == [1]
    assert ids(desk, "--status", "all", "--offset", "3") == [2, 1]


def test_csv_has_a_header_row_and_iso_utc_times(desk: Path):
    run(desk, "tickets", "tag", "1", "hardware", "printer")
    result = run(desk, "tickets", "list", "--status", "all", "--sort", "id", "--csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    printer = rows[0]
    assert printer["subject"] == "Printer broken" and printer["requester"] == "bob@example.com"
    assert printer["tags"] == "hardware printer" and printer["overdue"] == "false"
    assert printer["message_count"] == "2"
    assert printer["created_at"] == "2026-01-05T10:00:00Z"


def test_piped_listing_is_aligned_plain_text_with_iso_times(desk: Path):
    result = run(desk, "tickets", "list")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "status", "priority", "due", "account", "requester", "assignee",
                                "subject", "tags", "msgs", "updated"]
    assert "\x1b[" not in result.stdout
    subject_col = lines[0].index("subject")
    assert [line[subject_col:].split("  ")[0] for line in lines[1:]] == [
        "Laptop screen flickers", "Invoice 2026-17 wrong", "VPN down", "Printer broken"]
    assert "2026-01-20T12:00:00Z" in lines[1]


def test_count_uses_the_same_filters_and_counts_per_value(desk: Path):
    run(desk, "tickets", "assign", "1", "alice")
    assert run(desk, "tickets", "count").stdout.strip() == "4"
    assert run(desk, "tickets", "count", "--status", "all").stdout.strip() == "5"
    assert run(desk, "tickets", "count", "--requester", "@corp.example").stdout.strip() == "2"
    assert run_json(desk, "tickets", "count", "--overdue") == {"count": 0}
    by_status = run_json(desk, "tickets", "count", "--status", "all", "--by", "status")
    assert {r["status"]: r["count"] for r in by_status} == {"open": 4, "closed": 1}
    by_assignee = run_json(desk, "tickets", "count", "--by", "assignee")
    assert {r["assignee"]: r["count"] for r in by_assignee} == {None: 3, "alice": 1}


def test_assign_priority_tag_and_note_are_each_an_event_shown_by_show(desk: Path):
    assert run(desk, "tickets", "assign", "1", "alice").stdout == "Ticket #1 assigned to alice.\n"
    assert run(desk, "tickets", "priority", "1", "high").exit_code == 0
    assert run(desk, "tickets", "tag", "1", "hardware", "floor-2").exit_code == 0
    assert run(desk, "tickets", "tag", "1", "floor-2", "--remove").exit_code == 0
    assert run(desk, "tickets", "note", "1", "--message", "Toner ordered.\nArrives Friday.").exit_code == 0
    assert run(desk, "tickets", "assign", "1", "--unassign").exit_code == 0
    ticket = run_json(desk, "tickets", "show", "1")
    assert ticket["priority"] == "high" and ticket["tags"] == ["hardware"] and ticket["assignee"] is None
    history = [(e["kind"], e["detail"]) for e in ticket["events"] if e["actor"] != "system"]
    assert history == [
        ("assigned", "to alice"),
        ("priority", "normal -> high"),
        ("tagged", "hardware, floor-2"),
        ("untagged", "floor-2"),
        ("note", "Toner ordered.\nArrives Friday."),
        ("assigned", "unassigned (was alice)"),
    ]
    text = run(desk, "tickets", "show", "1").stdout
    assert "Priority: high" in text and "Tags: hardware" in text
    assert "priority" in text and "normal -> high" in text
    assert "      Toner ordered.\n      Arrives Friday." in text


def test_a_note_is_internal_and_never_mailed(desk: Path):
    before = sql(desk, "select count(*) from outbox")[0][0]
    result = run(desk, "tickets", "note", "2", "--file", "-", input="Customer is on holiday until May.\n")
    assert result.exit_code == 0
    assert sql(desk, "select count(*) from outbox")[0][0] == before
    ticket = run_json(desk, "tickets", "show", "2")
    assert ticket["message_count"] == 1
    assert all("holiday" not in m["body_text"] for m in ticket["messages"])
    assert ticket["events"][-1]["kind"] == "note"


def test_changing_nothing_says_so_and_records_no_event(desk: Path):
    run(desk, "tickets", "assign", "1", "alice")
    events = len(run_json(desk, "tickets", "show", "1")["events"])
    assert "already" in run(desk, "tickets", "assign", "1", "alice").stdout
    assert "already" in run(desk, "tickets", "priority", "1", "normal").stdout
    assert len(run_json(desk, "tickets", "show", "1")["events"]) == events


@pytest.mark.parametrize(
    "args",
    [["tickets", "assign", "99", "alice"], ["tickets", "priority", "99", "high"],
     ["tickets", "tag", "99", "x"], ["tickets", "note", "99", "-m", "x"], ["tickets", "show", "99"]],
)
def test_an_unknown_ticket_is_one_line_on_stderr_and_exit_1(desk: Path, args: list[str]):
    result = run(desk, *args)
    assert result.exit_code == 1
    # Commands that change several tickets at once also say that none was changed.
    changed = "; nothing was changed" if args[1] in ("assign", "priority", "tag") else ""
    assert result.stderr.strip().splitlines() == [
        f"Error: no ticket #99{changed} (see 'mail2ticket tickets list --status all')"
    ]


def test_a_bad_date_is_a_usage_error(desk: Path):
    result = run(desk, "tickets", "list", "--since", "last tuesday")
    assert result.exit_code == 2
    assert "is not a date or time" in result.stderr


# --- on a terminal: a rich table with colour, local times; NO_COLOR honoured ----------------------


def _run_on_terminal(cfg: Path, *args: str, env_extra: dict[str, str] | None = None) -> str:
    """Run the installed CLI with stdout on a real pseudo-terminal; return what it printed."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "TZ": "America/New_York"}
    env.pop("NO_COLOR", None)
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, "-m", "mail2ticket", "--config", str(cfg), *args],
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    output = read_all(master)
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read().decode()
    return output.decode()


def test_terminal_table_colours_priority_and_overdue_and_shows_local_time(desk: Path):
    run(desk, "tickets", "priority", "3", "urgent")
    sql(desk, "update tickets set subject = '[ticket] a [/] b', due_response_at = '2026-01-15T12:00:00Z', "
              "overdue = 1 where id = 3")
    out = _run_on_terminal(desk, "tickets", "list")
    assert "\x1b[1;31murgent" in out  # bold red
    assert "\x1b[1;31mOVERDUE 2026-01-15 07:00" in out  # local time (New York), red
    assert "[ticket] a [/] b" in out  # a subject is text, never markup
    assert "2026-01-20 07:00" in out  # 'updated' in local time
    plain = _run_on_terminal(desk, "tickets", "list", env_extra={"NO_COLOR": "1"})
    assert "urgent" in plain and "\x1b[1;31m" not in plain


def test_terminal_listing_pages_and_says_how_to_see_more(cfg: Path):
    deliver(cfg, *[mail(f"Question {n}") for n in range(55)])
    out = _run_on_terminal(cfg, "tickets", "list")
    assert "Question 54" in out and "Question 4 " not in out
    assert "Showing 1-50 of 55: see more with --offset 50, or all with --limit 0." in out


# --- start-up: a command imports only what it needs ----------------------------------------------


def _imported(*args: str, cfg: Path, env: dict | None = None) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mail2ticket", "--config", str(cfg), *args],
        capture_output=True, text=True, check=True, env=env,
    )
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def _password_chain_modules() -> set[str]:
    """On PostgreSQL every command asks the keyring for the database's password first
    (docs/storage.md; the tests keep it in a file keyring), and importlib.metadata, which keyring
    and psycopg-binary (its version) load, loads email.parser: the price of the password chain and
    of the driver there, not a mail library loaded by mistake. Without a keyring (the headless
    unit's backend) keyring is not loaded: test_a_triage_command_loads_neither_..."""
    return {"keyring", "email.parser"} if engine_under_test() == "postgresql" else set()


def test_listing_from_a_script_does_not_import_rich_or_the_mail_libraries(desk: Path):
    modules = _imported("tickets", "list", "--status", "all", cfg=desk)
    heavy = {"rich", "imapclient", "keyring", "charset_normalizer", "schedule", "smtplib", "email.parser"}
    assert not (heavy - _password_chain_modules()) & modules, heavy & modules
    help_modules = _imported("tickets", "list", "--help", cfg=desk)
    assert not ({"sqlite_utils", "sqlite3"} | heavy) & help_modules


def test_a_triage_command_loads_neither_the_keyring_nor_the_other_engine_nor_the_hooks(desk: Path, tmp_path: Path):
    """The fixed cost of every command (issue 17.7). With the keyring backend of a headless
    server's unit (examples/mail2ticket.service: keyring.backends.fail.Keyring) and, on
    PostgreSQL, the password in the systemd credential 'database', no command imports keyring
    (that backend never holds a secret: the chain goes on to the credential without it). The
    other engine's library is never loaded (sqlite-utils on PostgreSQL, psycopg on SQLite). A
    command that only reads tickets does not record the [[hooks]] (outgoing/hooks), and 'tickets
    show' loads neither the mail composer nor the parser for its failing addresses; the password
    chain does not load the attachment store."""
    env = dict(os.environ, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    env.pop("CREDENTIALS_DIRECTORY", None)
    never = {"keyring", "rich", "imapclient", "smtplib", "mail2ticket.outgoing.hooks", "mail2ticket.outgoing.compose",
             "mail2ticket.parse.autoreply", "mail2ticket.intake.importer"}
    if engine_under_test() == "postgresql":
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "database").write_text(TEST_PASSWORD + "\n")
        env["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
        never |= {"sqlite_utils", "sqlite_fts4"}
    else:
        never |= {"psycopg", "email.parser"}
    for args in (("tickets", "list", "--status", "all"), ("tickets", "count"), ("tickets", "show", "1"),
                 ("tickets", "search", "printer")):
        modules = _imported(*args, cfg=desk, env=env)
        assert not never & modules, (args, never & modules)
        # The attachment store is loaded by the commands that show attachments only.
        store = {"mail2ticket.files.attachments", "mail2ticket.files.objectstore"}
        assert args[1] == "show" or not store & modules, (args, store & modules)
    # A command that can make an event still records the hooks first, and still finds its password.
    assert "mail2ticket.outgoing.hooks" in _imported("tickets", "tag", "1", "vip", cfg=desk, env=env)


def test_the_overdue_check_and_status_do_not_load_numpy(desk: Path, tmp_path: Path):
    """sqlite-utils loads numpy and pandas when they are importable unless it is imported through
    tickets/db.import_sqlite_utils: a module that imported it at its top made every 'overdue check'
    0.2 s slower where numpy is installed (issue 16). Stand-in numpy and pandas packages make them
    importable here; the overdue check needs no mail library either (it loads the mail modules
    only to send a notice)."""
    for name in ("numpy", "pandas"):
        (tmp_path / "site" / name).mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text("")

    def imported(*args: str) -> set[str]:
        env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "mail2ticket", "--config", str(desk), *args],
            capture_output=True, text=True, check=True, env=env,
        )
        return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}

    overdue = imported("overdue", "check")
    assert not ({"numpy", "pandas", "imapclient", "smtplib", "email.parser"} - _password_chain_modules()) & overdue, overdue
    assert not {"numpy", "pandas"} & imported("status")


# --- the database is readable without our code (issue 7.7) ---------------------------------------


@pytest.mark.sqlite_only("plain sqlite3 reads the views from the database file")
def test_the_views_show_tickets_overdue_tickets_and_history_to_plain_sqlite(desk: Path):
    import sqlite3

    run(desk, "tickets", "tag", "1", "vip", "hardware")
    run(desk, "tickets", "note", "1", "-m", "Toner ordered.")
    sql(desk, "update tickets set overdue = 1 where id = 3")
    conn = sqlite3.connect(f"file:{desk.parent / 'tickets.db'}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "select subject, requester, tags, message_count, incoming_count, overdue from ticket_list where id = 1"
        ).fetchone()
        assert row == ("Printer broken", "bob@example.com", "hardware vip", 2, 2, 0)
        assert conn.execute("select id, subject from overdue_tickets").fetchall() == [(3, "Invoice 2026-17 wrong")]
        assert conn.execute(
            "select subject, kind, detail from ticket_history where ticket_id = 1 and kind = 'note'"
        ).fetchall() == [("Printer broken", "note", "Toner ordered.")]
        assert conn.execute("select count(*) from ticket_list").fetchone()[0] == 5
    finally:
        conn.close()


@pytest.mark.sqlite_only("the names of a new SQLite file's tables (FTS5's own among them)")
def test_docs_name_every_table_and_view_of_the_database(tmp_path: Path):
    from mail2ticket.tickets.db import open_db

    db = open_db(tmp_path / "fresh.db")
    names = [n for n in db.table_names() if not n.startswith("messages_fts_")] + db.view_names()
    db.close()
    docs = (Path(__file__).resolve().parent.parent / "docs" / "triage.md").read_text()
    missing = [n for n in names if f"**`{n}`**" not in docs]
    assert not missing, f"docs/triage.md does not describe: {missing}"


@pytest.mark.sqlite_only("benchmarks/bench_triage builds a SQLite database")
def test_the_benchmark_builds_a_small_database_and_times_every_command(tmp_path: Path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_triage.py"
    result = subprocess.run(
        [sys.executable, str(script), "--tickets", "300", "--runs", "1", "--dir", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Built 300 tickets" in result.stdout
    timed = [line for line in result.stdout.splitlines() if line.rstrip().endswith(tuple("0123456789"))
             and "s " in line]
    assert len(timed) >= 25, result.stdout
    assert "exit" not in result.stderr, result.stderr


# --- the same order on both engines, pages included (issue 17 point 7) ---------------------------


@pytest.mark.parametrize("sort", ["updated", "created", "id", "priority", "due", "date"])
def test_every_page_is_its_slice_of_the_whole_listing_in_every_order(desk: Path, sort: str):
    # A page is found by its ids first, then read (tickets/db.list_tickets): the same tickets in
    # the same order as the whole listing, cut; ties (same time, same priority) broken by id.
    run(desk, "tickets", "priority", "3", "urgent")
    run(desk, "tickets", "priority", "2", "urgent")
    sql(desk, "update tickets set updated_at = '2026-01-01T00:00:00Z' where id in (2, 3, 4)")
    sql(desk, "update tickets set due_resolution_at = '2026-02-01T00:00:00Z' where id in (1, 4)")
    for filters in (["--status", "all"], ["--requester", "@corp.example"]):
        for reverse in ([], ["--reverse"]):
            args = [*filters, "--sort", sort, *reverse]
            whole = ids(desk, *args)
            assert len(whole) == (5 if filters[0] == "--status" else 2)
            pages = [ids(desk, *args, "--limit", "2", "--offset", str(n)) for n in range(0, len(whole), 2)]
            assert [i for page in pages for i in page] == whole, (args, pages)
            assert ids(desk, *args, "--offset", "1") == whole[1:]


def test_a_ticket_without_mail_comes_last_by_date_and_first_reversed_on_both_engines(desk: Path):
    # SQLite sorts NULL before every value, PostgreSQL after: the order says where it goes.
    sql(desk, "insert into tickets (account, subject, status, priority, created_at, updated_at) values "
              "('support', 'No mail yet', 'open', 'normal', '2026-01-30T10:00:00Z', '2026-01-30T10:00:00Z')")
    newest_first = ids(desk, "--sort", "date")
    assert newest_first[-1] == 6 and sorted(newest_first) == [1, 2, 3, 4, 6]
    assert ids(desk, "--sort", "date", "--reverse") == [6, *reversed(newest_first[:-1])]
    assert ids(desk, "--sort", "date", "--limit", "1", "--offset", "4") == [6]


def test_count_by_lists_ties_in_the_order_of_the_value_none_first_on_both_engines(desk: Path):
    for ticket_id, who in ((1, "bob"), (2, "carol"), (3, "alice")):
        assert run(desk, "tickets", "assign", str(ticket_id), who).exit_code == 0
    rows = run_json(desk, "tickets", "count", "--by", "assignee")
    assert [(r["assignee"], r["count"]) for r in rows] == [(None, 1), ("alice", 1), ("bob", 1), ("carol", 1)]
    run(desk, "tickets", "assign", "4", "carol")
    rows = run_json(desk, "tickets", "count", "--by", "assignee")
    assert [(r["assignee"], r["count"]) for r in rows] == [("carol", 2), ("alice", 1), ("bob", 1)]


def test_a_table_lists_brief_ticket_objects_that_show_the_same(desk: Path):
    # The whole open queue piped is 16,000 rows at a million tickets: the table reads the tickets
    # without the two lookups per ticket it does not show (docs/scaling.md).
    from mail2ticket.cli.tickets import _ticket_rows
    from mail2ticket.tickets.db import list_tickets

    run(desk, "tickets", "tag", "2", "vip")
    conf, db = load(desk)
    try:
        full = list_tickets(db, status="all")
        brief = list_tickets(db, status="all", brief=True)
    finally:
        db.close()
    assert [t["id"] for t in brief] == [t["id"] for t in full] and len(full) == 5
    for f, b in zip(full, brief, strict=True):
        assert set(f) - set(b) == {"incoming_count", "first_message_at"}
        assert b == {k: v for k, v in f.items() if k in b}
    assert _ticket_rows(brief) == _ticket_rows(full)


def test_the_triage_commands_end_without_teardown_and_lose_no_output(desk: Path):
    # tickets list/count/show/search end with os._exit once their output is flushed (cli.main:
    # the interpreter's teardown cost 45 ms of each, docs/scaling.md): each prints all of it,
    # piped, with its exit code, in a process of its own as a user runs it.
    def process(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mail2ticket", "--config", str(desk), *args],
                              capture_output=True, text=True)

    for args in (["tickets", "list", "--status", "all"], ["tickets", "list", "--status", "all", "--json"],
                 ["tickets", "count", "--by", "status"], ["tickets", "show", "2", "--json"],
                 ["tickets", "search", "printer"]):
        result, expected = process(*args), run(desk, *args)
        assert (result.returncode, result.stdout, result.stderr) == (0, expected.stdout, ""), args
    missing = process("tickets", "show", "999")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == "Error: no ticket #999 (see 'mail2ticket tickets list --status all')\n"
    # Cut short by the reader ('| head'): click's exit code for a broken pipe, no traceback.
    cut = subprocess.run(f"{sys.executable} -m mail2ticket --config {desk} tickets list --status all --json | head -c 10",
                         shell=True, capture_output=True, text=True)
    assert cut.stdout == '[\n  {\n    ' and "Traceback" not in cut.stderr


def test_a_lost_database_connection_no_caller_caught_is_a_temporary_failure(desk: Path, monkeypatch):
    # The full kill test cut a daemon's database connection at its start: the PgTransientError
    # reached the command line as "unexpected" and the daemon exited 1 (systemd's
    # Restart=on-failure starts it again either way, but 1 says "a bug", and the MTA of pipe mode
    # bounces on 1 where it retries on 75). Now exit 75 and one line (catalogue 128).
    from mail2ticket.tickets import db as tickets_db
    from mail2ticket.tickets.engine import PgTransientError

    def cut(*args, **kwargs):
        raise PgTransientError("database: consuming input failed: server closed the connection unexpectedly")

    monkeypatch.setattr(tickets_db, "count_tickets", cut)
    result = run(desk, "tickets", "count")
    assert result.exit_code == 75
    assert result.stderr == ("Error: database: consuming input failed: server closed the connection unexpectedly "
                             "(check the PostgreSQL server and the connection, then try again)\n")
