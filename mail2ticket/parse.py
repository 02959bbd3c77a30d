"""Parse raw mail bytes into a ParsedMessage: headers, readable text, attachments."""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message

from mail2ticket import autoreply, charsets, headers, htmltext, tnef, uuencode
from mail2ticket.errors import ParseError
from mail2ticket.filenames import safe_filename

MiB = 1024 * 1024


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on what one message may cost; input beyond them raises ParseError (quarantine)."""

    max_message_bytes: int = 40 * MiB
    max_attachment_bytes: int = 25 * MiB
    max_depth: int = 50  # MIME nesting; deeper parts are kept unparsed as one attachment
    max_parts: int = 10_000
    max_header_bytes: int = 1 * MiB


DEFAULT_LIMITS = ParseLimits()


@dataclass
class ParsedAttachment:
    """One attachment as found in the mail. ``filename`` is for display only, never a path."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None
    disposition: str = "attachment"
    original_filename: str | None = None  # the decoded name the mail gave, if any (not safe)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class ParsedMessage:
    """What mail2ticket reads from one message. Text fields never hold surrogates."""

    message_id: str | None
    subject: str
    from_address: str | None
    from_name: str | None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    date: datetime | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    body_text: str = ""
    body_html: str | None = None
    attachments: list[ParsedAttachment] = field(default_factory=list)
    auto_reply: str | None = None  # why this is automatic mail (no acknowledgement), or None
    defects: list[str] = field(default_factory=list)
    headers: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> values

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def to_dict(self) -> dict:
        return {
            "message_id": self.message_id,
            "subject": self.subject,
            "from_address": self.from_address,
            "from_name": self.from_name,
            "to": self.to,
            "cc": self.cc,
            "reply_to": self.reply_to,
            "date": self.date.isoformat().replace("+00:00", "Z") if self.date else None,
            "in_reply_to": self.in_reply_to,
            "references": self.references,
            "body_text": self.body_text,
            "attachments": [
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "sha256": a.sha256,
                    "content_id": a.content_id,
                    "disposition": a.disposition,
                    "original_filename": a.original_filename,
                }
                for a in self.attachments
            ],
            "auto_reply": self.auto_reply,
            "defects": self.defects,
        }


_OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NESTING_TYPES = re.compile(rb"(?i)multipart/|message/rfc822")
_BOUNDARY = re.compile(rb'(?i)boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
_DEEP_PREFIX = "x-mail2ticket-unparsed-"
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}charset\s*=\s*["']?([a-zA-Z0-9_.:-]{1,40})""", re.I)
_SIGNATURE_ONLY = re.compile(r"^\s*(--\s*\n|__+\s*\n)", re.S)
_PARAM_HEADERS = ("content-type", "content-disposition")
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


def parse_message(raw: bytes, *, limits: ParseLimits | None = None) -> ParsedMessage:
    """Parse ``raw`` (the exact bytes of a message). Raises ParseError only.

    Anything that cannot be decoded is still returned, with a fallback and a note in
    ``defects``. ParseError means nothing usable could be made, or a limit was exceeded.
    """
    limits = limits or DEFAULT_LIMITS
    try:
        return _parse(bytes(raw), limits)
    except ParseError:
        raise
    except RecursionError as exc:
        raise ParseError("message structure is nested too deeply to parse") from exc
    except MemoryError as exc:
        raise ParseError("message needs too much memory to parse") from exc
    except Exception as exc:  # a bug or a stdlib parser failure must not escape as a crash
        raise ParseError(f"message could not be parsed: {type(exc).__name__}: {exc}") from exc


