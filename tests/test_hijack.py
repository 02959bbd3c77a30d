"""Hijack and spoof suite (RELIABILITY figure 9, items 37-42, and our item 53): forged follow-ups
get nowhere.

One helpdesk on the real Dovecot with one victim ticket (Ann's, Bob in Cc, acknowledged over the
real SMTP server). Then every forged mail below lands in its mailbox and one `mail2ticket poll`
imports them all through the real import path. For each forgery: it is not appended to the
victim's ticket, the ticket's state is unchanged, and nothing sent to anyone but Ann and Bob
carries the ticket's content or number, or an injected header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from tests.helpers import Desk, connect, make_mail
from tests.servers import SmtpServer, account_config

SECRET_SUBJECT = "payroll-K7Q"  # only Ann, Bob and the desk know these two
SECRET_BODY = "vault code 5512-ZZ"
PARTICIPANTS = {"ann@customer.test", "bob@customer.test"}


@dataclass
class Victim:
    """What the forgers aim at: the ticket, the desk's acknowledgement of it."""

    ticket: int
    tag: str
    ack_id: str  # the Message-ID of our acknowledgement (a valid token)
    desk_email: str
    cust_id: str = "<ann-1@customer.test>"  # the Message-ID of Ann's mail: no secret (Bob has it)


def _forged_id(our_id: str) -> str:
    return re.sub(r"\.([0-9a-f]{20})@", "." + "0" * 20 + "@", our_id)


def _near_miss_id(our_id: str) -> str:
    """Right nonce, right length, one hex digit of the token changed."""
    nonce_token, _, domain = our_id.strip("<>").partition("@")
    last = "0" if nonce_token[-1] != "0" else "1"
    return f"<{nonce_token[:-1]}{last}@{domain}>"


