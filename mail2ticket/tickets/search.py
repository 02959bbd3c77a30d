"""Full-text search over messages, kept in sync by triggers, ranked, with snippets: SQLite's FTS5
(tickets/fts.py) or PostgreSQL's own (tickets/fts_pg.py), with the same query syntax."""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING

from mail2ticket.tickets import fts_pg, fts_query
from mail2ticket.tickets.db import NOT_CLOSED_SQL, get_tickets
from mail2ticket.tickets.engine import engine_of
from mail2ticket.tickets.fts import FTS_COLUMNS, FTS_TABLE

if TYPE_CHECKING:
    from sqlite_utils import Database

# Marks around matched words in snippets: control characters that mail text never holds.
HIT_START, HIT_END = "\x02", "\x03"


_TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# Column names a query may start a word with (column:word): ours, and the ones people type.
_COLUMNS = {
    "from": "{from_name from_address}",
    "sender": "{from_name from_address}",
    "body": "body_text",
    **{c: c for c in FTS_COLUMNS},
}


def plain_query(text: str) -> str:
    """Text as typed -> an FTS5 query: each word (an address, a path: its parts, in order) must
    appear; "column:word" limits that word to a column (subject, from, body). Any other
    "word:word" ("disk:full", "error:28") is two words, each of which must appear."""
    parts = []
    for chunk in text.split():
        column = None
        pieces = [chunk]
        head, sep, rest = chunk.partition(":")
        if sep and head.lower() in _COLUMNS:
            column, pieces = _COLUMNS[head.lower()], [rest]
        elif sep:
            pieces = chunk.split(":")
        for piece in pieces:
            words = _TOKEN_RE.findall(piece)
            if not words:
                continue
            phrase = '"' + " ".join(words) + '"'
            parts.append(f"{column} : {phrase}" if column else phrase)
    return " ".join(parts)


# Column names people type, as FTS5 column filters: from:dave, body:toner.
_ALIASES = [
    (re.compile(r"(?<![\w{])from\s*:", re.I), "{from_name from_address}:"),
    (re.compile(r"(?<![\w{])body\s*:", re.I), "body_text:"),
]


def _match(db: Database, sql: str, query: str, params: list) -> list[sqlite3.Row | tuple]:
    """Run ``sql`` with the query as FTS5 syntax; if it is not valid syntax, as plain words."""
    fts_query = query
    for pattern, column in _ALIASES:
        fts_query = pattern.sub(column, fts_query)
    try:
        return db.execute(sql, [fts_query, *params]).fetchall()
    except sqlite3.OperationalError as exc:
        # The database's own trouble is raised; anything else is the query's syntax ("no such
        # column: disk" for 'disk:full', a stray quote): then the text is searched as words.
        text = str(exc).lower()
        if not text.startswith(("fts5:", "no such column", "unterminated", "unknown special query")) and any(
            phrase in text for phrase in ("database is locked", "database table is locked", "busy",
                                          "disk i/o", "disk image", "database or disk is full",
                                          "readonly", "no such table")
        ):
            raise
    plain = plain_query(query)
    if not plain:
        return []
    return db.execute(sql, [plain, *params]).fetchall()


def search(
    db: Database,
    query: str,
    *,
    limit: int = 20,
    offset: int = 0,
    status: str | None = "all",
    account: str | None = None,
) -> list[dict]:
    """Tickets whose messages match ``query``, best first: ticket objects plus ``snippet``,
    ``rank`` (lower is better) and ``matched_message`` (the best-matching message's row id).

    ``query`` is FTS5 syntax ("printer AND toner", "subject:invoice", "migrat*", a "quoted phrase");
    text that is not valid syntax (an address, a path) is searched as plain words. On PostgreSQL
    the same syntax is read by tickets/fts_query.py; a query it cannot run is a QueryError.
    """

    if not query.strip():
        return []
    tree = None
    if engine_of(db) == "postgresql":
        tree = _pg_tree(query)  # None: not one word to search for
        if tree is None:
            return []
    where, params = [], []
    if status in (None, "", "active"):
        where.append(NOT_CLOSED_SQL)
    elif status != "all":
        where.append("t.status = ?")
        params.append(status)
    if account:
        where.append("t.account = ?")
        params.append(account)
    best: dict[int, tuple[float, int]] = {}
    wanted = offset + limit
    window = max(50, wanted * 4)
    while True:
        if tree is not None:
            sql = fts_pg.match_sql(where, ranked_first=not where)
            rows = fts_pg.run(db, sql, tree, [*params, window])
        else:
            rows = _fts5_rows(db, query, where, params, window)
        best = {}
        for rowid, rank, ticket_id in rows:
            if ticket_id not in best:
                best[ticket_id] = (rank, rowid)
        if len(best) >= wanted or len(rows) < window:
            break
        window *= 4  # many matches in few tickets: look further down the ranking
    chosen = sorted(best.items(), key=lambda kv: kv[1][0])[offset : offset + limit]
    if not chosen:
        return []
    tickets = {t["id"]: t for t in get_tickets(db, [tid for tid, _ in chosen])}
    out = []
    for ticket_id, (rank, rowid) in chosen:
        ticket = tickets.get(ticket_id)
        if ticket is None:
            continue
        ticket["rank"] = rank
        ticket["matched_message"] = rowid
        ticket["snippet"] = _pg_snippet(db, tree, rowid) if tree is not None else _snippet(db, query, rowid)
        out.append(ticket)
    return out


def _fts5_rows(db: Database, query: str, where: list[str], params: list, window: int) -> list:
    if where:
        # Filters need the ticket of every match: rank them all (still one indexed pass).
        sql = (
            f"select f.rowid, f.rank, m.ticket_id from {FTS_TABLE} f "
            "join messages m on m.id = f.rowid join tickets t on t.id = m.ticket_id "
            f"where {FTS_TABLE} match ? and {' and '.join(where)} order by f.rank limit ?"
        )
        return _match(db, sql, query, [*params, window])
    sql = (
        f"select f.rowid, f.rank, m.ticket_id from (select rowid, rank from {FTS_TABLE} "
        f"where {FTS_TABLE} match ? order by rank limit ?) f join messages m on m.id = f.rowid "
        "order by f.rank"
    )
    return _match(db, sql, query, [window])


def _snippet(db: Database, query: str, rowid: int) -> str:
    sql = (
        f"select snippet({FTS_TABLE}, -1, '{HIT_START}', '{HIT_END}', '…', 16) "
        f"from {FTS_TABLE} where {FTS_TABLE} match ? and rowid = ?"
    )
    rows = _match(db, sql, query, [rowid])
    text = rows[0][0] if rows else ""
    return " ".join((text or "").split())


def _pg_tree(query: str) -> fts_query.Node | None:
    """The query read as FTS5 syntax, or else as plain words (as _match does on SQLite)."""
    try:
        tree = fts_query.parse(query)
    except fts_query.QuerySyntaxError:
        tree = fts_query.parse(plain_query(query))
    return fts_query.simplify(tree)


def _pg_snippet(db: Database, tree: fts_query.Node, rowid: int) -> str:
    columns = fts_pg.message_columns(db, rowid)
    text = fts_query.snippet(columns, list(fts_query.wanted_phrases(tree)), start=HIT_START, end=HIT_END)
    return " ".join(text.split())


def mark_hits(snippet: str, start: str = "[", end: str = "]") -> str:
    """The snippet with matched words between ``start`` and ``end`` (for text, JSON and CSV)."""
    return snippet.replace(HIT_START, start).replace(HIT_END, end)
