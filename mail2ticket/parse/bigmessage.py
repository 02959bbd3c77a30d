"""Messages too large to hold in memory: spooled to a file, parsed from it in bounded memory.

A message over BIG_MESSAGE bytes goes into a temp file (a Spool) while it is hashed: fetched in
pieces by the IMAP poll (by RFC822.SIZE), copied from standard input or a Maildir file by
``take`` (ingest, Maildir polls), or from its database blob by ``take_stored`` (quarantine
retry, reparse). It is stored into SQLite with incremental blob I/O, and parsed here without
ever being loaded whole:

1. The file is scanned for the MIME structure (headers of each part, boundaries) and every leaf
   body longer than LARGE_PART (base64, quoted-printable or plain) is found.
2. Each is replaced by a short marker, giving a *skeleton* of the message that the normal
   ``parse_message`` reads, so every rule for headers, charsets, bodies and names is the same.
3. An attachment whose bytes are a marker is decoded from the file in chunks, straight into
   the attachment store (SHA-256 and size computed while writing). A marker that ended up in
   the body text instead is replaced by the first TEXT_KEEP bytes of that text, with a defect
   saying so: the raw message is always kept whole.

What this path cannot reduce (e.g. a huge forwarded message/rfc822 part) is a Prepared with an error
(which sends the message to the quarantine with its raw bytes).
"""

from __future__ import annotations

import binascii
import email.message
import email.parser
import email.policy
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mail2ticket.errors import ParseError, TempFailError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.files.spool import Spool, spool_chunks
from mail2ticket.parse import charsets, headers
from mail2ticket.parse.htmltext import html_to_text
from mail2ticket.parse.mimeguard import HEAD_PREFIX_BYTES, header_start
from mail2ticket.parse.parsed import (
    DEFAULT_LIMITS,
    ParseLimits,
    Prepared,
    StoredAttachment,
    attachment_fields,
)

MiB = 1024 * 1024
BIG_MESSAGE = 8 * MiB  # by RFC822.SIZE: above this a message takes this path
LARGE_PART = 1 * MiB  # a leaf body longer than this is streamed, never parsed in memory
TEXT_KEEP = 1 * MiB  # of a huge text body, this much is shown in the ticket
# A message of more lines than this is parsed from a file whatever its size: the email package
# spends about 85 bytes of memory on each line (8 MB of soft line breaks: about 240 MiB).
MANY_LINES = 300_000
SKELETON_MAX = 16 * MiB  # what is left for parse_message after the large bodies are taken out
READ = 4 * MiB  # bytes read from the file at a time
_HEADER_WINDOW = 1 * MiB + 4
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(rb"^(?:[^\s:][^:\r\n]*:|[ \t])")
_DELIM_TAIL = re.compile(rb"(--)?[ \t]*(\r\n|\r|\n|$)")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_B64 = bytes(b for b in range(256) if b not in _B64_ALPHABET)
_CTES = ("base64", "quoted-printable", "7bit", "8bit", "binary")


def take(stream: BinaryIO, directory: str | os.PathLike | Callable[[], Any], threshold: int = BIG_MESSAGE
         ) -> tuple[bytes | None, Spool | None]:
    """Read one message from ``stream`` (standard input, a Maildir file): ``(raw, None)`` when it
    is at most ``threshold`` bytes, else ``(None, spool)``: the message in a temp file in
    ``directory`` (or the directory the callable ``directory`` returns). Never more than
    ``threshold`` + READ bytes in memory."""
    head = bytearray()
    while len(head) <= threshold:
        chunk = stream.read(threshold + 1 - len(head))
        if not chunk:
            return bytes(head), None
        head += chunk

    if callable(directory):  # found only when needed (ingest reads its config after a small message)
        directory = directory()

    def rest() -> Iterator[bytes]:
        yield bytes(head)
        head.clear()
        while chunk := stream.read(READ):
            yield chunk

    return None, spool_chunks(rest(), directory)


def too_many_lines(raw: bytes) -> bool:
    """Whether ``raw``, though small, must be parsed from a file (MANY_LINES)."""
    return raw.count(b"\n") > MANY_LINES


def parse_bytes(parse: Callable[[bytes], Any], store: AttachmentStore, raw: bytes,
                limits: ParseLimits | None = None) -> Prepared:
    """parse_file's answer for a message in memory with too many lines: written to a temp file
    beside the attachments, parsed from there, the file removed. Raises TempFailError."""
    spool = spool_chunks([raw], store.root / "tmp")
    try:
        return parse_file(parse, store, spool.path, limits)
    finally:
        spool.unlink()


