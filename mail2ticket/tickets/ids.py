"""Our own Message-IDs (signed, so only this installation can make them) and subject tags: how our mail is recognised."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database


# --- our Message-IDs ---------------------------------------------------------------------------
# <m2t.NONCE.TOKEN@DOMAIN>, TOKEN = HMAC-SHA256(secret, NONCE) cut to 80 bits. The secret lives in
# the database (conversation_state), so only this installation can make ids that verify: a
# References header that merely looks like ours is not trusted (RELIABILITY 38), and our own
# mail fetched back is recognised (RELIABILITY 44).
OUR_ID_RE = re.compile(r"^<m2t\.([0-9a-f]{8,40})\.([0-9a-f]{20})@([A-Za-z0-9.-]{1,253})>$")


TOKEN_CHARS = 20


SECRET_KEY = "message_id_secret"


def message_id_secret(db: Database) -> bytes:
    """The key of our Message-ID tokens (created by migration m101; created here if it is lost)."""
    row = db.execute("select value from conversation_state where key = ?", [SECRET_KEY]).fetchone()
    if row is None:
        db.execute(
            "insert into conversation_state (key, value) values (?, ?) on conflict(key) do nothing",
            [SECRET_KEY, secrets.token_hex(32)],
        )
        row = db.execute("select value from conversation_state where key = ?", [SECRET_KEY]).fetchone()
    return bytes.fromhex(row[0])


def _token(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()[:TOKEN_CHARS]


def _domain_of(address: str) -> str:
    domain = address.rpartition("@")[2].lower()
    domain = re.sub(r"[^a-z0-9.-]", "", domain).strip(".-")
    return domain or "mail2ticket.invalid"


def new_message_id(db: Database, from_address: str) -> str:
    """A fresh Message-ID of ours, in the sender's domain, carrying a token only we can make."""
    nonce = f"{int(time.time()):x}{secrets.token_hex(6)}"
    return f"<m2t.{nonce}.{_token(message_id_secret(db), nonce)}@{_domain_of(from_address)}>"


def looks_like_ours(message_id: str | None) -> bool:
    """Shaped like one of our ids (whether or not the token is valid)."""
    return bool(message_id) and OUR_ID_RE.match(message_id) is not None  # type: ignore[arg-type]


def is_our_message_id(db: Database, message_id: str | None) -> bool:
    """True only for an id that this installation made (the token verifies)."""
    if not message_id:
        return False
    m = OUR_ID_RE.match(message_id)
    if m is None:
        return False
    return hmac.compare_digest(m.group(2), _token(message_id_secret(db), m.group(1)))


def make_tag(tag_format: str, ticket_id: int) -> str:
    return tag_format.replace("{id}", str(ticket_id))


@functools.lru_cache(maxsize=16)
def tag_pattern(tag_format: str) -> re.Pattern[str]:
    """The regex that finds the tag of ``tag_format`` in a subject; group 1 is the ticket id."""
    before, _, after = tag_format.partition("{id}")
    return re.compile(re.escape(before) + r"(\d{1,12})" + re.escape(after))


# Our Message-IDs as they appear anywhere in a bounce (the returned headers of our mail).
OUR_ID_IN_TEXT = re.compile(rb"<m2t\.[0-9a-f]{8,40}\.[0-9a-f]{20}@[A-Za-z0-9.-]{1,253}>")
