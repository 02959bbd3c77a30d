"""'mail2ticket run' as a real process against the test Dovecot, listened to as systemd would (issue 6)."""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import keyring
import tomli_w
from click.testing import CliRunner

from mail2ticket.cli import cli
from mail2ticket.config.load import load_config
from mail2ticket.intake.push import PushHub, PushWatcher
from mail2ticket.service.daemon import JobRunner
from tests.helpers import engine_storage, has_database, make_mail, rows, wait_until
from tests.postgres import engine_under_test

REPO = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------------


def write_config(tmp_path: Path, *, poll: str = "2s", outbox: str = "1h", overdue: str = "1h") -> Path:
    main = tmp_path / "etc" / "config.toml"
    main.parent.mkdir(exist_ok=True)
    storage = engine_storage(main.parent, {"database": "../var/m2t.db", "attachments": "../var/att"},
                             replaces="../var/m2t.db")
    main.write_text(
        "# the sysadmin's own file\n"
        f'[storage]\n{tomli_w.dumps(storage)}'
        f'[schedule]\npoll = "{poll}"\noutbox = "{outbox}"\noverdue = "{overdue}"\n'
    )
    return main


def add_account(main: Path, account: dict, password: str | None) -> Path:
    """What 'add-account' leaves behind: accounts.d/NAME.toml, and the password in the keyring."""
    path = main.parent / "accounts.d" / f"{account['name']}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(tomli_w.dumps({"accounts": [account]}))
    if password is not None:
        keyring.set_password("mail2ticket", account["name"], password)
    return path


def subjects(main: Path, account: str | None = None) -> list[str]:
    if not has_database(main.parent):
        return []
    try:
        if account:
            return [r[0] for r in rows(main.parent, "select subject from tickets where account = ?", [account])]
        return [r[0] for r in rows(main.parent, "select subject from tickets")]
    except sqlite3.OperationalError:  # not created yet
        return []


def status(main: Path, *args: str):
    result = CliRunner().invoke(cli, ["--config", str(main), "status", "--json", *args])
    return result.exit_code, json.loads(result.stdout)


# --- the daemon as systemd runs it -------------------------------------------------------------------


def test_run_says_ready_and_turns_new_mail_into_a_ticket_within_the_poll_interval(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="2s")
    add_account(main, account_config(imap_user), imap_user.password)
    daemon = start_daemon(main, env={"WATCHDOG_USEC": "1000000"}, journal=True)
    daemon.notify.wait_for("READY", "1", timeout=10)
    daemon.notify.wait_for("STATUS", contains="last poll")
    daemon.notify.wait_for("WATCHDOG", "1", timeout=5)

    dovecot.append(imap_user, make_mail("Arrives while the daemon runs"))
    t0 = time.monotonic()
    wait_until(lambda: "Arrives while the daemon runs" in subjects(main), 2 + 3, "the ticket")
    assert time.monotonic() - t0 < 5  # one 2 s interval, plus the poll itself
    seen = wait_until(lambda: any("\\Seen" in f for f in dovecot.flags(imap_user).values()), 5)
    assert seen
    after = daemon.notify.wait_for("STATUS", contains="1 message imported since start")
    assert "1 account; all ok" in daemon.notify.messages[after]["STATUS"]

    code, took = daemon.stop()
    assert code == 0 and took < 10
    daemon.notify.wait_for("STOPPING", "1", timeout=1)
    log = daemon.log()
    # journald: a priority prefix on every line, no timestamps of our own
    lines = [line for line in log.splitlines() if line]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), log
    assert not any(line[3:5].isdigit() and line[5:6] == ":" for line in lines)
    # a poll every 2 s is allowed, and warned about once, as a warning
    warnings = [line for line in lines if "more often than every 5 minutes" in line]
    assert len(warnings) == 1 and warnings[0].startswith("<4>")


