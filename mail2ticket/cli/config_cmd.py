"""The 'config' commands: check a config and show where things are."""

from __future__ import annotations

import click

from mail2ticket.cli.output import json_option, print_json
from mail2ticket.config.model import Account

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.group("config")
def config_group():
    """Check the configuration and show what it resolves to."""


@config_group.command("check")
@click.option("--online", is_flag=True,
              help="Also sign in to each enabled account (IMAP, its folder, SMTP), as 'accounts test' does.")
@json_option
@click.pass_obj
def config_check(app, online, as_json):
    """Validate the config (and the files it includes) and print what was found.

    Beyond the syntax it checks what would stop mail2ticket from working: a
    ca_file that does not exist, an enabled account with no password in any
    source (keyring, systemd credentials, password_command), a password_command
    that cannot run, a Maildir that is missing, a database or attachments
    directory that cannot be written. Each problem is one line on stderr; the
    exit code is then 3. With --online, each enabled account is also checked on
    its servers step by step; a failure there exits with its cause's code (4
    sign-in, 5 TLS, 6 network, 7 no password; 1 for mixed causes). With an S3
    attachment location, its credentials and boto3 are checked too, and with
    --online the bucket is reached once (a failure there is a problem: exit 3).
    With a PostgreSQL database, --online connects to it (the password chain of
    every command) and reads its schema version without changing anything; it
    cannot: one line, exit 6 (unreachable) or 4 (sign-in refused, no password).

    \b
    Examples:
      mail2ticket --config /etc/mail2ticket/config.toml config check
      mail2ticket config check --online
    """
    from mail2ticket.accounts.preflight import account_problems, needs_secret, problems
    from mail2ticket.errors import EXIT_CONFIG, common_exit_code

    cfg = app.config()
    found = problems(cfg)
    checked: dict[str, dict] = {}
    bucket = cfg.object_store
    if online and bucket is not None and not found:
        found += _bucket_check(cfg)
    database = None
    if online and cfg.database_url is not None:
        database = _database_check(cfg)
    if online:
        for account in cfg.accounts:
            if not account.enabled or not needs_secret(account) or account_problems(account):
                continue
            checked[account.name] = _online_check(account)
    data = {
        "config": str(cfg.path),
        "files": [str(f) for f in cfg.files],
        "database": str(cfg.database),
        "attachments": bucket.url if bucket else _in_database(cfg) or str(cfg.attachments),
        # an s3:// location (docs/storage.md): where it is, how it is reached, the local staging directory
        "object_store": None if bucket is None else {
            "url": bucket.url, "endpoint": bucket.endpoint, "region": bucket.region,
            "addressing_style": bucket.addressing_style, "ca_file": bucket.ca_file,
            "credentials": f"access key {bucket.access_key_id}" if bucket.access_key_id else "AWS credential chain",
            "staging": str(cfg.attachments)},
        "schedule": cfg.schedule,
        "sla": cfg.sla,
        "accounts": [
            {"name": a.name, "email": a.email, "enabled": a.enabled, "source": a.source,
             "imap": f"{a.imap_host}:{a.imap_port} ({a.imap_security})" if a.source == "imap" else a.path,
             "smtp": f"{a.smtp_host}:{a.smtp_port} ({a.smtp_security})" if a.smtp_host else None,
             "defined_in": a.defined_in}
            for a in cfg.accounts
        ],
        "rules": len(cfg.rules),
        # [monitoring] (docs/monitoring.md): on or off, the custom formats, accounts that differ.
        "monitoring": {
            "enabled": cfg.monitoring.enabled,
            "formats": [f.name for f in cfg.monitoring.formats],
            "accounts_on": [a.name for a in cfg.accounts if a.monitoring is True and not cfg.monitoring.enabled],
            "accounts_off": [a.name for a in cfg.accounts if a.monitoring is False and cfg.monitoring.enabled],
            # One ticket per problem: what a recovery does, the flap window (seconds), priorities.
            "on_recovery": cfg.monitoring.on_recovery,
            "flap_window": cfg.monitoring.flap_window,
            "priorities": cfg.monitoring.priorities,
        },
        # [metrics] (docs/metrics.md): the daemon's textfile for node_exporter, and how often.
        "metrics": {"textfile": str(cfg.metrics_textfile) if cfg.metrics_textfile else None,
                    "every": cfg.schedule["metrics"]},
        # [[hooks]] (docs/hooks.md): each hook's name, action and events.
        "hooks": [{"name": h.name, "action": "command" if h.command else "url", "events": list(h.events)}
                  for h in cfg.hooks],
        "problems": found,
        "online": checked if online else None,
        # --online with a PostgreSQL database: reached, and its schema (or why not).
        "database_online": database,
    }
    failed = {name: r for name, r in checked.items() if not r["ok"]}
    codes = [r["exit_code"] for r in failed.values()]
    if database is not None and not database["ok"]:
        codes.append(database["exit_code"])
    code = EXIT_CONFIG if found else common_exit_code(codes)
    if as_json:
        print_json(data)
        raise click.exceptions.Exit(code)
    for problem in found:
        click.echo(f"Error: {problem}", err=True)
    if database is not None and not database["ok"]:
        click.echo(f"Error: {database['error']}", err=True)
    for name, r in failed.items():
        click.echo(f"Error: account {name}: {r['error']}", err=True)
    if code:
        raise click.exceptions.Exit(code)
    click.echo(f"Config OK: {cfg.path}")
    for f in cfg.files[1:]:
        click.echo(f"  includes {f}")
    click.echo(f"Database:    {cfg.database}" + (f"; reached, {database['schema']}" if database else ""))
    click.echo(f"Attachments: {bucket.describe(cfg.attachments) if bucket else _in_database(cfg) or cfg.attachments}"
               + ("; reached" if online and bucket else ""))
    click.echo(f"Schedule:    poll {cfg.schedule['poll']}, overdue {cfg.schedule['overdue']}")
    click.echo(f"Monitoring:  {_monitoring_line(data['monitoring'])}")
    if cfg.metrics_textfile is not None:
        click.echo(f"Metrics:     {cfg.metrics_textfile}, written every {cfg.schedule['metrics']} by the daemon")
    else:
        click.echo("Metrics:     no textfile ('mail2ticket status --prometheus' prints them)")
    click.echo(f"Accounts:    {len(cfg.accounts)}")
    for a in data["accounts"]:
        state = "enabled" if a["enabled"] else "disabled"
        line = f"  {a['name']} <{a['email']}> {state}: {a['imap']}; SMTP {a['smtp'] or 'none'}"
        if a["name"] in checked:
            line += f"; online: all {checked[a['name']]['checks']} checks passed"
        click.echo(line)
    if data["hooks"]:
        click.echo("Hooks:       " + "; ".join(f"{h['name']} ({h['action']}: {', '.join(h['events'])})"
                                               for h in data["hooks"]))


