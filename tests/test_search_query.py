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
