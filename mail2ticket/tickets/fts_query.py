"""SQLite FTS5's query syntax read into a tree, and snippets cut from a message by it: search on an
engine without FTS5 (PostgreSQL, tickets/fts_pg.py) accepts the same queries and marks the same words.

Words are compared folded as FTS5's ``unicode61 remove_diacritics 2`` tokenizer folds them: lower
case, accents removed (é -> e, ü -> u), letters without a decomposition kept (ß, ø, ł). A token is
a run of letters and digits; everything else separates tokens.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

# The searchable columns in FTS5's order (fts.FTS_COLUMNS), each with its letter on PostgreSQL
# (a tsvector weight: the column filters and the ranking use it).
COLUMN_WEIGHTS = {"subject": "A", "from_name": "B", "from_address": "C", "body_text": "D"}
ALL_WEIGHTS = frozenset(COLUMN_WEIGHTS.values())
# Column names people type (the FTS5 aliases of tickets/search.py): from:dave, body:toner.
_ALIASES = {"from": frozenset("BC"), "body": frozenset("D")}

_MARKS = re.compile("[\u0300-\u036f]+")  # combining diacritical marks, as PostgreSQL's fold removes
_TOKEN = re.compile(r"[^\W_]+")


class QuerySyntaxError(ValueError):
    """The text is not FTS5 query syntax (the caller then searches it as plain words)."""


def fold(text: str) -> str:
    """A word as the index keeps it: lower case, accents removed."""
    return _MARKS.sub("", unicodedata.normalize("NFD", text)).lower()


def words(text: str) -> list[str]:
    """The folded tokens of ``text``."""
    return _TOKEN.findall(fold(text))


@dataclass(frozen=True)
class Phrase:
    """Tokens that must follow each other; ``prefix``: the last one may be the start of a word;
    ``weights``: the columns (letters of COLUMN_WEIGHTS) it may be found in."""

    tokens: tuple[str, ...]
    prefix: bool = False
    weights: frozenset[str] = ALL_WEIGHTS


@dataclass(frozen=True)
class Op:
    """``kind`` is 'and', 'or', 'not' (the first part and none of the others) or 'near' (the
    phrases at most ``distance`` tokens apart)."""

    kind: str
    parts: tuple[Node, ...] = field(default_factory=tuple)
    distance: int = 10


Node = Phrase | Op


def parse(text: str) -> Node | None:
    """FTS5 query syntax -> a tree (None when it holds no word: it matches nothing).

    Phrases ("a phrase", bare words, one + two), prefix*, AND, OR, NOT, parentheses, column filters
    (subject:word, {from_name from_address}:word, -body:word, subject:(a OR b)) and
    NEAR(a b, N). Raises QuerySyntaxError where FTS5
    reports a syntax error or an unknown column; precedence as FTS5's: words side by side bind
    tightest, then NOT, AND, OR."""
    parser = _Parser(_lex(text))
    if not parser.tokens:
        return None
    tree = parser.expr(ALL_WEIGHTS)
    if parser.pos != len(parser.tokens):
        raise QuerySyntaxError(f"unexpected {parser.tokens[parser.pos][1]!r}")
    return tree


def _lex(text: str) -> list[tuple[str, str]]:
    """(kind, value): 'str' (quoted), 'word' (bare), or the special character itself."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == '"':
            value, i = [], i + 1
            while True:
                if i >= n:
                    raise QuerySyntaxError("unterminated string")
                if text[i] == '"':
                    if text[i + 1 : i + 2] != '"':
                        break
                    i += 1
                value.append(text[i])
                i += 1
            out.append(("str", "".join(value)))
            i += 1
        elif _bare(c):
            j = i
            while j < n and _bare(text[j]):
                j += 1
            out.append(("word", text[i:j]))
            i = j
        elif c in "(){}:*^+-,":
            out.append((c, c))
            i += 1
        else:
            raise QuerySyntaxError(f"syntax error near {c!r}")
    return out


