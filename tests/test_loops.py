"""Loop protection against a responder that ignores the standards (RELIABILITY 45, figure 8).

A real loop: the helpdesk reads its mailbox on the real Dovecot and sends through the real SMTP
server; an echo bot, another Dovecot user, reads its own mailbox over IMAP and answers every mail
through the same SMTP server (STARTTLS, AUTH) without Auto-Submitted, Precedence or X-Loop. What
the SMTP server accepts is carried to the recipients' mailboxes, so each side's answers come back
to the other as new mail, round after round.
"""

from __future__ import annotations

import json
import smtplib
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from tests.helpers import Desk, connect


class EchoBot:
    """Answers every new mail in its INBOX with a mail of its own, sent over SMTP.

    ``threaded``: the answer names the mail it answers (In-Reply-To, References, 'Re:' subject),
    so the helpdesk files it in the same ticket; otherwise each answer is a fresh conversation.
    """

    def __init__(self, dovecot, user, smtp, ca, *, threaded: bool = False) -> None:
        self.dovecot, self.user, self.smtp, self.ca, self.threaded = dovecot, user, smtp, ca, threaded
        smtp.add_user(user)
        self.answered = 0

    @property
    def email(self) -> str:
        return self.user.email

    def answer(self) -> int:
        with self.dovecot.connect(self.user) as imap:
            imap.select_folder("INBOX")
            uids = imap.search(["UNSEEN"])
            fetched = imap.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            mails = [message_from_bytes(fetched[uid][b"BODY[]"], policy=policy.default) for uid in uids]
            if uids:
                imap.add_flags(uids, [b"\\Seen"])
        if not mails:
            return 0
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=10) as conn:
            conn.starttls(context=self.ca.client_context())
            conn.login(self.user.email, self.user.password)
            for original in mails:
                self.answered += 1
                reply = EmailMessage()
                reply["From"] = self.email
                reply["To"] = str(original["From"])
                reply["Message-ID"] = make_msgid(domain="bot.test")
                if self.threaded:
                    reply["Subject"] = f"Re: {original['Subject']}"
                    reply["In-Reply-To"] = original["Message-ID"]
                    reply["References"] = original["Message-ID"]
                else:
                    reply["Subject"] = f"Echo {self.answered}"
                reply.set_content(f"I got your mail {original['Subject']}.")
                conn.send_message(reply)
        return len(mails)


class Internet:
    """Carries what the SMTP server accepted into the Dovecot mailboxes of its recipients."""

    def __init__(self, smtp, dovecot, *users) -> None:
        self.smtp, self.dovecot = smtp, dovecot
        self.users = {u.email: u for u in users}
        self.carried = 0

    def carry(self) -> int:
        mailboxes: dict[str, list[bytes]] = {}
        while self.carried < len(self.smtp.messages):
            sent = self.smtp.messages[self.carried]
            self.carried += 1
            for rcpt in sent.rcpt_tos:
                if rcpt in self.users:
                    mailboxes.setdefault(rcpt, []).append(sent.data)
        for rcpt, mails in mailboxes.items():
            self.dovecot.append_many(self.users[rcpt], mails)
        return sum(len(m) for m in mailboxes.values())


@pytest.fixture
def loop(tmp_path, dovecot, test_ca, smtp_server, account_config):
    """make(conversations=None, threaded=False): a helpdesk, an echo bot and the mail between them."""

    def make(conversations=None, threaded=False):
        desk = Desk(tmp_path / "desk", dovecot, dovecot.add_user(), smtp_server, account_config,
                    conversations=conversations)
        bot = EchoBot(dovecot, dovecot.add_user(), smtp_server, test_ca, threaded=threaded)
        return desk, bot, Internet(smtp_server, dovecot, desk.user, bot.user)

    return make


def outbox(desk: Desk) -> list[dict]:
    return json.loads(desk.ok("outbox", "list", "--all", "--json").stdout)


def age_the_outbox(desk: Desk, minutes: int) -> None:
    """Move every outbox row ``minutes`` into the past: the caps' periods pass without waiting."""
    with connect(desk.root) as conn:
        for row_id, created in conn.execute("select id, created_at from outbox").fetchall():
            at = datetime.fromisoformat(created.replace("Z", "+00:00")) - timedelta(minutes=minutes)
            conn.execute("update outbox set created_at = ? where id = ?",
                         [at.astimezone(UTC).isoformat().replace("+00:00", "Z"), row_id])


