"""Acknowledgements of new tickets, and every kind of mail that must not get one (issue 5, point 4).

Mail is read from the real Dovecot; acknowledgements are received by the real SMTP server.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest

from tests.helpers import Desk, make_mail


def test_a_new_ticket_gets_a_threaded_tagged_auto_replied_acknowledgement(desk):
    mail = make_mail("Printer on fire", "Ann Customer <ann@customer.test>", desk.email,
                     references="<older@customer.test>")
    desk.deliver(mail)
    desk.poll()
    [ticket] = desk.tickets()
    [ack] = desk.smtp.messages
    original = message_from_bytes(mail, policy=policy.default)
    msg = ack.message
    assert ack.rcpt_tos == ("ann@customer.test",) and ack.mail_from == desk.email
    assert ack.auth_user == desk.email  # signed in with the account's secret
    assert msg["To"] == "ann@customer.test" and msg["From"] == desk.email
    assert msg["In-Reply-To"] == original["Message-ID"]
    assert msg["References"].split() == ["<older@customer.test>", original["Message-ID"]]
    # The default texts repeat nothing of the incoming mail (item 56): a forged sender's phishing
    # subject must not go out in our name.
    assert msg["Subject"] == f"[#{ticket['id']}] We have received your message"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    body = msg.get_content()
    assert f"[#{ticket['id']}]" in body and "Printer on fire" not in body
    # 'tickets show' says why the message was acknowledged and why it opened a ticket.
    [message] = desk.show(ticket["id"])["messages"]
    assert message["ack_reason"].startswith("acknowledged") and msg["Message-ID"] in message["ack_reason"]
    assert message["thread_reason"] == "new conversation"
    human = desk.ok("tickets", "show", str(ticket["id"])).stdout
    assert "Acknowledgement: acknowledged" in human and "Threading: new conversation" in human


def test_the_acknowledgement_template_comes_from_the_config(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "t", dovecot, imap_user, smtp_server, account_config, conversations={
        "ack_subject": "Ticket {ticket} opened: {subject}",
        "ack_body": "We got it ({tag}, about {subject}). {{not a field}}\n",
    })
    desk.deliver(make_mail("Broken chair", to=desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    msg = desk.smtp.messages[0].message
    # The tag is added when the template has none: replies must still find the ticket.
    assert msg["Subject"] == f"[#{ticket['id']}] Ticket {ticket['id']} opened: Broken chair"
    assert msg.get_content().replace("\r\n", "\n") == f"We got it ([#{ticket['id']}], about Broken chair). {{not a field}}\n"


def test_a_template_with_an_unknown_field_is_a_config_error(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "bad", dovecot, imap_user, smtp_server, account_config,
                conversations={"ack_body": "Hello {name}"})
    result = desk.invoke("poll")
    assert result.exit_code == 3
    assert "conversations.ack_body" in result.stderr and "{name}" in result.stderr


AUTOMATIC = {
    "an out-of-office reply": {"Auto-Submitted": "auto-replied", "Subject": "Out of office"},
    "a vacation notice marked by Precedence": {"Precedence": "bulk"},
    "a junk mail": {"Precedence": "junk"},
    "a mailing list post": {"List-Id": "<users.lists.example.org>"},
    "a newsletter": {"List-Unsubscribe": "<mailto:leave@news.example>"},
    "an Exchange auto-answer": {"X-Auto-Response-Suppress": "All"},
    "a no-reply sender": {"From": "no-reply@shop.example"},
    "a noreply sender with a suffix": {"From": "noreply-orders@shop.example"},
}


@pytest.mark.parametrize("headers", AUTOMATIC.values(), ids=AUTOMATIC.keys())
def test_automatic_mail_makes_a_ticket_but_gets_no_acknowledgement(desk, headers):
    headers = dict(headers)
    sender = headers.pop("From", "robot@customer.test")
    subject = headers.pop("Subject", "Hello")
    desk.deliver(make_mail(subject, sender, desk.email, headers=headers))
    desk.poll()
    [ticket] = desk.tickets()
    assert desk.smtp.messages == []
    reason = desk.show(ticket["id"])["messages"][0]["ack_reason"]
    assert reason.startswith("not acknowledged: ")
    assert any(word in reason for word in ("automatic", "bulk", "list", "no-reply", "no automatic answer"))


BOUNCES = {
    "an empty Return-Path": (b"Return-Path: <>\r\n", "postfix@mx.customer.test"),
    "MAILER-DAEMON": (b"", "MAILER-DAEMON@mx.customer.test"),
    "postmaster": (b"", "postmaster@customer.test"),
}


@pytest.mark.parametrize("prefix,sender", BOUNCES.values(), ids=BOUNCES.keys())
def test_a_bounce_gets_no_acknowledgement(desk, prefix, sender):
    desk.deliver(prefix + make_mail("Undelivered Mail Returned to Sender", sender, desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    assert desk.smtp.messages == []
    assert "bounce" in desk.show(ticket["id"])["messages"][0]["ack_reason"]


def test_a_delivery_status_notification_gets_no_acknowledgement(desk):
    dsn = (
        b"From: Mail System <mailer@mx.customer.test>\r\nTo: " + desk.email.encode() + b"\r\n"
        b"Subject: Delivery Status Notification (Failure)\r\nMessage-ID: <dsn.1@mx.customer.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="X"\r\n\r\n'
        b"--X\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        b"--X\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; x@customer.test\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n--X--\r\n"
    )
    desk.deliver(dsn)
    desk.poll()
    [ticket] = desk.tickets()
    assert desk.smtp.messages == []
    assert "delivery status notification" in desk.show(ticket["id"])["messages"][0]["ack_reason"]


def test_mail_from_one_of_our_own_accounts_gets_no_acknowledgement(desk):
    desk.deliver(make_mail("Internal note", desk.email, desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    assert desk.smtp.messages == []
    assert "our own account" in desk.show(ticket["id"])["messages"][0]["ack_reason"]


@pytest.fixture(params=["UTC", "America/Los_Angeles", "Asia/Tokyo"])
def local_timezone(request, monkeypatch):
    """The machine's time zone: IMAP arrival times come as local time and must not be misread."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_mail_already_in_the_mailbox_when_the_account_was_added_gets_no_acknowledgement(
    tmp_path, dovecot, imap_user, smtp_server, account_config, local_timezone
):
    added = datetime.now(UTC) - timedelta(hours=1)
    desk = Desk(tmp_path / "busy", dovecot, imap_user, smtp_server, account_config,
                added_at=added.isoformat().replace("+00:00", "Z"))
    before = added - timedelta(days=3)
    for n in range(5):  # a busy inbox: nobody of these may be mailed
        dovecot.append(imap_user, make_mail(f"Old {n}", f"old{n}@customer.test", desk.email, date=before),
                       msg_time=before)
    desk.deliver(make_mail("New one", "new@customer.test", desk.email))
    desk.poll()
    assert len(desk.tickets()) == 6
    assert [m.rcpt_tos for m in desk.smtp.messages] == [("new@customer.test",)]
    old = desk.show(desk.tickets()[0]["id"])["messages"][0]
    assert "before the account was added" in old["ack_reason"]


