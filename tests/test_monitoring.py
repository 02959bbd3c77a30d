"""Monitoring mail recognised (issue 18, point 1): the stock notification mails of Nagios, Icinga 2,
Zabbix, Prometheus Alertmanager, Monit and Checkmk, a custom format from [monitoring], and
`mail2ticket parse FILE` showing what was recognised.

Each test mail is a real RFC 5322 message built here in the exact format its tool sends by
default; the comment above each builder names the source the format was taken from.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mail2ticket.cli import cli
from mail2ticket.config.load import load_config
from mail2ticket.parse.message import parse_message
from mail2ticket.parse.monitoring import recognise
from tests.helpers import alertmanager, nagios_host, nagios_service
from tests.helpers import monitoring_mail as mail


def seen(raw: bytes, formats=()) -> dict | None:
    found = recognise(parse_message(raw), formats)
    return found.to_dict() if found else None


def fields(found: dict | None) -> tuple:
    assert found is not None, "not recognised"
    return found["tool"], found["host"], found["service"], found["state"], found["kind"]


# --- Nagios ----------------------------------------------------------------------------------------
# Nagios Core's sample commands.cfg (sample-config/template-object/commands.cfg.in):
#   notify-service-by-email: /usr/bin/printf "%b" "***** Nagios *****\n\nNotification Type:
#   $NOTIFICATIONTYPE$\n\nService: $SERVICEDESC$\nHost: $HOSTALIAS$\nAddress: $HOSTADDRESS$\nState:
#   $SERVICESTATE$\n\nDate/Time: $LONGDATETIME$\n\nAdditional Info:\n\n$SERVICEOUTPUT$\n" | mail -s
#   "** $NOTIFICATIONTYPE$ Service Alert: $HOSTALIAS$/$SERVICEDESC$ is $SERVICESTATE$ **"
#   notify-host-by-email: "***** Nagios *****\n\nNotification Type: $NOTIFICATIONTYPE$\nHost:
#   $HOSTNAME$\nState: $HOSTSTATE$\nAddress: $HOSTADDRESS$\nInfo: $HOSTOUTPUT$\n\nDate/Time:
#   $LONGDATETIME$\n", subject "** $NOTIFICATIONTYPE$ Host Alert: $HOSTNAME$ is $HOSTSTATE$ **"


def test_nagios_service_problem_recovery_acknowledgement_and_flapping():
    problem = seen(nagios_service("PROBLEM", "web1", "HTTP", "CRITICAL", "HTTP CRITICAL - Unable to open TCP socket"))
    assert fields(problem) == ("nagios", "web1", "HTTP", "CRITICAL", "problem")
    assert problem["severity"] == "critical"
    warning = seen(nagios_service("PROBLEM", "web1", "Disk /var", "WARNING", "DISK WARNING - free space: /var 9%"))
    assert fields(warning) == ("nagios", "web1", "Disk /var", "WARNING", "problem")
    assert warning["severity"] == "warning"
    recovery = seen(nagios_service("RECOVERY", "web1", "HTTP", "OK", "HTTP OK: HTTP/1.1 200 OK"))
    assert fields(recovery) == ("nagios", "web1", "HTTP", "OK", "recovery")
    assert recovery["severity"] is None
    ack = seen(nagios_service("ACKNOWLEDGEMENT", "web1", "HTTP", "CRITICAL", "HTTP CRITICAL"))
    assert fields(ack) == ("nagios", "web1", "HTTP", "CRITICAL", "acknowledgement")
    for flap in ("FLAPPINGSTART", "FLAPPINGSTOP"):
        assert fields(seen(nagios_service(flap, "web1", "HTTP", "OK", "HTTP OK")))[4] == "flapping"
    downtime = seen(nagios_service("DOWNTIMESTART", "web1", "HTTP", "OK", "HTTP OK"))
    assert downtime["kind"] == "other"


def test_nagios_host_down_unreachable_and_up():
    down = seen(nagios_host("PROBLEM", "db1", "DOWN", "CRITICAL - Host Unreachable (192.0.2.20)"))
    assert fields(down) == ("nagios", "db1", None, "DOWN", "problem")
    assert down["severity"] == "critical"
    unreachable = seen(nagios_host("PROBLEM", "db1", "UNREACHABLE", "CRITICAL - Network Unreachable"))
    assert (unreachable["state"], unreachable["kind"], unreachable["severity"]) == ("UNREACHABLE", "problem", "critical")
    up = seen(nagios_host("RECOVERY", "db1", "UP", "PING OK - Packet loss = 0%, RTA = 0.80 ms"))
    assert fields(up) == ("nagios", "db1", None, "UP", "recovery")


# --- Icinga 2 --------------------------------------------------------------------------------------
# The scripts Icinga 2 installs, etc/icinga2/scripts/mail-service-notification.sh:
#   SUBJECT="[$NOTIFICATIONTYPE] $SERVICEDISPLAYNAME on $HOSTDISPLAYNAME is $SERVICESTATE!"
#   "***** Service Monitoring on $ICINGA2HOST *****\n\n$SERVICEDISPLAYNAME on $HOSTDISPLAYNAME is
#   $SERVICESTATE!\n\nInfo:    $SERVICEOUTPUT\n\nWhen:    $LONGDATETIME\nService: $SERVICENAME\n
#   Host:    $HOSTNAME" then "IPv4:    $HOSTADDRESS" and "\n\nComment by $NOTIFICATIONAUTHORNAME:\n
#   $NOTIFICATIONCOMMENT" when given; and mail-host-notification.sh:
#   SUBJECT="[$NOTIFICATIONTYPE] Host $HOSTDISPLAYNAME is $HOSTSTATE!"
#   "***** Host Monitoring on $ICINGA2HOST *****\n\n$HOSTDISPLAYNAME is $HOSTSTATE!\n\nInfo:
#   $HOSTOUTPUT\n\nWhen:    $LONGDATETIME\nHost:    $HOSTNAME"


def icinga2_service(kind: str, state: str, output: str, comment: tuple[str, str] | None = None) -> bytes:
    body = (f"***** Service Monitoring on icinga-master *****\n\nWeb server on Web 1 is {state}!\n\n"
            f"Info:    {output}\n\nWhen:    2026-12-02 03:10:00 +0000\nService: http\n"
            f"Host:    web1.example.com\nIPv4:    192.0.2.10")
    if comment:
        body += f"\n\nComment by {comment[0]}:\n  {comment[1]}"
    return mail(f"[{kind}] Web server on Web 1 is {state}!", body, sender="icinga@example.com")


def icinga2_host(kind: str, state: str, output: str) -> bytes:
    body = (f"***** Host Monitoring on icinga-master *****\n\nDatabase 1 is {state}!\n\n"
            f"Info:    {output}\n\nWhen:    2026-12-02 03:10:00 +0000\nHost:    db1.example.com\n"
            f"IPv4:\t 192.0.2.20")
    return mail(f"[{kind}] Host Database 1 is {state}!", body, sender="icinga@example.com")


def test_icinga2_service_problem_recovery_and_acknowledgement_use_the_object_names():
    problem = seen(icinga2_service("PROBLEM", "CRITICAL", "connect to address 192.0.2.10 and port 80: Connection refused"))
    assert fields(problem) == ("icinga2", "web1.example.com", "http", "CRITICAL", "problem")
    recovery = seen(icinga2_service("RECOVERY", "OK", "HTTP OK: HTTP/1.1 200 OK - 612 bytes in 0.001 second"))
    assert fields(recovery) == ("icinga2", "web1.example.com", "http", "OK", "recovery")
    ack = seen(icinga2_service("ACKNOWLEDGEMENT", "CRITICAL", "Connection refused", ("icingaadmin", "Looking into it")))
    assert fields(ack) == ("icinga2", "web1.example.com", "http", "CRITICAL", "acknowledgement")
    flapping = seen(icinga2_service("FLAPPINGSTART", "WARNING", "HTTP WARNING"))
    assert flapping["kind"] == "flapping"


def test_icinga2_host_mail_with_the_subject_encoded_as_the_current_script_does():
    """mail-host-notification.sh of Icinga 2.11 and later sends ENCODED_SUBJECT="=?utf-8?B?$(base64
    --wrap=0 <<< "$SUBJECT")?=": base64 of the subject with the newline of the here-string."""
    import base64

    plain = icinga2_host("PROBLEM", "DOWN", "CRITICAL - Host Unreachable (192.0.2.20)")
    encoded = base64.b64encode(b"[PROBLEM] Host Database 1 is DOWN!\n").decode()
    raw = plain.replace(b"Subject: [PROBLEM] Host Database 1 is DOWN!", f"Subject: =?utf-8?B?{encoded}?=".encode())
    assert raw != plain
    assert fields(seen(raw)) == ("icinga2", "db1.example.com", None, "DOWN", "problem")