def test_an_echo_bot_gets_at_most_40_automatic_mails_a_day_however_many_rounds_it_plays(loop):
    # The per-sender acknowledgement limit is lifted: what stops the loop must be the per-address cap.
    desk, bot, internet = loop(conversations={"auto_reply_limit": 1000})
    for n in range(8):  # the bot starts eight conversations at once
        desk.deliver(_fresh_mail(bot.email, desk.email, n))
    rounds = 0
    while True:
        desk.poll()
        internet.carry()
        answered = bot.answer()
        internet.carry()
        rounds += 1
        if not answered:
            break
        assert rounds < 12, "the loop does not stop"
    to_bot = [m for m in desk.smtp.messages if bot.email in m.rcpt_tos]
    assert len(to_bot) == 40  # the default auto_mail_address_limit
    assert rounds >= 5  # many rounds were played: the cap, not the first round, ended it
    tickets = desk.tickets()
    assert len(tickets) == 8 + bot.answered  # every mail of the bot is still a ticket: nothing dropped
    with connect(desk.root) as conn:  # the ack_reason of 48 tickets, in one read
        reasons = [r for (r,) in conn.execute("select ack_reason from messages order by id")]
    held = [r for r in reasons if "loop protection" in r]
    assert len(held) == len(tickets) - 40
    assert all(f"to {bot.email}" in r and "auto_mail_address_limit = 40" in r for r in held)
    last = desk.show(tickets[-1]["id"])  # what the user sees on a ticket whose ack was held back
    assert last["messages"][0]["ack_reason"].startswith("not acknowledged: loop protection: 40 automatic")
    assert any(e["kind"] == "mail-held" and bot.email in e["detail"] for e in last["events"])
    human = desk.ok("tickets", "show", str(tickets[-1]["id"])).stdout
    assert "Acknowledgement: not acknowledged: loop protection" in human


def test_notices_on_one_ticket_stop_at_10_in_10_minutes_while_a_bot_echoes_each_of_them(loop):
    desk, bot, internet = loop(threaded=True)
    desk.deliver(_fresh_mail(bot.email, desk.email, 0))
    desk.poll()  # a ticket, and its acknowledgement: the first automatic mail on it
    [ticket] = desk.tickets()
    number = str(ticket["id"])
    warnings = []
    for _round in range(6):  # someone closes and reopens with notices; the bot answers each notice
        for command in ("close", "reopen"):
            result = desk.invoke("tickets", command, number, "--notify")
            assert result.exit_code == 0, result.stderr
            warnings.append(result.stderr)
        internet.carry()
        bot.answer()
        internet.carry()
        desk.poll()  # the bot's answers are follow-ups of the ticket
    sent = [m for m in desk.smtp.messages if bot.email in m.rcpt_tos]
    assert len(sent) == 10  # the default auto_mail_ticket_limit: the ack and 9 notices
    assert len(desk.show(ticket["id"])["messages"]) == 1 + bot.answered  # every answer is kept
    held = [e for e in outbox(desk) if e["status"] == "held"]
    assert len(held) == 12 - 9 and all(e["kind"] in ("close", "reopen") for e in held)
    assert all(f"on ticket #{number}" in e["last_error"] and "auto_mail_ticket_limit = 10" in e["last_error"]
               for e in held)
    assert sum("the notice was not sent: loop protection" in w for w in warnings) == len(held)
    events = desk.show(ticket["id"])["events"]
    assert sum(e["kind"] == "mail-held" for e in events) == len(held)
    # Ten minutes later the ticket may have notices again.
    age_the_outbox(desk, minutes=11)
    desk.ok("tickets", "close", number, "--notify")
    assert len([m for m in desk.smtp.messages if bot.email in m.rcpt_tos]) == 11


def test_a_reply_typed_by_a_person_is_sent_past_the_caps_with_a_warning(loop):
    desk, bot, internet = loop(conversations={"auto_mail_ticket_limit": 1})
    desk.deliver(_fresh_mail(bot.email, desk.email, 0))
    desk.poll()  # the acknowledgement reaches the limit of one automatic mail on the ticket
    [ticket] = desk.tickets()
    notice = desk.invoke("tickets", "close", str(ticket["id"]), "--notify")
    assert "not sent: loop protection" in notice.stderr
    result = desk.ok("tickets", "reply", str(ticket["id"]), "--message", "A person wrote this.")
    assert "Warning: loop protection: 1 automatic mail(s) on ticket" in result.stderr
    assert "Sent to " + bot.email in result.stdout
    assert [m.message["Subject"].startswith("Re: ") for m in desk.smtp.messages] == [False, True]


def _fresh_mail(sender: str, to: str, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, f"Subscription {n}"
    msg["Message-ID"] = make_msgid(domain="bot.test")
    msg.set_content("Hello.")
    return msg.as_bytes()


def test_our_own_notices_and_replies_fetched_back_make_no_ticket_and_no_mail(loop):
    """A shared mailbox or a copy to ourselves (RELIABILITY 44): everything we sent comes back."""
    desk, bot, internet = loop(conversations={"auto_reply_limit": 1000})
    desk.deliver(_fresh_mail(bot.email, desk.email, 0))
    desk.poll()
    [ticket] = desk.tickets()
    desk.ok("tickets", "close", str(ticket["id"]), "--notify")
    desk.ok("tickets", "reopen", str(ticket["id"]), "--notify")
    desk.ok("tickets", "reply", str(ticket["id"]), "--message", "On it.")
    sent = len(desk.smtp.messages)
    assert sent == 4  # the acknowledgement, two notices and the reply
    desk.dovecot.append_many(desk.user, [m.data for m in desk.smtp.messages])
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["message_count"] == 2  # the bot's mail and our reply: nothing new
    assert len(desk.smtp.messages) == sent
