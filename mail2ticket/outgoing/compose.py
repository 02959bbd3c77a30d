"""Build outgoing mail: signed Message-IDs, threading headers, the ticket tag, CR/LF-safe headers."""

from __future__ import annotations

import email.policy
import email.utils
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from mail2ticket.config.conversations import FIELD_RE
from mail2ticket.tickets.ids import new_message_id, tag_pattern

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

# Outgoing mail: CRLF line ends, lines folded at 78, refusing CR/LF inside header values.
POLICY = email.policy.SMTP


# --- header text -------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_ADDRESS_RE = re.compile(r"^[^\s<>()\[\],;:\"\\@]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_MSGID_RE = re.compile(r"^<[!-;=?-~]{1,250}>$")  # printable ASCII, no '<' or '>' inside, no spaces
MAX_SUBJECT = 200


def header_text(text: str | None, limit: int = MAX_SUBJECT) -> str:
    """Text from a mail made safe for one header value: no CR, LF, NUL or other controls."""
    text = _UNSAFE.sub(" ", text or "")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def check_address(address: str | None) -> str:
    """A plain addr-spec we are willing to put in a header and an SMTP command; ValueError if not."""
    if not address or not _ADDRESS_RE.match(address):
        raise ValueError(f"not a usable e-mail address: {address!r}")
    return address


# --- mailboxes (item 56) -----------------------------------------------------------------------
# Providers that ignore dots in the local part; googlemail.com is gmail.com.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
# Names at our own domains that are no person's mailbox: no automatic mail goes to them.
_ROLE_LOCAL = re.compile(
    r"^(mailer-daemon|postmaster|abuse|root|hostmaster|webmaster|nobody|daemon|"
    r"bounces?(?:[-_.+].*)?|do[-_.]?not[-_.]?reply|no[-_.]?reply(?:[-_.+].*)?|no[-_.]?response)$",
    re.I,
)


def mailbox_key(address: str) -> str:
    """The mailbox behind an address, for counting: lower case, without a ``+tag`` subaddress,
    and without dots where the provider ignores them (gmail.com, googlemail.com)."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    domain = DOTLESS_DOMAINS.get(domain, domain)
    base = local.split("+", 1)[0] or local
    if domain in DOTLESS_DOMAINS.values():
        base = base.replace(".", "") or base
    return f"{base}@{domain}"


def mailbox_domains(key: str) -> list[str]:
    """The domains whose addresses can have the mailbox key ``key`` (gmail.com: both names)."""
    domain = key.rpartition("@")[2]
    return [d for d, canon in DOTLESS_DOMAINS.items() if canon == domain] or [domain]


def not_a_mailbox(address: str, own_domains: set[str] | frozenset[str] = frozenset()) -> str | None:
    """Why ``address`` cannot be a real outside mailbox (no automatic mail goes to it), or None:
    % or ! routing in the local part, localhost, an IP address, a no-reply or role name of one of
    ``own_domains``."""

    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return f"{address} has no domain"
    if "%" in local or "!" in local:
        return f"{address} routes through another host (% or ! in the local part)"
    if domain in ("localhost", "localhost.localdomain") or domain.endswith(".localhost"):
        return f"{address} is on localhost"
    try:
        ipaddress.ip_address(domain.strip("[]").removeprefix("ipv6:"))
        return f"{address} names an IP address, not a domain"
    except ValueError:
        pass
    if domain.startswith("["):
        return f"{address} names an address literal, not a domain"
    if domain in own_domains and _ROLE_LOCAL.match(local):
        return f"{address} is a no-reply or role name of our own domain"
    return None


def safe_msgids(ids: list[str]) -> list[str]:
    """The message ids that are safe to repeat in In-Reply-To/References."""
    return [i for i in ids if i and _MSGID_RE.match(i)]


def trim_references(ids: list[str], keep: int = 20) -> list[str]:
    """At most ``keep`` ids: the first (the thread root) and the most recent ones."""
    ids = list(dict.fromkeys(safe_msgids(ids)))
    if len(ids) <= keep:
        return ids
    return [ids[0], *ids[-(keep - 1):]]


def render(template: str, values: dict[str, Any]) -> str:
    """Replace {ticket}, {tag}, {subject}... in a template; ``{{``/``}}`` give literal braces."""
    out = []
    for part in re.split(r"(\{\{|\}\})", template):
        if part == "{{":
            out.append("{")
        elif part == "}}":
            out.append("}")
        else:
            out.append(FIELD_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), part))
    return "".join(out)


_PREFIX_RE = re.compile(r"^\s*((re|fwd?|aw|wg|sv|antw|tr|r|rif|odp|vs)\s*(\[\d+\])?\s*:\s*)+", re.I)


def base_subject(subject: str | None, tag_format: str = "[#{id}]") -> str:
    """The subject without Re:/Fwd: prefixes and without our tags: what a reply builds on."""
    text = tag_pattern(tag_format).sub("", header_text(subject))
    text = _PREFIX_RE.sub("", text)
    return " ".join(text.split()) or "(no subject)"


def tagged_subject(tag: str, subject: str, prefix: str = "") -> str:
    """``prefix + tag + subject``, the tag added only if the subject lacks it; one safe line."""
    subject = header_text(subject)
    if tag not in subject:
        subject = f"{tag} {subject}".strip()
    return header_text(f"{prefix}{subject}")


# --- building a mail ---------------------------------------------------------------------------
@dataclass
class Draft:
    """What to send: everything needed to build the bytes, all values already safe."""

    from_address: str
    to: list[str]
    subject: str
    body: str
    cc: list[str] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    auto_submitted: str | None = None  # "auto-replied" (RFC 3834) for acks, "auto-generated"...
    ticket_id: int | None = None
    message_id: str = ""

    @property
    def recipients(self) -> list[str]:
        return list(dict.fromkeys([*self.to, *self.cc]))


def _text_cte(body: str) -> str:
    lines = body.splitlines()
    if body.isascii() and all(len(line) <= 78 for line in lines):
        return "7bit"
    return "quoted-printable"  # never 8bit: lines stay short and any server takes it


def build(db: Database, draft: Draft, *, now: datetime | None = None) -> bytes:
    """The exact bytes of the mail; fills ``draft.message_id`` with a new id of ours if empty."""
    from_address = check_address(draft.from_address)
    to = [check_address(a) for a in draft.to]
    cc = [check_address(a) for a in draft.cc if a not in to]
    if not to:
        raise ValueError("a mail needs at least one recipient")
    if not draft.message_id:
        draft.message_id = new_message_id(db, from_address)
    msg = EmailMessage(policy=POLICY)
    msg["From"] = Address(addr_spec=from_address)
    msg["To"] = [Address(addr_spec=a) for a in to]
    if cc:
        msg["Cc"] = [Address(addr_spec=a) for a in cc]
    msg["Subject"] = header_text(draft.subject, limit=250)
    msg["Date"] = email.utils.format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = draft.message_id
    in_reply_to = safe_msgids([draft.in_reply_to] if draft.in_reply_to else [])
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to[0]
    references = trim_references(draft.references)
    if references:
        msg["References"] = " ".join(references)
    if draft.auto_submitted:
        msg["Auto-Submitted"] = draft.auto_submitted
        # Exchange and Outlook: send no out-of-office or other automatic answer to this.
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Loop"] = from_address
    if draft.ticket_id is not None:
        msg["X-Mail2ticket-Ticket"] = str(int(draft.ticket_id))
    body = draft.body.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if not body.endswith("\n"):
        body += "\n"
    msg.set_content(body, charset="utf-8", cte=_text_cte(body))
    return msg.as_bytes(policy=POLICY)