def test_status_shows_the_daemon_heartbeat_and_each_accounts_next_poll(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="*/5")
    add_account(main, account_config(imap_user), imap_user.password)
    code, report = status(main)
    assert code == 0 and report["daemon"] == report["daemon"] | {"running": False, "state": "never started"}
    assert status(main, "--require-daemon")[0] == 1
    assert status(main, "--no-daemon")[0] == 0

    daemon = start_daemon(main)
    daemon.notify.wait_for("READY", "1")
    daemon.notify.wait_for("STATUS", contains="last poll")
    code, report = status(main)
    assert code == 0 and report["healthy"] is True
    assert report["daemon"]["running"] is True and report["daemon"]["pid"] == daemon.proc.pid
    [acct] = report["accounts"]
    assert acct["schedule"] == "*/5" and acct["last_poll_at"] and acct["last_error"] is None
    nxt = datetime.fromisoformat(acct["next_poll_at"].replace("Z", "+00:00"))
    assert nxt.astimezone().minute % 5 == 0 and nxt.second == 0  # aligned to the clock
    assert 0 < (nxt - datetime.now(UTC)).total_seconds() <= 300
    human = CliRunner().invoke(cli, ["--config", str(main), "status"])
    assert human.exit_code == 0 and "Daemon: running" in human.stdout and "next poll" in human.stdout

    assert daemon.stop()[0] == 0
    code, report = status(main)
    assert code == 1 and report["daemon"]["state"] == "stopped" and report["daemon"]["stopped_at"]
    human = CliRunner().invoke(cli, ["--config", str(main), "status"])
    assert human.exit_code == 1 and "Daemon: not running (stopped" in human.stdout


def test_a_killed_daemon_is_reported_as_not_running(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="1h")
    add_account(main, account_config(imap_user), imap_user.password)
    daemon = start_daemon(main)
    daemon.notify.wait_for("READY", "1")
    assert status(main)[0] == 0
    daemon.proc.kill()
    daemon.proc.wait()
    code, report = status(main)
    assert code == 1 and report["daemon"]["state"] == "dead"
    assert any("without a clean shutdown" in a for a in report["alerts"])


def test_push_account_turns_new_mail_into_a_ticket_within_seconds(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="1h")  # no scheduled poll during the test: only push
    add_account(main, account_config(imap_user, push=True), imap_user.password)
    daemon = start_daemon(main)
    daemon.notify.wait_for("READY", "1")
    wait_until(lambda: "push (IDLE) session open" in daemon.log(), 10, "the IDLE session")
    daemon.notify.wait_for("STATUS", contains="last poll")

    dovecot.append(imap_user, make_mail("Pushed, not polled"))
    t0 = time.monotonic()
    wait_until(lambda: "Pushed, not polled" in subjects(main), 5, "the pushed ticket")
    assert time.monotonic() - t0 < 5
    assert daemon.stop()[0] == 0
    wait_until(lambda: dovecot.sessions(imap_user) == 0, 5, "the IDLE session to log out")


def test_idle_is_renewed_and_still_announces_new_mail(dovecot, imap_user, account_config, tmp_path):
    cfg_path = write_config(tmp_path)
    add_account(cfg_path, account_config(imap_user, push=True), imap_user.password)
    account = load_config(cfg_path).accounts[0]
    announced = threading.Event()
    stop = threading.Event()
    watcher = PushWatcher(account, lambda name: announced.set(), stop, renew_after=0.5)
    watcher.start()
    try:
        assert watcher.connected.wait(10)
        announced.clear()  # the announcement made on connecting
        wait_until(lambda: watcher.idle_started >= 3, 10, "two IDLE renewals")
        dovecot.append(imap_user, make_mail("After renewals"))
        assert announced.wait(5)
    finally:
        stop.set()
        watcher.join(10)
    assert not watcher.is_alive()
    wait_until(lambda: dovecot.sessions(imap_user) == 0, 5, "the logout")


def test_mail_that_came_while_a_poll_had_the_connection_is_announced_when_idle_starts_again(
    dovecot, imap_user, account_config, tmp_path
):
    # Dovecot tells of mail that came while the connection was lent to a poll as soon as IDLE
    # starts again, in the same packet as its '+ idling': the line was read with it into the
    # client's buffer, the socket was never readable again, and the mail waited for the next
    # thing the server said (its 'Still here' two minutes later; Gmail's never). Found by the
    # benchmark of several daemons (docs/scaling.md): one account of eight 80 s late.
    cfg_path = write_config(tmp_path)
    add_account(cfg_path, account_config(imap_user, push=True), imap_user.password)
    account = load_config(cfg_path).accounts[0]
    announced = threading.Event()
    stop = threading.Event()
    hub = PushHub(lambda name: announced.set(), stop, connect_threads=1)
    hub.add(account)
    try:
        assert announced.wait(10)  # the announcement made on connecting
        for attempt in range(5):
            box = hub.borrow(account.name, wait=2)
            assert box is not None
            announced.clear()
            dovecot.append(imap_user, make_mail(f"While lent {attempt}"))
            hub.release(account.name, box)  # the poll saw nothing new
            assert announced.wait(5), f"attempt {attempt}: the new mail was not announced"
    finally:
        stop.set()
        hub.close()


