"""What the parser returns: ParsedMessage and ParsedAttachment, and the ParseLimits it keeps to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

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
    # What parse/monitoring.recognise found (a Monitoring), set by the prepare step when the
    # config recognises monitoring mail; None for other mail (docs/monitoring.md).
    monitoring: Any = None

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


class StoredAttachment:
    """An attachment a worker already wrote to the store: its fields and size, the bytes on disk.

    ``pending``: the temp file it was written to without fsync (put_pending), which the main
    process makes durable and moves to ``path`` before the batch commits (PreparedBatch.result);
    None when it is already at ``path``. ``source``: the store that reads it back (for a bucket,
    ``path`` is only where a parser worker staged it)."""

    def __init__(self, fields: dict[str, Any], size: int, sha256: str, path: Path, pending: Path | None = None,
                 source: Any = None):
        self.__dict__.update(fields)
        self.size = size
        self.sha256 = sha256
        self.path = path
        self.pending = pending
        self.source = source

    @property
    def data(self) -> bytes:
        """The bytes, read back from the store and checked against their SHA-256 (rarely needed:
        bounce detection reads small ones)."""
        if self.source is None:
            return self.path.read_bytes()
        return self.source.read(self.sha256)


def attachment_fields(att: Any) -> dict[str, Any]:
    try:
        fields = dict(vars(att))
    except TypeError:  # __slots__
        fields = {name: getattr(att, name) for name in getattr(att, "__slots__", ()) if hasattr(att, name)}
    fields.pop("data", None)
    return fields


@dataclass
class Prepared:
    """What the prepare step (parse/prepare.py) made of one message: the parsed message with its
    attachments already in the store (``stored``: (index, sha256, relpath) of each), or why it
    could not be parsed (``error``, for the quarantine)."""

    parsed: ParsedMessage | None = None
    stored: list[tuple[int, str, str]] = field(default_factory=list)
    error: str | None = None
