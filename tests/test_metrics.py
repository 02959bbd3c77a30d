"""Issue 18.4: 'status --prometheus' and the daemon's [metrics] textfile, read with the official
Prometheus client library's parser, after real polls of the real Dovecot (docs/metrics.md)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import tomli_w
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mail2ticket.accounts.secrets import store_password
from mail2ticket.cli import cli
from mail2ticket.errors import AuthError, ConnectError, Mail2TicketError, ServerError, StoreError
from mail2ticket.intake.results import failure_cause
from mail2ticket.service.metrics import Family, render
from tests.helpers import LONG_AGO, engine_storage, make_mail, wait_until
from tests.postgres import engine_under_test
from tests.servers import free_port


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its labels): value}, by the official parser (which rejects a malformed line)."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("gauge", "counter"), f"{family.name} has no TYPE"
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[("mail2ticket_" + name, frozenset(labels.items()))]


def prometheus(config: Path) -> dict:
    result = CliRunner().invoke(cli, ["--config", str(config), "status", "--prometheus"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return parse(result.stdout)


def write_config(root: Path, accounts: list[dict], **tables) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    storage = {"database": "var/m2t.db", "attachments": "var/att"}
    if engine_under_test() == "postgresql":  # a database of the test's own, as for m2t.db
        storage = engine_storage(root, {**storage, "database": "m2t.db"})
    config.write_text(tomli_w.dumps({"storage": storage, **tables, "accounts": accounts}))
    return config


def test_after_real_polls_the_metrics_say_what_was_imported_queued_quarantined_and_why_each_account_failed(
    tmp_path, dovecot, imap_user, account_config, other_ca_file, tcp_relay
):
    # SMTP down: the acknowledgement waits in the outbox.
    good = account_config(imap_user, added_at=LONG_AGO, max_message_size="4KB", smtp_port=free_port())
    wrong_password = account_config(dovecot.add_user(), name="wrongpw")
    closed_port = account_config(dovecot.add_user(), name="closed", imap_port=free_port())
    stalled = tcp_relay(dovecot.host, dovecot.imaps_port)
    stalled.stall()  # connects, then no greeting
    silent = account_config(dovecot.add_user(), name="silent", imap_port=stalled.port, timeout=1)
    untrusted = account_config(dovecot.add_user(), name="untrusted", ca_file=str(other_ca_file))
    config = write_config(tmp_path, [good, wrong_password, closed_port, silent, untrusted])
    store_password(good["name"], imap_user.password)
    for name in ("wrongpw", "closed", "silent", "untrusted"):
        store_password(name, "not-the-password")
    dovecot.append(imap_user, make_mail("Printer on fire"))
    dovecot.append(imap_user, make_mail("Huge scan", body="x" * 20_000))  # over 4KB: quarantined

    before = time.time()
    poll = CliRunner().invoke(cli, ["--config", str(config), "poll"])
    assert poll.exit_code != 0  # four accounts failed
    m = prometheus(config)

    assert value(m, "account_messages_imported_total", account=good["name"]) == 1
    assert before - 1 <= value(m, "account_last_success_timestamp_seconds", account=good["name"]) <= time.time()
    for account, cause in (("wrongpw", "auth"), ("closed", "connect"), ("silent", "timeout"),
                           ("untrusted", "tls")):
        counts = {c: value(m, "account_poll_failures_total", account=account, cause=c)
                  for c in ("auth", "tls", "connect", "timeout", "server", "limit", "local", "other")}
        assert counts == {c: (1 if c == cause else 0) for c in counts}, account
        assert value(m, "account_last_success_timestamp_seconds", account=account) == 0  # never
        assert value(m, "account_backoff", account=account) == 1
        assert value(m, "account_backoff_until_timestamp_seconds", account=account) > time.time()
    assert value(m, "account_poll_failures_total", account=good["name"], cause="auth") == 0
    assert value(m, "account_backoff", account=good["name"]) == 0
    assert value(m, "outbox_messages", status="queued") == 1  # the acknowledgement, SMTP down
    assert 0 <= value(m, "outbox_oldest_age_seconds", status="queued") < 120
    assert value(m, "quarantine_messages") == 1
    assert value(m, "tickets", status="open", priority="normal") == 1
    assert value(m, "daemon_running") == 0

    # The counts are in the database: the next poll command adds to them.
    CliRunner().invoke(cli, ["--config", str(config), "poll", "wrongpw"])
    again = prometheus(config)
    assert value(again, "account_poll_failures_total", account="wrongpw", cause="auth") == 2
    assert value(again, "account_consecutive_failures", account="wrongpw") == 2


def test_the_daemon_writes_the_textfile_and_an_unwritable_directory_is_an_alert_while_polling_goes_on(
    tmp_path, dovecot, imap_user, account_config, start_daemon
):
    collector = tmp_path / "textfile_collector"  # not there yet: the daemon cannot write
    textfile = collector / "mail2ticket.prom"
    account = account_config(imap_user, added_at=LONG_AGO)
    config = write_config(tmp_path / "etc", [account], schedule={"poll": "1s", "metrics": "1s"},
                          metrics={"textfile": str(textfile)})
    store_password(account["name"], imap_user.password)
    check = CliRunner().invoke(cli, ["--config", str(config), "config", "check"])
    assert f"Metrics:     {textfile}, written every 1s by the daemon" in check.stdout.splitlines(), check.output
    daemon = start_daemon(config)
    daemon.notify.wait_for("READY", "1")

    def alerts() -> list[str]:
        import json

        result = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"])
        return [a for a in json.loads(result.stdout)["alerts"] if a.startswith("metrics:")]

    wait_until(alerts, 10, "the metrics alert in status")
    assert f"cannot write the metrics textfile {textfile}" in alerts()[0]
    assert f"create the directory {collector}" in alerts()[0]
    dovecot.append(imap_user, make_mail("Still polled"))  # the daemon goes on
    wait_until(lambda: prometheus(config)[("mail2ticket_account_messages_imported_total",
                                           frozenset({("account", account["name"])}))] == 1,
               10, "the mail imported while the textfile fails")

    collector.mkdir()
    wait_until(textfile.exists, 10, "the textfile")
    m = parse(textfile.read_text())
    assert value(m, "daemon_running") == 1
    assert value(m, "daemon_heartbeat_timestamp_seconds") > time.time() - 30
    assert value(m, "account_messages_imported_total", account=account["name"]) == 1
    assert os.stat(textfile).st_mode & 0o777 == 0o644  # node_exporter is another user; no secret in it
    assert [p.name for p in collector.iterdir()] == ["mail2ticket.prom"]  # no temporary file left
    with open(textfile, "rb") as first:  # the next write replaces the file by a rename, never in place
        wait_until(lambda: os.stat(textfile).st_ino != os.fstat(first.fileno()).st_ino, 5, "the next write")
        assert value(parse(first.read().decode()), "daemon_running") == 1  # the old file, whole
    wait_until(lambda: not alerts(), 5, "the alert gone once the file is written")
    assert daemon.log().count("cannot write the metrics textfile") == 1  # said once, not every second

    daemon.send(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    assert value(parse(textfile.read_text()), "daemon_running") == 0  # a clean stop says so


def test_status_prometheus_before_any_database_prints_the_zeros_of_an_empty_one(tmp_path):
    config = write_config(tmp_path, [{"name": "support", "email": "support@example.test",
                                      "imap_host": "127.0.0.1", "username": "support"}])
    m = prometheus(config)
    assert value(m, "account_enabled", account="support") == 1
    assert value(m, "account_messages_imported_total", account="support") == 0
    assert value(m, "account_last_success_timestamp_seconds", account="support") == 0
    assert value(m, "tickets", status="open", priority="urgent") == 0
    assert value(m, "quarantine_messages") == 0
    assert ("mail2ticket_build_info", frozenset({("version", __import__("mail2ticket").__version__)})) in m


def test_label_values_and_help_are_escaped_as_the_format_says():
    odd = 'a "quoted" back\\slash\nand a new line'
    text = render([Family("mail2ticket_x", "gauge", "Help with \\ and\na new line.").add(1.5, account=odd),
                   Family("mail2ticket_y_total", "counter", "A counter.").add(3, account="plain")])
    m = parse(text)
    assert m[("mail2ticket_x", frozenset({("account", odd)}))] == 1.5
    assert m[("mail2ticket_y_total", frozenset({("account", "plain")}))] == 3
    assert "# TYPE mail2ticket_y_total counter" in text


def test_failure_causes_of_the_errors_a_poll_can_end_with():
    assert failure_cause(AuthError("IMAP login refused: [ALERT] Too many simultaneous connections")) == "limit"
    assert failure_cause(ServerError("APPEND refused: [OVERQUOTA] Quota exceeded")) == "limit"
    assert failure_cause(ConnectError("connection lost: Maximum number of connections from user+IP exceeded")) == "limit"
    assert failure_cause(ServerError("IMAP error from host: SELECT failed")) == "server"
    assert failure_cause(AuthError("IMAP login as 'unlimited@example.com' at imap.example.com was refused: "
                                   "[AUTHENTICATIONFAILED] Authentication failed.")) == "auth"
    assert failure_cause(StoreError("cannot open /var/lib/x: Permission denied")) == "local"
    assert failure_cause(Mail2TicketError("something else")) == "other"
