"""Walk a parsed MIME tree once: the body text candidates, every attachment, the defects."""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import re
from email.message import Message

from mail2ticket.errors import ParseError
from mail2ticket.parse import charsets, headers, htmltext, tnef, uuencode
from mail2ticket.parse.filenames import safe_filename
from mail2ticket.parse.mimeguard import DEEP_PREFIX
from mail2ticket.parse.parsed import ParsedAttachment, ParseLimits

_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}charset\s*=\s*["']?([a-zA-Z0-9_.:-]{1,40})""", re.I)
_SIGNATURE_ONLY = re.compile(r"^\s*(--\s*\n|__+\s*\n)", re.S)
_PARAM_HEADERS = ("content-type", "content-disposition")
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


class Walker:
    """Walks the MIME tree once: body text candidates, attachments, defects; counts parts."""

    def __init__(
        self,
        limits: ParseLimits,
        hint: str | charsets.Hints | None,
        attachments: list[ParsedAttachment] | None = None,
    ) -> None:
        self.limits = limits
        self.hint = hint
        self.parts = 0
        self.pieces: list[tuple[str | None, str | None]] = []  # (plain, html) per body piece
        self.attachments: list[ParsedAttachment] = [] if attachments is None else attachments
        self.defects: list[str] = []
        self.forwarded: list[tuple[Message, Walker]] = []  # enclosed messages, walked
        self.tnef_body: str | None = None
        # Whether this walks the message itself: an enclosed message is kept whole as an .eml,
        # so its alternatives are not stored again as parts.
        self.keeps_alternatives = True

    # -- tree ---------------------------------------------------------------------------
    def walk(self, part: Message, depth: int, in_body: bool) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise ParseError(f"too many MIME parts: more than {self.limits.max_parts} (max_parts)")
        for defect in getattr(part, "defects", ()):
            self.defects.append(f"MIME: {type(defect).__name__}")
        ctype = self.content_type(part)
        payload = part._payload  # get_payload() may charset-decode, and raise doing so
        if ctype.startswith(DEEP_PREFIX):
            self.attachment(part, ctype[len(DEEP_PREFIX) :], self.payload_bytes(part))
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
            data = self.payload_bytes(part)
            lone = _lone_part(data)
            if lone is not None:
                self.defects.append(
                    f"{ctype}: the boundary never appears; its one part read by its own headers"
                )
                self.walk(lone, depth + 1, in_body)
            elif data.strip():
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
        html = htmls[0] if htmls else None
        if (
            plain is not None
            and html is not None
            and _meaningful(plain)
            and not _large(part)
            and _LARGE_MARKER not in plain
            and _LARGE_MARKER not in html
        ):
            html_text = htmltext.html_to_text(html)
            if _adds_text(html_text, plain):
                # The alternatives disagree (a paragraph, a signature, a disclaimer only in the
                # HTML): the richer one is the body, the other stays readable as a stored part.
                if _adds_text(plain, html_text) and _word_count(plain) >= _word_count(html_text):
                    self.pieces.append((plain, html))
                    other = ("text/html", html, "html version.html")
                else:
                    self.pieces.append((None, html))
                    other = ("text/plain", plain, "plain text version.txt")
                if self.keeps_alternatives:
                    ctype, text, name = other
                    self.attachment(
                        part, ctype, text.encode("utf-8"), name=name, disposition="attachment"
                    )
                return
        self.pieces.append((plain, html))

    def forwarded_message(self, part: Message, depth: int) -> None:
        """A message/rfc822 part: kept whole as an .eml, and its own attachments listed after it."""
        inner = part.get_payload(0)
        subject = _header(inner, "subject", self.hint) if isinstance(inner, Message) else ""
        original = self.filename(part)
        name = f"{subject}.eml" if subject else original or "forwarded message.eml"
        self.attachment(part, "message/rfc822", _flatten(inner), name=name, original=original)
        if isinstance(inner, Message):
            nested = Walker(self.limits, self.hint, self.attachments)
            nested.keeps_alternatives = False
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
        declared = param(part, "charset")
        if declared is None and ctype == "text/html":
            meta = _META_CHARSET.search(data[:4096])
            declared = meta.group(1).decode("ascii") if meta else None
        text, defect = charsets.decode(
            data, declared, hint=charsets.likely_only(self.hint), detect=True
        )
        if defect:
            self.defects.append(f"{ctype} body: {defect}")
        return headers.clean(text.replace("\r\n", "\n").replace("\r", "\n"), single_line=False)

    def filename(self, part: Message) -> str | None:
        """The decoded file name the part gives (RFC 2231, encoded words, raw 8-bit), or None."""
        params = _param_headers(part, self.hint)
        for key, header in (("filename", "content-disposition"), ("name", "content-type")):
            try:
                value = params.get_param(key, None, header)
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