def test_without_added_at_the_mail_found_by_the_first_poll_is_not_acknowledged(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "handwritten", dovecot, imap_user, smtp_server, account_config, added_at=None)
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    dovecot.append(imap_user, make_mail("Waiting", "old@customer.test", desk.email), msg_time=earlier)
    desk.poll()
    assert desk.smtp.messages == []
    desk.deliver(make_mail("Fresh", "new@customer.test", desk.email))
    desk.poll()
    assert [m.rcpt_tos for m in desk.smtp.messages] == [("new@customer.test",)]


def test_acknowledgements_can_be_switched_off_per_account(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "quiet", dovecot, imap_user, smtp_server, account_config, acknowledge=False)
    desk.deliver(make_mail("Hello", to=desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    assert desk.smtp.messages == []
    assert "acknowledge = false" in desk.show(ticket["id"])["messages"][0]["ack_reason"]


@pytest.mark.parametrize("limit,expected", [(1, 1), (3, 3)])
def test_no_sender_gets_more_automatic_mail_than_the_limit(
    tmp_path, dovecot, imap_user, smtp_server, account_config, limit, expected
):
    desk = Desk(tmp_path / f"limit{limit}", dovecot, imap_user, smtp_server, account_config,
                conversations={"auto_reply_limit": limit, "auto_reply_period": "24h"})
    for n in range(4):
        desk.deliver(make_mail(f"Problem {n}", to=desk.email))
    desk.deliver(make_mail("Other person", "bob@customer.test", desk.email))
    desk.poll()
    assert len(desk.tickets()) == 5
    assert len(desk.sent_to("ann@customer.test")) == expected
    assert len(desk.sent_to("bob@customer.test")) == 1
    reasons = [desk.show(t["id"])["messages"][0]["ack_reason"] for t in desk.tickets()]
    assert sum("rate limit" in r for r in reasons) == 4 - expected


def _transport(desks, delivered: set, *, strip=()):
    """Carry what the SMTP server accepted to the recipients' mailboxes, like the Internet would."""
    smtp = desks[0].smtp
    moved = 0
    for index, sent in enumerate(smtp.messages):
        if index in delivered:
            continue
        delivered.add(index)
        data = sent.data
        for name in strip:  # a relay or responder that drops the loop-protection headers
            lines = data.split(b"\r\n\r\n", 1)
            head = b"\r\n".join(h for h in lines[0].split(b"\r\n") if not h.lower().startswith(name.lower()))
            data = head + b"\r\n\r\n" + lines[1]
        for desk in desks:
            if desk.email in sent.rcpt_tos:
                desk.deliver(data)
                moved += 1
    return moved


@pytest.mark.parametrize(
    "strip,total",
    [((), 1), ((b"Auto-Submitted:", b"X-Auto-Response-Suppress:", b"X-Loop:"), 2)],
    ids=["standard headers", "loop headers stripped on the way"],
)
def test_two_mail2ticket_instances_acknowledging_each_other_do_not_loop(make_desk, strip, total):  # noqa: F811
    """With the RFC 3834 headers A does not answer B's acknowledgement at all; without them A
    acknowledges it once, and B sees that as a follow-up of its own ticket (our signed
    Message-ID in In-Reply-To), which is never acknowledged."""
    no_limit = {"auto_reply_limit": 1000}  # what stops the loop must not be the rate limit
    a, b = make_desk("a", conversations=no_limit), make_desk("b", conversations=no_limit)
    b.deliver(make_mail("Where is my order?", a.email, b.email))  # someone at A writes to B
    delivered: set = set()
    rounds = 0
    while True:
        a.poll()
        b.poll()
        rounds += 1
        if not _transport([a, b], delivered, strip=strip):
            break
        assert rounds < 6, f"mail keeps bouncing between the two: {len(a.smtp.messages)} mails"
    assert len(a.smtp.messages) == total
    assert len(b.sent_to(a.email)) == 1  # B acknowledged the first mail, once
    assert all(m.message["Auto-Submitted"] == "auto-replied" for m in a.smtp.messages)


def test_a_responder_that_ignores_the_standards_gets_one_acknowledgement(make_desk):  # noqa: F811
    desk = make_desk("bot")
    desk.deliver(make_mail("Hello", "echo@bot.test", desk.email))
    for n in range(4):  # the bot answers every mail with a fresh one: no headers, no tag
        desk.poll()
        desk.deliver(make_mail(f"Your mail number {n}", "echo@bot.test", desk.email))
    desk.poll()
    assert len(desk.sent_to("echo@bot.test")) == 1
    assert len(desk.tickets()) == 5