def test_sighup_picks_up_a_new_account_and_ignores_a_broken_config(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="2s")
    add_account(main, account_config(imap_user), imap_user.password)
    daemon = start_daemon(main)
    daemon.notify.wait_for("READY", "1")

    other = dovecot.add_user()
    dovecot.append(other, make_mail("For the account added later"))
    add_account(main, account_config(other), other.password)
    daemon.send(signal.SIGHUP)
    reloading = daemon.notify.wait_for("RELOADING", "1")
    daemon.notify.wait_for("READY", "1", start=reloading)
    # On PostgreSQL an added account is polled once this daemon takes its lease, at the next lease
    # round ([daemon] lease_renew, 10 s), not at the reload: a known gap, not fixed yet.
    first_poll = 6 + (10 if engine_under_test() == "postgresql" else 0)
    wait_until(lambda: "For the account added later" in subjects(main, other.name), first_poll,
               "the new account's ticket")
    assert "added: " + other.name in daemon.log()

    good = main.read_text()
    main.write_text(good + "\n[schedule\nthis is not TOML\n")
    mark = len(daemon.notify.messages)
    daemon.send(signal.SIGHUP)
    daemon.notify.wait_for("STATUS", contains="config reload FAILED", start=mark)
    wait_until(lambda: "config reload failed" in daemon.log(), 5, "the error in the log")
    assert "invalid TOML" in daemon.log()
    assert daemon.proc.poll() is None  # still running, on the old config
    dovecot.append(imap_user, make_mail("Still polled after a bad reload"))
    # A bound against a hang, not a timer: polls are every 2 s, but a whole parallel suite slows
    # one down (it timed out at 6 s once in CI, and passed on every run alone).
    wait_until(lambda: "Still polled after a bad reload" in subjects(main), 20, "polling to go on")

    # Removing an account takes effect too: its mail is no longer imported.
    main.write_text(good)
    (main.parent / "accounts.d" / f"{other.name}.toml").unlink()
    daemon.send(signal.SIGHUP)
    wait_until(lambda: "removed: " + other.name in daemon.log(), 5, "the removal")
    dovecot.append(other, make_mail("Not any more"))
    dovecot.append(imap_user, make_mail("Marker after removal"))
    wait_until(lambda: "Marker after removal" in subjects(main), 6, "the marker")
    assert "Not any more" not in subjects(main)
    assert daemon.stop()[0] == 0


def test_sigterm_finishes_the_batch_logs_out_and_exits_0_with_no_message_lost(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="1h")
    add_account(main, account_config(imap_user, batch_size=3), imap_user.password)
    count = 40
    dovecot.append_many(imap_user, [make_mail(f"Bulk {i}", body="x" * 20_000) for i in range(count)])
    daemon = start_daemon(main)
    wait_until(lambda: subjects(main), 15, "the first batch")
    code, took = daemon.stop()
    assert code == 0 and took < 10
    wait_until(lambda: dovecot.sessions(imap_user) == 0, 5, "the logout")
    stored = set(subjects(main))
    assert 0 < len(stored) < count  # stopped part-way, between two batches
    assert "stopping after the last committed batch" in daemon.log()
    raw = dovecot.fetch_raw(imap_user)
    flagged = {uid for uid, f in dovecot.flags(imap_user).items() if "\\Seen" in f}
    flagged_subjects = {m.split(b"Subject: ")[1].split(b"\r\n")[0].split(b"\n")[0].decode()
                        for uid, m in raw.items() if uid in flagged}
    assert flagged_subjects <= stored  # nothing was flagged on the server without its ticket
    assert "Traceback" not in daemon.log()

    again = start_daemon(main)  # the next start needs no manual step
    wait_until(lambda: len(subjects(main)) >= count, 20, "the rest of the messages")
    assert again.stop()[0] == 0
    assert sorted(subjects(main)) == sorted(f"Bulk {i}" for i in range(count))  # none lost, none twice


