"""Which ticket a mail joins: reply headers, our signed Message-IDs, the subject tag (issue 5, point 1).

Mail is read from the real Dovecot with `mail2ticket poll`; what mail2ticket sends is received by
the real aiosmtpd of the test suite (STARTTLS + AUTH). Desk and make_mail are in tests/helpers.py,
the desk and make_desk fixtures in tests/conftest.py.
"""

from __future__ import annotations

import json
import re

import tomli_w

from mail2ticket.accounts.secrets import store_password
from tests.helpers import LONG_AGO, Desk, engine_storage, make_mail, reply_to


def test_the_customers_reply_to_the_acknowledgement_lands_in_the_same_ticket(desk):
    desk.deliver(make_mail("Printer on fire", to=desk.email))
    desk.poll()
    [ack] = desk.sent_to("ann@customer.test")
    desk.deliver(reply_to(ack.data, body="It is still burning."))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["incoming_count"] == 2 and ticket["status"] == "open"
    second = desk.show(ticket["id"])["messages"][1]
    assert "It is still burning." in second["body_text"]
    assert "our acknowledgement" in second["thread_reason"] and f"#{ticket['id']}" in second["thread_reason"]
    assert len(desk.smtp.messages) == 1  # the follow-up itself is not acknowledged
    assert second["ack_reason"].startswith("not acknowledged: not a new ticket")


def test_a_reply_naming_an_earlier_customer_mail_joins_its_ticket(desk):
    first = make_mail("Invoice wrong", to=desk.email)
    desk.deliver(first)
    desk.deliver(reply_to(first, body="Also the date is wrong."))  # the customer adds to their own mail
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["incoming_count"] == 2


def test_a_forged_subject_tag_from_a_stranger_makes_a_new_ticket(desk):
    desk.deliver(make_mail("Password reset", to=desk.email))
    desk.poll()
    [victim] = desk.tickets()
    tag = f"[#{victim['id']}]"
    desk.deliver(make_mail(f"Re: {tag} Password reset", "Mallory <mallory@evil.test>", desk.email,
                           "Please send the new password to me instead."))
    polled = desk.poll()
    tickets = desk.tickets()
    assert len(tickets) == 2
    assert desk.show(victim["id"])["messages"][0]["from_address"] == "ann@customer.test"
    assert len(desk.show(victim["id"])["messages"]) == 1
    stranger = desk.show(tickets[1]["id"])
    assert stranger["requester"] == "mallory@evil.test"
    reason = stranger["messages"][0]["thread_reason"]
    assert "not a participant" in reason and tag in reason
    # ... and the log says so, naming the sender (the daemon's log: stderr, for journald).
    assert re.search(r"WARNING .*mallory@evil\.test.*not a participant", polled.stderr)


