"""Automatic mail is recognised, so it gets a ticket but no acknowledgement (RELIABILITY 43)."""

from __future__ import annotations

import pytest

from mail2ticket.parse.message import parse_message


def classify(*headers: str, sender: str = "Jane <jane@example.com>") -> str | None:
    raw = "\r\n".join([f"From: {sender}", "Subject: s", *headers]) + "\r\n\r\nbody\r\n"
    return parse_message(raw.encode()).auto_reply


@pytest.mark.parametrize(
    ("headers", "sender", "reason"),
    [
        (["Auto-Submitted: auto-replied"], None, "Auto-Submitted: auto-replied"),
        (
            ["Auto-Submitted: auto-generated; owner-email=x@y"],
            None,
            "Auto-Submitted: auto-generated",
        ),
        (["Precedence: bulk"], None, "Precedence: bulk"),
        (["Precedence: junk"], None, "Precedence: junk"),
        (["Precedence: list"], None, "Precedence: list"),
        (["X-Auto-Response-Suppress: OOF, DR"], None, "X-Auto-Response-Suppress: oof"),
        (["X-Auto-Response-Suppress: All"], None, "X-Auto-Response-Suppress: all"),
        (["List-Id: <team.lists.example.com>"], None, "List-Id"),
        (["List-Unsubscribe: <mailto:u@example.com>"], None, "List-Unsubscribe"),
        (["Return-Path: <>"], None, "bounce: empty Return-Path"),
        ([], "MAILER-DAEMON@mx.example.com", "bounce: MAILER-DAEMON"),
        ([], "Mail System <postmaster@example.com>", "bounce: postmaster"),
        ([], "abuse@example.com", "abuse address"),
        ([], "noreply@example.com", "no-reply sender"),
        ([], "no-reply@example.com", "no-reply sender"),
        ([], "do-not-reply+x@example.com", "no-reply sender"),
        (["X-Autoreply: yes"], None, "X-Autoreply"),
    ],
)
def test_automatic_mail_is_classified_with_its_reason(
    headers: list[str], sender: str | None, reason: str
) -> None:
    assert classify(*headers, sender=sender or "Jane <jane@example.com>") == reason


@pytest.mark.parametrize(
    "headers",
    [
        [],
        ["Auto-Submitted: no"],
        ["Precedence: first-class"],
        ["X-Auto-Response-Suppress: DR, RN"],
        ["Return-Path: <jane@example.com>"],
    ],
)
def test_mail_from_a_person_is_not_automatic(headers: list[str]) -> None:
    assert classify(*headers) is None


def test_a_delivery_status_notification_is_recognised() -> None:
    raw = (
        b"From: Mail Delivery <mx@example.com>\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: text/plain\r\n\r\nYour mail could not be delivered.\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; x@y\r\n"
        b"Action: failed\r\n\r\n--r--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.auto_reply == "delivery status notification"
    assert parsed.body_text == "Your mail could not be delivered."
    assert [a.content_type for a in parsed.attachments] == ["message/delivery-status"]
    assert b"Action: failed" in parsed.attachments[0].data
