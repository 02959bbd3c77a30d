"""Acknowledgements are no spam cannon (issue 13, point 4; catalogue item 56).

Forged senders (subaddresses, dotted Gmail names), floods from many addresses, phishing subjects
and addresses that are no outside mailbox, all through the real poll (real Dovecot); what goes
out is counted on the real SMTP server.
"""

from __future__ import annotations

from mail2ticket.config.conversations import conversation_settings
from mail2ticket.config.load import load_config
from mail2ticket.outgoing.compose import mailbox_key
from tests.helpers import Desk, make_mail
from tests.servers import MAIL_DOMAIN

PHISH = "URGENT verify your account at http://phish.test/login"


def _ack_reasons(desk: Desk) -> list[str]:
    return [desk.show(t["id"])["messages"][0]["ack_reason"] for t in desk.tickets()]


def test_one_mailbox_behind_subaddresses_and_dots_gets_one_acknowledgement(desk):
    senders = ["victim+1@customer.test", "victim+2@customer.test", "Victim@customer.test",
               "victim@customer.test", "v.i.c.t.i.m@gmail.com", "victim@gmail.com",
               "Vic.Tim+x@googlemail.com"]
    desk.dovecot.append_many(desk.user, [make_mail(f"{PHISH} {n}", s, desk.email) for n, s in enumerate(senders)])
    desk.poll()
    sent = desk.smtp.messages
    print(f"\nsenders tried: {len(senders)} (2 mailboxes), acknowledgements sent: {len(sent)}")
    assert len(desk.tickets()) == len(senders)  # every mail is a ticket
    assert sorted(mailbox_key(m.rcpt_tos[0]) for m in sent) == ["victim@customer.test", "victim@gmail.com"]
    held = [r for r in _ack_reasons(desk) if r.startswith("not acknowledged: rate limit")]
    assert len(held) == len(senders) - 2


def test_the_dots_of_other_providers_count(desk):
    desk.deliver(make_mail("one", "ann.lee@customer.test", desk.email))
    desk.deliver(make_mail("two", "annlee@customer.test", desk.email))  # another mailbox there
    desk.poll()
    assert len(desk.smtp.messages) == 2


def test_mailbox_key():
    assert mailbox_key("V.I.C.T.I.M+spam@GoogleMail.com") == "victim@gmail.com"
    assert mailbox_key("ann.lee+x@customer.test") == "ann.lee@customer.test"
    assert mailbox_key("+x@customer.test") == "+x@customer.test"  # nothing left of the local part


def test_a_flood_from_many_addresses_is_capped_per_account_and_hour(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "flood", dovecot, imap_user, smtp_server, account_config,
                conversations={"auto_reply_account_limit": 5})
    desk.dovecot.append_many(desk.user, [make_mail(f"hi {n}", f"victim{n}@customer.test", desk.email)
                                         for n in range(12)])
    desk.poll()
    reasons = _ack_reasons(desk)
    capped = [r for r in reasons if "auto_reply_account_limit = 5" in r]
    print(f"\nnew tickets from 12 addresses: {len(reasons)}, acknowledgements sent: {len(desk.smtp.messages)} "
          f"(auto_reply_account_limit = 5 per 1h)")
    assert len(reasons) == 12 and len(desk.smtp.messages) == 5 and len(capped) == 7
    assert capped[0].startswith("not acknowledged: rate limit: 5 acknowledgement(s) from account")


def test_the_account_cap_is_on_by_default(desk):
    settings = conversation_settings(load_config(desk.config))
    assert settings["auto_reply_account_limit"] == 100 and settings["auto_reply_account_period"] == "1h"
    bad = desk.config.read_text() + '\n[conversations]\nauto_reply_account_limit = -1\n'
    desk.config.write_text(bad)
    result = desk.invoke("poll")
    assert result.exit_code == 3 and "auto_reply_account_limit" in result.stderr


def test_the_default_acknowledgement_does_not_repeat_the_subject_or_the_text(desk):
    desk.deliver(make_mail(PHISH, "mallory@evil.test", desk.email, "Click http://phish.test/login now"))
    desk.poll()
    [ack] = desk.smtp.messages
    text = ack.message["Subject"] + ack.message.get_content()
    assert "phish" not in text.lower() and "URGENT" not in text
    assert f"[#{desk.tickets()[0]['id']}]" in ack.message["Subject"]


def test_a_template_that_asks_for_the_subject_gets_it(tmp_path, dovecot, imap_user, smtp_server, account_config):
    desk = Desk(tmp_path / "subj", dovecot, imap_user, smtp_server, account_config,
                conversations={"ack_subject": "{tag} {subject}"})
    desk.deliver(make_mail("Printer on fire", "ann@customer.test", desk.email))
    desk.poll()
    [ack] = desk.smtp.messages
    assert "Printer on fire" in ack.message["Subject"]


NO_MAILBOX = {
    "percent routing": "victim%other.test@customer.test",
    "bang path": "relay!victim@customer.test",
    "localhost": "root@localhost",
    "a localhost subdomain": "ann@box.localhost",
    "an IP address": "ann@127.0.0.1",
    "an IP literal": "ann@[192.0.2.1]",
    "our own domain's no-reply name": f"no-reply@{MAIL_DOMAIN}",
    "our own domain's postmaster": f"postmaster@{MAIL_DOMAIN}",
    "our own domain's root": f"root@{MAIL_DOMAIN}",
}


def test_no_automatic_mail_goes_to_an_address_that_is_no_outside_mailbox(desk):
    desk.dovecot.append_many(desk.user, [make_mail(f"hello {n}", a, desk.email)
                                         for n, a in enumerate(NO_MAILBOX.values())])
    desk.poll()
    tickets = desk.tickets()
    print(f"\naddresses that are no outside mailbox: {len(NO_MAILBOX)}, new tickets: {len(tickets)}, "
          f"acknowledgements sent: {len(desk.smtp.messages)}")
    assert len(tickets) == len(NO_MAILBOX) and desk.smtp.messages == []
    for ticket in tickets:
        assert desk.show(ticket["id"])["messages"][0]["ack_reason"].startswith("not acknowledged"), ticket
    # Nor a notice: 'tickets close --notify' holds it and says why.
    pct = next(t for t in tickets if t["requester"] == NO_MAILBOX["percent routing"])
    result = desk.ok("tickets", "close", str(pct["id"]), "--notify")
    assert "not a mailbox: " in result.stderr and desk.smtp.messages == []