_PART_FIELD = re.compile(rb"[!-9;-~]{1,76}[ \t]*:")
_DELIMITER_LIKE = re.compile(rb"\n--[^\s]+[ \t]*\r?\n(?:[ \t]*\r?\n)?content-", re.I)


def _lone_part(data: bytes) -> Message | None:
    """The one MIME part a multipart without its boundary holds, or None when it is not obvious.

    Obvious: the payload starts (after blank lines) with a header block of part headers only,
    naming its Content-Type or Content-Transfer-Encoding, and nothing later looks like another
    part's delimiter.
    """
    text = data.lstrip(b"\r\n")
    end = re.search(rb"\r?\n\r?\n", text[:8192])
    if end is None:
        return None
    fields = []
    for line in text[: end.start()].split(b"\n"):
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and fields:
            continue
        if not _PART_FIELD.match(line):
            return None
        fields.append(line.split(b":", 1)[0].strip().lower())
    if not any(f in (b"content-type", b"content-transfer-encoding") for f in fields):
        return None
    if _DELIMITER_LIKE.search(text, end.end()):
        return None
    part = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(text)
    return None if part.is_multipart() else part


def _header(msg: Message, name: str, hint: str | charsets.Hints | None) -> str:
    """The first ``name`` header of ``msg``, decoded; "" when missing."""
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return headers.decode(value, hint)[0]
    return ""


_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bmailto:\S+|\btel:\S+", re.I)
_ALT_TEXT = re.compile(r"\[[^\]\n]{0,200}\]")  # image alt text, as htmltext shows it
_WORD = re.compile(r"\w+")
ADDED_RUN = 3  # this many words in a row the plain part lacks make the HTML the richer body


def _adds_text(html_text: str, plain: str) -> bool:
    """Whether the HTML (as text) holds a run of ADDED_RUN or more words the plain part lacks.

    Links, image alt text and formatting do not count: only words a person wrote."""
    known = set(_WORD.findall(_URL.sub(" ", plain).lower()))
    run = 0
    for word in _WORD.findall(_ALT_TEXT.sub(" ", _URL.sub(" ", html_text)).lower()):
        run = 0 if word in known else run + 1
        if run >= ADDED_RUN:
            return True
    return False


# A part this large is streamed by the large-message path (bigmessage.LARGE_PART), which shows
# only a marker here: alternatives holding one are not compared, on either path, so both agree.
_LARGE_PART = 1024 * 1024
_LARGE_MARKER = "MAILTICKETLARGEPART"


def _large(alternative: Message) -> bool:
    for count, sub in enumerate(alternative.walk()):
        payload = sub._payload
        if count > 50:
            return True
        if isinstance(payload, str) and len(payload) > _LARGE_PART:
            return True
    return False


def _word_count(text: str) -> int:
    return len(_WORD.findall(_ALT_TEXT.sub(" ", _URL.sub(" ", text))))


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


def param(part: Message, name: str, header: str = "content-type") -> str | None:
    try:
        value = _param_headers(part, None).get_param(name, None, header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):
        value = value[2]
    return headers.clean(str(value)).strip() or None


def _param_headers(part: Message, hint: str | charsets.Hints | None) -> Message:
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
