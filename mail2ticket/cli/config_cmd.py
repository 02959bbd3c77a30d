"""The 'config' commands: check a config and show where things are."""

from __future__ import annotations

import click

from mail2ticket.cli.output import json_option, print_json


@click.group("config")
def config_group():
    """Check the configuration and show what it resolves to."""


@config_group.command("check")
@json_option
@click.pass_obj
def config_check(app, as_json):
    """Validate the config (and the files it includes) and print what was found.

    Exits non-zero with one line naming the file, the key and what is expected
    when something is wrong.

    \b
    Example:
      mail2ticket --config /etc/mail2ticket/config.toml config check
    """
    cfg = app.config()
    data = {
        "config": str(cfg.path),
        "files": [str(f) for f in cfg.files],
        "database": str(cfg.database),
        "attachments": str(cfg.attachments),
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
    }
    if as_json:
        print_json(data)
        return
    click.echo(f"Config OK: {cfg.path}")
    for f in cfg.files[1:]:
        click.echo(f"  includes {f}")
    click.echo(f"Database:    {cfg.database}")
    click.echo(f"Attachments: {cfg.attachments}")
    click.echo(f"Schedule:    poll {cfg.schedule['poll']}, overdue {cfg.schedule['overdue']}")
    click.echo(f"Accounts:    {len(cfg.accounts)}")
    for a in data["accounts"]:
        state = "enabled" if a["enabled"] else "disabled"
        click.echo(f"  {a['name']} <{a['email']}> {state}: {a['imap']}; SMTP {a['smtp'] or 'none'}")


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