def _bare(c: str) -> bool:
    # FTS5's barewords: ASCII letters, digits and '_', the substitute character, any non-ASCII.
    return c.isalnum() or c in "_\x1a" if c.isascii() else True


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self, kind: str) -> str:
        got, value = self.peek()
        if got != kind:
            raise QuerySyntaxError(f"syntax error near {value!r}")
        self.pos += 1
        return value

    def keyword(self, word: str) -> bool:
        return self.peek() == ("word", word)

    def binary(self, kind: str, word: str, operand) -> Node:
        parts = [operand()]
        while self.keyword(word):
            self.pos += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else Op(kind, tuple(parts))

    def expr(self, weights: frozenset[str]) -> Node:
        return self.binary("or", "OR", lambda: self.and_(weights))

    def and_(self, weights: frozenset[str]) -> Node:
        return self.binary("and", "AND", lambda: self.not_(weights))

    def not_(self, weights: frozenset[str]) -> Node:
        return self.binary("not", "NOT", lambda: self.primary(weights))

    def primary(self, weights: frozenset[str]) -> Node:
        if self.peek()[0] == "(":
            return self.group(weights)
        start = self.pos
        filtered = self.colspec(weights)
        if filtered is not None and self.peek()[0] == "(":
            return self.group(filtered)
        self.pos = start
        items = [self.item(weights)]
        while self.starts_item():
            items.append(self.item(weights))
        return items[0] if len(items) == 1 else Op("and", tuple(items))

    def group(self, weights: frozenset[str]) -> Node:
        self.take("(")
        node = self.expr(weights)
        self.take(")")
        return node

    def starts_item(self) -> bool:
        kind, value = self.peek()
        if kind == "word":
            return value not in ("AND", "OR", "NOT")
        return kind in ("str", "-", "{", "^")

    def colspec(self, weights: frozenset[str]) -> frozenset[str] | None:
        """[-] name : or [-] {names} : -> the columns left; None when no column filter is here."""
        negate = self.peek()[0] == "-"
        if negate:
            self.pos += 1
        kind, value = self.peek()
        if kind == "{":
            self.pos += 1
            chosen: frozenset[str] = frozenset()
            while self.peek()[0] == "word":
                chosen |= _column(self.take("word"), aliases=False)
            self.take("}")
        elif kind == "word" and self.peek(1)[0] == ":":
            self.pos += 1
            chosen = _column(value, aliases=True)
        elif negate:
            raise QuerySyntaxError(f"no such column: {value}")
        else:
            return None
        self.take(":")
        return weights & (ALL_WEIGHTS - chosen if negate else chosen)

    def item(self, weights: frozenset[str]) -> Node:
        filtered = self.colspec(weights)
        if filtered is not None:
            weights = filtered
        if self.keyword("NEAR") and self.peek(1)[0] == "(":
            self.pos += 2
            phrases = [self.phrase(weights)]
            while self.peek()[0] in ("str", "word"):
                phrases.append(self.phrase(weights))
            distance = 10
            if self.peek()[0] == ",":
                self.pos += 1
                number = self.take("word")
                if not number.isdigit():
                    raise QuerySyntaxError("NEAR distance must be a number")
                distance = int(number)
            self.take(")")
            return phrases[0] if len(phrases) == 1 else Op("near", tuple(phrases), distance)
        if self.peek()[0] == "^":  # the first token of a column: read as anywhere
            self.pos += 1
        return self.phrase(weights)

    def phrase(self, weights: frozenset[str]) -> Phrase:
        tokens: list[str] = []
        while True:
            kind, value = self.peek()
            if kind not in ("str", "word") or (kind == "word" and value in ("AND", "OR", "NOT")):
                raise QuerySyntaxError(f"syntax error near {value!r}")
            self.pos += 1
            tokens += words(value)
            prefix = self.peek()[0] == "*"
            if prefix:
                self.pos += 1
            if self.peek()[0] != "+":
                return Phrase(tuple(tokens), prefix, weights)
            self.pos += 1


def _column(name: str, *, aliases: bool) -> frozenset[str]:
    lowered = name.lower()
    if lowered in COLUMN_WEIGHTS:
        return frozenset(COLUMN_WEIGHTS[lowered])
    if aliases and lowered in _ALIASES:
        return _ALIASES[lowered]
    raise QuerySyntaxError(f"no such column: {name}")


def simplify(node: Node | None) -> Node | None:
    """The tree without phrases that can match nothing (no word, or no column left): FTS5 ignores
    an empty phrase beside others, and a query of nothing but empty phrases matches nothing."""
    if node is None or isinstance(node, Phrase):
        return node if node is not None and node.tokens and node.weights else None
    if node.kind == "not":
        first = simplify(node.parts[0])
        rest = tuple(p for p in (simplify(p) for p in node.parts[1:]) if p is not None)
        if first is None or not rest:
            return first
        return Op("not", (first, *rest))
    parts = tuple(p for p in (simplify(p) for p in node.parts) if p is not None)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Op(node.kind, parts, node.distance)