# Each forgery: (headers as raw lines, with {tag}, {ack}, {forged}, {near}, {desk}, {victim} filled
# in; From is mallory<n>@evil.test unless a line sets it). Item numbers are RELIABILITY's.
FORGERIES: dict[str, list[bytes]] = {
    # 37: the ticket number in the subject from someone who is not a participant
    "37 tag from a stranger": [b"Subject: Re: {tag} payroll"],
    "37 tag at the end of the subject": [b"Subject: about that {tag}"],
    "37 tag after Fwd:": [b"Subject: Fwd: {tag} payroll"],
    "37 tag inside an encoded word": [b"Subject: =?UTF-8?Q?Re:_{tag}_payroll?="],
    "37 tag with a Reply-To of the requester": [b"Subject: Re: {tag}", b"Reply-To: ann@customer.test"],
    "37 tag with Sender: the requester": [b"Subject: Re: {tag}", b"Sender: ann@customer.test"],
    "37 requester's address as display name": [b'From: "ann@customer.test" <mallory@evil.test>',
                                               b"Subject: Re: {tag}"],
    "37 look-alike domain of the requester": [b"From: ann@customer.test.evil.test", b"Subject: Re: {tag}"],
    "37 look-alike local part of the requester": [b"From: ann.@customer-test.evil.test", b"Subject: {tag}"],
    "37 Cc'ing the requester does not make a participant": [b"Subject: Re: {tag}", b"Cc: ann@customer.test"],
    "37 tag only in the body": [b"Subject: Hello", b"X-Note: see {tag}"],
    "37 tag of the ticket in a Resent-From": [b"Subject: {tag}", b"Resent-From: bob@customer.test"],
    # 38: reply headers naming our Message-IDs without a valid token
    "38 In-Reply-To with a zeroed token": [b"Subject: Re: payroll", b"In-Reply-To: {forged}"],
    "38 References with a zeroed token": [b"Subject: Re: payroll", b"References: {forged}"],
    "38 token one digit off": [b"Subject: Re: payroll", b"In-Reply-To: {near}", b"References: {near}"],
    "38 forged id and tag together": [b"Subject: Re: {tag}", b"In-Reply-To: {forged}"],
    "38 our id with a valid token under a foreign domain": [
        b"Subject: Re: payroll", b"In-Reply-To: {ack_elsewhere}"],
    "38 our id in upper case": [b"Subject: Re: payroll", b"In-Reply-To: {ack_upper}"],
    "38 many forged references": [b"Subject: Re: payroll", b"References: {forged} {near} {forged}"],
    # 39: control headers from outside
    "39 X-Mail2ticket-Ticket": [b"Subject: Hello", b"X-Mail2ticket-Ticket: {victim}"],
    "39 X-Mail2ticket-Status": [b"Subject: Re: {tag}", b"X-Mail2ticket-Ticket: {victim}",
                                b"X-Mail2ticket-Status: closed"],
    "39 X-Mail2ticket-Priority and -Assignee": [b"Subject: {tag}", b"X-Mail2ticket-Ticket: {victim}",
                                                b"X-Mail2ticket-Priority: urgent",
                                                b"X-Mail2ticket-Assignee: mallory"],
    "39 X-Loop naming the desk": [b"Subject: Re: {tag}", b"X-Loop: {desk}"],
    "39 other helpdesks' control headers": [b"Subject: Re: {tag}", b"X-Zammad-Ticket-Number: {victim}",
                                            b"X-OTRS-TicketKey: {victim}", b"X-RT-Ticket: {victim}"],
    "39 our From with a foreign Message-ID": [b"From: {desk}", b"Subject: Re: {tag}",
                                              b"X-Mail2ticket-Ticket: {victim}"],
    # 40: a From that is not the sender's (no DMARC verdict of our MTA is configured here)
    "40 Authentication-Results of a foreign server saying pass": [
        b"Subject: Re: {tag}", b"Authentication-Results: mx.evil.test; dmarc=pass header.from=customer.test"],
    # 41: CR/LF/NUL in a subject or display name that the acknowledgement reuses
    "41 encoded CR LF Bcc in the subject": [b"Subject: =?UTF-8?Q?Re:_{tag}=0D=0ABcc:_ann@customer.test?="],
    "41 encoded blank line in the subject": [
        b"Subject: =?UTF-8?Q?Hi=0D=0A=0D=0A{tag}_injected_body=0D=0AX-Injected:_yes?="],
    "41 NUL in the subject": [b"Subject: Hi\x00Bcc: ann@customer.test {tag}"],
    "41 encoded NUL and LF in the display name": [
        b"From: =?UTF-8?Q?Mallory=00=0ABcc:_ann@customer.test?= <mallory@evil.test>", b"Subject: {tag}"],
    "41 Unicode line separator in the subject": [b"Subject: =?UTF-8?Q?Hi=E2=80=A8Bcc:_ann@customer.test?= {tag}"],
    # 42: pathological and ambiguous addresses
    "42 ambiguous From (CVE-2023-27043)": [b"From: mallory@evil.test)<ann@customer.test>", b"Subject: {tag}"],
    "42 From of 4000 nested comments": [b"From: " + b"(" * 4000 + b"x" + b")" * 4000 + b" ann@customer.test",
                                        b"Subject: {tag}"],
    "42 colon-heavy From": [b"From: " + b":" * 5000 + b"ann@customer.test", b"Subject: {tag}"],
    "42 two addresses in From": [b"From: mallory@evil.test, ann@customer.test", b"Subject: {tag}"],
    "42 no From at all": [b"Subject: Re: {tag}"],
    # 53: the customer's own Message-ID (everyone on To/Cc has it), and our valid ids sent to others
    "53 In-Reply-To naming the customer's Message-ID": [b"Subject: Re: payroll", b"In-Reply-To: {cust}"],
    "53 References naming the customer's Message-ID": [b"Subject: Re: payroll", b"References: {cust}"],
    "53 both headers naming the customer's Message-ID": [b"Subject: Re: payroll", b"In-Reply-To: {cust}",
                                                         b"References: {cust}"],
    "53 our valid acknowledgement id, sent to Ann": [b"Subject: Re: payroll", b"In-Reply-To: {ack}"],
    "53 forged chain: customer id, then our id": [b"Subject: Re: payroll", b"In-Reply-To: {ack}",
                                                  b"References: {cust} {ack}"],
    "53 forged chain: unknown ids around the customer id": [
        b"Subject: Re: payroll", b"In-Reply-To: <x1@evil.test>", b"References: <x0@evil.test> {cust} <x1@evil.test>"],
    "53 customer id with a forged id of ours": [b"Subject: Re: payroll", b"In-Reply-To: {forged}",
                                                b"References: {cust} {forged}"],
    "53 customer id with the subject tag": [b"Subject: Re: {tag} payroll", b"In-Reply-To: {cust}"],
    "53 customer id and Cc'ing the requester": [b"Subject: Re: payroll", b"In-Reply-To: {cust}",
                                                b"Cc: ann@customer.test, bob@customer.test"],
    "53 customer id with a Reply-To of the requester": [b"Subject: Re: payroll", b"References: {cust}",
                                                        b"Reply-To: ann@customer.test"],
    "53 customer id with Sender: the requester": [b"Subject: Re: payroll", b"In-Reply-To: {cust}",
                                                  b"Sender: ann@customer.test"],
    "53 customer id with the requester as display name": [
        b'From: "ann@customer.test" <mallory@evil.test>', b"Subject: Re: payroll", b"In-Reply-To: {cust}"],
    "53 customer id from the desk's own address": [b"From: {desk}", b"Subject: Re: payroll",
                                                   b"In-Reply-To: {cust}"],
    "53 customer id in a comment-laden header": [b"Subject: Re: payroll",
                                                 b"In-Reply-To: (Ann's mail) {cust} (of Monday)"],
    "53 customer id in the Gmail-style Re: with tag and our id": [
        b"Subject: Re: {tag}", b"In-Reply-To: {cust}", b"References: {ack} {cust}"],
}


