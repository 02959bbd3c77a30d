"""FTS5's query syntax and snippets without FTS5 (tickets/fts_query.py, used on PostgreSQL),
checked against SQLite's own FTS5 on the same text: the same queries are refused, the same words
are marked in the same window (catalogue 106)."""

from __future__ import annotations

import random
import sqlite3

import pytest
from sqlite_utils import Database

from mail2ticket.tickets import fts, fts_pg, fts_query
from mail2ticket.tickets.search import _ALIASES


@pytest.fixture(scope="module")
def fts5() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("create table messages (id integer primary key, ticket_id int, subject text, "
                 "from_name text, from_address text, body_text text)")
    fts.install(Database(conn))
    return conn


def _fts5_accepts(conn: sqlite3.Connection, query: str) -> bool:
    for pattern, column in _ALIASES:
        query = pattern.sub(column, query)
    try:
        conn.execute("select rowid from messages_fts where messages_fts match ?", [query]).fetchall()
    except sqlite3.OperationalError:
        return False
    return True


@pytest.mark.parametrize("query", [
    "printer", "printer toner", '"paper jam"', "prin*", '"paper ja"*', "x * ", "one + two", '"a ""b"" c"',
    "a OR b", "a AND b", "a NOT b", "a b NOT c OR d", "(a OR b) AND c", "subject:a", "Subject:a",
    "from:dave", "body:toner", "-subject:a", "{subject body_text}:a", "subject:(a OR b)",
    "NEAR(a b)", "NEAR(a b, 3)", "NEAR", "x NEAR y", "^a", "Zoë", "“quoted”", "a_b", '""', "a \"\"",
    # refused by FTS5 (then searched as plain words):
    "bob@example.com", "tray 3.", "floor-2", "(printer", 'toner"', "VPN:", "disk:full", "printer:stuck",
    "NOT x", "x NOT", "OR x", "x OR", "x AND NOT y", "*", "+x", "x +", "(x) y", "y (x)", "near(x y)",
    "a:b:x", "-x", "x,y", "NEAR(a b, c)", "{sender}:x", "{from}:x", "x ^",
])
def test_the_parser_refuses_exactly_what_fts5_refuses(fts5: sqlite3.Connection, query: str) -> None:
    try:
        fts_query.parse(query)
        parsed = True
    except fts_query.QuerySyntaxError:
        parsed = False
    assert parsed == _fts5_accepts(fts5, query)


@pytest.mark.parametrize(("query", "expected"), [
    ("printer", "'printer'"),
    ("Zoë MÜLLER", "('zoe' & 'muller')"),
    ('"toner is low"', "('toner' <-> 'is' <-> 'low')"),
    ("prin*", "'prin':*"),
    ("subject:printer", "'printer':A"),
    ("from:dave*", "'dave':*BC"),
    ("-subject:x", "'x':BCD"),
    ("a b NOT c OR d", "((('a' & 'b') & !'c') | 'd')"),
    ("NEAR(a b, 1)", "(('a' <1> 'b' | 'a' <2> 'b' | 'b' <1> 'a' | 'b' <2> 'a'))"),
    ("Hauptstraße", "'hauptstraße'"),  # ß is a letter of its own, as in FTS5
    ('"it\'s"', "('it' <-> 's')"),
])
def test_queries_become_tsquery_text(query: str, expected: str) -> None:
    assert fts_pg.tsquery(fts_query.simplify(fts_query.parse(query))) == expected


def test_a_query_of_empty_phrases_matches_nothing_and_one_beside_words_is_ignored() -> None:
    assert fts_query.simplify(fts_query.parse('"" "..."')) is None
    assert fts_pg.tsquery(fts_query.simplify(fts_query.parse('printer ""'))) == "'printer'"


_WORDS = ["printer", "Printer", "toner", "paper", "jam", "tray", "Zoë", "Müller", "straße", "VPN", "disk", "full",
          "error", "28", "floor", "again", "the", "is", "stuck", "low", "Łódź", "ΠΡΙΝΤΕΡ", "x_y", "a"]
_GLUE = [" ", " ", " ", ", ", ". ", ": ", " - ", "\n", "\n\n> ", " (", ") ", "@", "/", " “", "” "]


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_WORDS) + rng.choice(_GLUE) for _ in range(n)).strip()


def test_snippets_mark_the_same_words_in_the_same_window_as_fts5(fts5: sqlite3.Connection) -> None:
    rng = random.Random(1706)
    rows = []
    for i in range(1, 121):
        row = (_text(rng, rng.randint(1, 8)), _text(rng, 2), "x@example.com", _text(rng, rng.choice([3, 12, 40, 90])))
        rows.append(row)
        fts5.execute("insert into messages values (?, ?, ?, ?, ?, ?)", [i, i, *row])
    queries = ["printer", "stuck", "zoe", "MULLER", '"paper jam"', "tray OR toner", "prin*", "subject:printer",
               "body:disk", "error 28", '"the printer"', "lodz", "straße", "x_y", "again NOT floor", "printer paper"]
    compared = 0
    for query in queries:
        tree = fts_query.simplify(fts_query.parse(query))
        phrases = list(fts_query.wanted_phrases(tree))
        sql = ("select rowid, snippet(messages_fts, -1, '[', ']', '…', 16) from messages_fts "
               "where messages_fts match ?")
        for rowid, expected in fts5.execute(sql, [query.replace("body:", "body_text:")]):
            got = fts_query.snippet(rows[rowid - 1], phrases, start="[", end="]")
            assert got == expected, (query, rows[rowid - 1])
            compared += 1
    assert compared > 300