def wanted_phrases(node: Node | None) -> Iterator[Phrase]:
    """The phrases a matching message contains (not those after a NOT): the words to mark."""
    if node is None:
        return
    if isinstance(node, Phrase):
        yield node
        return
    for part in node.parts[:1] if node.kind == "not" else node.parts:
        yield from wanted_phrases(part)


# --------------------------------------------------------------------------------- snippets


def snippet(columns: Sequence[str | None], phrases: Sequence[Phrase], *, start: str, end: str,
            ellipsis: str = "…", size: int = 16) -> str:
    """The text FTS5's ``snippet(table, -1, start, end, ellipsis, size)`` gives: from the column
    (in COLUMN_WEIGHTS order) with the best window of ``size`` tokens, where each phrase found
    counts 1000 the first time and 1 after, a window that starts a sentence is preferred, and
    the phrases found are between ``start`` and ``end``."""
    best = (0, 0, 0)  # score, column, first token
    found: list[tuple[list[re.Match], list[tuple[int, int]]]] = []
    for col, (text, weight) in enumerate(zip(columns, COLUMN_WEIGHTS.values(), strict=True)):
        tokens = list(_TOKEN.finditer(text or ""))
        folded = [fold(t.group()) for t in tokens]
        hits: list[tuple[int, int, int]] = []  # position, phrase, length
        for number, phrase in enumerate(phrases):
            if weight in phrase.weights:
                hits += [(p, number, len(phrase.tokens)) for p in _find(folded, phrase)]
        hits.sort()
        found.append((tokens, _spans(hits)))
        sentences = _sentence_starts(text or "", tokens)
        for position, _, _ in hits:
            score, first = _score(hits, position, size, len(tokens))
            if score > best[0]:
                best = (score, col, first)
            if len(tokens) > size:
                before = [s for s in sentences if s <= position]
                if before and before[-1] < position:
                    score, _ = _score(hits, before[-1], size, len(tokens))
                    score += 120 if before[-1] == 0 else 100
                    if score > best[0]:
                        best = (score, col, before[-1])
    _, col, first = best
    text = columns[col] or ""
    tokens, spans = found[col]
    last = min(first + size, len(tokens)) - 1
    if last < first:
        return text
    # A phrase found is marked as one span, cut where the window cuts it.
    opens = {max(a, first) for a, b in spans if b >= first and a <= last}
    closes = {min(b, last) for a, b in spans if b >= first and a <= last}
    out = [ellipsis if first > 0 else text[: tokens[0].start()]]
    for i in range(first, last + 1):
        token = tokens[i]
        out += [start if i in opens else "", token.group(), end if i in closes else ""]
        if i < last:
            out.append(text[token.end() : tokens[i + 1].start()])
    out.append(text[tokens[last].end() :] if last == len(tokens) - 1 else ellipsis)
    return "".join(out)


def _spans(hits: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The token ranges the hits cover (first, last), overlapping ones merged."""
    spans: list[tuple[int, int]] = []
    for p, _, length in hits:  # sorted by position
        if spans and p <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], p + length - 1))
        else:
            spans.append((p, p + length - 1))
    return spans


def _find(folded: list[str], phrase: Phrase) -> Iterator[int]:
    n = len(phrase.tokens)
    for p in range(len(folded) - n + 1):
        if all(folded[p + k] == t for k, t in enumerate(phrase.tokens[:-1])):
            last = folded[p + n - 1]
            if last == phrase.tokens[-1] or (phrase.prefix and last.startswith(phrase.tokens[-1])):
                yield p


def _score(hits: list[tuple[int, int, int]], position: int, size: int, count: int) -> tuple[int, int]:
    """FTS5's fts5SnippetScore: the score of the window starting at ``position``, and a start
    that centres its hits."""
    seen: set[int] = set()
    score, first, last = 0, -1, -1
    for p, number, length in hits:
        if position <= p < position + size:
            score += 1 if number in seen else 1000
            seen.add(number)
            if first < 0:
                first = p
            last = p + length  # as FTS5 counts it: one past the phrase
    adjusted = first - (size - (last - first)) // 2
    return score, max(0, min(adjusted, count - size))


def _sentence_starts(text: str, tokens: list[re.Match]) -> list[int]:
    """Token numbers that start a sentence: the first, and each after a '.' or ':' and a space."""
    starts = [0] if tokens else []
    for i in range(1, len(tokens)):
        gap = text[tokens[i - 1].end() : tokens[i].start()]
        stripped = gap.rstrip(" \t\r\n")
        if stripped != gap and stripped.endswith((".", ":")):
            starts.append(i)
    return starts
