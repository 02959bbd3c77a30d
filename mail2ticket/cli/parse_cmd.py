"""`mail2ticket parse FILE`: show how one message file would become a ticket, touching nothing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mail2ticket.cli.output import is_tty, json_option, print_json
from mail2ticket.errors import ParseError

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.

if TYPE_CHECKING:  # the parser is imported by this command only, not at every start-up
    from mail2ticket.parse.parsed import ParsedMessage


@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@json_option
def parse(file: Path, as_json: bool) -> None:
    """Show how FILE (one message, as .eml; - for stdin) would become a ticket.

    Prints subject, sender, recipients, date, Message-ID, the text a person would read,
    the attachments with their names, types and sizes, whether it is automatic mail (no
    acknowledgement), and any defects found; then, for the mail of a monitoring tool (Nagios,
    Icinga, Zabbix, Alertmanager, Monit, Checkmk, or a [[monitoring.formats]] entry of the
    config), the tool, host, service, state and event id it reports; and the [[rules]] it
    matches. Nothing is stored and nothing is fetched.

    Example: mail2ticket parse message.eml --json
    """
    try:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror or exc}") from exc
    try:
        from mail2ticket.parse.message import parse_message

        parsed = parse_message(raw)
    except ParseError as exc:
        raise click.ClickException(f"{file} would be quarantined: {exc.one_line()}") from exc
    cfg = _config()
    monitoring = _monitoring(cfg, parsed)
    parsed.monitoring = monitoring  # rules on tool, host, service and state see it, as in an import
    rules = _matching_rules(cfg, parsed)
    if as_json:
        print_json({**parsed.to_dict(), "monitoring": monitoring.to_dict() if monitoring else None,
                    "rules": [r.to_dict() for r in rules]})
    elif is_tty():
        _print_rich(parsed)
        click.echo(_monitoring_text(monitoring))
        click.echo(_rules_text(rules))
    else:
        click.echo(_plain(parsed))
        click.echo(_monitoring_text(monitoring))
        click.echo(_rules_text(rules))


def _config():
    """The config, for its [[rules]] and [monitoring]; None (with a warning) when it is broken."""
    from mail2ticket.errors import Mail2TicketError

    ctx = click.get_current_context(silent=True)
    app = ctx.find_root().obj if ctx is not None else None
    if app is None:
        return None
    try:
        return app.config(must_exist=False)
    except Mail2TicketError as exc:
        click.echo(f"Warning: rules and monitoring formats not checked: {exc.one_line()}", err=True)
        return None


def _matching_rules(cfg, parsed: ParsedMessage) -> list:
    """The [[rules]] of the config that this mail would match (docs/triage.md), in order."""
    if cfg is None:
        return []
    from mail2ticket.tickets.rules import matching_rules

    return matching_rules(cfg, parsed)


def _monitoring(cfg, parsed: ParsedMessage):
    """What the mail says as monitoring mail (docs/monitoring.md): tool, host, service, state;
    None when it is not, or when [monitoring] enabled = false. Without a usable config, the
    stock formats are tried."""
    from mail2ticket.parse.monitoring import recognise

    settings = getattr(cfg, "monitoring", None)
    if settings is not None and not settings.enabled_for(None):
        return None
    return recognise(parsed, settings.formats if settings is not None else ())


def _monitoring_text(found) -> str:
    if found is None:
        return "Monitoring: no"
    state = found.state or "(none)"
    if found.severity:
        state += f" ({found.severity})"
    lines = [f"Monitoring: {found.tool}, {found.kind}"]
    for name, value in (("Host", found.host), ("Service", found.service), ("State", state),
                        ("Event ID", found.event_id)):
        if value:
            lines.append(f"  {name}: {value}")
    return "\n".join(lines)


def _rules_text(rules: list) -> str:
    lines = [f"Rules: {len(rules)}"]
    for rule in rules:
        actions = ", ".join(f"{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in rule.actions().items())
        lines.append(f"  {rule.name}: {actions}")
    return "\n".join(lines)


parse_command = click.command("parse")(parse)


def _fields(parsed: ParsedMessage) -> list[tuple[str, str]]:
    sender = parsed.from_address or "(none)"
    if parsed.from_name:
        sender = f"{parsed.from_name} <{sender}>"
    return [
        ("Subject", parsed.subject or "(none)"),
        ("From", sender),
        ("To", ", ".join(parsed.to)),
        ("Cc", ", ".join(parsed.cc)),
        ("Reply-To", ", ".join(parsed.reply_to)),
        ("Date", parsed.date.isoformat().replace("+00:00", "Z") if parsed.date else "(none)"),
        ("Message-ID", parsed.message_id or "(none)"),
        ("In-Reply-To", " ".join(parsed.in_reply_to)),
        ("Auto-reply", parsed.auto_reply or "no"),
    ]


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _plain(parsed: ParsedMessage) -> str:
    lines = [f"{name}: {value}" for name, value in _fields(parsed) if value]
    lines += ["", parsed.body_text or "(no text)", ""]
    lines.append(f"Attachments: {len(parsed.attachments)}")
    for a in parsed.attachments:
        lines.append(f"  {a.filename}  {a.content_type}  {_size(a.size)}")
    lines.append(f"Defects: {len(parsed.defects)}")
    lines += [f"  {d}" for d in parsed.defects]
    return "\n".join(lines)


def _print_rich(parsed: ParsedMessage) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    for name, value in _fields(parsed):
        if value:
            fields.add_row(name, Text(value))
    console.print(fields)
    console.print(Panel(Text(parsed.body_text or "(no text)"), title="Text", expand=True))
    if parsed.attachments:
        table = Table(title="Attachments")
        for column in ("Name", "Type", "Size", "Disposition"):
            table.add_column(column, justify="right" if column == "Size" else "left")
        for a in parsed.attachments:
            table.add_row(Text(a.filename), a.content_type, _size(a.size), a.disposition)
        console.print(table)
    if parsed.defects:
        console.print(Text("Defects", style="bold"))
        for defect in parsed.defects:
            console.print(Text(f"  {defect}"))


def register(cli: click.Group) -> None:
    cli.add_command(parse_command)