class _File:
    """Reads and searches a file by offset, a few MB at a time (never the whole file in memory)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._base = 0  # find's window: the bytes of the file at [_base, _base + len(_window))
        self._window = b""

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if end <= start:
            return b""
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start:
            raise OSError(f"short read at offset {start}: the file changed")
        return data

    def find(self, needle: bytes, start: int, end: int) -> int:
        """The offset of ``needle`` in [start, end), or -1. Searches a window of 2 * READ bytes
        kept between calls, so the thousands of finds of a message of many parts read the file
        once (not 4 MB for each delimiter)."""
        pos = start
        while pos < end:
            stop = min(end, self.size, pos + READ + len(needle) - 1)
            if pos < self._base or stop > self._base + len(self._window):
                self._base = pos
                self._window = self.read(pos, min(self.size, pos + 2 * READ + len(needle)))
            i = self._window.find(needle, pos - self._base, stop - self._base)
            if i >= 0:
                return self._base + i
            if stop >= end or stop >= self.size:
                return -1
            pos += READ
        return -1


@dataclass
class _Large:
    """One large leaf body: [start, end) of the file, its transfer encoding and type."""

    start: int
    end: int
    cte: str
    ctype: str
    charset: str | None
    marker: bytes = b""
    used: bool = field(default=False)


def _headers(f: _File, start: int, end: int):
    """(parsed headers, body start) of the part at [start, end), or None when unsure."""
    head = f.read(start, min(end, start + _HEADER_WINDOW))
    if head.startswith(b"\r\n"):
        return email.message.Message(), start + 2
    if head.startswith(b"\n"):
        return email.message.Message(), start + 1
    m = _HEADER_END.search(head)
    if m is None:
        return None
    block = head[: m.start()]
    for line in block.splitlines():
        if not _HEADER_LINE.match(line):
            return None  # the email package would start the body here: leave this part alone
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block + b"\n\n")
    return msg, start + m.end()


def _subparts(f: _File, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """[start, end) of each body part between the delimiter lines ``--boundary``."""
    delim = b"--" + boundary
    if f.read(start, start + len(delim)) == delim:
        at = start
    else:
        at = f.find(b"\n" + delim, start, end)
        at = at + 1 if at >= 0 else -1
    part_start = None
    while at >= 0:
        tail = f.read(at + len(delim), min(end, at + len(delim) + 256))
        m = _DELIM_TAIL.match(tail)
        if m is None or (m.group(2) == b"" and at + len(delim) + m.end() < end):
            at = f.find(b"\n" + delim, at + 1, end)  # "--boundaryX": not a delimiter line
            at = at + 1 if at >= 0 else -1
            continue
        if part_start is not None:
            part_end = at - 1  # the line break before the delimiter belongs to the delimiter
            if part_end > part_start and f.read(part_end - 1, part_end) == b"\r":
                part_end -= 1
            yield part_start, max(part_start, part_end)
        if m.group(1):  # the close delimiter
            return
        part_start = at + len(delim) + m.end()
        at = f.find(b"\n" + delim, part_start - 1, end)
        at = at + 1 if at >= 0 else -1
    if part_start is not None:
        yield part_start, end  # no close delimiter: the last part runs to the end


def _scan(f: _File, start: int, end: int, depth: int, found: list[_Large]) -> None:
    if depth > 40 or end - start <= LARGE_PART:
        return
    parsed = _headers(f, start, end)
    if parsed is None:
        return
    msg, body = parsed
    if msg.get_content_maintype() == "multipart":
        boundary = msg.get_boundary()
        if boundary:
            for part_start, part_end in _subparts(
                f, body, end, boundary.encode("utf-8", "surrogateescape")
            ):
                _scan(f, part_start, part_end, depth + 1, found)
        return
    if msg.get_content_maintype() == "message":
        return  # kept whole (a forwarded message is an .eml attachment): not reducible here
    cte = str(msg.get("content-transfer-encoding", "")).strip().lower() or "7bit"
    if cte not in _CTES or end - body <= LARGE_PART:
        return
    charset = msg.get_param("charset")
    if isinstance(charset, tuple):
        charset = charset[2]
    found.append(_Large(body, end, cte, msg.get_content_type(), str(charset) if charset else None))


def decoded(f: _File, large: _Large) -> Iterator[bytes]:
    """The decoded bytes of a large body, a few MB at a time (as mimewalk would decode them)."""
    pos, rest = large.start, b""
    while pos < large.end:
        stop = min(large.end, pos + READ)
        chunk = f.read(pos, stop)
        if large.cte == "quoted-printable" and stop < large.end:
            cut = chunk.rfind(b"\n") + 1  # whole lines only: never split an =XX escape
            if cut > 0:
                chunk, stop = chunk[:cut], pos + cut
        pos = stop
        if large.cte == "base64":
            data = rest + chunk.translate(None, _NOT_B64)
            n = len(data) - len(data) % 4
            rest = data[n:]
            if n:
                yield binascii.a2b_base64(data[:n])
        elif large.cte == "quoted-printable":
            yield binascii.a2b_qp(chunk)
        else:
            yield chunk
    if len(rest) % 4 == 1:
        rest = rest[:-1]
    if rest:
        yield binascii.a2b_base64(rest + b"=" * (-len(rest) % 4))


def _encoded_marker(marker: bytes, cte: str) -> bytes:
    return binascii.b2a_base64(marker, newline=False) if cte == "base64" else marker


def _skeleton(f: _File, found: list[_Large], token: bytes) -> bytes:
    out = bytearray()
    pos = 0
    for n, large in enumerate(found):
        large.marker = b"MAILTICKETLARGEPART%sN%dEND" % (token, n)
        out += f.read(pos, large.start)
        out += _encoded_marker(large.marker, large.cte)
        pos = large.end
    out += f.read(pos, f.size)
    return bytes(out)


def _excerpt(f: _File, large: _Large) -> tuple[str, bool]:
    """The first TEXT_KEEP bytes of a large text body, decoded as mimewalk decodes text."""

    data = bytearray()
    whole = True
    for chunk in decoded(f, large):
        data += chunk
        if len(data) > TEXT_KEEP:
            whole = False
            break
    data = bytes(data[:TEXT_KEEP])
    if not whole:
        cut = data.rfind(b"\n", max(0, len(data) - 4096))
        if cut > 0:
            data = data[: cut + 1]
    text, _ = charsets.decode(data, large.charset, hint=None, detect=True)
    return headers.clean(text.replace("\r\n", "\n").replace("\r", "\n"), single_line=False), whole


def parse_file(
    parse: Callable[[bytes], Any],
    store: AttachmentStore,
    path: str,
    limits: ParseLimits | None = None,
) -> Prepared:
    """Parse the message in the file ``path`` in bounded memory and store its attachments.

    A Prepared (``error`` set when it cannot be parsed); raises TempFailError when the file
    cannot be read or the store cannot take an attachment now."""
    limits = limits or DEFAULT_LIMITS
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise TempFailError(
            f"cannot read the fetched message {path}: {exc.strerror or exc}",
            "the next poll fetches it again",
        ) from None
    try:
        f = _File(fd, os.fstat(fd).st_size)
        if f.size > limits.max_message_bytes:
            return Prepared(error=(
                f"message of {f.size} bytes is over the size limit of "
                f"{limits.max_message_bytes} bytes (max_message_size)"
            ))
        found: list[_Large] = []
        # where parse_message finds the headers (after a BOM, an mbox From line, stray lines)
        start = header_start(f.read(0, HEAD_PREFIX_BYTES))[0]
        _scan(f, start, f.size, 0, found)
        left = f.size - sum(large.end - large.start for large in found)
        if left > SKELETON_MAX:
            return Prepared(error=(
                f"message of {f.size} bytes could not be parsed in bounded memory: "
                f"{left} bytes are in parts that cannot be streamed (e.g. a forwarded "
                f"message), over {SKELETON_MAX}; the raw message is kept"
            ))
        skeleton = _skeleton(f, found, os.urandom(8).hex().encode())
        try:
            parsed = parse(skeleton)
        except ParseError as exc:
            return Prepared(error=str(exc))
        except Exception as exc:  # a parser bug must never stop the queue
            return Prepared(error=f"internal parser error: {exc.__class__.__name__}: {exc}")
        del skeleton
        markers = {large.marker: large for large in found}
        stored, kept = [], []
        for index, att in enumerate(parsed.attachments):
            large = markers.get(att.data)
            if large is not None:
                large.used = True
                try:
                    sha, rel, size = store.put_stream(
                        decoded(f, large), max_bytes=limits.max_attachment_bytes
                    )
                except ValueError:
                    return Prepared(error=(
                        f"attachment too large: over the limit of {limits.max_attachment_bytes} "
                        "bytes (max_attachment_bytes)"
                    ))
            else:
                data = att.data
                sha, rel = store.put(data)
                size = len(data)
            stored.append((index, sha, rel))
            kept.append(StoredAttachment(attachment_fields(att), size, sha, store.root / rel, source=store))
        parsed.attachments = kept
        for large in found:
            if large.used:
                continue
            text = large.marker.decode("ascii")
            if text not in (parsed.body_text or "") and text not in (parsed.body_html or ""):
                continue
            excerpt, whole = _excerpt(f, large)
            shown = excerpt
            if large.ctype == "text/html":

                shown = html_to_text(excerpt)
                if parsed.body_html:
                    parsed.body_html = parsed.body_html.replace(text, excerpt)
            parsed.body_text = (parsed.body_text or "").replace(text, shown)
            if not whole:
                parsed.defects.append(
                    f"{large.ctype} body of {large.end - large.start} bytes is too long to show: its first "
                    f"{TEXT_KEEP // MiB} MB are shown; the whole message is kept"
                )
        return Prepared(parsed, stored)
    except TempFailError:
        raise
    except OSError as exc:
        raise TempFailError(
            f"cannot read the fetched message {path}: {exc.strerror or exc}",
            "the next poll fetches it again",
        ) from None
    except Exception as exc:  # anything this path cannot handle: the quarantine, never a crash
        return Prepared(error=f"internal parser error (large message): {exc.__class__.__name__}: {exc}")
    finally:
        os.close(fd)
