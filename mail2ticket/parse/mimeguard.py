"""Cheap scans of raw message bytes that bound what the stdlib MIME parser is given."""

from __future__ import annotations

import re

BOUNDARY = re.compile(rb'(?i)boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
# BOUNDARY without (?i), for the lower-cased copy of a message: a case-insensitive scan of every
# byte (base64 attachments included) was ten times slower than lower-casing once and scanning.
_LOWER_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
# Content types of parts nested too deep are prefixed with this, so the parser keeps them opaque.
DEEP_PREFIX = "x-mail2ticket-unparsed-"


def count_delimiters(raw: bytes, lowered: bytes | None = None) -> int:
    """How many parts the declared boundaries open: a cheap early count of MIME parts.

    ``lowered``: ``raw.lower()``, when the caller has it. Returns 0 (no early verdict; the walk
    still counts) when there are too many distinct boundaries to count cheaply.
    """
    lowered = raw.lower() if lowered is None else lowered
    # Found in the lower-cased copy, taken from ``raw`` (a boundary is case-sensitive).
    boundaries = {raw[m.start(1):m.end(1)] if m.start(1) >= 0 else raw[m.start(2):m.end(2)]
                  for m in _LOWER_BOUNDARY.finditer(lowered)}
    if len(boundaries) > 200:
        return 0
    return sum(
        raw.count(b"\n--" + boundary + b"\n") + raw.count(b"\n--" + boundary + b"\r\n")
        for boundary in boundaries
    )


def unnest(raw: bytes, max_depth: int, lowered: bytes | None = None) -> tuple[bytes, bool]:
    """Make MIME parts nested deeper than ``max_depth`` opaque, so the stdlib never recurses on them.

    Scans lines like the MIME parser does, tracking open boundaries and enclosed messages, and
    renames the content type of any part that would open a level too deep. The raw bytes
    the caller keeps are not changed. ``lowered``: ``raw.lower()``, when the caller has it.
    """
    lowered = raw.lower() if lowered is None else lowered
    # Parts that may open a level (multipart/ or message/rfc822, in any case): the two never overlap.
    if lowered.count(b"multipart/") + lowered.count(b"message/rfc822") <= max_depth:
        return raw, False
    stack: list[bytes | None] = []  # open boundaries; None for an enclosed message
    edits: list[tuple[int, int]] = []  # (offset of the content type value, length)
    in_headers = True
    ctype_at, ctype_value = -1, b""
    collecting = False
    offset = 0
    for line in raw.splitlines(keepends=True):
        stripped = line.rstrip(b"\r\n")
        start = offset
        offset += len(line)
        if in_headers:
            if stripped == b"":
                in_headers = False
                kind, boundary = _nesting_kind(ctype_value)
                if kind:
                    if len(stack) >= max_depth:
                        edits.append((ctype_at, len(ctype_value)))
                    elif kind == "multipart" and boundary:
                        stack.append(boundary)
                    elif kind == "message":
                        stack.append(None)
                        in_headers = True
                ctype_at, ctype_value, collecting = -1, b"", False
            elif line[:1] in (b" ", b"\t") and collecting:
                ctype_value += stripped
            elif stripped[:13].lower() == b"content-type:":
                ctype_at, ctype_value, collecting = start + 13, stripped[13:], True
            else:
                collecting = False
            continue
        if stripped.startswith(b"--"):
            for index in range(len(stack) - 1, -1, -1):
                boundary = stack[index]
                if boundary is not None and stripped.startswith(b"--" + boundary):
                    if stripped[len(boundary) + 2 :].startswith(b"--"):
                        del stack[index:]
                    else:
                        del stack[index + 1 :]
                        in_headers = True
                    break
    if not edits:
        return raw, False
    out = bytearray()
    last = 0
    for at, _length in edits:
        out += raw[last:at]
        out += b" " + DEEP_PREFIX.encode()
        last = at
        while last < len(raw) and raw[last : last + 1] in (b" ", b"\t"):
            last += 1
    out += raw[last:]
    return bytes(out), True


def _nesting_kind(ctype_value: bytes) -> tuple[str | None, bytes | None]:
    value = ctype_value.strip().lower()
    if value.startswith(b"message/rfc822"):
        return "message", None
    if not value.startswith(b"multipart/"):
        return None, None
    match = BOUNDARY.search(ctype_value)
    if not match:
        return None, None
    return "multipart", match.group(1) or match.group(2)


_BOM = b"\xef\xbb\xbf"
_FIELD = re.compile(rb"([!-9;-~]{1,76})[ \t]*:")
_COMMON_FIELDS = frozenset(
    b"from to cc subject date message-id received return-path mime-version content-type "
    b"delivered-to reply-to sender x-mailer user-agent".split()
)
LEAD_LINES = 5  # stray lines before a header block that are skipped to recover it
HEAD_PREFIX_BYTES = 64 * 1024  # what header_start needs to see of a message


def header_start(raw: bytes) -> tuple[int, list[str]]:
    """Where the header block of ``raw`` starts, and what was skipped to get there.

    A UTF-8 byte-order mark and an mbox ``From `` line before the headers are skipped. When the
    first line is no header but a header block (two header lines or more, one of them a common
    field) starts within LEAD_LINES lines, the lines before it are skipped with a defect.
    Otherwise 0: the email package reads what it can. Only the first HEAD_PREFIX_BYTES matter.
    """
    raw = raw[:HEAD_PREFIX_BYTES]
    pos, notes = 0, []
    if raw.startswith(_BOM):
        pos = len(_BOM)
        notes.append("a byte-order mark before the headers was skipped")
    if raw.startswith(b"From ", pos):
        end = raw.find(b"\n", pos)
        if end < 0:
            return 0, []
        pos = end + 1
    if _header_block(raw, pos):
        return pos, notes
    at, skipped = pos, []
    for _ in range(LEAD_LINES):
        end = raw.find(b"\n", at, at + 2000)
        if end < 0:
            break
        skipped.append(raw[at:end].strip().decode("utf-8", "replace")[:60])
        at = end + 1
        if _header_block(raw, at):
            shown = " / ".join(repr(s) for s in skipped)
            notes.append(f"{len(skipped)} line(s) before the header block skipped: {shown}")
            return at, notes
    return (pos, notes) if pos else (0, [])


def _header_block(raw: bytes, pos: int) -> bool:
    """Whether a header block starts at ``pos``: header lines up to a blank line or the end,
    two at least, one of them a common field (From, Subject, Received...)."""
    count, common = 0, False
    for line in raw[pos : pos + 8192].split(b"\n")[:12]:
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t") and count:
            continue
        m = _FIELD.match(line)
        if not m:
            return False
        count += 1
        common = common or m.group(1).lower() in _COMMON_FIELDS
    return count >= 2 and common
