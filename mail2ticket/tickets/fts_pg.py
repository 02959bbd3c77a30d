"""Full-text search on PostgreSQL: the index of messages (a tsvector per message in messages_fts,
a GIN index, a trigger that keeps it in step) and FTS5 queries turned into tsquery.

The same words match as in SQLite's FTS5 index (tickets/fts.py): the text is folded by the
database itself (mail2ticket_fold: accents removed, lower case, everything but letters and digits
a separator) with the 'simple' configuration (no stemming, no stop words), whatever the
database's locale. Each column has a weight (subject A, sender name B, sender address C, body
D) that the column filters and the ranking use.
"""

from __future__ import annotations

from typing import Any

from mail2ticket.errors import QueryError
from mail2ticket.tickets.fts_query import ALL_WEIGHTS, Node, Op, Phrase, wanted_phrases

FTS_TABLE = "messages_fts"
TRIGGER = "messages_fts_sync"

# ts_rank's weights for D, C, B, A: body 1, sender address 2, sender name 4, subject 10, as the
# bm25 weights of tickets/fts.py. Normalisation 1: divided by 1 + log(length), as bm25 favours
# the shorter message.
RANK = "-ts_rank('{0.1, 0.2, 0.4, 1.0}', f.vector, query.r, 1)"

# A tsvector holds at most 1 MB: a body of more distinct words than that (a log, a dump) is
# indexed by its first 100,000 characters (at most ~6 bytes of index per character), never refused.
# Not parallel safe: the exception block is a subtransaction.
_VECTOR = """
create or replace function mail2ticket_search_vector(subject text, from_name text,
                                                     from_address text, body text)
returns tsvector language plpgsql immutable as $$
begin
  return setweight(to_tsvector('simple', mail2ticket_fold(subject)), 'A')
      || setweight(to_tsvector('simple', mail2ticket_fold(from_name)), 'B')
      || setweight(to_tsvector('simple', mail2ticket_fold(from_address)), 'C')
      || setweight(to_tsvector('simple', mail2ticket_fold(body)), 'D');
exception when program_limit_exceeded then
  return setweight(to_tsvector('simple', mail2ticket_fold(left(subject, 2000))), 'A')
      || setweight(to_tsvector('simple', mail2ticket_fold(left(from_name, 1000))), 'B')
      || setweight(to_tsvector('simple', mail2ticket_fold(left(from_address, 1000))), 'C')
      || setweight(to_tsvector('simple', mail2ticket_fold(left(body, 100000))), 'D');
end $$"""

_SYNC = f"""
create or replace function {TRIGGER}() returns trigger language plpgsql as $$
begin
  if tg_op in ('DELETE', 'UPDATE') then
    delete from {FTS_TABLE} where id = old.id;
  end if;
  if tg_op = 'DELETE' then
    return old;
  end if;
  insert into {FTS_TABLE} (id, vector) values (new.id, mail2ticket_search_vector(
    new.subject, new.from_name, new.from_address, new.body_text));
  return new;
end $$"""

# The fold, always with a collation whose lower() and [[:alnum:]] know all of Unicode: the
# columns are collate "C" (tickets/pg_schema.py), and in C that is ASCII only. ICU's root
# collation where PostgreSQL has ICU; else the database's own locale, unless that is C or POSIX
# too (then C.UTF-8 or en_US.UTF-8, as the operating system offers them).
_FOLD = r"""
do $do$
declare
  collate_clause text;
begin
  select ' collate ' || quote_ident(c.collname) into collate_clause
    from unnest(array['und-x-icu', 'default', 'C.utf8', 'C.UTF-8', 'en_US.utf8', 'en_US.UTF-8'])
         with ordinality as w(name, n)
    join pg_collation c on c.collname = w.name and c.collencoding in (-1, pg_char_to_encoding('UTF8'))
    where w.name != 'default' or (select datctype from pg_database
                                  where datname = current_database()) not in ('C', 'POSIX')
    order by w.n limit 1;
  -- ASCII text (one byte a character) has no accents to remove: normalize() is skipped.
  execute $f$create or replace function mail2ticket_fold(t text) returns text
    language sql immutable parallel safe as $b$ select lower(regexp_replace(coalesce(case
    when octet_length(t) = char_length(t) then t
    else regexp_replace(normalize(t, NFD), '[\u0300-\u036f]+', '', 'g') end, '')$f$
    || coalesce(collate_clause, '') || $f$, '[^[:alnum:]]+', ' ', 'g')) $b$$f$;
end $do$"""