def test_icinga2_host_down_and_up():
    down = seen(icinga2_host("PROBLEM", "DOWN", "CRITICAL - Host Unreachable (192.0.2.20)"))
    assert fields(down) == ("icinga2", "db1.example.com", None, "DOWN", "problem")
    assert down["severity"] == "critical"
    up = seen(icinga2_host("RECOVERY", "UP", "PING OK - Packet loss = 0%"))
    assert fields(up) == ("icinga2", "db1.example.com", None, "UP", "recovery")


# --- Zabbix ----------------------------------------------------------------------------------------
# The Email media type's default message templates (ui/include/classes/helpers/CMediatypeHelper.php):
#   Problem:  subject "Problem: {EVENT.NAME}", message "Problem started at {EVENT.TIME} on
#             {EVENT.DATE}\nProblem name: {EVENT.NAME}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\n
#             Operational data: {EVENT.OPDATA}\nOriginal problem ID: {EVENT.ID}\n{TRIGGER.URL}"
#   Recovery: subject "Resolved in {EVENT.DURATION}: {EVENT.NAME}", message "Problem has been
#             resolved at {EVENT.RECOVERY.TIME} on {EVENT.RECOVERY.DATE}\nProblem name: {EVENT.NAME}\n
#             Problem duration: {EVENT.DURATION}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\n
#             Original problem ID: {EVENT.ID}\n{TRIGGER.URL}"
#   Update:   subject "Updated problem in {EVENT.AGE}: {EVENT.NAME}", message "{USER.FULLNAME}
#             {EVENT.UPDATE.ACTION} problem at {EVENT.UPDATE.DATE} {EVENT.UPDATE.TIME}.\n
#             {EVENT.UPDATE.MESSAGE}\n\nCurrent problem status is {EVENT.STATUS}, age is {EVENT.AGE},
#             acknowledged: {EVENT.ACK.STATUS}."

