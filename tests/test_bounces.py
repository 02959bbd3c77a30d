"""Bounces and delivery status notifications (RELIABILITY 46).

A bounce of our mail joins the ticket of that mail, is never answered, and marks the failing
address: no automatic mail goes to it for failing_address_hold (60 days), or until it writes to
us again. The mail comes from the real Dovecot; what we send goes to the real SMTP server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import Desk, make_mail


def dsn(desk: Desk, returned: bytes, *, recipient: str = "ghost@customer.test", action: str = "failed",
        status: str = "5.1.1", returned_as: str = "text/rfc822-headers", n: int = 1) -> bytes:
    """A delivery status notification as an MTA writes one (RFC 3464): multipart/report."""
    if returned_as == "text/rfc822-headers":
        returned = returned.split(b"\r\n\r\n")[0] + b"\r\n"
    return (
        b"Return-Path: <>\r\n"
        b"From: Mail Delivery System <MAILER-DAEMON@mx.customer.test>\r\n"
        b"To: " + desk.email.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <dsn." + str(n).encode() + b"@mx.customer.test>\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could\r\n"
        b"not be delivered to one or more recipients.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.customer.test\r\nArrival-Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\n"
        b"Final-Recipient: rfc822; " + recipient.encode() + b"\r\n"
        b"Original-Recipient: rfc822;" + recipient.encode() + b"\r\n"
        b"Action: " + action.encode() + b"\r\nStatus: " + status.encode() + b"\r\n"
        b"Diagnostic-Code: smtp; 550 " + status.encode() + b" <" + recipient.encode() + b">: "
        b"Recipient address rejected: User unknown\r\n\r\n"
        b"--B\r\nContent-Type: " + returned_as.encode() + b"\r\n\r\n" + returned + b"\r\n"
        b"--B--\r\n"
    )


def acknowledged_ticket(desk: Desk, sender: str = "ghost@customer.test"):
    desk.deliver(make_mail("Where is my parcel?", sender, desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    [ack] = desk.sent_to(sender)
    return ticket["id"], ack


@pytest.mark.parametrize("returned_as", ["text/rfc822-headers", "message/rfc822"])
def test_a_bounce_of_our_acknowledgement_joins_the_ticket_and_marks_the_address_as_failing(desk, returned_as):
    ticket_id, ack = acknowledged_ticket(desk)
    desk.deliver(dsn(desk, ack.data, returned_as=returned_as))
    desk.poll()
    [ticket] = desk.tickets()  # no new ticket: the report is a message of the original one
    shown = desk.show(ticket_id)
    report = shown["messages"][1]
    assert "delivery failure report" in report["thread_reason"] and ack.message["Message-ID"] in report["thread_reason"]
    assert report["ack_reason"].startswith("not acknowledged") and len(desk.smtp.messages) == 1
    [failing] = shown["failing_addresses"]
    assert failing["address"] == "ghost@customer.test" and "5.1.1" in failing["reason"]
    until = datetime.fromisoformat(failing["hold_until"].replace("Z", "+00:00"))
    assert abs(until - (datetime.now(UTC) + timedelta(days=60))) < timedelta(minutes=5)
    human = desk.ok("tickets", "show", str(ticket_id)).stdout
    assert "Failing address: ghost@customer.test bounced" in human and "until it writes to us" in human
    assert any(e["kind"] == "address-failing" for e in shown["events"])
    # No more automatic mail to it: a close notice is held, not sent.
    notice = desk.invoke("tickets", "close", str(ticket_id), "--notify")
    assert notice.exit_code == 0 and "failing address: mail to ghost@customer.test bounced" in notice.stderr
    assert len(desk.smtp.messages) == 1


def test_a_failing_address_that_writes_to_us_again_gets_automatic_mail_again(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "hold", dovecot, imap_user, smtp_server, account_config,
                conversations={"failing_address_hold": "7d", "auto_reply_limit": 10})
    ticket_id, ack = acknowledged_ticket(desk)
    desk.deliver(dsn(desk, ack.data))
    desk.poll()
    [failing] = desk.show(ticket_id)["failing_addresses"]
    until = datetime.fromisoformat(failing["hold_until"].replace("Z", "+00:00"))
    assert abs(until - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)
    desk.deliver(make_mail("A new problem", "ghost@customer.test", desk.email))  # the mailbox works again
    desk.poll()
    assert desk.show(ticket_id)["failing_addresses"] == []
    assert len(desk.sent_to("ghost@customer.test")) == 2  # the new ticket is acknowledged
    assert any(e["kind"] == "address-ok" for e in desk.show(ticket_id)["events"])


def test_a_delay_notice_marks_no_address(desk):
    ticket_id, ack = acknowledged_ticket(desk)
    desk.deliver(dsn(desk, ack.data, action="delayed", status="4.4.1"))
    desk.poll()
    assert desk.show(ticket_id)["failing_addresses"] == []
    desk.ok("tickets", "close", str(ticket_id), "--notify")
    assert len(desk.sent_to("ghost@customer.test")) == 2


def test_only_a_recipient_of_the_quoted_mail_can_be_marked_as_failing(desk):
    desk.deliver(make_mail("Shared drive", "ann@customer.test", f"{desk.email}, bob@customer.test"))
    desk.deliver(make_mail("Hello", "ceo@customer.test", desk.email))
    desk.poll()
    shared, ceo = [t["id"] for t in desk.tickets()]
    desk.ok("tickets", "reply", str(shared), "--all", "--message", "Fixed.")
    [reply] = [m for m in desk.smtp.messages if "bob@customer.test" in m.rcpt_tos]
    # A report about our reply to ann and bob that names the CEO, and one quoting a forged id.
    desk.deliver(dsn(desk, reply.data, recipient="ceo@customer.test", n=1))
    desk.deliver(dsn(desk, b"Message-ID: <m2t.1234abcd.00000000000000000000@example.test>\r\n\r\n",
                     recipient="ceo@customer.test", n=2))
    desk.poll()
    assert desk.show(ceo)["failing_addresses"] == [] and desk.show(shared)["failing_addresses"] == []
    desk.deliver(dsn(desk, reply.data, recipient="bob@customer.test", n=3))
    desk.poll()
    assert [f["address"] for f in desk.show(shared)["failing_addresses"]] == ["bob@customer.test"]


def test_a_person_may_still_reply_to_a_failing_address_with_a_warning(desk):
    ticket_id, ack = acknowledged_ticket(desk)
    desk.deliver(dsn(desk, ack.data))
    desk.poll()
    result = desk.ok("tickets", "reply", str(ticket_id), "--message", "Is there another address?")
    assert "Warning: failing address: mail to ghost@customer.test bounced" in result.stderr
    assert len(desk.sent_to("ghost@customer.test")) == 2


# --- item 54: a forged bounce must not mute a customer (issue 13, point 2) ---------------------


def _shared(desk: Desk):
    """Ann's ticket with Bob in Cc, and our reply --all to both: Ann and Bob know its Message-ID."""
    desk.deliver(make_mail("Shared drive", "ann@customer.test", f"{desk.email}, bob@customer.test"))
    desk.poll()
    [ticket] = desk.tickets()
    desk.ok("tickets", "reply", str(ticket["id"]), "--all", "--message", "Fixed.")
    [reply] = [m for m in desk.smtp.messages if "bob@customer.test" in m.rcpt_tos]
    return ticket["id"], reply


