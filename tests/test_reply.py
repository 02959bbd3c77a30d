"""Answering from the shell: tickets reply, close and reopen (issue 5, point 5).

Replies go to the real SMTP server of the test suite; the customer's answers come back through
the real Dovecot.
"""

from __future__ import annotations

import json
import stat
from email import message_from_bytes, policy

import pytest

from tests.helpers import Desk, make_mail, reply_to


@pytest.fixture
def desk(tmp_path, dovecot, imap_user, smtp_server, account_config):
    """A desk with one ticket from ann@customer.test (bob@customer.test in Cc), acknowledged."""
    desk = Desk(tmp_path / "desk", dovecot, imap_user, smtp_server, account_config)
    desk.first = make_mail("Printer on fire", "Ann <ann@customer.test>", f"{desk.email}, bob@customer.test")
    desk.deliver(desk.first)
    desk.poll()
    [ticket] = desk.tickets()
    desk.ticket = ticket["id"]
    desk.smtp.messages.clear()  # the acknowledgement: tested elsewhere
    return desk


def test_reply_mails_a_threaded_tagged_answer_and_stores_it_in_the_ticket(desk):
    result = desk.ok("tickets", "reply", str(desk.ticket), "--message", "We sent a technician.")
    assert "Sent to ann@customer.test" in result.stdout
    [sent] = desk.smtp.messages
    msg = sent.message
    original = message_from_bytes(desk.first, policy=policy.default)
    assert sent.rcpt_tos == ("ann@customer.test",) and msg["From"] == desk.email
    assert msg["Subject"] == f"Re: [#{desk.ticket}] Printer on fire"
    assert msg["In-Reply-To"] == original["Message-ID"]
    assert msg["References"] == original["Message-ID"]
    assert msg["Auto-Submitted"] is None  # a person wrote this one
    assert "We sent a technician." in msg.get_content()
    ticket = desk.show(desk.ticket)
    assert ticket["status"] == "pending" and ticket["message_count"] == 2 and ticket["incoming_count"] == 1
    out = ticket["messages"][-1]
    assert out["direction"] == "out" and out["message_id"] == msg["Message-ID"]
    assert out["from_address"] == desk.email and out["to"] == ["ann@customer.test"]
    assert out["body_text"] == "We sent a technician."
    assert any(e["kind"] == "replied" for e in ticket["events"])


def test_the_customers_answer_to_a_reply_joins_the_ticket_and_opens_it_again(desk):
    desk.ok("tickets", "reply", str(desk.ticket), "--message", "Is it fixed?")
    [sent] = desk.smtp.messages
    desk.deliver(reply_to(sent.data, body="No, still burning."))
    desk.poll()
    [ticket] = desk.tickets()
    assert ticket["status"] == "open" and ticket["incoming_count"] == 2
    assert "our reply" in desk.show(ticket["id"])["messages"][-1]["thread_reason"]


def test_reply_reads_the_text_from_a_file(desk, tmp_path):
    text = tmp_path / "answer.txt"
    text.write_text("Línea uno\nLine two, which is rather long " + "x" * 1200 + "\n", encoding="utf-8")
    desk.ok("tickets", "reply", str(desk.ticket), "--file", str(text))
    [sent] = desk.smtp.messages
    assert sent.message.get_content().replace("\r\n", "\n") == text.read_text(encoding="utf-8")
    assert max(len(line) for line in sent.data.split(b"\r\n")) <= 998  # RFC 5322


def test_reply_without_text_opens_the_editor(desk, tmp_path):
    from tests.test_editor_and_ids import on_terminal  # an editor needs a terminal (issue 14.8)

    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "Written in the editor.\\n# a comment line\\n" > "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    code, out = on_terminal(desk.config, "tickets", "reply", str(desk.ticket), env={"EDITOR": str(editor), "VISUAL": None})
    assert code == 0, out
    [sent] = desk.smtp.messages
    assert sent.message.get_content().strip() == "Written in the editor."