def _in_database(cfg) -> str | None:
    """Where attachments go with a PostgreSQL database and no location (tickets/blobs.py), or None."""
    if not cfg.attachments_in_database:
        return None
    from mail2ticket.tickets.pg import redact

    return f"{redact(cfg.database_url)} table attachment_blobs (staging {cfg.attachments})"


def _database_check(cfg) -> dict:
    """--online with a PostgreSQL database: connect as every command does (the password chain)
    and read the schema's version, changing nothing. ok, schema (in words), error (one line),
    exit_code (6 unreachable, 4 sign-in refused or no password, 3 otherwise)."""
    from mail2ticket.accounts.storage import database_password
    from mail2ticket.errors import (
        EXIT_AUTH,
        EXIT_CONFIG,
        EXIT_NETWORK,
        ConfigError,
        Mail2TicketError,
        TempFailError,
    )
    from mail2ticket.tickets import pg_schema
    from mail2ticket.tickets.pg import open_pg, redact

    try:
        db = open_pg(cfg.database_url, busy_timeout_ms=5000, password=lambda: database_password(cfg),
                     ensure_schema=False)
    except Mail2TicketError as exc:
        code = EXIT_NETWORK if isinstance(exc, TempFailError) else EXIT_AUTH if isinstance(exc, ConfigError) \
            else exc.exit_code
        return {"ok": False, "schema": None, "error": exc.one_line(), "exit_code": code}
    try:
        schema, usable = pg_schema.describe(db)
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        return {"ok": False, "schema": None, "error": f"database {redact(cfg.database_url)}: {text}",
                "exit_code": EXIT_CONFIG}
    finally:
        db.close()
    if not usable:
        return {"ok": False, "schema": schema, "error": f"database {redact(cfg.database_url)}: {schema}",
                "exit_code": EXIT_CONFIG}
    return {"ok": True, "schema": schema, "error": None, "exit_code": 0}


def _bucket_check(cfg) -> list[str]:
    """--online with an s3:// location: reach the bucket once (a problem line when it fails)."""
    from mail2ticket.accounts.storage import attachment_store
    from mail2ticket.errors import Mail2TicketError

    try:
        attachment_store(cfg).check()
    except Mail2TicketError as exc:
        return [exc.one_line()]
    return []


def _monitoring_line(monitoring: dict) -> str:
    """'on, custom formats: backupcheck; off for: people' (docs/monitoring.md)."""
    line = "on" if monitoring["enabled"] else "off"
    if monitoring["formats"]:
        line += f", custom formats: {', '.join(monitoring['formats'])}"
    if monitoring["accounts_on"]:
        line += f"; on for: {', '.join(monitoring['accounts_on'])}"
    if monitoring["accounts_off"]:
        line += f"; off for: {', '.join(monitoring['accounts_off'])}"
    if monitoring.get("on_recovery", "close") != "close":  # the defaults go unsaid
        line += f"; on recovery: {monitoring['on_recovery']}"
    if monitoring.get("flap_window", 3600) != 3600:
        from mail2ticket.config.periods import human_period

        line += f"; flap window: {human_period(monitoring['flap_window'])}"
    return line


def _online_check(account: Account) -> dict:
    """accounts test's step-by-step check (mail2ticket.accounts.diagnostics) of one account, as data."""
    from mail2ticket.accounts.credentials import sign_in_secret
    from mail2ticket.accounts.diagnostics import check_account
    from mail2ticket.errors import Mail2TicketError

    try:
        count = check_account(account, sign_in_secret(account))
    except Mail2TicketError as exc:
        return {"ok": False, "checks": None, "error": exc.one_line(), "exit_code": exc.exit_code}
    return {"ok": True, "checks": count, "error": None, "exit_code": 0}


@config_group.command("path")
@click.pass_obj
def config_path(app):
    """Print the path of the config file in use.

    \b
    Example:
      $EDITOR "$(mail2ticket config path)"
    """
    click.echo(str(app.config(must_exist=False).path))


def register(cli: click.Group) -> None:
    cli.add_command(config_group)
