"""Monitoring mail recognised: which tool sent it, about which host and service, in which state.

``recognise(parsed, formats)`` reads the subject and text of a parsed message and returns a
``Monitoring`` for the stock notification mails of Nagios, Icinga 2, Zabbix, Prometheus
Alertmanager, Monit and Checkmk, or for a custom format of [[monitoring.formats]] (tried first),
and None for any other mail. It is pure: no config, database or network. Where each stock format
comes from is written beside its reader below, and in docs/monitoring.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import regex

from mail2ticket.config.monitoring import MonitoringFormat
from mail2ticket.config.rules import RULE_TIME_LIMIT

KINDS = ("problem", "recovery", "acknowledgement", "flapping", "other")


@dataclass(frozen=True)
class Monitoring:
    """A recognised monitoring mail. ``state`` is the tool's own word (CRITICAL, DOWN, High,
    FIRING, "Does not exist", CRIT...); ``kind`` what it means (one of KINDS); ``severity``
    critical, warning, unknown or info where the state or the mail says so."""

    tool: str
    host: str | None
    service: str | None
    state: str | None
    kind: str
    severity: str | None = None
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recognise(parsed: Any, formats: Iterable[MonitoringFormat] = ()) -> Monitoring | None:
    """The monitoring fields of ``parsed`` (a ParsedMessage), or None when it is not monitoring
    mail. The custom ``formats`` are tried first, in order, then the stock ones."""
    subject = " ".join((parsed.subject or "").split())
    body = (parsed.body_text or "").replace("\r\n", "\n")
    for fmt in formats:
        found = _custom(fmt, subject, body)
        if found is not None:
            return found
    for reader in STOCK:
        found = reader(subject, body)
        if found is not None:
            return found
    return None


# --- states -------------------------------------------------------------------------------------

SEVERITIES = {
    "CRITICAL": "critical", "CRIT": "critical", "DOWN": "critical", "UNREACHABLE": "critical",
    "UNREACH": "critical", "DISASTER": "critical", "HIGH": "critical", "PAGE": "critical",
    "WARNING": "warning", "WARN": "warning", "AVERAGE": "warning",
    "UNKNOWN": "unknown", "UNKN": "unknown",
    "INFORMATION": "info", "INFO": "info", "NOT CLASSIFIED": "info",
}
PROBLEM_WORDS = {"PROBLEM", "FIRING", "ALERT", "ERROR", "FAILED", "FAILURE", "FAIL"} | set(SEVERITIES)
RECOVERY_WORDS = {"RECOVERY", "RECOVERED", "OK", "UP", "RESOLVED", "CLEAR", "CLEARED", "SUCCEEDED"}
ACKNOWLEDGEMENT_WORDS = {"ACKNOWLEDGEMENT", "ACKNOWLEDGED", "ACK"}


def severity_of(state: str | None) -> str | None:
    return SEVERITIES.get((state or "").strip().upper())


def kind_of(word: str | None) -> str:
    """What a notification type or state word means (PROBLEM, RECOVERY, ACKNOWLEDGEMENT,
    FLAPPINGSTART, CRITICAL, OK, firing...)."""
    word = (word or "").strip().upper()
    if word in ACKNOWLEDGEMENT_WORDS:
        return "acknowledgement"
    if word.startswith("FLAPPING"):
        return "flapping"
    if word in RECOVERY_WORDS:
        return "recovery"
    if word in PROBLEM_WORDS:
        return "problem"
    return "other"


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


# --- custom formats ([[monitoring.formats]]) ----------------------------------------------------


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    return regex.compile(pattern, regex.IGNORECASE | regex.MULTILINE | regex.VERSION0)


def _search(pattern: str, text: str) -> Any:
    try:
        # The nested-quantifier check at load keeps patterns sane; the time limit bounds the rest.
        return _compiled(pattern).search(text, timeout=RULE_TIME_LIMIT)
    except TimeoutError:
        return None


def _custom(fmt: MonitoringFormat, subject: str, body: str) -> Monitoring | None:
    groups: dict[str, str] = {}
    for pattern, text in ((fmt.subject, subject), (fmt.body, body)):
        if pattern is None:
            continue
        match = _search(pattern, text)
        if match is None:
            return None
        groups.update({k: v for k, v in match.groupdict().items() if v is not None and k not in groups})
    state = _clean(groups.get("state"))
    upper = (state or "").upper()
    if state is None:
        kind = "problem"  # a format without a state group: each mail it matches reports a problem
    elif upper in fmt.problem_states:
        kind = "problem"
    elif upper in fmt.recovery_states:
        kind = "recovery"
    else:
        kind = kind_of(state)
    return Monitoring(tool=fmt.name, host=_clean(groups.get("host")), service=_clean(groups.get("service")),
                      state=state, kind=kind, severity=severity_of(state), event_id=_clean(groups.get("event_id")))


# --- Nagios (and Icinga 1, which ships the same commands) ----------------------------------------
# The sample commands.cfg of Nagios Core (sample-config/template-object/commands.cfg.in):
#   notify-host-by-email:    subject "** $NOTIFICATIONTYPE$ Host Alert: $HOSTNAME$ is $HOSTSTATE$ **",
#                            body "***** Nagios *****\n\nNotification Type: ...\nHost: ...\nState: ..."
#   notify-service-by-email: subject "** $NOTIFICATIONTYPE$ Service Alert: $HOSTALIAS$/$SERVICEDESC$
#                            is $SERVICESTATE$ **", body "***** Nagios *****\n\nNotification Type: ...
#                            \n\nService: ...\nHost: ...\nAddress: ...\nState: ..."
_NAGIOS_SERVICE = re.compile(r"^\*\* (?P<type>[A-Z]+) Service Alert: (?P<host>[^/]+)/(?P<service>.+) is (?P<state>[A-Z]+) \*\*$")
_NAGIOS_HOST = re.compile(r"^\*\* (?P<type>[A-Z]+) Host Alert: (?P<host>.+) is (?P<state>[A-Z]+) \*\*$")


def _nagios(subject: str, body: str) -> Monitoring | None:
    match = _NAGIOS_SERVICE.match(subject) or _NAGIOS_HOST.match(subject)
    if match is None:
        return None
    tool = "icinga" if "***** Icinga" in body else "nagios"
    groups = match.groupdict()
    return Monitoring(tool=tool, host=groups["host"].strip(), service=_clean(groups.get("service")),
                      state=groups["state"], kind=kind_of(groups["type"]), severity=severity_of(groups["state"]))


# --- Icinga 2 ------------------------------------------------------------------------------------
# The notification scripts Icinga 2 installs (etc/icinga2/scripts/mail-host-notification.sh and
# mail-service-notification.sh):
#   host:    subject "[$NOTIFICATIONTYPE] Host $HOSTDISPLAYNAME is $HOSTSTATE!",
#            body "***** Host Monitoring on $ICINGA2HOST *****\n\n... Info: ...\n\nWhen: ...\nHost:    $HOSTNAME"
#   service: subject "[$NOTIFICATIONTYPE] $SERVICEDISPLAYNAME on $HOSTDISPLAYNAME is $SERVICESTATE!",
#            body "***** Service Monitoring on ... *****\n\n...\nService: $SERVICENAME\nHost:    $HOSTNAME"
# The object names of the body (Host:, Service:) are preferred to the display names of the subject.
# Older 2.x scripts: subject "$NOTIFICATIONTYPE - $HOSTDISPLAYNAME - $SERVICEDISPLAYNAME is
# $SERVICESTATE", body "***** Icinga  *****\n\nNotification Type: ..." (read by the same rules).
_ICINGA2_HOST = re.compile(r"^\[(?P<type>[A-Z]+)\] Host (?P<host>.+) is (?P<state>[A-Z]+)!$")
_ICINGA2_SERVICE = re.compile(r"^\[(?P<type>[A-Z]+)\] (?P<service>.+) on (?P<host>.+) is (?P<state>[A-Z]+)!$")
_ICINGA2_OLD_SERVICE = re.compile(r"^(?P<type>[A-Z]+) - (?P<host>.+?) - (?P<service>.+) is (?P<state>[A-Z]+)$")
_ICINGA2_OLD_HOST = re.compile(r"^(?P<type>[A-Z]+) - (?P<host>.+?) - is (?P<state>[A-Z]+)$")
_BODY_HOST = re.compile(r"^Host:[ \t]+(?P<value>\S.*)$", re.MULTILINE)
_BODY_SERVICE = re.compile(r"^Service:[ \t]+(?P<value>\S.*)$", re.MULTILINE)


def _line(pattern: re.Pattern, body: str) -> str | None:
    match = pattern.search(body)
    return match.group("value").strip() if match else None


def _icinga2(subject: str, body: str) -> Monitoring | None:
    if "***** Host Monitoring on " in body:
        match = _ICINGA2_HOST.match(subject)
    elif "***** Service Monitoring on " in body:
        match = _ICINGA2_SERVICE.match(subject)
    elif "***** Icinga" in body:
        match = _ICINGA2_OLD_HOST.match(subject) or _ICINGA2_OLD_SERVICE.match(subject)
    else:
        match = _ICINGA2_SERVICE.match(subject) or _ICINGA2_HOST.match(subject)
    if match is None:
        return None
    groups = match.groupdict()
    service = _clean(groups.get("service"))
    if service is not None:
        service = _line(_BODY_SERVICE, body) or service
    return Monitoring(tool="icinga2", host=_line(_BODY_HOST, body) or groups["host"].strip(), service=service,
                      state=groups["state"], kind=kind_of(groups["type"]), severity=severity_of(groups["state"]))


# --- Zabbix --------------------------------------------------------------------------------------
# The message templates of the stock Email media type (ui/include/classes/helpers/CMediatypeHelper.php):
#   problem:  subject "Problem: {EVENT.NAME}", body "Problem started at {EVENT.TIME} on {EVENT.DATE}\n
#             Problem name: {EVENT.NAME}\nHost: {HOST.NAME}\nSeverity: {EVENT.SEVERITY}\n
#             Operational data: {EVENT.OPDATA}\nOriginal problem ID: {EVENT.ID}\n{TRIGGER.URL}"
#   recovery: subject "Resolved in {EVENT.DURATION}: {EVENT.NAME}" (before 5.0 "Resolved: ..."),
#             body "Problem has been resolved at ...\nProblem name: ...\nProblem duration: ...\nHost: ...
#             \nSeverity: ...\nOriginal problem ID: {EVENT.ID}\n{TRIGGER.URL}"
#   update:   subject "Updated problem in {EVENT.AGE}: {EVENT.NAME}", body "{USER.FULLNAME}
#             {EVENT.UPDATE.ACTION} problem at ...\n{EVENT.UPDATE.MESSAGE}\n\nCurrent problem status is
#             {EVENT.STATUS}, age is {EVENT.AGE}, acknowledged: {EVENT.ACK.STATUS}." (no host, no id)
_ZABBIX_SUBJECT = re.compile(r"^(?P<what>Problem|Resolved(?: in [^:]+)?|Updated problem(?: in [^:]+)?): (?P<name>.+)$")
_ZABBIX_ID = re.compile(r"^Original problem ID:[ \t]*(?P<value>\d+)", re.MULTILINE)
_ZABBIX_NAME = re.compile(r"^Problem name:[ \t]*(?P<value>\S.*)$", re.MULTILINE)
_ZABBIX_SEVERITY = re.compile(r"^Severity:[ \t]*(?P<value>\S.*)$", re.MULTILINE)
_ZABBIX_ACKNOWLEDGED = re.compile(r"\backnowledged\b.* problem at ")


def _zabbix(subject: str, body: str) -> Monitoring | None:
    match = _ZABBIX_SUBJECT.match(subject)
    if match is None:
        return None
    what, name = match.group("what"), match.group("name").strip()
    event_id = _line(_ZABBIX_ID, body)
    if what.startswith("Updated problem"):
        if "Current problem status is" not in body:
            return None
        first = body.strip().split("\n", 1)[0]  # "{USER.FULLNAME} {EVENT.UPDATE.ACTION} problem at ..."
        kind = "acknowledgement" if _ZABBIX_ACKNOWLEDGED.search(first) else "other"
        return Monitoring(tool="zabbix", host=_line(_BODY_HOST, body), service=name, state="UPDATED",
                          kind=kind, event_id=event_id)
    if event_id is None:
        return None
    severity_text = _line(_ZABBIX_SEVERITY, body)
    problem = what == "Problem"
    return Monitoring(
        tool="zabbix", host=_line(_BODY_HOST, body), service=_line(_ZABBIX_NAME, body) or name,
        state=severity_text if problem else "RESOLVED", kind="problem" if problem else "recovery",
        severity=severity_of(severity_text), event_id=event_id,
    )


# --- Prometheus Alertmanager ---------------------------------------------------------------------
# The default e-mail template (template/default.tmpl): subject "__subject" = "[{{ .Status | toUpper }}
# {{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .GroupLabels.SortedPairs.Values
# | join " " }} ({{ the other common label values }})"; HTML body "N alert(s) for name=value ...",
# "[N] Firing" / "[N] Resolved", then per alert "Labels" with one "name = value" line per label,
# "Annotations", "Source", and "Sent by AlertManager".
_AM_SUBJECT = re.compile(r"^\[(?P<status>FIRING|RESOLVED)(?::(?P<count>\d+))?\] (?P<groups>.+)$")
_AM_LABEL = re.compile(r"^[ \t]*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*) = (?P<value>.*\S)[ \t]*$")


def _alertmanager(subject: str, body: str) -> Monitoring | None:
    match = _AM_SUBJECT.match(subject)
    if match is None or not ("AlertManager" in body or re.search(r"^\s*alertname = ", body, re.MULTILINE)):
        return None
    labels: dict[str, list[str]] = {}
    in_labels = False
    for line in body.split("\n"):  # each alert's "Labels" lines, up to its "Annotations" or "Source"
        word = line.strip()
        if word == "Labels":
            in_labels = True
        elif word == "Annotations" or word.startswith("Source"):
            in_labels = False
        elif in_labels and (label := _AM_LABEL.match(line)):
            labels.setdefault(label.group("name"), []).append(label.group("value"))

    def common(*names: str) -> str | None:
        for name in names:
            values = set(labels.get(name, []))
            if len(values) == 1:
                return values.pop()
        return None

    group_values = match.group("groups").split(" (", 1)[0].split()
    alert = common("alertname") or (group_values[0] if group_values else None)
    status = match.group("status")
    severity = common("severity")
    return Monitoring(
        tool="alertmanager", host=common("instance", "host", "hostname", "node"), service=alert, state=status,
        kind="problem" if status == "FIRING" else "recovery",
        severity=(severity_of(severity) or severity.lower()) if severity else None,
    )


# --- Monit ---------------------------------------------------------------------------------------
# The default mail-format of Monit (src/alert.h, ALERT_SUBJECT and ALERT_MESSAGE):
#   subject "monit alert --  $EVENT $SERVICE",
#   body "$EVENT Service $SERVICE \r\n\r\n\tDate:        $DATE\r\n\tAction:      $ACTION\r\n
#         \tHost:        $HOST\r\n\tDescription: $DESCRIPTION\r\n\r\nYour faithful employee,\r\nMonit"
# $EVENT is the event's description (src/event.c): "Does not exist" / "Exists", "Connection failed" /
# "Connection succeeded", "Resource limit matched" / "Resource limit succeeded", "Timeout" /
# "Timeout recovery", "Checksum changed"...
_MONIT_FIRST = re.compile(r"\A\s*(?P<event>\S.*?) Service (?P<service>\S+)[ \t]*$", re.MULTILINE)
_MONIT_SUBJECT = re.compile(r"^monit alert -- +(?P<event>.+) (?P<service>\S+)$", re.IGNORECASE)
_MONIT_FIELD = re.compile(r"^[ \t]*(?P<name>Date|Action|Host|Description):[ \t]+(?P<value>\S.*)$", re.MULTILINE)
_MONIT_PROBLEM = {"does not exist", "timeout", "link down", "invalid type", "data access error"}
_MONIT_RECOVERY = {"exists", "timeout recovery", "link up"}


def _monit_kind(event: str) -> str:
    low = event.lower()
    if low in _MONIT_RECOVERY or low.endswith((" succeeded", " ok")):
        return "recovery"
    if low in _MONIT_PROBLEM or low.endswith((" failed", " error", " matched", " exceeded", " down")):
        return "problem"
    return "other"


def _monit(subject: str, body: str) -> Monitoring | None:
    first = _MONIT_FIRST.search(body)
    by_subject = _MONIT_SUBJECT.match(subject)
    if first is None and by_subject is None:
        return None  # most mail: its text is not scanned for Monit's fields (the import runs this on every mail)
    fields = {m.group("name"): m.group("value").strip() for m in _MONIT_FIELD.finditer(body)}
    from_body = first is not None and {"Action", "Host"} <= set(fields) and "Monit" in body
    if not from_body and by_subject is None:
        return None
    source = first if from_body else by_subject
    event = source.group("event").strip()
    return Monitoring(tool="monit", host=fields.get("Host"), service=source.group("service"), state=event,
                      kind=_monit_kind(event))


# --- Checkmk -------------------------------------------------------------------------------------
# The default subjects of Checkmk's notification mails, HTML (mail.py) and plain text (asciimail.py),
# cmk/notification_plugins/: host "Check_MK: $HOSTNAME$ - $EVENT_TXT$", service
# "Check_MK: $HOSTNAME$/$SERVICEDESC$ $EVENT_TXT$"; the plain body "Host:     $HOSTNAME$\n...
# Service:  $SERVICEDESC$\nEvent:    $EVENT_TXT$\nOutput: ...". $EVENT_TXT$ is "OK -> CRIT" for
# a problem or a recovery, "Started Flapping", "Stopped Flapping (OK)", "Downtime Start (OK)",
# "Acknowledged (CRIT)" or "Custom Notification (CRIT)".
_CMK_EVENT = (r"(?P<event>(?P<from>[A-Z]+) -> (?P<to>[A-Z]+)|Started Flapping|Stopped Flapping \((?P<flap>[A-Z]+)\)"
              r"|Downtime [A-Za-z]+ \((?P<down>[A-Z]+)\)|Acknowledged \((?P<ack>[A-Z]+)\)"
              r"|Custom Notification \((?P<custom>[A-Z]+)\))")
_CMK_HOST = re.compile(r"^Check_MK: (?P<host>\S+) - " + _CMK_EVENT + "$")
_CMK_SERVICE = re.compile(r"^Check_MK: (?P<host>[^/\s]+)/(?P<service>.+) " + _CMK_EVENT + "$")


def _checkmk(subject: str, body: str) -> Monitoring | None:
    match = _CMK_HOST.match(subject) or _CMK_SERVICE.match(subject)
    if match is None:
        return None
    g = match.groupdict()
    if g["to"]:
        state, kind = g["to"], "recovery" if g["to"] in ("OK", "UP") else "problem"
    elif g["event"].startswith(("Started Flapping", "Stopped Flapping")):
        state, kind = g["flap"], "flapping"
    elif g["ack"]:
        state, kind = g["ack"], "acknowledgement"
    else:
        state, kind = g["down"] or g["custom"], "other"
    return Monitoring(tool="checkmk", host=g["host"], service=_clean(g.get("service")), state=state, kind=kind,
                      severity=severity_of(state) if kind == "problem" else None)


STOCK = (_nagios, _icinga2, _zabbix, _alertmanager, _checkmk, _monit)