# Only a change to an indexed column touches the index (status columns change often).
_TRIGGER = [
    f"drop trigger if exists {TRIGGER} on messages",
    f"create trigger {TRIGGER} after insert or delete or update of subject, from_name, from_address, "
    f"body_text on messages for each row execute function {TRIGGER}()",
]
_REBUILD = (
    f"insert into {FTS_TABLE} (id, vector) select id, mail2ticket_search_vector(subject, from_name, "
    "from_address, body_text) from messages on conflict (id) do update set vector = excluded.vector"
)

# The schema step (tickets/pg_schema.py): functions, table, GIN index, trigger, every message indexed.
STATEMENTS = [
    _FOLD,
    _VECTOR,
    _SYNC,
    f"create table if not exists {FTS_TABLE} (id bigint primary key, vector tsvector not null)",
    f"create index if not exists {FTS_TABLE}_vector on {FTS_TABLE} using gin (vector)",
    *_TRIGGER,
    _REBUILD,
]
SCHEMA = ";\n".join(STATEMENTS) + ";\n"


def install(db: Any) -> None:
    """Create the index over every stored message and the trigger that keeps it in step."""
    for statement in STATEMENTS:
        db.execute(statement)


def ensure_triggers(db: Any) -> bool:
    """Recreate the trigger if it is missing (dropped by hand, a restored dump) and re-index; True
    if it had to."""
    found = db.execute(
        "select count(*) from pg_trigger where tgname = ? and tgrelid = 'messages'::regclass", [TRIGGER]
    ).fetchone()[0]
    if found:
        return False
    for statement in _TRIGGER:
        db.execute(statement)
    db.execute(f"delete from {FTS_TABLE} where id not in (select id from messages)")
    db.execute(_REBUILD)
    return True


# ----------------------------------------------------------------------------------- queries


def tsquery(node: Node) -> str:
    """A tree of fts_query (simplified: no empty phrase) as tsquery text."""
    if isinstance(node, Phrase):
        last = len(node.tokens) - 1
        lexemes = [_lexeme(t, node.weights, node.prefix and i == last) for i, t in enumerate(node.tokens)]
        return lexemes[0] if len(lexemes) == 1 else "(" + " <-> ".join(lexemes) + ")"
    parts = [tsquery(p) for p in node.parts]
    if node.kind == "near":
        return _near(node, parts)
    if node.kind == "not":
        return "(" + " & ".join([parts[0], *(f"!{p}" for p in parts[1:])]) + ")"
    return "(" + (" & " if node.kind == "and" else " | ").join(parts) + ")"


# Up to this distance NEAR is exact (every pair of phrases within it, in either order); beyond
# it, NEAR reads as AND (the query would grow by two alternatives per token of distance).
NEAR_LIMIT = 50


def _near(node: Op, parts: list[str]) -> str:
    if node.distance > NEAR_LIMIT:
        return "(" + " & ".join(parts) + ")"
    pairs = []
    for i in range(len(parts) - 1):
        # a <N> b: b starts N positions after a ends, so N - 1 tokens lie between them.
        steps = range(1, node.distance + 2)
        either = [f"{parts[i]} <{n}> {parts[i + 1]}" for n in steps]
        either += [f"{parts[i + 1]} <{n}> {parts[i]}" for n in steps]
        pairs.append("(" + " | ".join(either) + ")")
    return "(" + " & ".join(pairs) + ")"


def rank_query(node: Node) -> str:
    """The words of the query that a match contains, any of them: ts_rank weighs each word found
    by its column (of a query with AND it would weigh their distance instead)."""
    lexemes = {
        _lexeme(t, p.weights, p.prefix and i == len(p.tokens) - 1)
        for p in wanted_phrases(node)
        for i, t in enumerate(p.tokens)
    }
    return " | ".join(sorted(lexemes))


def _lexeme(token: str, weights: frozenset[str], prefix: bool) -> str:
    quoted = "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"
    label = ("*" if prefix else "") + ("" if weights == ALL_WEIGHTS else "".join(sorted(weights)))
    return f"{quoted}:{label}" if label else quoted


