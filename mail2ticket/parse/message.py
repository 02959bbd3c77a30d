"""Parse raw mail bytes into a ParsedMessage: headers, readable text, attachments."""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from datetime import UTC, datetime
from email.message import Message

from mail2ticket.errors import ParseError
from mail2ticket.parse import autoreply, charguess, charsets, headers
from mail2ticket.parse.mimeguard import count_delimiters, header_start, unnest
from mail2ticket.parse.mimewalk import Walker, param
from mail2ticket.parse.parsed import DEFAULT_LIMITS, ParsedAttachment, ParsedMessage, ParseLimits

__all__ = ["DEFAULT_LIMITS", "ParseLimits", "ParsedAttachment", "ParsedMessage", "parse_message"]

_OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def parse_message(raw: bytes, *, limits: ParseLimits | None = None) -> ParsedMessage:
    """Parse ``raw`` (the exact bytes of a message). Raises ParseError only.

    Anything that cannot be decoded is still returned, with a fallback and a note in
    ``defects``. ParseError means nothing usable could be made, or a limit was exceeded.
    """
    limits = limits or DEFAULT_LIMITS
    try:
        with charguess.per_message():
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
    start, defects = header_start(raw)
    if start:
        raw = raw[start:]
    end = _HEADER_END.search(raw)
    header_bytes = end.start() if end else len(raw)
    if header_bytes > limits.max_header_bytes:
        raise ParseError(
            f"header section too large: {header_bytes} bytes, over the limit of "
            f"{limits.max_header_bytes} bytes (max_header_bytes)"
        )
    lowered = raw.lower()  # for the two scans below, which ignore case
    delimiters = count_delimiters(raw, lowered)
    if delimiters > limits.max_parts:
        raise ParseError(f"too many MIME parts: {delimiters}, over {limits.max_parts} (max_parts)")
    source, cut = unnest(raw, limits.max_depth, lowered)
    del lowered
    if cut:
        defects.append(
            f"MIME nesting deeper than {limits.max_depth} levels: deeper parts kept unparsed"
        )
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(source)
    if not msg.keys() and _looks_binary(raw):
        raise ParseError("not an e-mail message: binary data without any mail headers")

    hint = _charset_hint(msg)

    def raw_values(name: str) -> list[object]:
        return [v for k, v in msg.raw_items() if k.lower() == name]

    subject, subject_defects = _single(raw_values("subject"), "Subject", hint)
    defects += subject_defects
    from_values = raw_values("from")
    from_name, from_address, address_defects = headers.sender(from_values, hint)
    defects += address_defects
    if not from_values:
        defects.append("no From header")
    elif not from_address:
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

    walker = Walker(limits, hint)
    walker.walk(msg, depth=0, in_body=True)
    defects += walker.defects
    body_text, body_html = walker.body()
    # Every header for display and rules, after the ones that matter most (the charset guesses a
    # message may make are bounded: Subject, From and the body are decoded first).
    header_map: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = headers.clean(str(name)).strip().lower()
        text, _ = headers.decode(value, hint)
        header_map.setdefault(key, []).append(text)

    result = ParsedMessage(
        message_id=message_ids[0] if message_ids else None,
        subject=subject,
        from_address=from_address,
        from_name=from_name,
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
        header_map, result.from_address, msg.get_content_type(), param(msg, "report-type")
    )
    result.defects = list(dict.fromkeys(headers.clean(d)[:500] for d in defects))
    return result


def _single(values: list[object], name: str, hint: str | charsets.Hints | None) -> tuple[str, list[str]]:
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


_DOMAIN = re.compile(r"@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def _charset_hint(msg: Message) -> charsets.Hints:
    """What the message says about the charset of its undeclared text: the first declared
    charset (raw 8-bit header bytes are decoded with it), and the codecs its parts' charsets,
    Content-Language and sender's country domain point to (a bonus when guessing)."""
    declared, likely = None, []
    languages = [str(v) for k, v in msg.raw_items() if k.lower() == "content-language"]
    for count, part in enumerate(msg.walk()):
        if count > 20:
            break
        charset = param(part, "charset")
        if charset and charsets.is_known(charset) and charset.lower() not in ("us-ascii", "utf-8"):
            declared = declared or charset
            likely.append(charsets.candidates(charset)[0])
        if count:
            languages += [str(v) for k, v in part.raw_items() if k.lower() == "content-language"]
    senders = [str(v) for k, v in msg.raw_items() if k.lower() in ("from", "sender", "reply-to")]
    domains = [m.group(1) for m in _DOMAIN.finditer(" ".join(senders)[:4096])]
    languages = [tag for value in languages[:5] for tag in value.split(",")[:5]]
    likely += charguess.likely_codecs(languages, domains[:3])
    return charsets.Hints(declared, tuple(dict.fromkeys(likely)))
