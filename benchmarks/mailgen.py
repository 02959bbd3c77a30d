"""Realistic mixed test mail for the benchmarks: text, HTML, legacy charsets, attachments, replies."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

WORDS = (
    "printer server disk backup password reset mail outlook vpn login error invoice urgent "
    "please help thanks monday network slow restart cannot access folder share quota license"
).split()


def _text(rng: random.Random, n: int) -> str:
    lines = []
    for _ in range(n):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + ".")
    return "\n".join(lines)


def message(i: int, rng: random.Random, *, big_attachment: int | None = None) -> bytes:
    """Message number ``i``: a mix drawn from ``rng`` (the same seed gives the same mailbox)."""
    kind = rng.random()
    msg = EmailMessage()
    user = f"customer{rng.randint(1, 400)}"
    msg["From"] = f"Customer {user} <{user}@example.net>"
    msg["To"] = "support@example.test"
    msg["Message-ID"] = f"<bench-{i}-{rng.getrandbits(32)}@example.net>"
    msg["Date"] = format_datetime(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i))
    subject = f"{rng.choice(WORDS).capitalize()} {rng.choice(WORDS)} problem {i}"
    body = _text(rng, rng.randint(3, 30))
    if big_attachment:
        msg["Subject"] = subject
        msg.set_content(body)
        msg.add_attachment(rng.randbytes(big_attachment), maintype="application", subtype="octet-stream",
                           filename="big.bin")
    elif kind < 0.35:  # plain text
        msg["Subject"] = subject
        msg.set_content(body)
    elif kind < 0.55:  # HTML with a text alternative
        msg["Subject"] = subject
        msg.set_content(body)
        msg.add_alternative("<html><body><p>" + body.replace("\n", "</p><p>") + "</p></body></html>",
                            subtype="html")
    elif kind < 0.65:  # HTML only
        msg["Subject"] = subject
        msg.set_content("<html><body><div>" + body + "<a href='https://x.test'>link</a></div></body></html>",
                        subtype="html")
    elif kind < 0.75:  # legacy charset
        msg["Subject"] = "Überweisung fehlgeschlagen " + str(i)
        msg.set_content("Grüße aus Köln, das Drucken geht nicht.\n" + body, charset="iso-8859-1")
    elif kind < 0.87:  # attachment of a few sizes
        msg["Subject"] = subject
        msg.set_content(body)
        size = rng.choice([2_000, 20_000, 150_000])
        msg.add_attachment(rng.randbytes(size), maintype="application", subtype="pdf", filename=f"scan{i}.pdf")
    elif kind < 0.95:  # a reply
        msg["Subject"] = "Re: " + subject
        msg["In-Reply-To"] = f"<bench-{max(0, i - 7)}-0@example.net>"
        msg["References"] = msg["In-Reply-To"]
        msg.set_content("Thanks!\n\n> " + body.replace("\n", "\n> "))
    else:  # auto-reply
        msg["Subject"] = "Out of office: " + subject
        msg["Auto-Submitted"] = "auto-replied"
        msg.set_content("I am away until Monday.")
    return msg.as_bytes()


def mailbox(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [message(i, rng) for i in range(n)]


def tiny(i: int) -> bytes:
    return (
        f"From: a{i}@example.net\r\nTo: support@example.test\r\nSubject: tiny {i}\r\n"
        f"Message-ID: <tiny-{i}@example.net>\r\n\r\nhello {i}\r\n"
    ).encode()