ZABBIX_NAME = "High CPU utilization (over 90% for 5m)"


def test_zabbix_problem_recovery_and_acknowledgement_keep_the_original_problem_id():
    problem = seen(mail(
        f"Problem: {ZABBIX_NAME}",
        f"Problem started at 03:05:12 on 2026.12.02\nProblem name: {ZABBIX_NAME}\nHost: app1\n"
        f"Severity: High\nOperational data: Current utilization: 97.3 %\nOriginal problem ID: 4711\n",
        sender="zabbix@example.com"))
    assert fields(problem) == ("zabbix", "app1", ZABBIX_NAME, "High", "problem")
    assert (problem["severity"], problem["event_id"]) == ("critical", "4711")
    disaster = seen(mail(
        "Problem: app1 is unavailable by ICMP",
        "Problem started at 03:05:12 on 2026.12.02\nProblem name: app1 is unavailable by ICMP\nHost: app1\n"
        "Severity: Disaster\nOperational data: Up (1)\nOriginal problem ID: 4712\n", sender="zabbix@example.com"))
    assert (disaster["kind"], disaster["severity"], disaster["event_id"]) == ("problem", "critical", "4712")
    recovery = seen(mail(
        f"Resolved in 12m 3s: {ZABBIX_NAME}",
        f"Problem has been resolved at 03:17:15 on 2026.12.02\nProblem name: {ZABBIX_NAME}\n"
        f"Problem duration: 12m 3s\nHost: app1\nSeverity: High\nOriginal problem ID: 4711\n",
        sender="zabbix@example.com"))
    assert fields(recovery) == ("zabbix", "app1", ZABBIX_NAME, "RESOLVED", "recovery")
    assert recovery["event_id"] == "4711"
    ack = seen(mail(
        f"Updated problem in 4m 10s: {ZABBIX_NAME}",
        "Zabbix Administrator acknowledged problem at 2026.12.02 03:09:22.\nOn it.\n\n"
        "Current problem status is PROBLEM, age is 4m 10s, acknowledged: Yes.", sender="zabbix@example.com"))
    assert (ack["tool"], ack["service"], ack["kind"]) == ("zabbix", ZABBIX_NAME, "acknowledgement")
    comment = seen(mail(
        f"Updated problem in 5m: {ZABBIX_NAME}",
        "Zabbix Administrator commented problem at 2026.12.02 03:10:22.\nStill busy.\n\n"
        "Current problem status is PROBLEM, age is 5m, acknowledged: Yes.", sender="zabbix@example.com"))
    assert comment["kind"] == "other"