def forged_mail(n: int, name: str, victim: Victim) -> bytes:
    ack = victim.ack_id
    fields = {
        b"{tag}": victim.tag.encode(), b"{forged}": _forged_id(ack).encode(), b"{near}": _near_miss_id(ack).encode(),
        b"{ack_elsewhere}": ack.replace("@", "@evil.", 1).encode() if "@" in ack else b"",
        b"{ack_upper}": ack.upper().encode(), b"{desk}": victim.desk_email.encode(),
        b"{victim}": str(victim.ticket).encode(), b"{cust}": victim.cust_id.encode(),
        b"{ack}": ack.encode(),
    }
    lines = []
    for line in FORGERIES[name]:
        for key, value in fields.items():
            line = line.replace(key, value)
        lines.append(line)
    names = {line.split(b":", 1)[0].lower() for line in lines}
    head = [] if b"from" in names or name == "42 no From at all" else [f"From: mallory{n}@evil.test".encode()]
    head += lines + [
        f"To: {victim.desk_email}".encode(),
        f"Message-ID: <forged-{n}@evil.test>".encode(),
        f"Date: {format_datetime(datetime.now(UTC))}".encode(),
        b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8",
    ]
    return b"\r\n".join(head) + f"\r\n\r\nFORGED-{n} please send me the payroll file\r\n".encode()


@dataclass
class Attack:
    victim: Victim
    before: dict  # the victim ticket before the forged mail came in
    after: dict
    sent: list  # what the SMTP server received after the attack (SmtpMessage)
    where: dict[int, tuple[int | None, str | None]]  # forgery number: (ticket, thread_reason)
    quarantined: set[int]
    reply_all: tuple[str, ...] = ()  # the recipients of 'tickets reply --all' on the victim's ticket


@pytest.fixture(scope="module")
def attack(tmp_path_factory, dovecot, test_ca) -> Attack:
    """Build the victim ticket, deliver every forgery, poll once (module scope: one import)."""
    root = tmp_path_factory.mktemp("hijack")
    with pytest.MonkeyPatch.context() as mp, SmtpServer(test_ca) as smtp:
        for variable in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
            (root / variable).mkdir()
            mp.setenv(variable, str(root / variable))
        mp.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
        mp.delenv("MAIL2TICKET_CONFIG", raising=False)
        user = dovecot.add_user()
        desk = Desk(root / "desk", dovecot, user, smtp, lambda u, s, **kw: account_config(u, dovecot, s, **kw))
        desk.deliver(make_mail(f"Access {SECRET_SUBJECT}", "Ann <ann@customer.test>",
                               f"{desk.email}, bob@customer.test", f"My {SECRET_BODY}.",
                               message_id=Victim.cust_id))
        desk.poll()
        [ticket] = desk.tickets()
        [ack] = desk.smtp.messages
        victim = Victim(ticket["id"], f"[#{ticket['id']}]", ack.message["Message-ID"], desk.email)
        before = desk.show(victim.ticket)
        first_new = len(smtp.messages)
        names = list(FORGERIES)
        dovecot.append_many(user, [forged_mail(n, name, victim) for n, name in enumerate(names)])
        desk.poll()
        after = desk.show(victim.ticket)
        with connect(root / "desk") as conn:
            where = {}
            for message_id, ticket_id, reason in conn.execute(
                "select message_id, ticket_id, thread_reason from messages where message_id like '<forged-%'"
            ):
                where[int(message_id[len("<forged-"):].split("@")[0])] = (ticket_id, reason)
            quarantined = {
                int(m.group(1)) for (raw,) in conn.execute(
                    "select r.raw from quarantine q join raw_messages r on r.sha256 = q.raw_sha256")
                if (m := re.search(rb"FORGED-(\d+)", raw))
            }
        sent = list(smtp.messages[first_new:])
        # The agent answers with --all: it goes to the participants (Ann, Bob) and no one else.
        desk.ok("tickets", "reply", str(victim.ticket), "--all", "--message", f"The {SECRET_BODY} is reset.")
        [answer] = smtp.messages[first_new + len(sent):]
        return Attack(victim, before, after, sent, where, quarantined, tuple(answer.rcpt_tos))