def _from(sender: bytes, report: bytes) -> bytes:
    return report.replace(b"From: Mail Delivery System <MAILER-DAEMON@mx.customer.test>", b"From: " + sender, 1)


def test_a_report_written_by_a_participant_marks_nobody(desk):
    ticket_id, reply = _shared(desk)
    # Bob got our reply, so he knows its Message-ID: a "bounce" from him naming Ann.
    desk.deliver(_from(b"bob@customer.test", dsn(desk, reply.data, recipient="ann@customer.test")))
    desk.poll()
    shown = desk.show(ticket_id)
    assert shown["failing_addresses"] == []
    assert any(e["kind"] == "bounce-ignored" and "bob@customer.test" in e["detail"] for e in shown["events"])


def test_a_report_about_mail_that_was_never_sent_marks_nobody(desk):
    desk.deliver(make_mail("Hello", "ann@customer.test", desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    desk.smtp.fail_next(1, code=554, text="5.7.1 Relay denied")
    desk.invoke("tickets", "reply", str(ticket["id"]), "--message", "Never left us.")
    entry = next(e for e in json.loads(desk.ok("outbox", "list", "--json").stdout) if e["kind"] == "reply")
    assert entry["status"] == "failed"
    returned = f"Message-ID: {entry['message_id']}\r\nTo: ann@customer.test\r\n\r\n".encode()
    desk.deliver(dsn(desk, returned, recipient="ann@customer.test"))
    desk.poll()
    assert desk.show(ticket["id"])["failing_addresses"] == []


def _authenticated(report: bytes, header: bytes) -> bytes:
    return b"Authentication-Results: " + header + b"\r\n" + report


def test_with_authserv_id_only_a_report_our_own_mail_server_authenticated_marks_an_address(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "auth", dovecot, imap_user, smtp_server, account_config, authserv_id="mx.desk.test")
    ticket_id, ack = acknowledged_ticket(desk)
    forged = [
        dsn(desk, ack.data, n=1),  # no verdict of our server at all
        _authenticated(dsn(desk, ack.data, n=2), b"mx.evil.test; spf=pass smtp.helo=mx.customer.test"),
        _authenticated(dsn(desk, ack.data, n=3), b"mx.desk.test; spf=fail smtp.helo=mx.customer.test; dkim=none"),
        _authenticated(dsn(desk, ack.data, n=4), b"mx.desk.test.evil.test; spf=pass smtp.helo=mx.customer.test"),
    ]
    for report in forged:
        desk.deliver(report)
    desk.poll()
    muted = desk.show(ticket_id)["failing_addresses"]
    print(f"\nforged delivery reports tried: {len(forged)}, addresses marked failing: {len(muted)}")
    assert muted == []
    assert sum(e["kind"] == "bounce-ignored" for e in desk.show(ticket_id)["events"]) == len(forged)
    desk.deliver(_authenticated(dsn(desk, ack.data, n=5), b"mx.desk.test; spf=pass smtp.helo=mx.customer.test"))
    desk.poll()
    assert [f["address"] for f in desk.show(ticket_id)["failing_addresses"]] == ["ghost@customer.test"]
