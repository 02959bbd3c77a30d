"""Decode header values: raw 8-bit bytes, RFC 2047 encoded words, addresses, message ids."""

from __future__ import annotations

import binascii
import email.utils
import inspect
import re

from mail2ticket.parse import charsets

# A decoded header value longer than this is cut (a 130,000-character Subject exists in the wild).
MAX_VALUE_CHARS = 16 * 1024
# Address headers longer than this are cut before the (super-linear) stdlib address parser runs.
MAX_ADDRESS_HEADER_CHARS = 32 * 1024

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?(.*?)\?=", re.DOTALL)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# In multi-line text: controls other than tab and newline (terminal escapes among them) go.
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPACE_BETWEEN = re.compile(r"[ \t\r\n]*")
_BASE64_JUNK = re.compile(r"[^A-Za-z0-9+/]")
_MSGID = re.compile(r"<[^<>\s]{1,998}>")
_BARE_ADDR_AS_NAME = re.compile(r'(^|,)\s*([^\s",<>()@]+@[^\s",<>()@]+)\s*(<[^<>]*>)')


def to_bytes(value: object) -> bytes:
    """The bytes a header value was parsed from (the stdlib keeps 8-bit bytes as surrogates)."""
    if isinstance(value, bytes):
        return value
    text = str(value)
    return text.encode("utf-8", "surrogateescape")


def clean(text: str, *, single_line: bool = True) -> str:
    """Text safe for SQLite and display: no surrogates, NUL or control characters.

    ``single_line`` text has every control character (newlines too) made a space; otherwise
    tab and newline stay and the other controls, such as terminal escapes, are removed.
    """
    if not text:
        return ""
    text = _SURROGATE.sub("\ufffd", text)
    if single_line:
        return _CONTROL.sub(" ", text.replace("\r\n", " "))
    return _BODY_CONTROL.sub("", text.replace("\x0c", "\n"))


def raw_text(value: object, hint: str | charsets.Hints | None = None) -> tuple[str, str | None]:
    """Unfolded header text with any raw 8-bit bytes decoded (UTF-8, then ``hint``, then cp1252)."""
    data = to_bytes(value)
    text, defect = charsets.decode(data, None, hint=hint, detect=False)
    return _FOLD.sub("", text), defect


def decode_words(text: str) -> tuple[str, list[str]]:
    """Decode RFC 2047 encoded words in ``text``, leniently.

    Whitespace between adjacent encoded words is dropped; adjacent words in one charset are
    joined as bytes first, so a character split across two words survives; unknown, wrong or
    missing charsets fall back like body text does; broken base64 padding is repaired.
    """
    if "=?" not in text:
        return text, []
    defects: list[str] = []
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            decoded, defect = charsets.decode(b"".join(pending), pending_charset, detect=False)
            if defect:
                defects.append(f"encoded word: {defect}")
            out.append(decoded)
        pending, pending_charset = [], None

    for match in _ENCODED_WORD.finditer(text):
        between = text[pos : match.start()]
        if between and (not pending or _SPACE_BETWEEN.fullmatch(between) is None):
            flush()
            out.append(between)
        charset = match.group(1).split("*", 1)[0]
        data = _decode_word(match.group(2), match.group(3))
        if pending and charset.lower() != (pending_charset or "").lower():
            flush()
        pending_charset = charset
        pending.append(data)
        pos = match.end()
    flush()
    out.append(text[pos:])
    return "".join(out), defects


