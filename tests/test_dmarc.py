"""A spoofed From that fails DMARC per OUR OWN mail server (RELIABILITY item 40, RFC 8601).

The account names the authserv-id of its own mail server (``authserv_id = "mx.example.com"``);
only that server's Authentication-Results header is believed. Mail is read from the real Dovecot
with `mail2ticket poll` and acknowledgements go to the real SMTP server of the test suite. A mail
whose From fails DMARC per our server is marked unverified: it opens a ticket of its own (never a
follow-up into the ticket of the person it claims to be), gets no acknowledgement (nothing quoting
its content goes to the claimed sender) and changes nothing by mail. The same header from any
other authserv-id is ignored, and dmarc=pass is ordinary mail.
"""

from __future__ import annotations

import json

import pytest

from mail2ticket.parse.message import parse_message
from mail2ticket.tickets.threading import sender_unverified
from tests.helpers import Desk, make_mail

OURS = "mx.example.com"
FAIL = f"{OURS}; spf=fail smtp.mailfrom=evil.test; dkim=none; dmarc=fail (p=reject dis=none) header.from=customer.test"


@pytest.fixture
def desk(tmp_path, dovecot, imap_user, smtp_server, account_config) -> Desk:
    return Desk(tmp_path / "desk", dovecot, imap_user, smtp_server, account_config, authserv_id=OURS)


def _by_message_id(desk: Desk) -> dict[str, dict]:
    with desk.db() as db:
        rows = db.execute(
            "select message_id, ticket_id, thread_reason, ack_reason, defects from messages where direction = 'in'"
        ).fetchall()
    return {r[0]: {"ticket": r[1], "thread": r[2], "ack": r[3] or "", "defects": json.loads(r[4])} for r in rows}


def _events(desk: Desk, ticket_id: int) -> list[tuple[str, str]]:
    with desk.db() as db:
        return db.execute("select kind, detail from events where ticket_id = ? order by id", [ticket_id]).fetchall()


FOLLOW_UPS = {  # message id: (Authentication-Results, joins Ann's ticket?)
    "<fail-ours@customer.test>": (FAIL, False),
    "<fail-ours-odd-case@customer.test>": ("MX.Example.COM 1; dkim=pass (good sig) header.d=evil.test;"
                                          " dmarc = fail (p=none) header.from=customer.test", False),
    "<fail-foreign@customer.test>": (FAIL.replace(OURS, "mx.evil.test"), True),
    "<fail-foreign-lookalike@customer.test>": (FAIL.replace(OURS, "mx.example.com.evil.test"), True),
    "<pass-ours@customer.test>": (f"{OURS}; spf=pass smtp.mailfrom=customer.test; dmarc=pass header.from=customer.test",
                                  True),
}


def test_a_from_failing_dmarc_at_our_server_opens_its_own_ticket_and_gets_no_acknowledgement(desk):
    desk.deliver(make_mail("Printer on fire", "Ann <ann@customer.test>", desk.email, "Printer S3 burns."))
    desk.poll()
    [ann_ticket] = desk.tickets()
    tag = f"[#{ann_ticket['id']}]"
    assert len(desk.sent_to("ann@customer.test")) == 1  # the acknowledgement of her ticket

    for message_id, (results, _) in FOLLOW_UPS.items():
        desk.deliver(make_mail(f"Re: {tag} Printer on fire", "Ann <ann@customer.test>", desk.email,
                               "Send the invoice to my new account, please.", message_id=message_id,
                               headers={"Authentication-Results": results}))
    desk.poll()

    stored = _by_message_id(desk)
    for message_id, (_, joins) in FOLLOW_UPS.items():
        entry = stored[message_id]
        unverified = [d for d in entry["defects"] if d.startswith("sender unverified")]
        if joins:
            assert entry["ticket"] == ann_ticket["id"], (message_id, entry["thread"])
            assert unverified == [], message_id
        else:
            assert entry["ticket"] != ann_ticket["id"], (message_id, entry["thread"])
            assert "sender unverified: DMARC failed for ann@customer.test per mx.example.com" in entry["thread"]
            assert unverified, message_id
            assert "not acknowledged: sender unverified" in entry["ack"], entry["ack"]
            assert [k for k, _ in _events(desk, entry["ticket"])] == ["created", "sender-unverified"]
    # Nothing went to the claimed sender because of the forged mails; her ticket is as it was.
    assert len(desk.sent_to("ann@customer.test")) == 1
    assert desk.show(ann_ticket["id"])["status"] == "open"


def test_a_new_mail_failing_dmarc_at_our_server_gets_no_acknowledgement_while_foreign_verdicts_change_nothing(desk):
    senders = {
        "carol@customer.test": FAIL,  # ours says fail: unverified
        "dave@customer.test": FOLLOW_UPS["<pass-ours@customer.test>"][0],
        "erin@customer.test": FAIL.replace(OURS, "mx.evil.test"),  # someone else's verdict: ignored
        "frank@customer.test": None,  # no verdict at all
    }
    for sender, results in senders.items():
        desk.deliver(make_mail(f"Question from {sender}", sender, desk.email, "Where is my parcel?",
                               headers={"Authentication-Results": results} if results else None))
    desk.poll()

    assert len(desk.tickets()) == 4
    acknowledged = {s for s in senders if desk.sent_to(s)}
    assert acknowledged == {"dave@customer.test", "erin@customer.test", "frank@customer.test"}
    stored = {m["thread"]: m for m in _by_message_id(desk).values()}
    [carol] = [m for reason, m in stored.items() if "carol@customer.test" in reason]
    assert "not acknowledged: sender unverified" in carol["ack"]


def test_without_authserv_id_no_authentication_results_header_is_believed(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "plain", dovecot, imap_user, smtp_server, account_config)
    desk.deliver(make_mail("Hello", "gina@customer.test", desk.email, "Hi.", headers={"Authentication-Results": FAIL}))
    desk.poll()
    assert len(desk.sent_to("gina@customer.test")) == 1
    assert all(not m["defects"] for m in _by_message_id(desk).values())


VERDICTS = {  # the Authentication-Results header: does it make the sender unverified?
    "our fail": (FAIL, True),
    "our bare fail": (f"{OURS}; dmarc=fail", True),
    "our pass, fail only in a comment": (f"{OURS}; dmarc=pass; x-note=(dmarc=fail)", False),
    "our spf and dkim fail, no dmarc verdict": (f"{OURS}; spf=fail; dkim=fail", False),
    "our none, fail in the comment after the id": (f"{OURS} (comment; dmarc=fail); dmarc=none", False),
    "a foreign fail naming us": (f"mx.evil.test; dmarc=fail header.from={OURS}", False),
    "5000 open parentheses": ("(" * 5000 + f"{OURS}; dmarc=fail", False),
}


@pytest.mark.parametrize("case", list(VERDICTS))
def test_only_our_servers_dmarc_fail_marks_the_sender_unverified(case):
    header, unverified = VERDICTS[case]
    raw = make_mail("Hi", "ann@customer.test", "desk@example.test", "Hi.", headers={"Authentication-Results": header})
    assert bool(sender_unverified(parse_message(raw), frozenset({OURS}))) is unverified
