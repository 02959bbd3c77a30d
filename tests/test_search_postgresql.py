"""'tickets search' on PostgreSQL (issue 17.1): what only the PostgreSQL index has to get right,
on the real server the tests start (tests/postgres.py), whichever engine the run tests. The
behaviour both engines share is tests/test_search.py, run on each (catalogue 106, 107)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mail2ticket.accounts.secrets import store_password
from tests.postgres import TEST_PASSWORD
from tests.triage_support import BASE_CONFIG, deliver, load, mail, run, run_json, sql


@pytest.fixture
def cfg(tmp_path: Path, pg_url: str) -> Path:
    store_password("database", TEST_PASSWORD)
    path = tmp_path / "config.toml"
    path.write_text(BASE_CONFIG.replace('database = "tickets.db"', f'database = "{pg_url}"'))
    deliver(path, mail("Printer jams", "Paper gets stuck in tray 3.", sender="Zoë Müller <zoe@example.de>"))
    return path


def found(cfg: Path, query: str) -> list[int]:
    return [t["id"] for t in run_json(cfg, "tickets", "search", query)]


def test_letters_beyond_ascii_are_folded_in_a_database_with_the_c_locale(cfg: Path) -> None:
    # The test server's databases use the C locale, where PostgreSQL's lower() knows ASCII only.
    deliver(cfg, mail("ØRESUND ΣΦΑΛΜΑ ОШИБКА", "Straße ÆBLE"))
    assert sql(cfg, "select datctype from pg_database where datname = current_database()") == [("C",)]
    for query in ("øresund", "σφαλμα", "Σφάλμα", "ошибка", "æble", "STRASSE", "straße"):
        assert found(cfg, query) == ([] if query == "STRASSE" else [2]), query


def test_a_word_longer_than_postgresql_indexes_is_a_one_line_usage_error(cfg: Path) -> None:
    result = run(cfg, "tickets", "search", "printer " + "x" * 3000)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: cannot search for this: a word in it is longer than")
    assert len(result.stderr) < 300  # the query itself is not repeated
    assert found(cfg, "printer") == [1]  # and the next search works


def test_a_body_beyond_what_a_tsvector_holds_is_stored_whole_and_found_by_its_start(cfg: Path) -> None:
    words = [hashlib.sha256(b"%d" % i).hexdigest()[:24] for i in range(50_000)]  # 1.25 MB, all distinct
    body = "\n".join(["zebrastart", *words, "zebraend"])
    [outcome] = deliver(cfg, mail("A log pasted whole", body))
    assert sql(cfg, "select length(body_text) from messages where ticket_id = 2") == [(len(body),)]
    assert found(cfg, "zebrastart") == [2] and found(cfg, "pasted") == [2]
    assert found(cfg, "zebraend") == []  # past the first 100,000 characters (docs/storage.md)


def test_a_search_reads_its_windows_the_two_ways_it_means_to(cfg: Path) -> None:
    from mail2ticket.tickets import fts_pg, fts_query

    tree = fts_query.parse("stuck")
    words = [fts_pg.tsquery(tree), fts_pg.rank_query(tree)]
    conf, db = load(cfg)
    plans = {}
    try:
        # (A window below an id: on a table this small a bitmap of the range alone costs less
        # than ANDing it with the index's, and the planner rightly takes that.)
        for gin, bounds, extra in ((True, (False, True), ""), (False, (True, True), " order by f.id desc limit ?")):
            with db.conn:  # one transaction: the settings hold for the EXPLAIN, as in fts_pg.window
                for setting in fts_pg.WINDOW_SETTINGS[gin]:
                    db.execute(setting)
                params = [*words, *([1] if bounds[0] else []), 100, *([5000] if extra else [])]
                plan = db.execute("explain " + fts_pg.window_sql(*bounds) + extra, params).fetchall()
            plans[gin] = "\n".join(r[0] for r in plan)
    finally:
        db.close()
    # The GIN index's matches, or the range of ids read from the newest down, each message tested.
    assert "Bitmap Index Scan on messages_fts_vector" in plans[True], plans[True]
    assert "Seq Scan" not in plans[True], plans[True]
    assert "Index Scan Backward using messages_fts_pkey" in plans[False], plans[False]
    assert "messages_fts_vector" not in plans[False], plans[False]


def test_messages_stored_before_the_search_step_are_indexed_when_the_schema_is_upgraded(cfg: Path) -> None:
    from mail2ticket.tickets import fts_pg
    from mail2ticket.tickets.pg_schema import PG_MIGRATIONS

    # A database from before search existed: the step undone, a message stored meanwhile.
    [step] = [name for name, statements in PG_MIGRATIONS if statements == fts_pg.SCHEMA]
    sql(cfg, "drop trigger messages_fts_sync on messages")
    sql(cfg, "drop table messages_fts")
    sql(cfg, "drop function messages_fts_sync(), mail2ticket_search_vector(text, text, text, text), "
             "mail2ticket_fold(text)")
    sql(cfg, "delete from m2t_schema where name = ?", [step])
    sql(cfg, "update messages set body_text = 'The old fax is dead.' where id = 1")
    cfg_, db = load(cfg)  # open_store applies the pending step
    db.close()
    assert found(cfg, "fax") == [1]
    deliver(cfg, mail("Scanner offline", "The scanner shows error 42."))
    assert found(cfg, "scanner") == [2]


def test_a_trigger_dropped_by_hand_is_recreated_by_the_next_poll_and_the_index_rebuilt(cfg: Path) -> None:
    from mail2ticket.service.jobs import poll_once

    sql(cfg, "drop trigger messages_fts_sync on messages")
    deliver(cfg, mail("Scanner offline", "The scanner shows error 42."))
    sql(cfg, "delete from attachments where message = 1; update sources set message = null where message = 1; "
             "update outbox set message = null where message = 1; delete from messages where id = 1")
    assert found(cfg, "scanner") == []  # out of step
    assert sql(cfg, "select count(*) from messages_fts") == [(1,)]  # message 1's entry is left
    conf, db = load(cfg)
    try:
        poll_once(conf, db, [], run_poll=None)
    finally:
        db.close()
    assert found(cfg, "scanner") == [2] and found(cfg, "stuck") == []
    assert sql(cfg, "select count(*) from messages_fts") == [(1,)]
    deliver(cfg, mail("Fax", "The fax is dead."))
    assert found(cfg, "fax") == [3]