def _parse(raw: bytes, limits: ParseLimits) -> ParsedMessage:
    if len(raw) > limits.max_message_bytes:
        raise ParseError(
            f"message too large: {len(raw)} bytes, over the limit of "
            f"{limits.max_message_bytes} bytes (max_message_bytes)"
        )
    if not raw.strip():
        raise ParseError("empty message: no headers and no body")
    if raw.startswith(_OLE_SIGNATURE):
        raise ParseError("not an e-mail message: an Outlook .msg file (OLE compound document)")
    end = _HEADER_END.search(raw)
    header_bytes = end.start() if end else len(raw)
    if header_bytes > limits.max_header_bytes:
        raise ParseError(
            f"header section too large: {header_bytes} bytes, over the limit of "
            f"{limits.max_header_bytes} bytes (max_header_bytes)"
        )
    delimiters = _count_delimiters(raw)
    if delimiters > limits.max_parts:
        raise ParseError(f"too many MIME parts: {delimiters}, over {limits.max_parts} (max_parts)")
    defects: list[str] = []
    source, cut = _unnest(raw, limits.max_depth)
    if cut:
        defects.append(
            f"MIME nesting deeper than {limits.max_depth} levels: deeper parts kept unparsed"
        )
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(source)
    if not msg.keys() and _looks_binary(raw):
        raise ParseError("not an e-mail message: binary data without any mail headers")

    hint = _charset_hint(msg)
    header_map: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = headers.clean(str(name)).strip().lower()
        text, _ = headers.decode(value, hint)
        header_map.setdefault(key, []).append(text)

    def raw_values(name: str) -> list[object]:
        return [v for k, v in msg.raw_items() if k.lower() == name]

    subject, subject_defects = _single(raw_values("subject"), "Subject", hint)
    defects += subject_defects
    from_values = raw_values("from")
    froms, address_defects = headers.addresses(from_values, hint)
    defects += address_defects
    if not from_values:
        defects.append("no From header")
    elif not froms:
        defects.append("From header holds no usable address")
    lists = {}
    for name in ("to", "cc", "reply-to"):
        pairs, address_defects = headers.addresses(raw_values(name), hint)
        defects += address_defects
        lists[name] = [addr for _, addr in pairs]
    date = _date(raw_values("date"), defects)
    message_ids = headers.message_ids((raw_values("message-id") or [None])[0])
    if not message_ids:
        defects.append(
            "no Message-ID header"
            if not raw_values("message-id")
            else "Message-ID header holds no <id>"
        )

    walker = _Walker(limits, hint)
    walker.walk(msg, depth=0, in_body=True)
    defects += walker.defects
    body_text, body_html = walker.body()
    result = ParsedMessage(
        message_id=message_ids[0] if message_ids else None,
        subject=subject,
        from_address=froms[0][1] if froms else None,
        from_name=(froms[0][0] or None) if froms else None,
        to=lists["to"],
        cc=lists["cc"],
        reply_to=lists["reply-to"],
        date=date,
        in_reply_to=headers.message_ids((raw_values("in-reply-to") or [None])[0]),
        references=headers.message_ids(" ".join(str(v) for v in raw_values("references"))),
        body_text=body_text,
        body_html=body_html,
        attachments=walker.attachments,
        headers=header_map,
    )
    result.auto_reply = autoreply.classify(
        header_map, result.from_address, msg.get_content_type(), _param(msg, "report-type")
    )
    result.defects = list(dict.fromkeys(headers.clean(d)[:500] for d in defects))
    return result


def _single(values: list[object], name: str, hint: str | None) -> tuple[str, list[str]]:
    if not values:
        return "", []
    text, defects = headers.decode(values[0], hint)
    if len(values) > 1:
        defects.append(f"{len(values)} {name} headers; the first is used")
    return text, defects


def _date(values: list[object], defects: list[str]) -> datetime | None:
    if not values:
        defects.append("no Date header")
        return None
    text = headers.clean(headers.raw_text(values[0])[0]).strip()
    try:
        date = email.utils.parsedate_to_datetime(text)
        if date.tzinfo is None:
            date = date.replace(tzinfo=UTC)
        return date.astimezone(UTC)
    except Exception:  # ValueError, TypeError, OverflowError, IndexError on garbage
        defects.append(f"unreadable Date header: {text[:80]!r}")
        return None


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:4096]
    controls = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return b"\x00" in sample or controls > len(sample) // 20


def _charset_hint(msg: Message) -> str | None:
    """The first declared charset of the message, to decode raw 8-bit header bytes with."""
    for count, part in enumerate(msg.walk()):
        if count > 20:
            break
        charset = _param(part, "charset")
        if charset and charsets.is_known(charset) and charset.lower() not in ("us-ascii", "utf-8"):
            return charset
    return None