# --- Prometheus Alertmanager -----------------------------------------------------------------------
# The default e-mail template, template/default.tmpl: email.default.subject = "__subject" =
# "[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}]
# {{ .GroupLabels.SortedPairs.Values | join " " }} {{ if gt (len .CommonLabels) (len .GroupLabels) }}
# ({{ with .CommonLabels.Remove .GroupLabels.Names }}{{ .Values | join " " }}{{ end }}){{ end }}",
# and email.default.html: "N alerts for name=value", "View in AlertManager", "[N] Firing" /
# "[N] Resolved", per alert "Labels" with "{{ .Name }} = {{ .Value }}<br />" lines, "Annotations",
# "Source", "Sent by AlertManager". The inline styles of the template are left out here.


def test_alertmanager_firing_and_resolved_with_group_labels():
    alert = {"alertname": "DiskFull", "instance": "web1:9100", "job": "node", "severity": "critical"}
    firing = seen(alertmanager("firing", [alert], {"alertname": "DiskFull"}))
    assert fields(firing) == ("alertmanager", "web1:9100", "DiskFull", "FIRING", "problem")
    assert firing["severity"] == "critical"
    resolved = seen(alertmanager("resolved", [alert], {"alertname": "DiskFull"}))
    assert fields(resolved) == ("alertmanager", "web1:9100", "DiskFull", "RESOLVED", "recovery")


def test_alertmanager_group_of_several_hosts_names_the_alert_and_no_single_host():
    alerts = [{"alertname": "InstanceDown", "instance": f"web{n}:9100", "job": "node", "severity": "warning"}
              for n in (1, 2, 3)]
    found = seen(alertmanager("firing", alerts, {"alertname": "InstanceDown", "job": "node"}))
    assert fields(found) == ("alertmanager", None, "InstanceDown", "FIRING", "problem")
    assert found["severity"] == "warning"


# --- Monit -----------------------------------------------------------------------------------------
# Monit's default mail-format (src/alert.h, ALERT_SUBJECT and ALERT_MESSAGE):
#   subject "monit alert --  $EVENT $SERVICE"
#   message "$EVENT Service $SERVICE \r\n\r\n\tDate:        $DATE\r\n\tAction:      $ACTION\r\n
#            \tHost:        $HOST\r\n\tDescription: $DESCRIPTION\r\n\r\nYour faithful employee,\r\nMonit\r\n"
# $EVENT comes from src/event.c ("Does not exist"/"Exists", "Connection failed"/"Connection succeeded",
# "Resource limit matched"/"Resource limit succeeded", ...).


def monit(event: str, service: str, action: str, description: str) -> bytes:
    body = (f"{event} Service {service} \r\n\r\n\tDate:        Wed, 02 Dec 2026 03:10:00\r\n"
            f"\tAction:      {action}\r\n\tHost:        web1.example.com\r\n"
            f"\tDescription: {description}\r\n\r\nYour faithful employee,\r\nMonit\r\n")
    return mail(f"monit alert --  {event} {service}", body, sender="monit@web1.example.com")


def test_monit_failure_and_success_events():
    gone = seen(monit("Does not exist", "nginx", "restart", "process is not running"))
    assert fields(gone) == ("monit", "web1.example.com", "nginx", "Does not exist", "problem")
    back = seen(monit("Exists", "nginx", "alert", "process is running with pid 4242"))
    assert fields(back) == ("monit", "web1.example.com", "nginx", "Exists", "recovery")
    failed = seen(monit("Connection failed", "postgres", "alert", "failed protocol test [PGSQL] at [localhost]:5432"))
    assert fields(failed)[3:] == ("Connection failed", "problem")
    ok = seen(monit("Connection succeeded", "postgres", "alert", "connection succeeded to [localhost]:5432"))
    assert fields(ok)[3:] == ("Connection succeeded", "recovery")
    cpu = seen(monit("Resource limit matched", "web1.example.com", "alert", "cpu usage of 97.1% matches limit"))
    assert fields(cpu)[3:] == ("Resource limit matched", "problem")
    changed = seen(monit("Checksum changed", "sshd_config", "alert", "checksum was changed"))
    assert changed["kind"] == "other"