def test_a_subject_tag_from_the_requester_joins_the_ticket_without_reply_headers(desk):
    desk.deliver(make_mail("VPN down", to=desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    desk.deliver(make_mail(f"[#{ticket['id']}] VPN down again", to=desk.email, body="Again."))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["incoming_count"] == 2
    assert "a participant" in desk.show(ticket["id"])["messages"][1]["thread_reason"]


def test_someone_copied_on_the_ticket_may_use_the_tag(desk):
    desk.deliver(make_mail("Shared drive", to=f"{desk.email}, bob@customer.test", body="Bob knows."))
    desk.poll()
    [ticket] = desk.tickets()
    desk.deliver(make_mail(f"[#{ticket['id']}] Shared drive", "bob@customer.test", desk.email))
    desk.poll()
    assert len(desk.tickets()) == 1


def test_an_account_that_allows_anyone_by_tag_accepts_a_strangers_tag(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "open", dovecot, imap_user, smtp_server, account_config, allow_anyone_by_tag=True)
    desk.deliver(make_mail("Leaking roof", to=desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    desk.deliver(make_mail(f"[#{ticket['id']}] roof", "roofer@builder.test", desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["incoming_count"] == 2
    assert "accepts the tag from anyone" in desk.show(ticket["id"])["messages"][1]["thread_reason"]


def test_the_tag_format_is_configurable(tmp_path, dovecot, imap_user, smtp_server, account_config):
    desk = Desk(tmp_path / "tagged", dovecot, imap_user, smtp_server, account_config,
                conversations={"tag_format": "[Ticket {id}]"})
    desk.deliver(make_mail("Scanner jams", to=desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    [ack] = desk.smtp.messages
    assert f"[Ticket {ticket['id']}]" in ack.message["Subject"]
    desk.deliver(make_mail(f"[Ticket {ticket['id']}] more", to=desk.email))
    desk.deliver(make_mail(f"[#{ticket['id']}] not our tag", to=desk.email))
    desk.poll()
    assert [t["incoming_count"] for t in desk.tickets()] == [2, 1]


def test_references_quoting_our_id_form_without_a_valid_token_are_not_trusted(desk):
    desk.deliver(make_mail("Salary question", to=desk.email))
    desk.poll()
    [ack] = desk.sent_to("ann@customer.test")
    real = ack.message["Message-ID"]
    forged = re.sub(r"\.([0-9a-f]{20})@", lambda m: "." + "0" * 20 + "@", real)
    assert forged != real
    desk.deliver(make_mail("Re: salary", "mallory@evil.test", desk.email, "me too",
                           in_reply_to=forged, references=forged))
    desk.poll()
    tickets = desk.tickets()
    assert len(tickets) == 2
    reason = desk.show(tickets[1]["id"])["messages"][0]["thread_reason"]
    assert "forged" in reason and forged in reason


def test_a_follow_up_reopens_a_closed_ticket(desk):
    first = make_mail("Toner empty", to=desk.email)
    desk.deliver(first)
    desk.poll()
    [ticket] = desk.tickets()
    desk.ok("tickets", "close", str(ticket["id"]))
    desk.deliver(reply_to(first, body="It is empty again."))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["status"] == "open"
    assert any(e["kind"] == "reopened" for e in desk.show(ticket["id"])["events"])


def test_with_reopen_on_reply_false_a_follow_up_leaves_the_ticket_closed(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "noreopen", dovecot, imap_user, smtp_server, account_config, reopen_on_reply=False)
    first = make_mail("Thanks for the fix", to=desk.email)
    desk.deliver(first)
    desk.poll()
    [ticket] = desk.tickets()
    desk.ok("tickets", "close", str(ticket["id"]))
    desk.deliver(reply_to(first, body="Thank you!"))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["status"] == "closed" and ticket["incoming_count"] == 2


def test_one_mail_arriving_in_two_monitored_mailboxes_makes_one_ticket(
    tmp_path, dovecot, smtp_server, account_config
):
    sales, support = dovecot.add_user(), dovecot.add_user()
    root = tmp_path / "two"
    desk = Desk(root, dovecot, sales, smtp_server, account_config)
    second = account_config(support, smtp_server, added_at=LONG_AGO)
    store_password(second["name"], support.password)
    config = json.loads(json.dumps({"storage": engine_storage(root, {"database": "m2t.db", "attachments": "att"}),
                                    "accounts": [desk.account, second]}))
    desk.config.write_text(tomli_w.dumps(config))
    mail = make_mail("Quote please", to=f"{sales.email}, {support.email}")
    # Each mailbox gets its own copy, with its own delivery header: not the same bytes.
    dovecot.append(sales, b"Delivered-To: " + sales.email.encode() + b"\r\n" + mail)
    dovecot.append(support, b"Delivered-To: " + support.email.encode() + b"\r\n" + mail)
    desk.poll()
    [ticket] = desk.tickets()
    messages = desk.show(ticket["id"])["messages"]
    assert len(messages) == 2  # both copies are kept: mail is never dropped
    assert "copy of" in messages[1]["thread_reason"]
    assert len(desk.smtp.messages) == 1  # and acknowledged once


def test_our_own_mail_fetched_back_is_not_a_new_ticket(desk):
    desk.deliver(make_mail("Backup failed", to=desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    desk.ok("tickets", "reply", str(ticket["id"]), "--message", "Restarted it.")
    for sent in desk.smtp.messages:  # a copy of everything we sent lands in our mailbox
        desk.deliver(sent.data)
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["message_count"] == 2  # the customer's mail and our reply, nothing else
    assert len(desk.smtp.messages) == 2  # no acknowledgement of our own mail


def test_a_bounce_of_our_acknowledgement_joins_the_ticket_and_is_not_answered(desk):
    desk.deliver(make_mail("Hello", "ghost@customer.test", desk.email))
    desk.poll()
    [ack] = desk.smtp.messages
    returned_headers = ack.data.split(b"\r\n\r\n")[0]
    bounce = (  # as Postfix writes one: a multipart/report with the returned headers, 7bit
        b"Return-Path: <>\r\n"
        b"From: Mail Delivery System <MAILER-DAEMON@customer.test>\r\n"
        b"To: " + desk.email.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <bounce.1@customer.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nUser unknown: ghost@customer.test\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.customer.test\r\n\r\nFinal-Recipient: rfc822; ghost@customer.test\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n" + returned_headers + b"\r\n"
        b"--B--\r\n"
    )
    desk.deliver(bounce)
    desk.poll()
    [ticket] = desk.tickets()
    report = desk.show(ticket["id"])["messages"][1]
    assert "delivery failure report" in report["thread_reason"]
    assert report["ack_reason"].startswith("not acknowledged")
    assert len(desk.smtp.messages) == 1


# --- item 53: a customer's Message-ID is no key to their ticket (issue 13, point 1) ------------


def _shared_ticket(desk) -> int:
    """Ann's ticket, Bob in Cc, Message-ID <a1@customer.test>; acknowledged to Ann."""
    desk.deliver(make_mail("Reset my password", "Ann <ann@customer.test>", f"{desk.email}, bob@customer.test",
                           "Please send the reset code.", message_id="<a1@customer.test>"))
    desk.poll()
    [ticket] = desk.tickets()
    return ticket["id"]


def _reply_all_recipients(desk, ticket_id: int) -> set[str]:
    before = len(desk.smtp.messages)
    desk.ok("tickets", "reply", str(ticket_id), "--all", "--message", "Your reset code is 0000.")
    [sent] = desk.smtp.messages[before:]
    return set(sent.rcpt_tos)


def test_a_stranger_naming_a_customers_message_id_opens_a_new_ticket_and_gets_no_reply_all(desk):
    victim = _shared_ticket(desk)
    desk.deliver(make_mail("Re: Reset my password", "mallory@evil.test", desk.email, "Send it to me.",
                           in_reply_to="<a1@customer.test>", references="<a1@customer.test>"))
    polled = desk.poll()
    tickets = desk.tickets()
    assert len(tickets) == 2 and len(desk.show(victim)["messages"]) == 1
    stranger = desk.show(tickets[1]["id"])
    reason = stranger["messages"][0]["thread_reason"]
    assert stranger["requester"] == "mallory@evil.test"
    assert "<a1@customer.test>" in reason and f"#{victim}" in reason and "not a participant" in reason
    human = desk.ok("tickets", "show", str(tickets[1]["id"])).stdout
    assert (f"Threading: In-Reply-To names message <a1@customer.test> of ticket #{victim}, but "
            "mallory@evil.test is not a participant: new ticket") in human
    assert re.search(r"WARNING .*mallory@evil\.test.*not a participant", polled.stderr)
    assert _reply_all_recipients(desk, victim) == {"ann@customer.test", "bob@customer.test"}
    assert desk.sent_to("mallory@evil.test") == [desk.smtp.messages[1]]  # only its own acknowledgement
    assert "reset code" not in desk.sent_to("mallory@evil.test")[0].message.get_content()


def test_a_forged_references_chain_with_our_acknowledgements_id_does_not_let_a_stranger_in(desk):
    victim = _shared_ticket(desk)
    [ack] = desk.sent_to("ann@customer.test")
    ack_id = ack.message["Message-ID"]  # a valid id of ours, but sent to Ann, not to Mallory
    desk.deliver(make_mail("Re: hi", "mallory@evil.test", desk.email, "me too", in_reply_to="<x@evil.test>",
                           references=f"<a1@customer.test> {ack_id} <x@evil.test>"))
    desk.poll()
    tickets = desk.tickets()
    assert len(tickets) == 2 and len(desk.show(victim)["messages"]) == 1
    reason = desk.show(tickets[1]["id"])["messages"][0]["thread_reason"]
    assert ack_id in reason and "not sent to mallory@evil.test" in reason


def test_a_colleague_copied_on_the_ticket_may_reply_by_headers(desk):
    victim = _shared_ticket(desk)
    desk.deliver(make_mail("Re: Reset my password", "bob@customer.test", desk.email, "Me as well.",
                           in_reply_to="<a1@customer.test>", references="<a1@customer.test>"))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["id"] == victim and ticket["incoming_count"] == 2
    assert "bob@customer.test, a participant" in desk.show(victim)["messages"][1]["thread_reason"]


def test_a_forged_copy_of_the_customers_mail_adds_no_participant(desk):
    victim = _shared_ticket(desk)
    # Same Message-ID and From as Ann's mail (a copy, as far as anyone can tell), one more Cc.
    desk.deliver(make_mail("Reset my password", "Ann <ann@customer.test>",
                           f"{desk.email}, bob@customer.test", "copy", message_id="<a1@customer.test>",
                           headers={"Cc": "mallory@evil.test"}))
    desk.poll()
    assert "copy of" in desk.show(victim)["messages"][1]["thread_reason"]
    assert _reply_all_recipients(desk, victim) == {"ann@customer.test", "bob@customer.test"}


def test_a_forged_bounce_quoting_our_id_adds_no_participant_and_does_not_reopen(desk):
    victim = _shared_ticket(desk)
    desk.ok("tickets", "close", str(victim))
    [ack] = desk.sent_to("ann@customer.test")
    desk.deliver(
        b"Return-Path: <>\r\nFrom: mallory@evil.test\r\nTo: " + desk.email.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <b1@evil.test>\r\n\r\n"
        b"This message could not be delivered.\r\n\r\n" + ack.data.split(b"\r\n\r\n")[0] + b"\r\n"
    )
    desk.poll()
    shown = desk.show(victim)
    assert shown["status"] == "closed"
    assert _reply_all_recipients(desk, victim) == {"ann@customer.test", "bob@customer.test"}
