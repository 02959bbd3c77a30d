"""The [conversations] table: subject tag, templates, reply status and the limits of automatic mail."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mail2ticket.config.checks import check_duration, is_int, is_str
from mail2ticket.config.model import Config
from mail2ticket.errors import ConfigError

# [conversations]: threading, acknowledgements and notifications (docs/conversations.md).
# Templates left unset use the built-in texts of mail2ticket/outgoing/compose.py.
CONVERSATION_KEYS: dict[str, tuple[Any, Any, str]] = {
    "tag_format": (is_str, "[#{id}]", 'a subject tag containing {id}, such as "[#{id}]"'),
    "ack_subject": (is_str, None, 'a template such as "{tag} {subject}"'),
    "ack_body": (is_str, None, "a template using {ticket}, {tag}, {subject}, {requester}, {account}"),
    "close_subject": (is_str, None, "a template"),
    "close_body": (is_str, None, "a template"),
    "reopen_subject": (is_str, None, "a template"),
    "reopen_body": (is_str, None, "a template"),
    "reply_status": (is_str, "pending", '"open", "pending" or "closed"'),
    "auto_reply_limit": (is_int, 1, "a number of automatic mails per sender and period"),
    "auto_reply_period": (is_str, "24h", 'a duration such as "24h"'),
    # At most this many acknowledgements from one account per period, whoever they go to (item 56).
    "auto_reply_account_limit": (is_int, 100, "a number of acknowledgements per account and period"),
    "auto_reply_account_period": (is_str, "1h", 'a duration such as "1h"'),
    "outbox_expire": (is_str, "5d", 'a duration such as "5d"'),
    # Loop protection over all automatic mail (acks, notices), RELIABILITY 45 and 46.
    "auto_mail_ticket_limit": (is_int, 10, "a number of automatic mails per ticket and period"),
    "auto_mail_ticket_period": (is_str, "10m", 'a duration such as "10m"'),
    "auto_mail_address_limit": (is_int, 40, "a number of automatic mails per address and period"),
    "auto_mail_address_period": (is_str, "24h", 'a duration such as "24h"'),
    "failing_address_hold": (is_str, "60d", 'a duration such as "60d"'),
    # 'tickets reply --all' to more recipients than this asks for --yes (item 57).
    "reply_all_limit": (is_int, 20, "a number of recipients of one reply"),
}


def check_conversations(path: Path, values: dict[str, Any]) -> None:

    for key in ("auto_reply_period", "auto_reply_account_period", "outbox_expire", "auto_mail_ticket_period", "auto_mail_address_period",
                "failing_address_hold"):
        check_duration(path, f"conversations.{key}", values[key])
    try:
        check_conversation_settings(values)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --- templates ---------------------------------------------------------------------------------
# Control characters that must not reach a subject line (outgoing/compose.py refuses the same).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
TEMPLATE_FIELDS = ("ticket", "tag", "subject", "requester", "account")


FIELD_RE = re.compile(r"\{(\w*)\}")


DEFAULT_TEMPLATES = {
    # The acknowledgement repeats nothing of the incoming mail (item 56): a template that wants
    # the subject asks for {subject}.
    "ack_subject": "{tag} We have received your message",
    "ack_body": (
        "Hello,\n\n"
        "thank you for your message. We have opened ticket {tag} for it and will answer\n"
        "as soon as we can. Please keep {tag} in the subject when you write to us about it.\n\n"
        "-- \n"
        "This is an automatic reply; there is no need to answer it.\n"
    ),
    "close_subject": "{tag} Closed: {subject}",
    "close_body": (
        "Hello,\n\n"
        "your request {tag} ({subject}) has been closed.\n"
        "If it is not solved, just answer this mail and it is opened again.\n"
    ),
    "reopen_subject": "{tag} Reopened: {subject}",
    "reopen_body": (
        "Hello,\n\n"
        "your request {tag} ({subject}) has been opened again; we will be in touch.\n"
    ),
}


def conversation_settings(cfg: Config) -> dict[str, Any]:
    """[conversations] with every default filled in (also for a Config built without it)."""

    given = dict(getattr(cfg, "conversations", None) or {})
    out = {key: given.get(key, default) for key, (_check, default, _doc) in CONVERSATION_KEYS.items()}
    for key, text in DEFAULT_TEMPLATES.items():
        if out.get(key) is None:
            out[key] = text
    return out


def check_conversation_settings(values: dict[str, Any]) -> None:
    """Raise ValueError naming the key when [conversations] cannot work."""
    tag = values.get("tag_format") or "[#{id}]"
    if tag.count("{id}") != 1 or _UNSAFE.search(tag) or not tag.replace("{id}", "").strip():
        raise ValueError(
            f"'conversations.tag_format' = {tag!r} must contain {{id}} exactly once, with some text "
            'around it, such as "[#{id}]"'
        )
    for key in DEFAULT_TEMPLATES:
        template = values.get(key)
        if template is None:
            continue
        for name in FIELD_RE.findall(template.replace("{{", "").replace("}}", "")):
            if name not in TEMPLATE_FIELDS:
                raise ValueError(
                    f"'conversations.{key}' uses {{{name}}}; the template fields are "
                    + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                )
    if values.get("reply_status", "pending") not in ("open", "pending", "closed"):
        raise ValueError("'conversations.reply_status' must be \"open\", \"pending\" or \"closed\"")
    for key in ("auto_reply_limit", "auto_reply_account_limit", "auto_mail_ticket_limit", "auto_mail_address_limit"):
        if values.get(key, 1) < 0:
            raise ValueError(f"'conversations.{key}' must be 0 or more")
    if values.get("reply_all_limit", 20) < 1:
        raise ValueError("'conversations.reply_all_limit' must be 1 or more")