def test_an_account_with_a_wrong_password_backs_off_and_does_not_stop_the_others(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="2s")
    bad = dovecot.add_user()
    canary = "canary-" + secrets.token_hex(6)
    add_account(main, account_config(bad), canary)
    add_account(main, account_config(imap_user), imap_user.password)
    daemon = start_daemon(main, args=("--debug",))
    daemon.notify.wait_for("READY", "1")
    dovecot.append(imap_user, make_mail("The healthy account"))
    wait_until(lambda: "The healthy account" in subjects(main), 8, "the healthy account's ticket")
    daemon.notify.wait_for("STATUS", contains=f"1 failing ({bad.name})")

    code, report = status(main)
    assert code == 1
    failing = next(a for a in report["accounts"] if a["name"] == bad.name)
    assert "IMAP login" in failing["last_error"] and failing["failures"] == 1
    assert failing["next_poll_at"] == failing["next_attempt_at"]  # backing off
    assert report["daemon"]["running"] is True
    time.sleep(2.5)  # more than one 2 s interval: the failing account is not retried yet
    log = daemon.log()
    assert log.count("IMAP login") == 1, log
    assert daemon.stop()[0] == 0
    assert canary not in daemon.log()


def test_the_outbox_is_sent_on_its_own_schedule_while_polls_are_hourly(
    tmp_path, dovecot, imap_user, smtp_server, account_config, start_daemon
):
    main = write_config(tmp_path, poll="1h", outbox="2s")
    # added_at in the past: without it the account "starts" at its first import, and a mail
    # appended in the second before that import counts as old mail (no acknowledgement).
    add_account(main, account_config(imap_user, smtp_server, added_at="2020-01-01T00:00:00Z"),
                imap_user.password)
    daemon = start_daemon(main)
    daemon.notify.wait_for("READY", "1")
    daemon.notify.wait_for("STATUS", contains="last poll")  # the poll at start: nothing yet
    dovecot.append(imap_user, make_mail("Please acknowledge"))
    daemon.send(signal.SIGHUP)  # a reload polls at once; the next scheduled poll is an hour away
    wait_until(lambda: "Please acknowledge" in subjects(main), 6, "the ticket")
    wait_until(lambda: smtp_server.messages, 6, "the acknowledgement sent by the outbox job")
    [ack] = smtp_server.messages
    # The acknowledgement names the ticket, not the sender's subject (item 56).
    assert ack.rcpt_tos == ("ann@customer.test",) and "[#1]" in ack.message["Subject"]
    assert daemon.stop()[0] == 0


def test_a_second_daemon_on_the_same_database_is_refused(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    main = write_config(tmp_path, poll="1h")
    add_account(main, account_config(imap_user), imap_user.password)
    first = start_daemon(main)
    first.notify.wait_for("READY", "1")
    second = start_daemon(main)
    assert second.proc.wait(timeout=10) != 0
    assert "already running" in second.log() and str(first.proc.pid) in second.log()
    assert first.proc.poll() is None
    assert first.stop()[0] == 0


# --- the pieces, in-process ----------------------------------------------------------------------


def test_a_running_job_is_never_started_twice_and_a_slow_job_does_not_delay_the_others():
    runner = JobRunner({"poll": 2, "job": 1})
    release = threading.Event()
    runs: list[str] = []
    fast_done = threading.Event()

    def slow():
        runs.append("slow")
        release.wait(10)

    assert runner.submit("poll", "poll:a", slow)
    assert not runner.submit("poll", "poll:a", slow)  # still running: not started again
    assert runner.submit("poll", "poll:b", lambda: (runs.append("b"), fast_done.set()))
    assert fast_done.wait(5)  # another account's poll ran while a's was stuck
    assert runner.submit("job", "job outbox", lambda: runs.append("outbox"))
    wait_until(lambda: "outbox" in runs, 5, "the outbox job")
    release.set()
    assert runner.close(5) == []
    assert runs.count("slow") == 1


def test_new_mail_during_a_poll_makes_it_run_once_more_afterwards():
    runner = JobRunner({"poll": 1})
    release = threading.Event()
    calls = []

    def poll():
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)

    runner.submit("poll", "poll:a", poll)
    wait_until(lambda: calls, 5)
    assert not runner.submit("poll", "poll:a", poll, again=True)
    assert not runner.submit("poll", "poll:a", poll, again=True)  # remembered once, not twice
    release.set()
    wait_until(lambda: len(calls) == 2 and not runner.running(), 5, "the second run")
    time.sleep(0.1)
    assert len(calls) == 2
    runner.close(5)


def test_outbox_and_overdue_jobs_run_on_their_own_schedule_keys():
    """The jobs besides the polls are one explicit list, each timed by its own [schedule] key,
    the overdue check before the outbox (a breach notice leaves in the same pass)."""
    from mail2ticket.service.jobs import AFTER_POLL_JOBS

    assert [(job.name, job.schedule_key) for job in AFTER_POLL_JOBS] == [
        ("overdue", "overdue"), ("outbox", "outbox"), ("hooks", "hooks")]  # hooks last: after the acknowledgements