def _decode_word(encoding: str, payload: str) -> bytes:
    if encoding in "bB":
        data = _BASE64_JUNK.sub("", payload.split("=", 1)[0])
        if len(data) % 4 == 1:
            data = data[:-1]
        try:
            return binascii.a2b_base64(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            return payload.encode("ascii", "replace")
    try:
        return binascii.a2b_qp(payload.encode("utf-8", "surrogateescape"), header=True)
    except (binascii.Error, ValueError):
        return payload.encode("utf-8", "surrogateescape")


def decode(value: object, hint: str | charsets.Hints | None = None) -> tuple[str, list[str]]:
    """A header value as a person reads it: one line, decoded, cleaned, length capped."""
    text, defect = raw_text(value, hint)
    defects = [f"raw 8-bit header: {defect}"] if defect else []
    text, word_defects = decode_words(text)
    defects += word_defects
    text = clean(text).strip()
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS]
        defects.append(f"header value cut to {MAX_VALUE_CHARS} characters")
    return text, defects


def addresses(
    values: list[object],
    hint: str | charsets.Hints | None = None,
    *,
    unusable: list[tuple[str, str]] | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """(display name, lower-case address) pairs of address headers; only real addresses (with @)."""
    defects: list[str] = []
    texts = []
    for value in values:
        text, defect = raw_text(value, hint)
        if defect:
            defects.append(f"raw 8-bit address header: {defect}")
        if len(text) > MAX_ADDRESS_HEADER_CHARS:
            text = text[:MAX_ADDRESS_HEADER_CHARS]
            defects.append("address header cut before parsing")
        texts.append(_quote_address_names(text))
    originals = texts
    texts = [_drop_phrase_comments(_quote_encoded_phrases(text, defects)) for text in texts]
    pairs = _getaddresses(texts, defects)
    if not any(_usable(addr) for _, addr in pairs) and any("=?" in t for t in originals):
        # Some senders encode the whole mailbox, address included, as one encoded word.
        pairs = _getaddresses([decode_words(t)[0] for t in originals], defects)
    out: list[tuple[str, str]] = []
    for name, addr in pairs:
        addr = clean(addr).strip().strip("<>").lower()
        if not _usable(addr):
            if unusable is not None and name.strip() and addr.strip():
                unusable.append((_name(name, addr, defects), addr[:200]))
            continue
        out.append((_name(name, addr, defects), addr[:998]))
    return out, defects


def _name(name: str, addr: str, defects: list[str]) -> str:
    name, word_defects = decode_words(name)
    defects += word_defects
    name = clean(name).strip().strip('"').strip()
    if name.lower() == addr or ("@" in name and " " not in name):
        name = ""  # an address where the name goes is not a name, and may be a spoof
    return name[:MAX_VALUE_CHARS]


def sender(values: list[object], hint: str | charsets.Hints | None = None) -> tuple[str | None, str | None, list[str]]:
    """(display name, address) of the From header; the name is kept when the address is broken.

    ``Jane Roe <jane roe@example.com>`` has no usable address (unquoted spaces in the local
    part): the sender address is unknown, the name stays, and a defect says why.
    """
    unusable: list[tuple[str, str]] = []
    pairs, defects = addresses(values, hint, unusable=unusable)
    if pairs:
        return pairs[0][0] or None, pairs[0][1], defects
    if unusable:
        name, addr = unusable[0]
        defects.append(f"From address {addr!r} cannot be parsed: sender address unknown, name kept")
        return name or None, None, defects
    return None, None, defects


def _usable(addr: str) -> bool:
    addr = clean(addr).strip().strip("<>")
    return "@" in addr and " " not in addr


def _quote_address_names(text: str) -> str:
    """Quote an unquoted address used as a display name: ``a@x <b@y>`` is one mailbox, b@y."""
    if "<" not in text:
        return text
    return _BARE_ADDR_AS_NAME.sub(r'\1 "\2" \3', text)


_WORD = r"=\?[^?\s]{1,80}\?[bBqQ]\?[^?]{0,2000}\?="
_WORD_RUN = re.compile(rf"{_WORD}(?:[ \t\r\n]*{_WORD})*")


def _quote_encoded_phrases(text: str, defects: list[str]) -> str:
    """Unquoted encoded words in a phrase, decoded into a quoted string before the list is split.

    ``=?utf-8?q?M=C3=BCller,=20Andreas?= <a@x>`` is one mailbox: the comma is inside the encoded
    word. Quoting the decoded text keeps its commas, brackets and @ signs part of the name, so
    an encoded ``<boss@x>`` never becomes an address. Quoted strings, comments and <addresses>
    are left as they are (names in quotes and comments are decoded after the split).
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    i, n, start = 0, len(text), 0
    quoted = escaped = False
    depth = 0
    angle = False
    while i < n:
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(ch, 0)
        elif angle:
            angle = ch != ">"
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth = 1
        elif ch == "<":
            angle = True
        elif ch == "=" and text.startswith("=?", i):
            match = _WORD_RUN.match(text, i)
            if match:
                decoded, word_defects = decode_words(match.group(0))
                defects += word_defects
                decoded = clean(decoded).replace("\\", "\\\\").replace('"', '\\"')
                out.append(text[start:i])
                out.append(f'"{decoded}"')
                i = start = match.end()
                continue
        i += 1
    out.append(text[start:])
    return "".join(out)


def _drop_phrase_comments(text: str) -> str:
    """``Phrase (comment) <addr>`` read as ``Phrase <addr>``: the comment names the sender only
    when there is no phrase (``addr (Name)``). Unbalanced text is left for _ambiguous to refuse."""
    if "(" not in text or "<" not in text:
        return text
    out: list[str] = []
    keep: list[str] = []  # the current mailbox's text before its "<", comments left out
    seg: list[str] = []  # the same text, comments kept
    quoted = escaped = angle = False
    depth = 0
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            seg.append(ch)
            continue
        elif angle:
            angle = ch != ">"
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth = 1
            seg.append(ch)
            continue
        elif ch == "<":
            angle = True
            out.append("".join(keep) + " " if "".join(keep).strip() else "".join(seg))
            keep, seg = [], []
            out.append(ch)
            continue
        elif ch == ",":
            out.append("".join(seg) + ch)
            keep, seg = [], []
            continue
        if angle or ch == ">":
            out.append(ch)
        else:
            keep.append(ch)
            seg.append(ch)
    if depth or quoted:
        return text
    out.append("".join(seg))
    return "".join(out)


def _ambiguous(text: str) -> bool:
    """Parentheses or quotes that do not pair up: CPython before 3.11.10 reads ``a@x)<b@y>`` as
    a@x (CVE-2023-27043, RELIABILITY 28); its strict mode refuses such a header, and so do we."""
    depth, quoted, escaped = 0, False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
            if depth < 0:
                return True
    return depth != 0 or quoted


# Pythons with the CVE-2023-27043 fix (3.11.10 on, and Debian 12's 3.11.2 by a backport) parse
# strictly by default: a list with an empty element ("a@b," or "a@b,,c@d", common in real mail)
# then gives no address at all. _ambiguous() above refuses what strict mode exists to refuse, so
# the lenient parser is used on every Python: the same addresses whatever the runtime.
_LENIENT = {"strict": False} if "strict" in inspect.signature(email.utils.getaddresses).parameters else {}


def _getaddresses(texts: list[str], defects: list[str]) -> list[tuple[str, str]]:
    if any(_ambiguous(text) for text in texts):
        defects.append("ambiguous address header (unbalanced parentheses or quotes): sender unknown")
        return []
    try:
        return email.utils.getaddresses(texts, **_LENIENT)
    except (RecursionError, Exception) as exc:  # cpython#103800 and friends: sender unknown
        defects.append(f"address header could not be parsed ({type(exc).__name__})")
        return []


def message_ids(value: object) -> list[str]:
    """The <id@host> tokens of a Message-ID, In-Reply-To or References value, brackets kept."""
    if value is None:
        return []
    text = clean(raw_text(value)[0])
    found = _MSGID.findall(text)
    if not found:
        bare = text.strip()
        if bare and "@" in bare and " " not in bare and len(bare) < 990:
            found = [f"<{bare.strip('<>')}>"]
    return found