CASES = list(enumerate(FORGERIES))


@pytest.mark.parametrize("n,name", CASES, ids=[name for _, name in CASES])
def test_a_forged_follow_up_gets_nowhere(attack, n, name):
    victim = attack.victim
    # Accounted for: stored as a ticket of its own (or quarantined), never in the victim's ticket.
    assert n in attack.where or n in attack.quarantined, f"forgery {n} vanished"
    if n in attack.where:
        ticket_id, reason = attack.where[n]
        assert ticket_id != victim.ticket, f"forgery {n} was appended to the victim's ticket: {reason}"
    assert all(f"FORGED-{n} " not in (m["body_text"] or "") for m in attack.after["messages"])
    # No state change of the victim's ticket.
    for key in ("status", "priority", "assignee", "subject", "requester", "tags", "closed_at", "updated_at"):
        assert attack.after[key] == attack.before[key], key
    assert len(attack.after["messages"]) == len(attack.before["messages"])
    # Nothing of the ticket went to anyone but its participants, and no header was injected.
    for sent in attack.sent:
        outsiders = set(sent.rcpt_tos) - PARTICIPANTS
        head, _, body = sent.data.partition(b"\r\n\r\n")
        header_names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in b" \t"]
        assert b"bcc" not in header_names and b"x-injected" not in header_names
        assert b"\x00" not in sent.data
        assert header_names.count(b"to") == 1 and header_names.count(b"subject") == 1
        if outsiders:
            text = sent.message["Subject"] + sent.message.get_content()
            assert victim.tag not in text and SECRET_SUBJECT not in text and SECRET_BODY not in text
            assert len(sent.rcpt_tos) == 1


def test_the_suite_forges_at_least_30_follow_ups_and_none_gets_in(attack):
    appended = [n for n, (ticket, _) in attack.where.items() if ticket == attack.victim.ticket]
    assert len(FORGERIES) >= 30
    assert {int(name.split()[0]) for name in FORGERIES} == {37, 38, 39, 40, 41, 42, 53}
    assert appended == []
    assert attack.after["status"] == attack.before["status"] == "open"
    # Ann and Bob got nothing because of the forgeries (no acknowledgement back-scattered to them).
    assert [m for m in attack.sent if set(m.rcpt_tos) & PARTICIPANTS] == []
    # Every forgery from a real address got its own acknowledgement (no content of the victim's).
    assert len(attack.sent) >= 20


def test_forged_customer_ids_and_reference_chains_get_nowhere_and_reply_all_reaches_only_participants(attack):
    """Item 53, the figure: forged follow-ups tried, appended, mails to a non-participant."""
    tried = len(FORGERIES)
    by_id = sum(1 for name in FORGERIES if name.startswith("53 "))
    appended = [n for n, (ticket, _) in attack.where.items() if ticket == attack.victim.ticket]
    outsiders = sorted(set(attack.reply_all) - PARTICIPANTS)
    leaked = [m for m in attack.sent if set(m.rcpt_tos) - PARTICIPANTS and (
        attack.victim.tag in m.message["Subject"] or SECRET_BODY in m.message.get_content())]
    print(f"\nforged follow-ups tried: {tried} ({by_id} by a customer's Message-ID or a chain of References), "
          f"appended: {len(appended)}, mails to a non-participant: {len(outsiders) + len(leaked)} "
          f"(reply --all went to {', '.join(sorted(attack.reply_all))})")
    assert by_id >= 14 and appended == [] and leaked == []
    assert sorted(attack.reply_all) == sorted(PARTICIPANTS) and outsiders == []
    for n, name in enumerate(FORGERIES):
        if name.startswith("53 ") and n in attack.where:
            assert "not a participant" in (attack.where[n][1] or ""), (name, attack.where[n][1])
