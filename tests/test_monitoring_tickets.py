"""One ticket per monitoring problem (issue 18, points 2 and 5): monitoring mail through the real
poll from the real Dovecot, a realistic night of it, and the settings (recovery modes, the flap
window, priorities, per-account overrides) through the real 'ingest' command.

The mails are the stock formats of tests/helpers.py (as each tool sends them; the sources are
named there and in tests/test_monitoring.py), dated through one night: the problem's times and
durations are the mails' dates, not the time of the test.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from datetime import UTC, datetime, timedelta

import tomli_w

from tests import test_narrow_terminal  # its on_terminal: the installed CLI on a pseudo-terminal
from tests.helpers import (
    alertmanager,
    engine_storage,
    monitoring_mail,
    nagios_host,
    nagios_service,
    rows,
    run_cli,
    zabbix_problem,
    zabbix_recovery,
)

NIGHT = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
CPU = "High CPU utilization (over 90% for 5m)"
DISK = {"alertname": "DiskFull", "instance": "web2:9100", "job": "node", "severity": "warning"}
DOWN = [{"alertname": "InstanceDown", "instance": f"web{n}:9100", "job": "node", "severity": "critical"} for n in (4, 5)]
BACKUP_FORMAT = {  # a homegrown tool ([[monitoring.formats]]); unanchored, so a tag may precede it
    "name": "backupcheck",
    "subject": r"\[backupcheck\] (?P<host>[\w.-]+): job (?P<service>\S+) (?P<state>FAILED|OK)$",
    "problem_states": ["FAILED"],
    "recovery_states": ["OK"],
}
RULES = [  # rules on the monitoring fields, applied after the priority of the severity
    {"name": "databases", "match": "glob", "host": "db*", "assignee": "dba", "tags": "database"},
    {"name": "alerts", "tool": "alertmanager", "state": "FIRING", "priority": "high"},
]


def at(minutes: int) -> datetime:
    return NIGHT + timedelta(minutes=minutes)


def http(kind: str, state: str, minutes: int) -> bytes:
    return nagios_service(kind, "web1", "HTTP", state, f"HTTP {state}", date=at(minutes))


def backup(host: str, state: str, minutes: int, tag: str = "") -> bytes:
    return monitoring_mail(f"{tag}[backupcheck] {host}: job nightly {state}", f"Backup of {host}: {state}\n",
                           sender="backup@example.com", date=at(minutes))


def deliver_and_poll(desk, *mails: bytes) -> None:
    for raw in mails:
        desk.deliver(raw)
    desk.poll()


def brief(ticket: dict) -> tuple:
    facts = ticket["monitoring"] or {}
    return (ticket["id"], ticket["status"], ticket["priority"], facts.get("tool"), facts.get("host"),
            facts.get("service"), facts.get("state"), ticket["message_count"])


def test_a_realistic_night_makes_one_ticket_per_problem(desk):
    """A flapping service (problem, repeat, recovery, the problem again within the flap window:
    the same ticket reopened; then again after the window: a new ticket), two hosts down and up
    again, a Zabbix problem and its recovery (by event id), an Alertmanager group firing then
    resolved, a homegrown tool, and a recovery of no known problem. No acknowledgement goes out."""
    data = tomllib.loads(desk.config.read_text())
    desk.config.write_text(tomli_w.dumps({**data, "monitoring": {"formats": [BACKUP_FORMAT]}, "rules": RULES}))

    deliver_and_poll(
        desk,
        http("PROBLEM", "CRITICAL", 0),  # #1
        nagios_host("PROBLEM", "db1", "DOWN", "CRITICAL - Host Unreachable", date=at(5)),  # #2
        nagios_host("PROBLEM", "db2", "DOWN", "CRITICAL - Host Unreachable", date=at(6)),  # #3
        zabbix_problem(CPU, "app1", "High", "4711", date=at(10)),  # #4
        alertmanager("firing", [DISK], {"alertname": "DiskFull"}, date=at(15)),  # #5
        http("PROBLEM", "CRITICAL", 20),  # the hourly repeat: joins #1
        backup("nas1", "FAILED", 25),  # #6
    )
    assert [t["id"] for t in desk.tickets()] == [1, 2, 3, 4, 5, 6]
    deliver_and_poll(
        desk,
        http("RECOVERY", "OK", 30),  # closes #1 after 30m
        nagios_host("ACKNOWLEDGEMENT", "db1", "DOWN", "CRITICAL - Host Unreachable", date=at(40)),
        nagios_host("RECOVERY", "db1", "UP", "PING OK", date=at(45)),
        nagios_host("RECOVERY", "db2", "UP", "PING OK", date=at(50)),
        zabbix_recovery(CPU, "app1", "High", "4711", "45m", date=at(55)),
        alertmanager("resolved", [DISK], {"alertname": "DiskFull"}, date=at(60)),
        http("PROBLEM", "CRITICAL", 70),  # 40m after the recovery, within the flap window: #1 reopened
        # A subject tag of nas1's ticket, from a participant: threading would join #6; the key wins.
        backup("nas2", "FAILED", 75, tag="[#6] "),  # #7
    )
    deliver_and_poll(
        desk,
        http("RECOVERY", "OK", 80),  # closes #1 again, after 10m
        http("PROBLEM", "CRITICAL", 150),  # 70m after the recovery, past the window: #8
        http("FLAPPINGSTART", "CRITICAL", 155),  # joins #8
        backup("nas1", "OK", 180, tag="[#7] "),  # nas1's recovery joins #6 (not #7) and closes it
        nagios_service("RECOVERY", "web3", "SSH", "OK", "SSH OK", date=at(210)),  # no known problem: #9, closed
        # A group of two instances (no single host: keyed by the alert) firing, then resolved: #10.
        alertmanager("firing", DOWN, {"alertname": "InstanceDown", "job": "node"}, date=at(220)),
        alertmanager("resolved", DOWN, {"alertname": "InstanceDown", "job": "node"}, date=at(250)),
    )

    tickets = desk.tickets()
    assert [brief(t) for t in tickets] == [
        (1, "closed", "urgent", "nagios", "web1", "HTTP", "OK", 5),
        (2, "closed", "urgent", "nagios", "db1", None, "UP", 3),
        (3, "closed", "urgent", "nagios", "db2", None, "UP", 2),
        (4, "closed", "urgent", "zabbix", "app1", CPU, "RESOLVED", 2),
        (5, "closed", "high", "alertmanager", "web2:9100", "DiskFull", "RESOLVED", 2),
        (6, "closed", "normal", "backupcheck", "nas1", "nightly", "OK", 2),
        (7, "open", "normal", "backupcheck", "nas2", "nightly", "FAILED", 1),
        (8, "open", "urgent", "nagios", "web1", "HTTP", "CRITICAL", 2),
        (9, "closed", "normal", "nagios", "web3", "SSH", "OK", 1),
        (10, "closed", "high", "alertmanager", None, "InstanceDown", "RESOLVED", 2),
    ]
    by_id = {t["id"]: t for t in tickets}
    assert (by_id[2]["assignee"], by_id[2]["tags"], by_id[3]["assignee"]) == ("dba", ["database"], "dba")
    assert by_id[4]["monitoring"]["event_id"] == "4711"
    # The problem's duration: from the (returned) problem's mail to its recovery.
    assert [(by_id[i]["monitoring"]["phase"], by_id[i]["monitoring"]["duration"]) for i in (1, 2, 4, 5, 8, 10)] == [
        ("recovered", "10m"), ("recovered", "40m"), ("recovered", "45m"), ("recovered", "45m"), ("problem", "5m"),
        ("recovered", "30m")]

    shown = desk.show(1)
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds.count("monitoring-problem") == 2 and kinds.count("monitoring-recovery") == 2
    assert kinds.count("reopened") == 1 and kinds.count("closed") == 2
    events = {i: [e["kind"] for e in desk.show(i)["events"] if e["kind"].startswith("monitoring")] for i in (8, 9)}
    assert events == {8: ["monitoring-problem"], 9: ["monitoring"]}  # a recovery of no known problem: no problem event
    recoveries = [e["detail"] for e in shown["events"] if e["kind"] == "monitoring-recovery"]
    assert recoveries == ["nagios web1/HTTP OK after 30m: the ticket is closed",
                          "nagios web1/HTTP OK after 10m: the ticket is closed"]
    assert [m["thread_reason"] for m in desk.show(7)["messages"]] == ["monitoring: backupcheck nas2/nightly, a new problem"]
    text = desk.ok("tickets", "show", "4").stdout
    assert [line for line in text.splitlines() if line.startswith("Monitoring:")] == [
        f"Monitoring: zabbix app1 {CPU}: RESOLVED (critical), event 4711; started 2026-12-01T22:10:00Z, "
        "recovered 2026-12-01T22:55:00Z, duration 45m"]

    # No acknowledgement to a machine: nothing was ever queued.
    assert rows(desk.root, "select count(*) from outbox") == [(0,)]
    assert rows(desk.root, "select count(*) from monitoring") == [(10,)]

    listing = desk.ok("tickets", "list", "--monitoring").stdout
    lines = listing.rstrip("\n").split("\n")
    assert lines[0].split()[:7] == ["id", "status", "priority", "due", "host", "service", "state"]
    assert [line.split()[:5] for line in lines[1:]] == [["#8", "open", "urgent", "web1", "HTTP"],
                                                        ["#7", "open", "normal", "nas2", "nightly"]]
    everything = desk.ok("tickets", "list", "--status", "all", "--monitoring", "--sort", "id").stdout
    assert "OK (after 10m)" in everything and "RESOLVED (after 45m)" in everything
    # Without a filter the same: the listing has monitoring tickets, so their columns are shown.
    assert desk.ok("tickets", "list").stdout == listing
    print(f"$ mail2ticket tickets list --monitoring   (and 'tickets list')\n{listing}\n"
          f"$ mail2ticket tickets list --status all --monitoring --sort id\n{everything}")
    # On an 80-column terminal each ticket stays one line, the host, service and state kept.
    narrow = test_narrow_terminal.on_terminal(desk.config, "tickets", "list", "--status", "all", "--monitoring")
    assert all(test_narrow_terminal.display_width(line) <= 80 for line in narrow), narrow
    assert narrow[0].split()[:6] == ["id", "status", "priority", "host", "service", "state"]  # no due times: hidden
    assert len(narrow) == 1 + 1 + 10 and any("OK (after 10m)" in line for line in narrow)  # header, rule, tickets
    print("\n".join(narrow))
    listed = lambda *args: [t["id"] for t in json.loads(desk.ok("tickets", "list", "--json", "--sort", "id",  # noqa: E731
                                                                    "--status", "all", *args).stdout)]
    assert listed("--host", "WEB1") == [1, 8]
    assert listed("--service", "nightly") == [6, 7]
    assert listed("--host", "db1", "--host", "db2") == [2, 3]
    assert listed("--no-monitoring") == []
    csv_rows = list(csv.DictReader(io.StringIO(desk.ok("tickets", "list", "--status", "all", "--csv", "--sort", "id").stdout)))
    assert [(r["id"], r["monitoring_tool"], r["monitoring_host"], r["monitoring_service"], r["monitoring_state"])
            for r in csv_rows[:2]] == [("1", "nagios", "web1", "HTTP", "OK"), ("2", "nagios", "db1", "", "UP")]


# --- the settings, through 'mail2ticket ingest' (a pipe account: no server needed) ---------------


def pipe_desk(tmp_path, table: dict | None = None, rules=(), **account) -> object:
    config = tmp_path / "config.toml"
    data = {"storage": engine_storage(tmp_path, {"database": "m2t.db", "attachments": "files"}),
            "accounts": [{"name": "ops", "email": "ops@example.com", "source": "pipe", "smtp_host": "127.0.0.1",
                          "added_at": "2000-01-01T00:00:00Z", **account}]}
    if table is not None:
        data["monitoring"] = table
    if rules:
        data["rules"] = list(rules)
    config.write_text(tomli_w.dumps(data))
    return config


def ingest(config, *mails: bytes) -> None:
    for raw in mails:
        result = run_cli(config, "ingest", "--account", "ops", input=raw)
        assert result.exit_code == 0, result.output


def tickets_of(config) -> list[tuple]:
    found = json.loads(run_cli(config, "tickets", "list", "--status", "all", "--json", "--sort", "id").stdout)
    return [(t["id"], t["status"], t["priority"], t["tags"], (t["monitoring"] or {}).get("phase"), t["message_count"])
            for t in found]


def test_mark_leaves_the_recovered_ticket_open_and_a_late_problem_opens_another(tmp_path):
    config = pipe_desk(tmp_path, {"on_recovery": "mark", "flap_window": "30m"})
    ingest(config, http("PROBLEM", "WARNING", 0), http("RECOVERY", "OK", 20))
    assert tickets_of(config) == [(1, "open", "normal", ["recovered"], "recovered", 2)]
    ingest(config, http("PROBLEM", "CRITICAL", 40))  # 20m later, within 30m: the same ticket, a problem again
    assert tickets_of(config) == [(1, "open", "urgent", [], "problem", 3)]
    ingest(config, http("RECOVERY", "OK", 50), http("PROBLEM", "CRITICAL", 90))  # 40m later: past the window
    assert tickets_of(config) == [(1, "open", "urgent", ["recovered"], "recovered", 4),
                                  (2, "open", "urgent", [], "problem", 1)]


def test_a_problem_closed_by_a_person_while_it_lasts_is_reopened_by_its_next_notification(tmp_path):
    """Only a recovery ends a problem: a ticket closed while the problem lasts is the same problem
    when the tool sends it again, hours later (to silence it, acknowledge it in the tool)."""
    config = pipe_desk(tmp_path)
    ingest(config, http("PROBLEM", "CRITICAL", 0))
    assert run_cli(config, "tickets", "close", "1").exit_code == 0
    ingest(config, http("PROBLEM", "CRITICAL", 180))
    assert tickets_of(config) == [(1, "open", "urgent", [], "problem", 2)]
    ingest(config, http("RECOVERY", "OK", 200))
    facts = json.loads(run_cli(config, "tickets", "show", "1", "--json").stdout)["monitoring"]
    assert (facts["phase"], facts["duration"]) == ("recovered", "3h 20m")  # from the first PROBLEM mail


def test_each_account_may_close_or_mark_and_the_priorities_and_rules_apply(tmp_path):
    config = pipe_desk(tmp_path, {"on_recovery": "mark", "priorities": {"warning": "high"}},
                       [{"name": "quiet web", "host": "web9", "priority": "low"}],
                       monitoring_on_recovery="close")
    ingest(config, http("PROBLEM", "WARNING", 0),
           nagios_service("PROBLEM", "web9", "HTTP", "CRITICAL", "down", date=at(1)), http("RECOVERY", "OK", 5))
    assert tickets_of(config) == [(1, "closed", "high", [], "recovered", 2), (2, "open", "low", [], "problem", 1)]
    # A repeat that gets worse raises the priority; one that gets better does not lower it.
    ingest(config, nagios_service("PROBLEM", "web8", "Disk", "WARNING", "9%", date=at(10)),
           nagios_service("PROBLEM", "web8", "Disk", "CRITICAL", "2%", date=at(20)),
           nagios_service("PROBLEM", "web8", "Disk", "WARNING", "8%", date=at(30)))
    assert tickets_of(config)[2] == (3, "open", "urgent", [], "problem", 3)


def test_a_problem_a_rule_ignores_stays_one_closed_ticket_without_problem_events(tmp_path):
    config = pipe_desk(tmp_path, rules=[{"name": "lab", "host": "lab", "ignore": True}])
    ingest(config, nagios_service("PROBLEM", "lab1", "HTTP", "CRITICAL", "down", date=at(0)),
           nagios_service("PROBLEM", "lab1", "HTTP", "CRITICAL", "down", date=at(60)),
           nagios_service("PROBLEM", "lab1", "HTTP", "CRITICAL", "down", date=at(180)))
    assert tickets_of(config) == [(1, "closed", "urgent", ["ignored"], "problem", 3)]
    events = json.loads(run_cli(config, "tickets", "show", "1", "--json").stdout)["events"]
    assert [e["kind"] for e in events if e["kind"] in ("monitoring-problem", "reopened")] == []
    assert [e["detail"] for e in events if e["kind"] == "monitoring"] == [
        "nagios lab1/HTTP CRITICAL (critical): a new problem, ignored by a rule, priority urgent"]


def test_zabbix_keys_by_event_id_and_updates_join_by_problem_name(tmp_path):
    """Two problems of one trigger at once (Zabbix's multiple problem generation) are two tickets;
    each recovery closes its own; the update mail (no host, no id) joins the open problem."""
    config = pipe_desk(tmp_path)
    update = monitoring_mail(f"Updated problem in 4m: {CPU}",
                             "Zabbix Administrator acknowledged problem at 2026.12.01 22:14:00.\nOn it.\n\n"
                             "Current problem status is PROBLEM, age is 4m, acknowledged: Yes.",
                             sender="zabbix@example.com", date=at(14))
    ingest(config, zabbix_problem(CPU, "app1", "Average", "100", date=at(10)), update,
           zabbix_problem(CPU, "app1", "High", "101", date=at(12)),
           zabbix_recovery(CPU, "app1", "High", "101", "8m", date=at(20)))
    assert tickets_of(config) == [(1, "open", "normal", [], "problem", 2), (2, "closed", "urgent", [], "recovered", 2)]
    ingest(config, zabbix_recovery(CPU, "app1", "Average", "100", "15m", date=at(25)))
    assert tickets_of(config)[0] == (1, "closed", "normal", [], "recovered", 3)


def test_monitoring_mail_of_an_account_with_monitoring_off_is_mail_like_any_other(tmp_path):
    config = pipe_desk(tmp_path, monitoring=False)
    ingest(config, http("PROBLEM", "CRITICAL", 0), http("PROBLEM", "CRITICAL", 10))
    assert [t[4] for t in tickets_of(config)] == [None, None]


def test_a_downtime_of_no_known_problem_opens_a_ticket_without_a_problem_event(tmp_path):
    config = pipe_desk(tmp_path)
    ingest(config, http("DOWNTIMESTART", "OK", 0), http("DOWNTIMEEND", "OK", 60))
    assert tickets_of(config) == [(1, "open", "normal", [], "problem", 2)]
    events = json.loads(run_cli(config, "tickets", "show", "1", "--json").stdout)["events"]
    assert [e["detail"] for e in events if e["kind"].startswith("monitoring")] == [
        "nagios web1/HTTP OK: a notice of no known problem"]


def test_a_forged_recovery_closes_nothing(tmp_path):
    """RELIABILITY 40 (no actions by mail from a sender our own server says is forged): a RECOVERY
    whose From fails DMARC at our mail server is filed as its own ticket, and the problem stays open."""
    config = pipe_desk(tmp_path, authserv_id="mx.example.com")
    forged = (b"Authentication-Results: mx.example.com; dmarc=fail (p=reject) header.from=example.com\n"
              + http("RECOVERY", "OK", 10))
    ingest(config, http("PROBLEM", "CRITICAL", 0), forged)
    assert tickets_of(config) == [(1, "open", "urgent", [], "problem", 1), (2, "open", "normal", [], None, 1)]
