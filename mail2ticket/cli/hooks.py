"""The 'hooks' commands: see the hooks' queues, deliver failed events again, send a test event."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from mail2ticket.cli.output import json_option, print_json, print_table, shown_time

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.group("hooks")
def hooks_group():
    """Events sent to other tools: a command or a webhook per [[hooks]] entry (docs/hooks.md)."""


def _age(iso: str | None) -> int | None:
    if not iso:
        return None
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return max(0, int((datetime.now(UTC) - then).total_seconds()))


def _words(seconds: int | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@hooks_group.command("list")
@click.option("--all", "show_all", is_flag=True,
              help="Also list the queue's entries: waiting, failed and delivered (kept 7 days).")
@json_option
@click.pass_obj
def hooks_list(app, show_all, as_json):
    """List each hook with its queue: events pending and failed, the oldest pending one's
    age, and the last error.

    With --all, the queue's entries too (--json prints them under "deliveries"; without
    --all, the entries not delivered yet).

    \b
    Examples:
      mail2ticket hooks list
      mail2ticket hooks list --all --json
    """
    from mail2ticket.tickets.hookqueue import list_deliveries, per_hook

    cfg = app.config()
    counts = per_hook(app.db)
    hooks = []
    for hook in cfg.hooks:
        c = counts.get(hook.name, {})
        hooks.append({
            "name": hook.name,
            "events": list(hook.events),
            "action": "command" if hook.command else "url",
            "target": hook.action if hook.command else hook.url,
            "format": hook.format,
            "accounts": list(hook.accounts),
            "pending": c.get("pending") or 0,
            "failed": c.get("failed") or 0,
            "delivered": c.get("delivered") or 0,
            "oldest_pending_at": c.get("oldest_pending_at"),
            "oldest_pending_age_seconds": _age(c.get("oldest_pending_at")),
            "last_delivered_at": c.get("last_delivered_at"),
            "last_error": c.get("last_error"),
        })
    for name in sorted(set(counts) - {h.name for h in cfg.hooks}):  # removed from the config since
        c = counts[name]
        hooks.append({"name": name, "events": [], "action": None, "target": "(no longer in the config)",
                      "format": None, "accounts": [], "pending": c["pending"], "failed": c["failed"],
                      "delivered": c["delivered"], "oldest_pending_at": c["oldest_pending_at"],
                      "oldest_pending_age_seconds": _age(c["oldest_pending_at"]),
                      "last_delivered_at": c["last_delivered_at"], "last_error": c.get("last_error")})
    deliveries = list_deliveries(app.db, include_delivered=show_all)
    if as_json:
        print_json({"hooks": hooks, "deliveries": deliveries})
        return
    if not hooks:
        click.echo("No hooks: add [[hooks]] to the config (see docs/hooks.md).")
        return
    print_table(
        [[h["name"], ", ".join(h["events"]), h["target"], h["pending"], h["failed"],
          _words(h["oldest_pending_age_seconds"]), h["last_error"] or ""] for h in hooks],
        ["hook", "events", "target", "pending", "failed", "oldest", "last error"],
        fit=("shrink last error 24", "shrink events 24", "shrink target 24", "hide events", "hide target"),
    )
    if show_all:
        click.echo()
        if not deliveries:
            click.echo("The queue is empty.")
            return
        print_table(
            [[d["id"], d["hook"], d["event"], f"#{d['ticket_id']}" if d["ticket_id"] else "", d["status"],
              d["attempts"], shown_time(d["delivered_at"] or d["next_attempt_at"] or d["created_at"]),
              (d["last_error"] if d["status"] != "delivered" else d["last_result"]) or ""]
             for d in deliveries],
            ["id", "hook", "event", "ticket", "status", "tries", "time", "last answer"],
            fit=("shrink last answer 24", "hide tries", "hide time"),
        )


@hooks_group.command("retry")
@click.argument("target", required=False)
@click.pass_obj
def hooks_retry(app, target):
    """Deliver failed events again now: of one hook (NAME), one queue entry (ID, as in
    'hooks list --all'), or every event not delivered yet.

    Each gets a fresh count of attempts and is delivered at once; exits non-zero when
    any of them is still not delivered.

    \b
    Examples:
      mail2ticket hooks retry chat
      mail2ticket hooks retry 42
      mail2ticket hooks retry
    """
    from mail2ticket.outgoing.hooks import retry

    key = int(target.lstrip("#")) if target and target.lstrip("#").isdigit() else target
    rows = retry(app.config(), app.db, key)
    if not rows:
        click.echo("Nothing to deliver: no event is waiting or failed.")
        return
    not_delivered = 0
    for d in rows:
        if d["status"] == "delivered":
            click.echo(f"#{d['id']} {d['hook']} {d['event']}: delivered ({d['last_result']})")
        else:
            not_delivered += 1
            click.echo(f"#{d['id']} {d['hook']} {d['event']}: not delivered ({d['status']}): {d['last_error']}",
                       err=True)
    if not_delivered:
        raise click.exceptions.Exit(1)


@hooks_group.command("test")
@click.argument("name")
@json_option
@click.pass_obj
def hooks_test(app, name, as_json):
    """Send a sample event to the hook NAME now (not queued) and print what it answered:
    the HTTP status or the exit code, and the time taken.

    The sample is the first event the hook wants, about the newest ticket (or a
    made-up one), with "test": true. Exits 1 when the hook did not take it.

    \b
    Example:
      mail2ticket hooks test chat
    """
    from mail2ticket.outgoing.hooks import try_hook

    payload, attempt = try_hook(app.config(), app.db, name)
    if as_json:
        print_json({"hook": name, "ok": attempt.ok, "result": attempt.result, "error": attempt.error,
                    "seconds": round(attempt.seconds, 3), "payload": payload})
    elif attempt.ok:
        click.echo(f"{name}: delivered {payload['event']}: {attempt.line()}")
    else:
        click.echo(f"{name}: not delivered: {attempt.line()}", err=True)
    if not attempt.ok:
        raise click.exceptions.Exit(1)


@hooks_group.command("set-secret")
@click.argument("name")
@click.option("--secret-stdin", is_flag=True, help="Read the secret from standard input.")
@click.pass_obj
def hooks_set_secret(app, name, secret_stdin):
    """Keep the secret that signs the webhook NAME's events in the keyring.

    The receiver checks the X-Mail2ticket-Signature header (HMAC-SHA256 of the body)
    with the same secret. Without a keyring: a systemd credential NAME.hook or the
    hook's secret_command (docs/hooks.md).

    \b
    Examples:
      mail2ticket hooks set-secret chat
      openssl rand -hex 32 | tee /dev/stderr | mail2ticket hooks set-secret chat --secret-stdin
    """
    import sys

    from mail2ticket.accounts.secrets import store_hook_secret
    from mail2ticket.outgoing.hooks import hook_of

    hook = hook_of(app.config(), name)
    if hook.command:
        raise click.UsageError(f"hook {name!r} runs a command: only a webhook (url) is signed")
    if secret_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        secret = click.prompt("Signing secret", hide_input=True)
    else:
        raise click.UsageError("no terminal to ask for the secret: pipe it in with --secret-stdin")
    if not secret:
        raise click.UsageError("the secret is empty: nothing stored")
    store_hook_secret(name, secret)
    click.echo(f"Signing secret of hook {name!r} stored in the keyring.")


def register(cli: click.Group) -> None:
    cli.add_command(hooks_group)