# --- Checkmk ---------------------------------------------------------------------------------------
# Checkmk's notification mails, cmk/notification_plugins/asciimail.py (plain text; mail.py, the
# HTML mail, has the same default subjects): tmpl_host_subject = "Check_MK: $HOSTNAME$ - $EVENT_TXT$",
# tmpl_service_subject = "Check_MK: $HOSTNAME$/$SERVICEDESC$ $EVENT_TXT$", body "Host:     $HOSTNAME$\n
# Alias:    $HOSTALIAS$\nAddress:  $HOSTADDRESS$\nService:  $SERVICEDESC$\nEvent:    $EVENT_TXT$\n
# Output:   $SERVICEOUTPUT$\nPerfdata: $SERVICEPERFDATA$\n$LONGSERVICEOUTPUT$\n"; $EVENT_TXT$ is
# "$PREVIOUSSERVICEHARDSHORTSTATE$ -> $SERVICESHORTSTATE$", "Started Flapping", "Stopped Flapping
# (OK)", "Downtime Start (OK)", "Acknowledged (CRIT)" or "Custom Notification (CRIT)".


def checkmk_service(service: str, event: str, output: str) -> bytes:
    body = (f"Host:     srv-db1\nAlias:    srv-db1\nAddress:  192.0.2.30\nService:  {service}\n"
            f"Event:    {event}\nOutput:   {output}\nPerfdata: fs_used=95%\n\n")
    return mail(f"Check_MK: srv-db1/{service} {event}", body, sender="checkmk@example.com")


def checkmk_host(event: str, output: str) -> bytes:
    body = (f"Host:     srv-db1\nAlias:    srv-db1\nAddress:  192.0.2.30\nEvent:    {event}\n"
            f"Output:   {output}\nPerfdata: rta=0.8ms\n\n")
    return mail(f"Check_MK: srv-db1 - {event}", body, sender="checkmk@example.com")


def test_checkmk_service_and_host_events():
    crit = seen(checkmk_service("Filesystem /var", "OK -> CRIT", "95% used (9.5 of 10 GB)"))
    assert fields(crit) == ("checkmk", "srv-db1", "Filesystem /var", "CRIT", "problem")
    assert crit["severity"] == "critical"
    ok = seen(checkmk_service("Filesystem /var", "CRIT -> OK", "60% used (6 of 10 GB)"))
    assert fields(ok) == ("checkmk", "srv-db1", "Filesystem /var", "OK", "recovery")
    ack = seen(checkmk_service("Filesystem /var", "Acknowledged (CRIT)", "95% used"))
    assert fields(ack) == ("checkmk", "srv-db1", "Filesystem /var", "CRIT", "acknowledgement")
    flap = seen(checkmk_service("Filesystem /var", "Started Flapping", "95% used"))
    assert flap["kind"] == "flapping"
    down = seen(checkmk_host("UP -> DOWN", "CRIT - 192.0.2.30: Host unreachable"))
    assert fields(down) == ("checkmk", "srv-db1", None, "DOWN", "problem")
    up = seen(checkmk_host("DOWN -> UP", "OK - 192.0.2.30: rta 0.8ms, lost 0%"))
    assert fields(up) == ("checkmk", "srv-db1", None, "UP", "recovery")


# --- not monitoring mail, and custom formats -------------------------------------------------------


@pytest.mark.parametrize("subject, body", [
    ("Printer on fire", "Hello,\n\nthe printer on floor 2 is on fire. Host: none.\n"),
    ("Re: ** PROBLEM with my laptop **", "It does not start. Service: please help.\n"),
    ("[RESOLVED] my VPN question", "Thanks, it works now.\n"),
    ("Problem: cannot log in", "Since this morning I cannot log in.\nHost: my laptop\n"),
])
def test_mail_from_people_is_not_recognised(subject: str, body: str):
    assert seen(mail(subject, body, sender="ann@customer.test")) is None


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


BACKUP_FORMAT = r'''
    [[monitoring.formats]]
    name = "backupcheck"
    subject = '^\[backupcheck\] (?P<host>\S+): job (?P<service>\S+) (?P<state>FAILED|OK)$'
    body = '^Run id: (?P<event_id>\d+)$'
    problem_states = ["FAILED"]
    recovery_states = ["OK"]
'''


