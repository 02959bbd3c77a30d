"""An out-of-office answer never opens a new open ticket (issue 14.11). Through real polls of the
test Dovecot, with replies through the real SMTP server:

- an auto-reply that answers a ticket joins it, and leaves its status as it was (a pending ticket
  stays pending, a closed one closed);
- one that answers nothing we know is kept as a closed ticket tagged "auto-reply";
- automatic mail that is not an answer (a monitoring alert, Auto-Submitted: auto-generated) still
  opens a ticket.
"""

from __future__ import annotations

import pytest

from tests.helpers import Desk, make_mail, reply_to

OOO = {"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"}


@pytest.fixture
def desk(tmp_path, dovecot, imap_user, smtp_server, account_config):
    desk = Desk(tmp_path / "desk", dovecot, imap_user, smtp_server, account_config)
    desk.deliver(make_mail("Printer on fire", "Ann <ann@customer.test>", desk.email))
    desk.poll()
    [ticket] = desk.tickets()
    desk.ticket = ticket["id"]
    desk.smtp.messages.clear()
    return desk


def open_list(desk) -> list[str]:
    return [line.split()[0] for line in desk.ok("tickets", "list").stdout.splitlines()[1:]]


def test_an_out_of_office_answer_to_our_reply_joins_the_ticket_and_leaves_it_pending(desk):
    desk.ok("tickets", "reply", str(desk.ticket), "--message", "Is it fixed?")
    [sent] = desk.smtp.messages
    desk.deliver(reply_to(sent.data, body="I am out of the office until Monday.", headers=OOO))
    polled = desk.poll()
    assert "0 new, 1 follow-up" in polled.stdout
    [ticket] = desk.tickets()
    assert ticket["status"] == "pending"  # still waiting for the customer: not reopened
    shown = desk.show(desk.ticket)
    assert shown["incoming_count"] == 2
    assert any(e["kind"] == "auto-reply" for e in shown["events"])
    assert not any(e["kind"] == "reopened" for e in shown["events"])

    # A closed ticket stays closed too.
    desk.ok("tickets", "close", str(desk.ticket))
    desk.deliver(reply_to(sent.data, body="Still out of the office.", headers=OOO))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["status"] == "closed" and ticket["incoming_count"] == 3


def test_an_out_of_office_answer_to_nothing_we_know_is_a_closed_auto_reply_ticket(desk):
    desk.deliver(make_mail("Automatic reply: Out of office until 9 March", "Erik <erik@customer.test>",
                           desk.email, "I am away.", in_reply_to="<unknown@elsewhere.test>", headers=OOO))
    desk.poll()
    tickets = {t["subject"]: t for t in desk.tickets()}
    ooo = tickets["Automatic reply: Out of office until 9 March"]
    assert ooo["status"] == "closed" and ooo["tags"] == ["auto-reply"]
    assert f"#{ooo['id']}" not in open_list(desk)  # the triage list is not cluttered
    tagged = desk.ok("tickets", "list", "--tag", "auto-reply", "--status", "closed", "--json").stdout
    assert f'"id": {ooo["id"]}' in tagged
    assert not desk.sent_to("erik@customer.test")  # never acknowledged
    events = desk.show(ooo["id"])["events"]
    assert any(e["kind"] == "auto-reply" and "closed" in e["detail"] for e in events)


def test_automatic_mail_that_is_not_an_answer_still_opens_a_ticket(desk):
    desk.deliver(make_mail("PROBLEM: disk full on db1", "Nagios <nagios@monitor.test>", desk.email,
                           "Disk / is 98% full.", headers={"Auto-Submitted": "auto-generated"}))
    desk.poll()
    alert = [t for t in desk.tickets() if t["subject"].startswith("PROBLEM")][0]
    assert alert["status"] == "open" and "auto-reply" not in alert["tags"]