def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    try:
        value = _param_headers(part, None).get_param(name, None, header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        value = value[2]
    return headers.clean(str(value)).strip() or None


def _param_headers(part: Message, hint: str | None) -> Message:
    """A copy of the part's Content-Type and Content-Disposition with raw 8-bit bytes decoded.

    The stdlib turns 8-bit bytes in parameters into U+FFFD; decoding them first keeps a UTF-8
    or legacy-charset file name readable.
    """
    if all(str(v).isascii() for k, v in part.raw_items() if k.lower() in _PARAM_HEADERS):
        return part
    copy = Message()
    for key, value in part.raw_items():
        if key.lower() in _PARAM_HEADERS:
            copy.set_raw(key, headers.raw_text(value, hint)[0])
    return copy


def _count_delimiters(raw: bytes) -> int:
    """How many parts the declared boundaries open: a cheap early count of MIME parts.

    Returns 0 (no early verdict; the walk still counts) when there are too many distinct
    boundaries to count cheaply.
    """
    boundaries = {quoted or bare for quoted, bare in _BOUNDARY.findall(raw, 0, len(raw))}
    if len(boundaries) > 200:
        return 0
    return sum(
        raw.count(b"\n--" + boundary + b"\n") + raw.count(b"\n--" + boundary + b"\r\n")
        for boundary in boundaries
    )


def _unnest(raw: bytes, max_depth: int) -> tuple[bytes, bool]:
    """Make MIME parts nested deeper than ``max_depth`` opaque, so the stdlib never recurses on them.

    Scans lines like the MIME parser does, tracking open boundaries and enclosed messages, and
    renames the content type of any part that would open a level too deep. The raw bytes
    the caller keeps are not changed.
    """
    if len(_NESTING_TYPES.findall(raw, 0, len(raw))) <= max_depth:
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
        out += b" " + _DEEP_PREFIX.encode()
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
    match = _BOUNDARY.search(ctype_value)
    if not match:
        return None, None
    return "multipart", match.group(1) or match.group(2)


class _Walker:
    """Walks the MIME tree once: body text candidates, attachments, defects; counts parts."""

    def __init__(
        self,
        limits: ParseLimits,
        hint: str | None,
        attachments: list[ParsedAttachment] | None = None,
    ) -> None:
        self.limits = limits
        self.hint = hint
        self.parts = 0
        self.pieces: list[tuple[str | None, str | None]] = []  # (plain, html) per body piece
        self.attachments: list[ParsedAttachment] = [] if attachments is None else attachments
        self.defects: list[str] = []
        self.forwarded: list[tuple[Message, _Walker]] = []  # enclosed messages, walked
        self.tnef_body: str | None = None

    # -- tree ---------------------------------------------------------------------------
    def walk(self, part: Message, depth: int, in_body: bool) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise ParseError(f"too many MIME parts: more than {self.limits.max_parts} (max_parts)")
        for defect in getattr(part, "defects", ()):
            self.defects.append(f"MIME: {type(defect).__name__}")
        ctype = self.content_type(part)
        payload = part._payload  # get_payload() may charset-decode, and raise doing so
        if ctype.startswith(_DEEP_PREFIX):
            self.attachment(part, ctype[len(_DEEP_PREFIX) :], self.payload_bytes(part))
        elif part.is_multipart() and ctype == "message/rfc822":
            self.forwarded_message(part, depth)
        elif part.is_multipart() and depth >= self.limits.max_depth:
            self.defects.append(f"MIME nesting deeper than {self.limits.max_depth} levels")
            self.attachment(part, ctype, _flatten(part))
        elif part.is_multipart() and ctype == "multipart/alternative" and in_body:
            self.alternative(part, depth)
        elif part.is_multipart() and isinstance(payload, list) and ctype.startswith("multipart/"):
            if not payload:
                self.defects.append(f"{ctype} without parts")
            for child in payload:
                self.walk(child, depth + 1, in_body)
        elif part.is_multipart():  # message/delivery-status and other message/* lists
            self.attachment(part, ctype, _flatten_payload(part))
        elif ctype.startswith("multipart/"):  # no boundary, or no parts: show what text it has
            self.defects.append(f"{ctype} without parts")
            if self.payload_bytes(part).strip():
                self.leaf(part, "text/plain", in_body)
        else:
            self.leaf(part, ctype, in_body)

    def content_type(self, part: Message) -> str:
        """The part's content type; a named part with an invalid one is application/octet-stream."""
        ctype = headers.clean(part.get_content_type()).replace(" ", "")[:128]
        declared = part.get("content-type")
        if declared is None or ctype != part.get_default_type():
            return ctype
        value = headers.clean(str(declared)).split(";", 1)[0].strip().lower()
        if value and value != ctype:
            self.defects.append(f"invalid Content-Type {value[:40]!r}")
            if self.filename(part):
                return "application/octet-stream"
        return ctype

    def alternative(self, part: Message, depth: int) -> None:
        outer = self.pieces
        self.pieces = []
        for child in part.get_payload():
            self.walk(child, depth + 1, in_body=True)
        inner, self.pieces = self.pieces, outer
        plains = [p for p, _ in inner if p is not None]
        htmls = [h for _, h in inner if h is not None]
        plain = next((p for p in plains if _meaningful(p)), plains[0] if plains else None)
        self.pieces.append((plain, htmls[0] if htmls else None))

    def forwarded_message(self, part: Message, depth: int) -> None:
        """A message/rfc822 part: kept whole as an .eml, and its own attachments listed after it."""
        inner = part.get_payload(0)
        subject = _header(inner, "subject", self.hint) if isinstance(inner, Message) else ""
        original = self.filename(part)
        name = f"{subject}.eml" if subject else original or "forwarded message.eml"
        self.attachment(part, "message/rfc822", _flatten(inner), name=name, original=original)
        if isinstance(inner, Message):
            nested = _Walker(self.limits, self.hint, self.attachments)
            nested.parts = self.parts
            nested.walk(inner, depth + 1, in_body=True)
            self.parts = nested.parts
            self.defects += nested.defects
            self.forwarded.append((inner, nested))

    def leaf(self, part: Message, ctype: str, in_body: bool) -> None:
        data = self.payload_bytes(part)
        original = self.filename(part)
        disposition = _disposition(part)
        if (
            in_body
            and ctype in ("text/plain", "text/html")
            and disposition != "attachment"
            and (not original or not self.pieces)
        ):
            text = self.text(part, data, ctype)
            if ctype == "text/html":
                self.pieces.append((None, text))
                return
            text, files = uuencode.extract(text)
            self.pieces.append((text, None))
            for name, content in files:
                self.attachment(
                    part,
                    "application/octet-stream",
                    content,
                    name=name,
                    original=name,
                    disposition="attachment",
                )
            return
        self.attachment(part, ctype, data, original=original)
        if (
            ctype in _TNEF_TYPES
            or (original or "").lower() == "winmail.dat"
            or (ctype == "application/octet-stream" and tnef.is_tnef(data))
        ):
            self.unpack_tnef(part, data)

    # -- content ------------------------------------------------------------------------
    def payload_bytes(self, part: Message) -> bytes:
        """The decoded bytes of a leaf part, per its Content-Transfer-Encoding."""
        # The undecoded body as parsed (8-bit bytes kept as surrogates): get_payload() would
        # already have decoded 8-bit text with the declared charset, losing the bytes.
        payload = part._payload
        if isinstance(payload, list):
            return _flatten_payload(part)
        raw = headers.to_bytes(payload or "")
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte == "base64":
            data = _base64(raw)
        elif cte == "quoted-printable":
            data = binascii.a2b_qp(raw)
        elif cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
            data = uuencode.decode_part(raw)[1]
        else:
            if cte not in ("", "7bit", "8bit", "binary"):
                self.defects.append(
                    f"unknown Content-Transfer-Encoding {headers.clean(cte)[:40]!r}: kept as is"
                )
            data = raw
        if len(data) > self.limits.max_attachment_bytes:
            raise ParseError(
                f"a part is too large: {len(data)} bytes, over the limit of "
                f"{self.limits.max_attachment_bytes} bytes (max_attachment_bytes)"
            )
        return data

    def text(self, part: Message, data: bytes, ctype: str) -> str:
        declared = _param(part, "charset")
        if declared is None and ctype == "text/html":
            meta = _META_CHARSET.search(data[:4096])
            declared = meta.group(1).decode("ascii") if meta else None
        text, defect = charsets.decode(data, declared, hint=None, detect=True)
        if defect:
            self.defects.append(f"{ctype} body: {defect}")
        return headers.clean(text.replace("\r\n", "\n").replace("\r", "\n"), single_line=False)

    def filename(self, part: Message) -> str | None:
        """The decoded file name the part gives (RFC 2231, encoded words, raw 8-bit), or None."""
        params = _param_headers(part, self.hint)
        for param, header in (("filename", "content-disposition"), ("name", "content-type")):
            try:
                value = params.get_param(param, None, header)
            except Exception:
                continue
            if value is None:
                continue
            if isinstance(value, tuple):  # RFC 2231: (charset, language, text as latin-1)
                charset, _language, text = value
                data = str(text).encode("latin-1", "replace")
                name, defect = charsets.decode(data, charset or None, hint=self.hint, detect=False)
                if defect:
                    self.defects.append(f"file name: {defect}")
                name = headers.clean(name).strip()
            else:
                name, name_defects = headers.decode(value, self.hint)
                self.defects.extend(f"file name: {d}" for d in name_defects)
            if name:
                return name
        return None

    def attachment(
        self,
        part: Message,
        ctype: str,
        data: bytes,
        *,
        name: str | None = None,
        original: str | None = None,
        disposition: str | None = None,
    ) -> None:
        if len(data) > self.limits.max_attachment_bytes:
            raise ParseError(
                f"attachment too large: {len(data)} bytes, over the limit of "
                f"{self.limits.max_attachment_bytes} bytes (max_attachment_bytes)"
            )
        index = len(self.attachments) + 1
        content_id = headers.clean(str(part.get("content-id") or "")).strip()[:998]
        self.attachments.append(
            ParsedAttachment(
                filename=safe_filename(name or original, ctype, index),
                content_type=ctype,
                data=data,
                content_id=content_id or None,
                disposition=disposition or _disposition(part) or "attachment",
                original_filename=original,
            )
        )

    def unpack_tnef(self, part: Message, data: bytes) -> None:
        try:
            content = tnef.unpack(data)
        except tnef.TNEFError as exc:
            self.defects.append(f"winmail.dat could not be unpacked: {exc}")
            return
        for packed in content.files:
            ctype = (packed.content_type or "application/octet-stream").lower()
            self.attachment(
                part, ctype, packed.data, original=packed.name, disposition="attachment"
            )
        if content.body and self.tnef_body is None:
            self.tnef_body = headers.clean(content.body, single_line=False)

    # -- result -------------------------------------------------------------------------
    def body(self) -> tuple[str, str | None]:
        """The text a person would read, and the first HTML body (raw) if there is one."""
        texts = []
        for plain, html in self.pieces:
            if plain is not None and (_meaningful(plain) or html is None):
                texts.append(plain.strip("\n"))
            elif html is not None:
                texts.append(htmltext.html_to_text(html))
        text = "\n\n".join(t for t in texts if t.strip())
        if not text.strip() and self.tnef_body:
            text = self.tnef_body.strip()
        if not text.strip() and self.forwarded:
            text = self.forwarded_text()
        html = next((h for _, h in self.pieces if h is not None), None)
        return text, html

    def forwarded_text(self) -> str:
        """The first enclosed message as a person sees it shown below an empty mail."""
        inner, nested = self.forwarded[0]
        lines = ["---------- Forwarded message ----------"]
        for name in ("From", "Date", "Subject"):
            value = _header(inner, name, self.hint)
            if value:
                lines.append(f"{name}: {value}")
        return "\n".join([*lines, "", nested.body()[0]]).strip()


def _header(msg: Message, name: str, hint: str | None) -> str:
    """The first ``name`` header of ``msg``, decoded; "" when missing."""
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return headers.decode(value, hint)[0]
    return ""


def _meaningful(text: str) -> bool:
    """Whether plain text carries a message: not empty, not only a signature."""
    return bool(text.strip()) and not _SIGNATURE_ONLY.match(text)


def _disposition(part: Message) -> str | None:
    value = part.get("content-disposition")
    if value is None:
        return None
    kind = headers.clean(str(value)).split(";", 1)[0].strip().lower()
    return kind if kind in ("inline", "attachment") else None


def _base64(raw: bytes) -> bytes:
    try:
        return binascii.a2b_base64(raw)
    except binascii.Error:
        data = re.sub(rb"[^A-Za-z0-9+/]", b"", raw)
        if len(data) % 4 == 1:
            data = data[:-1]
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def _flatten(msg: object) -> bytes:
    """Bytes of a parsed (sub)message, rebuilt from the raw header values and payloads kept.

    Cheaper and closer to the original than email.generator, which re-folds every header.
    """
    if not isinstance(msg, Message):
        return headers.to_bytes(msg or "")
    out: list[bytes] = []
    _write(msg, out)
    return b"".join(out)


def _write(msg: Message, out: list[bytes]) -> None:
    for key, value in msg.raw_items():
        out.append(headers.to_bytes(f"{key}: {value}\n"))
    out.append(b"\n")
    payload = msg._payload  # as parsed; get_payload() would charset-decode 8-bit text
    if not isinstance(payload, list):
        out.append(headers.to_bytes(payload or ""))
        return
    if msg.get_content_maintype() != "multipart":
        for sub in payload:
            _write(sub, out)
        return
    boundary = headers.to_bytes(msg.get_boundary() or "")
    if msg.preamble:
        out.append(headers.to_bytes(msg.preamble) + b"\n")
    for sub in payload:
        out.append(b"--" + boundary + b"\n")
        _write(sub, out)
        out.append(b"\n")
    out.append(b"--" + boundary + b"--\n")
    if msg.epilogue:
        out.append(headers.to_bytes(msg.epilogue))


def _flatten_payload(part: Message) -> bytes:
    payload = part._payload
    if isinstance(payload, list):
        return b"\n".join(_flatten(sub) for sub in payload)
    return headers.to_bytes(payload or "")