def test_a_custom_format_from_the_config_is_recognised_before_the_stock_ones(tmp_path: Path):
    cfg = load_config(write_config(tmp_path, BACKUP_FORMAT))
    formats = cfg.monitoring.formats
    failed = seen(mail("[backupcheck] nas1: job nightly FAILED", "Run id: 981\nrsync exited with 23\n"), formats)
    assert fields(failed) == ("backupcheck", "nas1", "nightly", "FAILED", "problem")
    assert failed["event_id"] == "981"
    ok = seen(mail("[backupcheck] nas1: job nightly OK", "Run id: 982\n"), formats)
    assert fields(ok) == ("backupcheck", "nas1", "nightly", "OK", "recovery")
    # both patterns must match: the subject alone is not enough
    assert seen(mail("[backupcheck] nas1: job nightly OK", "no run id here\n"), formats) is None
    # and without the formats the mail is nobody's
    assert seen(mail("[backupcheck] nas1: job nightly FAILED", "Run id: 981\n")) is None


@pytest.mark.parametrize("text, expected", [
    ('[[monitoring.formats]]\nname = "x"\nsubject = "(?P<host>\\\\S+"\n',
     "'monitoring.formats.x.subject' = '(?P<host>\\\\S+' is not a valid regular expression"),
    ('[[monitoring.formats]]\nname = "x"\nbody = "^(?P<host>(\\\\w+\\\\s?)+)$"\n',
     "'monitoring.formats.x.body' = '^(?P<host>(\\\\w+\\\\s?)+)$' nests one unbounded repeat in another"),
    ('[[monitoring.formats]]\nname = "x"\nsubject = "(?P<hostname>\\\\S+)"\n',
     "'monitoring.formats.x.subject' has the named group 'hostname', which is not known"),
    ('[[monitoring.formats]]\nname = "x"\nsubject = "(?P<state>DOWN|UP)"\n',
     "monitoring format 'x' captures neither a host nor a service"),
    ('[[monitoring.formats]]\nname = "x"\n', "monitoring format 'x' has neither 'subject' nor 'body'"),
    ('[[monitoring.formats]]\nsubject = "(?P<host>\\\\S+)"\n', "'monitoring.formats[1].name' is required"),
    ('[[monitoring.formats]]\nname = "x"\nsubject = "(?P<host>a)"\n[[monitoring.formats]]\nname = "X"\nsubject = "(?P<host>b)"\n',
     "two monitoring formats are named 'X'"),
    ('[monitoring]\nenabled = "yes"\n', "'monitoring.enabled' has the wrong type (str)"),
    ('[monitoring]\nformat = []\n', "unknown key 'monitoring.format'"),
    ('[[monitoring.formats]]\nname = "x"\nsubject = "(?P<host>a)"\nproblem_states = "DOWN"\n',
     "'monitoring.formats.x.problem_states' has the wrong type (str)"),
    ('[monitoring]\non_recovery = "shut"\n', "'monitoring.on_recovery' = 'shut' is not valid"),
    ('[monitoring]\nflap_window = "an hour"\n', "'monitoring.flap_window' = 'an hour' is not a duration"),
    ('[monitoring]\npriorities = { critical = "asap" }\n', "'monitoring.priorities.critical' = 'asap' is not a priority"),
    ('[[accounts]]\nname = "ops"\nemail = "ops@example.com"\nsource = "pipe"\nmonitoring_on_recovery = "keep"\n',
     "'accounts.ops.monitoring_on_recovery' = 'keep' is not valid"),
])
def test_a_bad_monitoring_table_gives_one_line_naming_the_file_and_key(tmp_path: Path, text: str, expected: str):
    cfg = write_config(tmp_path, text)
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "check"])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {cfg}")
    assert expected in lines[0], lines[0]


def test_monitoring_is_on_by_default_and_each_account_can_turn_it_off_or_on(tmp_path: Path):
    accounts = '''
        [[accounts]]
        name = "ops"
        email = "ops@example.com"
        imap_host = "imap.example.com"

        [[accounts]]
        name = "people"
        email = "help@example.com"
        imap_host = "imap.example.com"
        monitoring = false
    '''
    cfg = load_config(write_config(tmp_path, accounts))
    assert cfg.monitoring.enabled is True
    assert cfg.monitoring.enabled_for(cfg.account("ops")) is True
    assert cfg.monitoring.enabled_for(cfg.account("people")) is False
    off = load_config(write_config(tmp_path, "[monitoring]\nenabled = false\n" + accounts.replace(
        'name = "ops"', 'name = "ops"\n        monitoring = true')))
    assert off.monitoring.enabled_for(None) is False
    assert off.monitoring.enabled_for(off.account("ops")) is True
    assert off.monitoring.enabled_for(off.account("people")) is False


