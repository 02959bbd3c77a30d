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

# A search ranks at most this many matching messages: the newest (docs/triage.md#search).
NEWEST = 5_000

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
    newest: int | None = None,
) -> list[dict]:
    """Tickets whose messages match ``query``, best first: ticket objects plus ``snippet``,
    ``rank`` (lower is better) and ``matched_message`` (the best-matching message's row id).

    When more than ``newest`` messages match (of tickets that pass the filters: default
    NEWEST), the best are chosen among the newest ``newest`` of them (the highest ids), on both
    engines: a search ranks at most that many messages however large the database grows.

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
    newest = NEWEST if newest is None else newest
    where, params = [], []
    if status in (None, "", "active"):
        where.append(NOT_CLOSED_SQL)
    elif status != "all":
        where.append("t.status = ?")
        params.append(status)
    if account:
        where.append("t.account = ?")
        params.append(account)
    if tree is not None:
        found = _pg_newest(db, tree, where, params, newest)
    else:
        found = _fts5_newest(db, query, where, params, newest)
    # Best first; of equal rank the older message (the same order on both engines).
    found.sort(key=lambda row: (row[1], row[0]))
    wanted = offset + limit
    best: dict[int, tuple[float, int]] = {}
    if where:
        for rowid, rank, ticket_id in found:
            best.setdefault(ticket_id, (rank, rowid))
    else:
        # The ticket of each match, best first, only as far as the page needs (each a lookup).
        start, step = 0, max(50, wanted * 4)
        while start < len(found) and len(best) < wanted:
            chunk = found[start : start + step]
            tickets_of = _tickets_of(db, [rowid for rowid, _, _ in chunk])
            for rowid, rank, _ in chunk:
                if rowid in tickets_of:
                    best.setdefault(tickets_of[rowid], (rank, rowid))
            start, step = start + step, step * 4
    chosen = list(best.items())[offset : offset + limit]  # in the order found: best first
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


def _fts5_newest(db: Database, query: str, where: list[str], params: list, newest: int) -> list:
    """The newest ``newest`` matches (id, rank, ticket id; the ticket only with filters): FTS5
    walks its index from the highest rowid down and ranks only those."""
    if where:
        sql = (
            f"select f.rowid, f.rank, m.ticket_id from {FTS_TABLE} f "
            "join messages m on m.id = f.rowid join tickets t on t.id = m.ticket_id "
            f"where {FTS_TABLE} match ? and {' and '.join(where)} order by f.rowid desc limit ?"
        )
        return [tuple(r) for r in _match(db, sql, query, [*params, newest])]
    sql = f"select rowid, rank, null from {FTS_TABLE} where {FTS_TABLE} match ? order by rowid desc limit ?"
    return [tuple(r) for r in _match(db, sql, query, [newest])]


def _pg_newest(db: Database, tree: fts_query.Node, where: list[str], params: list, newest: int) -> list:
    """The newest ``newest`` matches on PostgreSQL (id, rank, ticket id; the ticket only with
    filters). With filters, one query of the planner's choosing. Without, read in windows of
    message ids from the newest down, ranked as they are read.

    The first window is the newest 10 times ``newest`` ids, each message tested from the newest
    down until ``newest`` match (a word in one message of ten fills it); the next ones take the
    GIN index's matches within their range (fts_pg.window), each sized by the matches found per
    id so far, at least twice the last (all the rest when none were found). Ranking every match
    of a common word took 0.77 s at 3 million messages.
    """
    if where:
        return [tuple(r) for r in fts_pg.run(db, fts_pg.newest_filtered_sql(where), tree, [*params, newest])]
    top = db.execute(f"select max(id) from {fts_pg.FTS_TABLE}").fetchone()[0]
    if top is None:
        return []
    found: list[tuple] = []
    hi, size, gin = top, newest * 10, False
    while True:
        lo = hi - size
        rows = fts_pg.window(db, tree, lo if lo > 0 else None, hi if hi < top else None, gin=gin, newest=newest)
        gin = True
        found += [(rowid, rank, None) for rowid, rank in rows]
        if len(found) >= newest or lo <= 0:
            break
        per_id = len(found) / (top - lo)
        # At least twice the last window: a word common lately and rare before ends in a few.
        size = lo if not per_id else max(size * 2, int((newest - len(found)) / per_id * 1.25))
        hi = lo
    found.sort(key=lambda row: row[0], reverse=True)
    return found[:newest]


def _tickets_of(db: Database, ids: list[int]) -> dict[int, int]:
    """Message id -> its ticket's id, for those of ``ids`` that exist."""
    if engine_of(db) == "postgresql":
        array = "{" + ",".join(str(int(i)) for i in ids) + "}"
        return dict(db.execute("select id, ticket_id from messages where id = any(cast(? as bigint[]))",
                               [array]).fetchall())
    out: dict[int, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        out.update(db.execute(f"select id, ticket_id from messages where id in ({','.join('?' * len(chunk))})",
                              chunk).fetchall())
    return out


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