# ------------------------------------------------------------ the same messages on PostgreSQL

_DOCS = [
    ("Printer jams on floor 2", "Bob Example", "bob@example.com", "Paper gets stuck in tray 3."),
    ("Toner low", "Carol Jones", "carol@example.com", "The printer says the toner is low."),
    ("VPN down", "Zoë Müller", "zoe@example.de", "Cannot reach the VPN since Monday."),
    ("Invoice question", "Dave", "dave@corp.example", "Our address changed to Hauptstraße 5."),
    ("Server alert", None, "nagios@mon.example", "The disk is full and the printer is stuck: error 28."),
    ("Øresund Łódź", "ÆBLE", "x@y.z", "ΠΡΙΝΤΕΡ Привет “quoted” floor-2 a_b it's"),
    ("Re: [#12] Paper jam", "Bob Example", "bob@example.com", "> Paper gets stuck\n\nStill stuck; jam again."),
]
_QUERIES = [
    "printer", "jams", "Jones", "zoe", "MULLER", "hauptstrasse", "Hauptstraße", '"toner is low"', "toner OR VPN",
    "prin*", "subject:printer", "printer NOT toner", "from:dave", "from:example.com body:low", "bob@example.com",
    "tray 3.", "floor-2", "(printer", 'toner"', "VPN:", "disk:full", "error:disk full", "oresund", "Øresund",
    "łódź", "lodz", "æble", "ΠΡΙΝΤΕΡ", "привет", "quoted", "a_b", "printer AND stuck OR vpn",
    "printer stuck NOT disk", "-subject:printer", "{subject body_text}:printer", "subject:(printer OR vpn)",
    "NEAR(paper stuck)", "NEAR(printer stuck, 2)", '"printer is"*', "st*", "sender:carol", "body:printer NOT subject:printer",
    '"" printer', "12", "#12", "it's", '"it\'s"', "mon.example", "jam*",
]


def test_postgresql_finds_the_same_messages_as_fts5(pg_url: str) -> None:
    import psycopg

    from mail2ticket.tickets.search import plain_query
    from tests.postgres import TEST_PASSWORD

    lite = sqlite3.connect(":memory:")
    lite.execute("create table messages (id integer primary key, subject text, from_name text, "
                 "from_address text, body_text text)")
    fts.install(Database(lite))
    with psycopg.connect(pg_url, password=TEST_PASSWORD, autocommit=True) as pg:
        # As in tickets/pg_schema.py: text collate "C" (lower() and [[:alnum:]] know ASCII only).
        pg.execute('create table messages (id bigint primary key, subject text collate "C", '
                   'from_name text collate "C", from_address text collate "C", body_text text collate "C")')
        for statement in fts_pg.STATEMENTS:
            pg.execute(statement)
        for i, doc in enumerate(_DOCS, 1):
            lite.execute("insert into messages values (?, ?, ?, ?, ?)", [i, *doc])
            pg.execute("insert into messages values (%s, %s, %s, %s, %s)", [i, *doc])
        pg.execute("update messages set body_text = body_text || ' firmware' where id = 2")
        lite.execute("update messages set body_text = body_text || ' firmware' where id = 2")
        pg.execute("delete from messages where id = 3")
        lite.execute("delete from messages where id = 3")
        for query in [*_QUERIES, "firmware"]:
            if _fts5_accepts(lite, query):
                fts_text = query
                for pattern, column in _ALIASES:
                    fts_text = pattern.sub(column, fts_text)
                tree = fts_query.simplify(fts_query.parse(query))
            else:
                fts_text = plain_query(query)
                tree = fts_query.simplify(fts_query.parse(fts_text))
            expected = sorted(r[0] for r in lite.execute(
                "select rowid from messages_fts where messages_fts match ?", [fts_text])) if fts_text else []
            got = [] if tree is None else sorted(r[0] for r in pg.execute(
                "select id from messages_fts where vector @@ cast(%s as tsquery)", [fts_pg.tsquery(tree)]))
            assert got == expected, query
        # A subject match ranks above a body match (bm25's column weights, ts_rank's here).
        tree = fts_query.parse("printer")
        ranked = [r[0] for r in pg.execute(
            "select f.id from messages_fts f cross join (select cast(%s as tsquery) as q, cast(%s as tsquery) as r) "
            f"query where f.vector @@ query.q order by {fts_pg.RANK}, f.id", [fts_pg.tsquery(tree), fts_pg.rank_query(tree)])]
        assert ranked[0] == 1 and set(ranked) == {1, 2, 5}