def test_config_check_shows_monitoring_its_formats_and_the_accounts_that_differ(tmp_path: Path):
    from mail2ticket.accounts.secrets import store_password

    store_password("people", "secret")  # an account without a password fails 'config check'
    cfg = write_config(tmp_path, BACKUP_FORMAT + '''
        [[accounts]]
        name = "people"
        email = "help@example.com"
        imap_host = "imap.example.com"
        monitoring = false
    ''')
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "check"])
    assert result.exit_code == 0, result.output
    assert "Monitoring:  on, custom formats: backupcheck; off for: people" in result.stdout.splitlines()
    data = json.loads(CliRunner().invoke(cli, ["--config", str(cfg), "config", "check", "--json"]).stdout)
    assert data["monitoring"] == {"enabled": True, "formats": ["backupcheck"], "accounts_on": [],
                                  "accounts_off": ["people"], "on_recovery": "close", "flap_window": 3600,
                                  "priorities": {"critical": "urgent", "warning": "normal", "unknown": "normal",
                                                 "info": "low"}}


def test_config_check_says_what_a_recovery_does_and_the_flap_window_when_not_the_defaults(tmp_path: Path):
    cfg = write_config(tmp_path, '[monitoring]\non_recovery = "mark"\nflap_window = "30m"\n')
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "check"])
    assert result.exit_code == 0, result.output
    assert "Monitoring:  on; on recovery: mark; flap window: 30 minutes" in result.stdout.splitlines()

# --- `mail2ticket parse FILE` shows it --------------------------------------------------------------


def test_parse_shows_the_monitoring_fields_in_text_and_json(tmp_path: Path):
    cfg = write_config(tmp_path, "")
    eml = tmp_path / "alert.eml"
    eml.write_bytes(mail(f"Problem: {ZABBIX_NAME}",
                         f"Problem started at 03:05:12 on 2026.12.02\nProblem name: {ZABBIX_NAME}\nHost: app1\n"
                         f"Severity: High\nOperational data: 97.3 %\nOriginal problem ID: 4711\n"))
    as_json = CliRunner().invoke(cli, ["--config", str(cfg), "parse", str(eml), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["monitoring"] == {
        "tool": "zabbix", "host": "app1", "service": ZABBIX_NAME, "state": "High", "kind": "problem",
        "severity": "critical", "event_id": "4711",
    }
    text = CliRunner().invoke(cli, ["--config", str(cfg), "parse", str(eml)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    start = lines.index("Monitoring: zabbix, problem")
    assert lines[start + 1:start + 5] == [
        "  Host: app1", f"  Service: {ZABBIX_NAME}", "  State: High (critical)", "  Event ID: 4711"]
    assert lines[-1] == "Rules: 0"


def test_parse_of_other_mail_says_no_and_json_has_null(tmp_path: Path):
    cfg = write_config(tmp_path, "")
    eml = tmp_path / "person.eml"
    eml.write_bytes(mail("Printer on fire", "Please help.\n", sender="ann@customer.test"))
    as_json = CliRunner().invoke(cli, ["--config", str(cfg), "parse", str(eml), "--json"])
    assert json.loads(as_json.stdout)["monitoring"] is None
    text = CliRunner().invoke(cli, ["--config", str(cfg), "parse", str(eml)])
    assert "Monitoring: no" in text.stdout.splitlines()


def test_parse_uses_the_custom_formats_and_respects_enabled_false(tmp_path: Path):
    eml = tmp_path / "backup.eml"
    eml.write_bytes(mail("[backupcheck] nas1: job nightly FAILED", "Run id: 981\n"))
    cfg = write_config(tmp_path, BACKUP_FORMAT)
    found = json.loads(CliRunner().invoke(cli, ["--config", str(cfg), "parse", str(eml), "--json"]).stdout)
    assert (found["monitoring"]["tool"], found["monitoring"]["host"]) == ("backupcheck", "nas1")
    cfg = write_config(tmp_path, "[monitoring]\nenabled = false\n" + textwrap.dedent(BACKUP_FORMAT))
    found = json.loads(CliRunner().invoke(cli, ["--config", str(cfg), "parse", str(eml), "--json"]).stdout)
    assert found["monitoring"] is None