def test_an_empty_reply_sends_and_stores_nothing(desk, tmp_path):
    editor = tmp_path / "empty.sh"
    editor.write_text('#!/bin/sh\nprintf "# only comments\\n\\n" > "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    from tests.test_editor_and_ids import on_terminal  # an editor needs a terminal (issue 14.8)

    code, out = on_terminal(desk.config, "tickets", "reply", str(desk.ticket), env={"EDITOR": str(editor), "VISUAL": None})
    assert code == 1 and "empty" in out
    assert desk.smtp.messages == [] and desk.show(desk.ticket)["message_count"] == 1


def test_reply_all_copies_the_other_participants_but_never_our_own_accounts(desk):
    desk.ok("tickets", "reply", str(desk.ticket), "--all", "--message", "Copying Bob.")
    [sent] = desk.smtp.messages
    assert sent.rcpt_tos == ("ann@customer.test", "bob@customer.test")
    assert sent.message["Cc"] == "bob@customer.test" and desk.email not in sent.message["Cc"]


@pytest.mark.parametrize("status", ["open", "closed"])
def test_reply_can_set_another_status(desk, status):
    desk.ok("tickets", "reply", str(desk.ticket), "--message", "Done.", "--status", status)
    assert desk.show(desk.ticket)["status"] == status


def test_reply_to_a_ticket_that_does_not_exist_is_a_one_line_error(desk):
    result = desk.invoke("tickets", "reply", "999", "--message", "Hello?")
    assert result.exit_code != 0 and "no ticket #999" in result.stderr
    assert "Traceback" not in result.output and desk.smtp.messages == []


def test_a_reply_while_the_smtp_server_is_down_is_stored_and_sent_later(desk):
    desk.smtp.stop()
    result = desk.ok("tickets", "reply", str(desk.ticket), "--message", "Later.")
    assert "not sent yet" in result.stderr and "outbox" in result.stderr
    assert desk.show(desk.ticket)["messages"][-1]["body_text"] == "Later."
    desk.smtp.start()
    desk.ok("outbox", "retry", "--all")
    [sent] = desk.smtp.messages
    assert "Later." in sent.message.get_content()


def test_a_reply_the_server_refuses_for_good_exits_non_zero_and_stays_in_the_outbox(desk):
    desk.smtp.fail_next(1, code=554, text="5.7.1 Relay denied")
    result = desk.invoke("tickets", "reply", str(desk.ticket), "--message", "Refused.")
    assert result.exit_code == 1 and "554" in result.stderr and "outbox retry" in result.stderr
    [entry] = json.loads(desk.ok("outbox", "list", "--json").stdout)
    assert entry["status"] == "failed" and entry["kind"] == "reply"


def test_close_and_reopen_change_the_status_without_mail_by_default(desk):
    assert "open -> closed" in desk.ok("tickets", "close", str(desk.ticket)).stdout
    assert desk.show(desk.ticket)["status"] == "closed"
    assert "already closed" in desk.ok("tickets", "close", str(desk.ticket)).stdout
    desk.ok("tickets", "reopen", str(desk.ticket))
    assert desk.show(desk.ticket)["status"] == "open"
    assert desk.smtp.messages == []
    kinds = [e["kind"] for e in desk.show(desk.ticket)["events"]]
    assert "closed" in kinds and "reopened" in kinds


def test_close_and_reopen_with_notify_tell_the_requester_in_the_thread(desk):
    desk.ok("tickets", "close", str(desk.ticket), "--notify")
    desk.ok("tickets", "reopen", str(desk.ticket), "--notify")
    closed, reopened = desk.smtp.messages
    original = message_from_bytes(desk.first, policy=policy.default)
    for sent, word in ((closed, "Closed"), (reopened, "Reopened")):
        msg = sent.message
        assert sent.rcpt_tos == ("ann@customer.test",)
        assert msg["Subject"] == f"[#{desk.ticket}] {word}: Printer on fire"
        assert msg["In-Reply-To"] == original["Message-ID"]
        assert msg["Auto-Submitted"] == "auto-generated"
    # The customer's answer to the notice comes back into the same ticket.
    desk.deliver(reply_to(closed.data, body="Thanks"))
    desk.poll()
    assert len(desk.tickets()) == 1


# --- item 57: reply --all to thousands (issue 13, point 5) -------------------------------------


def _mail_with_ccs(desk, count: int) -> bytes:
    ccs = ",\r\n ".join(f"reader{i:04d}@list.test" for i in range(count))
    return (
        f"From: Carl <carl@customer.test>\r\nTo: {desk.email}\r\nCc: {ccs}\r\n"
        "Subject: Newsletter question\r\nMessage-ID: <many-cc@customer.test>\r\n"
        "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\nWho are all these people?\r\n"
    ).encode()


def test_reply_all_to_thousands_of_cc_refuses_without_yes_and_stores_a_bounded_cc_list(desk):
    desk.deliver(_mail_with_ccs(desk, 3000))
    desk.poll()
    ticket = next(t for t in desk.tickets() if t["requester"] == "carl@customer.test")
    [message] = desk.show(ticket["id"])["messages"]
    stored = len(message["cc"])
    assert stored == 100 and message["cc"][0] == "reader0000@list.test"
    assert any(d.startswith("Cc: ") and "the first 100 are stored" in d for d in message["defects"])
    with desk.db() as db:  # the raw bytes keep every address
        raw = db.execute("select r.raw from raw_messages r join messages m on m.raw_sha256 = r.sha256 "
                         "where m.message_id = '<many-cc@customer.test>'").fetchone()[0]
    assert raw.count(b"@list.test") == 3000
    desk.ok("reparse", "--all")  # a reparse from the raw bytes keeps the bound
    assert len(desk.show(ticket["id"])["messages"][0]["cc"]) == 100
    desk.smtp.messages.clear()
    refused = desk.invoke("tickets", "reply", str(ticket["id"]), "--all", "--message", "Hello all.")
    print(f"\nCc in the mail: 3000, stored: {stored}; reply --all without --yes: exit {refused.exit_code}, "
          f"mails sent: {len(desk.smtp.messages)}")
    assert refused.exit_code == 1 and desk.smtp.messages == []
    assert "101 recipients" in refused.stderr and "reply_all_limit = 20" in refused.stderr
    assert "--yes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert len(desk.show(ticket["id"])["messages"]) == 1  # nothing stored either
    sent = desk.ok("tickets", "reply", str(ticket["id"]), "--all", "--yes", "--message", "Hello all.")
    [mail] = desk.smtp.messages
    assert len(mail.rcpt_tos) == 101 and "Sent to carl@customer.test" in sent.stdout


def test_reply_all_within_the_limit_needs_no_yes_and_the_limit_is_configurable(
    tmp_path, dovecot, imap_user, smtp_server, account_config
):
    desk = Desk(tmp_path / "small", dovecot, imap_user, smtp_server, account_config,
                conversations={"reply_all_limit": 3})
    desk.deliver(make_mail("Team", "ann@customer.test", f"{desk.email}, b@customer.test, c@customer.test"))
    desk.deliver(make_mail("Bigger team", "dan@customer.test",
                           f"{desk.email}, e@customer.test, f@customer.test, g@customer.test"))
    desk.poll()
    small, big = [t["id"] for t in desk.tickets()]
    desk.ok("tickets", "reply", str(small), "--all", "--message", "Hi.")  # 3 recipients: fine
    refused = desk.invoke("tickets", "reply", str(big), "--all", "--message", "Hi.")
    assert refused.exit_code == 1 and "4 recipients" in refused.stderr and "reply_all_limit = 3" in refused.stderr
    desk.ok("tickets", "reply", str(big), "--message", "Only to you.")  # without --all: no question
