"""The outbox: queued with its cause, sent with retries, marked sent only on 250 (issue 5, point 3).

The SMTP server is the real aiosmtpd of the test suite, stopped, failing or crashing on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mail2ticket.config.load import load_config
from mail2ticket.outgoing.sender import BACKOFF_MAX, backoff_seconds, send_pending
from tests.helpers import Desk, make_mail
from tests.postgres import engine_under_test

ROOT = Path(__file__).resolve().parent.parent


def outbox(desk: Desk, *args: str) -> list[dict]:
    return json.loads(desk.ok("outbox", "list", "--json", *args).stdout)


def test_an_smtp_server_that_is_down_at_first_still_gets_the_mail_later_once(desk):
    desk.smtp.stop()
    desk.deliver(make_mail("Network down", to=desk.email))
    polled = desk.poll()  # the account itself is fine: exit 0, the mail waits
    assert desk.smtp.messages == [] and len(desk.tickets()) == 1
    [waiting] = outbox(desk)
    assert waiting["status"] == "queued" and waiting["kind"] == "ack" and waiting["attempts"] == 1
    assert "refused the connection" in waiting["last_error"]
    assert waiting["next_attempt_at"] > waiting["created_at"]
    assert "not sent, retrying" in polled.stderr
    desk.smtp.start()
    desk.poll()  # too early: the retry is not due yet
    assert desk.smtp.messages == []
    cfg = load_config(desk.config)
    db = desk.db()
    report = send_pending(cfg, db, now=datetime.now(UTC) + timedelta(seconds=backoff_seconds(1) + 1))
    assert len(report.sent) == 1
    desk.poll()
    desk.poll()
    [delivered] = desk.smtp.messages
    assert delivered.message["Message-ID"] == waiting["message_id"]
    assert outbox(desk) == []
    [sent] = outbox(desk, "--all")
    assert sent["status"] == "sent" and sent["smtp_reply"].startswith("250") and sent["attempts"] == 2


def test_outbox_retry_sends_waiting_mail_at_once(desk):
    desk.smtp.stop()
    desk.deliver(make_mail("Retry me", to=desk.email))
    desk.poll()
    desk.smtp.start()
    result = desk.ok("outbox", "retry", "--all")
    assert "sent to ann@customer.test" in result.stdout
    assert len(desk.smtp.messages) == 1
    assert desk.ok("outbox", "retry", "--all").stdout.strip() == "Nothing waiting in the outbox."
    assert len(desk.smtp.messages) == 1


def test_a_temporary_refusal_is_retried_with_growing_delays(desk):
    desk.smtp.fail_next(2, code=451)
    desk.deliver(make_mail("Greylisted", to=desk.email))
    desk.poll()
    [entry] = outbox(desk)
    assert entry["status"] == "queued" and "451" in entry["last_error"]
    first_delay = entry["next_attempt_at"]
    assert desk.invoke("outbox", "retry", str(entry["id"])).exit_code == 1  # refused again
    assert desk.smtp.messages == []
    [entry] = outbox(desk)
    assert entry["attempts"] == 2 and entry["next_attempt_at"] >= first_delay
    desk.ok("outbox", "retry", str(entry["id"]))
    assert len(desk.smtp.messages) == 1
    assert [backoff_seconds(n) for n in (1, 2, 3)] == [30, 60, 120]
    assert backoff_seconds(50) == BACKOFF_MAX == 15 * 60


def test_outbox_retry_exits_non_zero_while_the_mail_is_still_refused(desk):
    desk.smtp.fail_next(2, code=451)
    desk.deliver(make_mail("Still greylisted", to=desk.email))
    desk.poll()
    result = desk.invoke("outbox", "retry", "--all")
    assert result.exit_code == 1 and "not sent (queued)" in result.stderr and "451" in result.stderr


def test_a_permanent_refusal_is_not_retried_and_is_shown_to_the_operator(desk):
    desk.smtp.fail_next(1, code=550, text="5.1.1 No such user")
    desk.deliver(make_mail("Unknown user", to=desk.email))
    desk.poll()
    [entry] = outbox(desk)
    assert entry["status"] == "failed" and "550" in entry["last_error"]
    desk.poll()
    assert desk.smtp.messages == [] and len(desk.smtp.rejections) == 1
    status = json.loads(desk.invoke("status", "--json").stdout)
    assert any("outbox" in alert and "refused" in alert for alert in status["alerts"])
    listed = desk.ok("outbox", "list").stdout
    assert "failed" in listed and "550" in listed
    [ticket] = desk.tickets()
    assert any(e["kind"] == "mail-failed" for e in desk.show(ticket["id"])["events"])
    desk.ok("outbox", "retry", str(entry["id"]))  # the cause is fixed: send it by hand
    assert len(desk.smtp.messages) == 1


def test_mail_that_cannot_be_sent_for_longer_than_outbox_expire_is_given_up(desk):
    desk.smtp.stop()
    desk.deliver(make_mail("Gone for a week", to=desk.email))
    desk.poll()
    cfg, db = load_config(desk.config), desk.db()
    report = send_pending(cfg, db, now=datetime.now(UTC) + timedelta(days=6))
    assert len(report.failed) == 1
    [entry] = outbox(desk)
    assert entry["status"] == "failed" and entry["last_error"].startswith("gave up after 5d")


def test_a_crash_after_the_servers_acceptance_sends_the_mail_once_more_with_the_same_message_id(desk):
    desk.deliver(make_mail("Crash me", to=desk.email))
    script = textwrap.dedent(f"""
        import os, sys
        from mail2ticket.outgoing import sender
        sender.after_accept = lambda row: os._exit(9)  # killed after 250, before 'sent' is stored
        from mail2ticket.cli import main
        sys.argv = ["mail2ticket", "--config", {str(desk.config)!r}, "poll"]
        main()
    """)
    crashed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert crashed.returncode == 9, crashed.stderr.decode()
    assert len(desk.smtp.messages) == 1
    [entry] = outbox(desk)
    assert entry["status"] == "sending"  # the claim of a process that is gone
    desk.poll()
    desk.poll()
    assert len(desk.smtp.messages) == 2
    first, again = desk.smtp.messages
    assert first.data == again.data  # byte for byte: the same Message-ID
    assert outbox(desk) == []


def test_a_live_senders_own_leftover_claim_is_sent_by_its_next_pass(desk):
    """A daemon whose database connection is cut between its claim and recording the answer
    leaves the mail 'sending' under its own live name; its next pass must send it (the CI kill
    test found the mail stuck for good: the pass marked the entry in flight before judging the
    claim, and then took its own leftover for another thread's)."""
    import os
    import socket

    from mail2ticket.outgoing.sender import Claimer
    from mail2ticket.tickets.db import transaction

    desk.smtp.stop()
    desk.deliver(make_mail("Cut mid-send", to=desk.email))
    desk.poll()  # queued, not sent
    db = desk.db()
    me = Claimer.for_daemon("d0123456789abcde", lambda: True)
    assert me.name.startswith(f"{socket.gethostname()}:{os.getpid()}/")
    [entry] = outbox(desk)
    with transaction(db):  # what the cut left: the claim, under this process's live name
        db.execute("update outbox set status = 'sending', claimed_by = ?, claimed_at = ?, next_attempt_at = null "
                   "where id = ?", [me.name, entry["created_at"], entry["id"]])
    desk.smtp.start()
    report = send_pending(load_config(desk.config), db, claimer=me)
    assert report.sent == [entry["id"]], report
    assert len(desk.smtp.messages) == 1 and outbox(desk) == []


def test_a_mail_the_server_accepted_is_recorded_not_sent_again_after_a_cut_connection(desk, monkeypatch):
    """The database connection cut after the server's 250, before the row is marked sent: the
    daemon knows the mail went out, so its next pass records it instead of sending it again.
    Sending it again made the cut a second cause of repeats beside a kill, and a cut and a kill
    on one mail sent it three times (the full kill test, catalogue 127)."""
    from mail2ticket.errors import StoreError
    from mail2ticket.outgoing import sender
    from mail2ticket.outgoing.sender import Claimer

    desk.deliver(make_mail("Cut after the 250", to=desk.email))
    desk.smtp.stop()
    desk.poll()  # the acknowledgement queued, not sent
    [entry] = outbox(desk)
    desk.smtp.start()
    db = desk.db()
    me = Claimer.for_daemon("d0123456789abcde", lambda: True)

    def cut(row):
        raise StoreError("database: server closed the connection unexpectedly", "it is retried")

    monkeypatch.setattr(sender, "after_accept", cut)
    with pytest.raises(StoreError):
        send_pending(load_config(desk.config), db, ids=[entry["id"]], force=True, claimer=me)  # not its backoff
    assert len(desk.smtp.messages) == 1
    assert [e["status"] for e in outbox(desk)] == ["sending"]  # what the cut left
    monkeypatch.setattr(sender, "after_accept", None)
    report = send_pending(load_config(desk.config), db, ids=[entry["id"]], force=True, claimer=me)
    assert report.sent == [entry["id"]], report
    assert len(desk.smtp.messages) == 1  # recorded, not sent again
    assert outbox(desk) == []
    row = desk.db().execute("select status, smtp_reply from outbox where id = ?", [entry["id"]]).fetchone()
    assert row[0] == "sent" and row[1].startswith("250")


def test_recording_a_send_does_not_wait_for_the_writers_lock(desk):
    """Between the server's 250 and the record, a kill sends the mail again (once: the next
    sender takes the dead one's claim). On PostgreSQL that window waited for the writers' lock,
    which an import holds for a whole batch: the window was long enough that two kills in a row
    fell in it for one mail, and it went out three times (the full kill test, catalogue 127).
    The record takes the outbox row's own lock only, as the claim does."""
    import contextlib
    import threading

    from mail2ticket.config.load import load_config as load
    from mail2ticket.tickets.db import open_store

    if engine_under_test() != "postgresql":
        pytest.skip("SQLite has one writer at a time: its record waits as every write does")
    desk.deliver(make_mail("Recorded at once", to=desk.email))
    desk.smtp.stop()
    desk.poll()  # the acknowledgement queued, not sent
    [entry] = outbox(desk)
    desk.smtp.start()
    importer = open_store(load(desk.config))
    importer.begin_write()  # an import's transaction: the writers' lock held
    report = []
    sending = threading.Thread(target=lambda: report.append(
        send_pending(load_config(desk.config), desk.db(), ids=[entry["id"]], force=True)))
    try:
        sending.start()
        sending.join(3)  # less than the idle-in-transaction timeout that would end the import's
        assert not sending.is_alive(), "the record waited for the writers' lock"
    finally:
        with contextlib.suppress(Exception):
            importer.conn.rollback()
        importer.close()
        sending.join(30)
    assert report[0].sent == [entry["id"]] and len(desk.smtp.messages) == 1


def test_outbox_list_json_gives_every_field_a_script_needs(desk):
    desk.smtp.stop()
    desk.deliver(make_mail("Fields", to=desk.email))
    desk.poll()
    [entry] = outbox(desk)
    [ticket] = desk.tickets()
    assert entry["ticket_id"] == ticket["id"] and entry["recipients"] == ["ann@customer.test"]
    assert entry["message_id"].startswith("<m2t.") and entry["subject"].startswith(f"[#{ticket['id']}]")
    for key in ("id", "kind", "status", "attempts", "created_at", "next_attempt_at", "last_error", "sent_at"):
        assert key in entry


def test_outbox_retry_of_an_unknown_entry_is_a_one_line_error(desk):
    result = desk.invoke("outbox", "retry", "999")
    assert result.exit_code != 0
    assert "no outbox entry #999" in result.stderr and "Traceback" not in result.output


@pytest.mark.sqlite_only("an upgrade of an old SQLite database by its own migrations")
def test_mail_queued_before_the_m102_upgrade_is_still_sent(desk):
    """An outbox row from before m102 (its bytes in raw_messages) survives the upgrade and goes."""
    import sqlite3

    from sqlite_utils import Database

    from mail2ticket.outgoing.compose import Draft, build
    from mail2ticket.tickets.migrations import migrations

    path = desk.root / "m2t.db"
    old = Database(sqlite3.connect(path))
    migrations.apply(old, stop_before="m102_outbox_raw")
    raw = build(old, Draft(desk.email, ["ann@customer.test"], "[#1] Queued long ago", "Hello"))
    old["raw_messages"].insert({"sha256": "f" * 64, "size": len(raw), "raw": raw, "stored_at": "2026-01-01T00:00:00Z"})
    old["outbox"].insert({"account": desk.account["name"], "kind": "ack", "mail_from": desk.email,
                          "recipients": '["ann@customer.test"]', "to_address": "ann@customer.test",
                          "message_id": "<x@y>", "raw_sha256": "f" * 64, "status": "queued",
                          "created_at": datetime.now(UTC).isoformat()})
    old.conn.commit()
    old.close()
    desk.poll()  # opens the database: m102 runs, then the outbox job sends
    [sent] = desk.smtp.messages
    assert sent.data == raw
    assert "raw" in desk.db()["outbox"].columns_dict
