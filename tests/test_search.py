"""'tickets search': FTS5 over subjects, bodies and sender names, in sync with every import (issue 7.4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.triage_support import deliver, load, mail, run, run_json, sql, write_config


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path)
    deliver(
        cfg,
        mail("Printer jams on floor 2", "Paper gets stuck in tray 3.", sender="Bob Example <bob@example.com>",
             message_id="<p1@customer.example>"),
        mail("Toner low", "The printer says the toner is low.", sender="Carol Jones <carol@example.com>"),
        mail("VPN down", "Cannot reach the VPN since Monday.", sender="Zoë Müller <zoe@example.de>"),
        mail("Invoice question", "Our address changed to Hauptstraße 5.", sender="Dave <dave@corp.example>"),
    )
    return cfg


def found(cfg: Path, query: str, *args: str) -> list[int]:
    return [t["id"] for t in run_json(cfg, "tickets", "search", query, *args)]


def test_search_finds_subjects_bodies_and_sender_names(cfg: Path):
    assert found(cfg, "jams") == [1]  # subject
    assert found(cfg, "tray") == [1]  # body
    assert found(cfg, "Jones") == [2]  # sender name
    assert found(cfg, "nothing-like-this") == []


def test_a_match_in_the_subject_ranks_above_a_match_in_the_body(cfg: Path):
    # "printer" is in #1's subject and only in #2's body.
    assert found(cfg, "printer") == [1, 2]


def test_json_prints_ticket_objects_with_the_matching_snippet(cfg: Path):
    [ticket] = run_json(cfg, "tickets", "search", "stuck")
    assert ticket["id"] == 1 and ticket["subject"] == "Printer jams on floor 2"
    assert ticket["requester"] == "bob@example.com" and ticket["status"] == "open"
    assert ticket["message_count"] == 1 and ticket["overdue"] is False
    assert ticket["snippet"] == "Paper gets [stuck] in tray 3."
    assert isinstance(ticket["rank"], float)


def test_the_table_shows_the_snippet_when_piped(cfg: Path):
    result = run(cfg, "tickets", "search", "VPN")
    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.split() == ["id", "status", "priority", "account", "requester", "subject", "updated", "match"]
    assert row.startswith("#3") and "[VPN]" in row


def test_every_import_is_searchable_at_once_follow_ups_included(cfg: Path):
    assert found(cfg, "firmware") == []
    deliver(cfg, mail("Re: Printer jams on floor 2", "Updated the firmware, still jams.",
                      sender="bob@example.com", in_reply_to="<p1@customer.example>"))
    [ticket] = run_json(cfg, "tickets", "search", "firmware")
    assert ticket["id"] == 1 and ticket["message_count"] == 2
    assert "[firmware]" in ticket["snippet"]


def test_accents_and_case_do_not_matter(cfg: Path):
    assert found(cfg, "zoe") == [3]
    assert found(cfg, "MULLER") == [3]
    assert found(cfg, "hauptstrasse") == []  # ß is a letter of its own, not "ss"
    assert found(cfg, "Hauptstraße") == [4]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('"toner is low"', [2]),  # a phrase
        ("toner OR VPN", None),  # either word
        ("prin*", [1, 2]),  # a prefix
        ("subject:printer", [1]),  # one column
        ("printer NOT toner", [1]),
        ("from:dave", [4]),  # the sender, name or address
        ("from:example.com body:low", [2]),
    ],
)
def test_fts5_query_syntax_works(cfg: Path, query: str, expected):
    got = found(cfg, query)
    if expected is None:
        assert sorted(got) == [2, 3]
    else:
        assert got == expected


@pytest.mark.parametrize("query", ["bob@example.com", "tray 3.", "floor-2", "(printer", 'toner"', "VPN:"])
def test_text_that_is_not_query_syntax_is_searched_as_plain_words(cfg: Path, query: str):
    result = run(cfg, "tickets", "search", query, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() != "[]"


def test_search_filters_by_status_and_account_and_pages(cfg: Path):
    sql(cfg, "update tickets set status = 'closed' where id = 2")
    assert found(cfg, "printer") == [1, 2]  # closed tickets are found by default
    assert found(cfg, "printer", "--status", "open") == [1]
    assert found(cfg, "printer", "--account", "sales") == []
    assert found(cfg, "printer", "--limit", "1") == [1]
    assert found(cfg, "printer", "--limit", "1", "--offset", "1") == [2]


def test_no_match_prints_nothing_and_exits_0(cfg: Path):
    result = run(cfg, "tickets", "search", "kangaroo")
    assert (result.exit_code, result.stdout) == (0, "")


def test_deleting_a_message_removes_it_from_the_index(cfg: Path):
    sql(cfg, "delete from attachments where message = 3")
    sql(cfg, "update sources set message = null where message = 3")
    sql(cfg, "update outbox set message = null where message = 3")
    sql(cfg, "delete from messages where id = 3")
    assert found(cfg, "VPN") == []


@pytest.mark.sqlite_only("SQLite's migrations and FTS5 table (PostgreSQL: tests/test_search_postgresql.py)")
def test_an_existing_database_is_indexed_when_it_is_upgraded(tmp_path: Path):
    from mail2ticket.tickets.db import open_db
    from mail2ticket.tickets.migrations import migrations

    cfg = write_config(tmp_path)
    # A database from before search existed: migrated only up to m301_search, with mail in it.
    from sqlite_utils import Database

    old = Database(tmp_path / "tickets.db")
    migrations.apply(old, stop_before="m301_search")
    assert not old["messages_fts"].exists()
    old["tickets"].insert({"id": 7, "account": "support", "subject": "Old printer", "status": "open",
                           "priority": "normal", "created_at": "2020-01-01T00:00:00Z",
                           "updated_at": "2020-01-01T00:00:00Z"})
    old["messages"].insert({"id": 70, "ticket_id": 7, "direction": "in", "account": "support",
                            "subject": "Old printer", "from_name": "Ann", "body_text": "The old fax is dead.",
                            "received_at": "2020-01-01T00:00:00Z"})
    old.close()
    open_db(tmp_path / "tickets.db").close()  # applies the pending migrations
    assert found(cfg, "fax") == [7]


@pytest.mark.sqlite_only("sqlite-utils' table rebuild (PostgreSQL: tests/test_search_postgresql.py)")
def test_a_table_rebuild_that_drops_the_triggers_is_repaired_by_the_next_poll(cfg: Path):
    from mail2ticket.service.jobs import poll_once

    conf, db = load(cfg)
    try:
        db["messages"].transform()  # what a future migration may do: the triggers are dropped
        assert not {t.name for t in db["messages"].triggers}
        poll_once(conf, db, [], run_poll=None)
        assert {t.name for t in db["messages"].triggers} == {"messages_ai", "messages_ad", "messages_au"}
    finally:
        db.close()
    deliver(cfg, mail("Scanner offline", "The scanner shows error 42."))
    assert found(cfg, "scanner") == [5]


# --- the newest matches only (docs/triage.md#search) ---------------------------------------------
# 60 tickets of one message each (ids 5-64 after the fixture's 4): 'printer' in the subject of the
# 10 oldest (the best rank) and in the body of every third; 'toner' in the body of every twelfth.


@pytest.fixture
def many(cfg: Path) -> Path:
    mails = []
    for i in range(60):
        subject = f"Printer {i}" if i < 10 else f"Question {i}"
        words = ["printer"] if i % 3 == 0 else ["nothing", "here"]
        words += ["toner"] if i % 12 == 0 else []
        mails.append(mail(subject, " ".join(["Please", *words, "thanks"]), message_id=f"<many{i}@customer.example>"))
    deliver(cfg, *mails)
    return cfg


def newest_matches(cfg: Path, word: str, n: int, status: str | None = None) -> set[int]:
    """The ids of the newest ``n`` messages holding ``word`` (of tickets with ``status``), computed
    here from the stored text, not by the index; "subject:word" in the subject only."""
    column, _, word = word.rpartition(":")
    rows = sql(cfg, "select m.id, m.subject, m.body_text, t.status from messages m "
                    "join tickets t on t.id = m.ticket_id order by m.id desc")
    ids = [mid for mid, subject, body, st in rows
           if word in (subject if column else f"{subject} {body}").lower().split()
           and (status is None or st == status)]
    return set(ids[:n])


@pytest.mark.parametrize(("query", "word", "newest"), [
    ("printer", "printer", 5),      # every third message: the newest window alone
    ("printer", "printer", 40),     # more than there are: every match
    ("subject:printer", "subject:printer", 3),  # the 10 oldest only: nothing in the newest window
    ("toner", "toner", 3),          # one in twelve: a second window, sized by the first
    ("toner", "toner", 1),
])
def test_a_search_ranks_only_the_newest_matches(many: Path, query: str, word: str, newest: int):
    from mail2ticket.tickets.search import search

    expected = newest_matches(many, word, newest)
    conf, db = load(many)
    try:
        rows = search(db, query, limit=100, newest=newest)
    finally:
        db.close()
    assert {r["matched_message"] for r in rows} == expected
    assert len(rows) == len(expected)  # one message per ticket here


def test_without_the_bound_the_best_match_is_older(many: Path):
    from mail2ticket.tickets.search import NEWEST, search

    conf, db = load(many)
    try:
        best_of_all = search(db, "printer", limit=3)
        best_of_newest = search(db, "printer", limit=3, newest=5)
    finally:
        db.close()
    assert NEWEST >= 1000
    assert all(r["subject"].startswith(("Printer", "Re: Printer")) for r in best_of_all)  # the subject counts most
    assert all(r["subject"].startswith("Question") for r in best_of_newest)


def test_the_bound_counts_matches_of_tickets_that_pass_the_filters(many: Path):
    from mail2ticket.tickets.search import search

    # The newest printer tickets closed: the newest 4 open ones are older.
    newest_ids = sorted(newest_matches(many, "printer", 6), reverse=True)
    sql(many, f"update tickets set status = 'closed' where id in (select ticket_id from messages "
              f"where id in ({','.join(str(i) for i in newest_ids)}))")
    expected = newest_matches(many, "printer", 4, status="open")
    assert not expected & set(newest_ids)
    conf, db = load(many)
    try:
        rows = search(db, "printer", limit=100, newest=4, status="open")
    finally:
        db.close()
    assert {r["matched_message"] for r in rows} == expected