# The two parameters every search query starts with: the tsquery to match (q) and the words to
# rank by (r, rank_query).
_QUERIES = "cross join (select cast(? as tsquery) as q, cast(? as tsquery) as r) query"


def window(db: Any, node: Node, above: int | None, upto: int | None, *, gin: bool,
           newest: int | None = None) -> list[tuple[int, float]]:
    """(id, rank) of every message matching the query with ``above`` < id <= ``upto`` (None: no
    bound), read one of two ways, each forced (the planner's estimates pick the slower):

    - ``gin=False``: the primary key's range from the newest down, each message tested (0.7 µs a
      message), stopping at ``newest`` matches: for a short range, which then costs the same
      whatever the word;
    - ``gin=True``: the GIN index's matches as a bitmap ANDed with the range's, so only matches
      are read: for a long range, but the index's part costs as many matches as the whole table
      holds (for 'printer', 216,776 of 3 million messages: 30 ms; for 'cert*': 328,043 and 135 ms).
    """
    params = [bound for bound in (above, upto) if bound is not None]
    sql = window_sql(above is not None, upto is not None)
    if not gin and newest is not None:
        sql += " order by f.id desc limit ?"
        params.append(newest)
    with db.atomic():
        for setting in WINDOW_SETTINGS[gin]:
            db.execute(setting)
        return run(db, sql, node, params)


def newest_filtered_sql(where: list[str]) -> str:
    """The newest matches of tickets that pass ``where`` (on the ticket, t): (id, rank, ticket_id),
    the newest first; parameters: the tsquery, the rank query, those of ``where``, the limit. The
    planner's choice: for few tickets (the open ones) it reads their messages and tests each."""
    return (
        f"select f.id, {RANK} as rank, m.ticket_id from {FTS_TABLE} f "
        f"{_QUERIES} "
        "join messages m on m.id = f.id join tickets t on t.id = m.ticket_id "
        f"where f.vector @@ query.q and {' and '.join(where)} order by f.id desc limit ?"
    )


# The settings of each way (window()): work_mem keeps the bitmap of a common word exact (no
# message read twice to test it again).
WINDOW_SETTINGS = {
    False: ["set local enable_bitmapscan = off", "set local enable_seqscan = off"],
    True: ["set local enable_indexscan = off", "set local enable_seqscan = off", "set local work_mem = '32MB'"],
}


def window_sql(above: bool, upto: bool) -> str:
    """window()'s query: the tsquery, the rank query (rank_query), then the bounds it has."""
    return (
        f"select f.id, {RANK} as rank from {FTS_TABLE} f "
        f"{_QUERIES} "
        "where f.vector @@ query.q" + (" and f.id > ?" if above else "") + (" and f.id <= ?" if upto else "")
    )


# What PostgreSQL says (SQLSTATE) of a query it cannot run, as one line without the query (which
# may be kilobytes long): program_limit_exceeded, syntax_error.
_QUERY_ERRORS = {
    "54000": "a word in it is longer than PostgreSQL's index keeps (2,047 bytes), or it is too large",
    "42601": "PostgreSQL cannot read it as a text search query",
}


def run(db: Any, sql: str, node: Node, params: list) -> list:
    """Run ``sql`` with the query; a query PostgreSQL cannot run is a QueryError (a usage error)."""
    try:
        return db.execute(sql, [tsquery(node), rank_query(node), *params]).fetchall()
    except Exception as exc:
        # The engine wraps psycopg's error (tickets/pg.py): its SQLSTATE is on the cause.
        state = getattr(exc, "sqlstate", None) or getattr(exc.__cause__, "sqlstate", None)
        if state not in _QUERY_ERRORS:
            raise
        raise QueryError(f"cannot search for this: {_QUERY_ERRORS[state]}",
                         "search for shorter words, or fewer") from None


def message_columns(db: Any, rowid: int) -> list[str | None]:
    """The searchable columns of one message, in fts_query.COLUMN_WEIGHTS order (for its snippet)."""
    row = db.execute(
        "select subject, from_name, from_address, body_text from messages where id = ?", [rowid]
    ).fetchone()
    return list(row) if row else [None, None, None, None]

