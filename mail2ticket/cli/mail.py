"""Commands that move mail: poll, status, quarantine."""

from __future__ import annotations

from pathlib import Path

import click

from mail2ticket.cli.output import echo_fitted, json_option, print_json, print_table, shown_time
from mail2ticket.cli.params import TicketId

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.command("poll")
@click.argument("accounts", nargs=-1)
@json_option
@click.pass_obj
def poll(app, accounts, as_json):
    """Import new mail once from the enabled accounts (or those named), then exit.

    Each new message becomes a ticket or a follow-up; it is stored (raw bytes
    included) before it is marked on the server. Exits non-zero if any account
    failed (the others are still polled): with the cause's exit code when every
    failing account failed for the same cause (4 sign-in refused, 5 TLS, 6 server
    unreachable, 7 no password), else 1. Each failure is printed once. On a
    PostgreSQL database shared by daemons, an account a live daemon holds is
    skipped, and the line says so (docs/scaling.md).

    \b
    Examples:
      mail2ticket poll
      mail2ticket poll support sales
    """
    cfg = app.config()
    if accounts:
        selected = [cfg.account(name) for name in accounts]
    else:
        selected = [a for a in cfg.accounts if a.enabled]
        if not cfg.accounts:
            click.echo("No accounts configured: add one with 'mail2ticket add-account'.", err=True)
    results = _poll_saying_each_failure_once(cfg, app.db, selected)
    if as_json:
        print_json(
            [
                {"account": r.account, "ok": r.ok, "imported": r.imported, "followups": r.followups,
                 "duplicates": r.duplicates, "quarantined": r.quarantined, "error": r.error,
                 "exit_code": r.exit_code}
                for r in results
            ]
        )
    else:
        for r in results:
            if r.ok:
                click.echo(f"{r.account}: {r.stored} imported ({r.summary()})")
            else:
                click.echo(f"{r.account}: FAILED: {r.error}", err=True)
    raise click.exceptions.Exit(poll_exit_code(results))


def poll_exit_code(results) -> int:
    """0 when every account was polled; else the failing accounts' exit code when they all failed
    for the same cause (4 sign-in, 5 TLS, 6 network, 7 no password), 1 when the causes differ."""
    from mail2ticket.errors import common_exit_code

    return common_exit_code(r.exit_code for r in results if not r.ok)


def _poll_saying_each_failure_once(cfg, db, selected):
    """poll_once, without the poller's log line for a failed account: the summary says it."""
    import logging

    from mail2ticket.service.jobs import poll_once

    def drop(record: logging.LogRecord) -> bool:
        return not getattr(record, "account_failure", False)

    handlers = logging.getLogger("mail2ticket").handlers
    for handler in handlers:
        handler.addFilter(drop)
    try:
        return poll_once(cfg, db, selected)
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


@click.command("status")
@click.option(
    "--require-daemon/--no-daemon",
    default=None,
    help="--require-daemon: fail also when no daemon ever ran on this database (for monitoring "
    "a 'run' service from its first day). --no-daemon: ignore the daemon (polling from cron).",
)
@json_option
@click.option(
    "--prometheus",
    is_flag=True,
    help="Print the metrics in the Prometheus text format instead (docs/metrics.md); exits 0.",
)
@click.pass_obj
def status(app, require_daemon, as_json, prometheus):
    """Show whether the daemon runs and each account's health.

    For each account: enabled, schedule, last poll and its result, next poll,
    last error, messages imported.

    Exits 1 when an enabled account's last poll failed, or when the daemon that
    ran on this database is no longer running (stopped, or its heartbeat is
    older than a minute), so it can serve as a health check. A daemon that never
    started is shown but fails the check only with --require-daemon. An alert
    (a line starting with '!') says what else needs a look, e.g. a [metrics]
    textfile the daemon cannot write. Several daemons sharing a PostgreSQL
    database are listed each (host, pid, heartbeat age, accounts held; a stale
    one flagged), in --json as "daemons" (docs/scaling.md).

    \b
    --prometheus prints the metrics for Prometheus instead (mail2ticket_ prefix):
    per account the last successful poll, messages imported, failed polls by
    cause (auth, tls, connect, timeout, server, limit, local, other) and
    backoff; the outbox, quarantine and hook queue sizes and oldest ages;
    tickets not closed and overdue by priority; the daemon's heartbeat; the
    version. It exits 0 whatever the health (the values say it), and on a
    database not created yet prints the zeros of an empty one. The daemon
    writes the same to [metrics] textfile for node_exporter every [schedule]
    metrics (1m). Every metric and example alerting rules: docs/metrics.md.

    \b
    Examples:
      mail2ticket status
      mail2ticket status --json | jq .daemon.running
      mail2ticket status --require-daemon    # monitoring a 'mail2ticket run' service
      mail2ticket status --no-daemon         # polling from cron instead of 'run'
      mail2ticket status --prometheus        # the metrics, for a scrape or a textfile
    """
    from mail2ticket.service.status import prometheus_report, status_report

    if prometheus:
        if as_json:
            raise click.UsageError("--prometheus and --json are two formats: choose one")
        click.echo(prometheus_report(app.config(), app.db), nl=False)
        return
    report = status_report(app.config(), app.db, require_daemon=require_daemon)
    if as_json:
        print_json(report)
    else:
        d = report["daemon"]
        if d["running"]:
            echo_fitted(f"Daemon: running (pid {d['pid']} on {d['host']}, since {shown_time(d['started_at'])}, "
                        f"last heartbeat {shown_time(d['heartbeat_at'])})")
        elif d["state"] == "never started":
            echo_fitted("Daemon: not running (never started on this database; see 'mail2ticket run')")
        elif d["state"] == "stopped":
            echo_fitted(f"Daemon: not running (stopped {shown_time(d['stopped_at'])})")
        else:
            echo_fitted(f"Daemon: not running (no heartbeat since {shown_time(d['heartbeat_at'])}: "
                        f"pid {d['pid']} was killed or hung)")
        if len(report["daemons"]) > 1 or getattr(app.db, "engine", "sqlite") == "postgresql":
            for g in report["daemons"]:  # several daemons share the database (docs/scaling.md)
                flag = " STALE" if g["stale"] else (" stopping" if g["stopping"] else "")
                echo_fitted(f"  daemon pid {g['pid']} on {g['host']}{flag}: heartbeat {g['heartbeat_age_seconds']} s ago, "
                            f"{len(g['accounts'])} account(s): {', '.join(g['accounts']) or '-'}")
        rows = []
        for a in report["accounts"]:
            schedule = a["schedule"] + (" + push" if a["push"] else "")
            rows.append([
                a["name"], "yes" if a["enabled"] else "no", schedule, shown_time(a["last_poll_at"]),
                a["last_result"] or "never polled", shown_time(a["next_poll_at"]) or "-",
                a["imported_total"], a["last_error"] or "",
            ])
        # On a narrow terminal: the last error is cut (the alerts below say it in full), then the
        # columns a glance can do without go; each account stays one line.
        print_table(rows, ["account", "enabled", "schedule", "last poll", "result", "next poll",
                           "imported", "last error"],
                    row_styles=[None if a["enabled"] else "dim" for a in report["accounts"]],
                    fit=("shrink last error 20", "hide next poll", "hide enabled", "shrink result 20",
                         "hide schedule", "shrink last error 10", "hide imported", "shrink result 12",
                         "hide last error", "shrink account 12"))
        t = report["tickets"]
        echo_fitted(
            f"Tickets: {t['open']} open, {t['pending']} pending, {t['overdue']} overdue; "
            f"quarantine: {report['quarantine']} waiting"
        )
        for e in report["alerts"]:
            echo_fitted(f"! {e}")
    if not report["healthy"]:
        raise click.exceptions.Exit(1)


@click.group("quarantine")
def quarantine_group():
    """See and re-run messages that could not become tickets (kept raw)."""


@quarantine_group.command("list")
@click.option("--all", "include_resolved", is_flag=True, help="Include entries already resolved.")
@json_option
@click.pass_obj
def quarantine_list(app, include_resolved, as_json):
    """List quarantined messages and why they are there.

    \b
    Examples:
      mail2ticket quarantine list
      mail2ticket quarantine list --all --json
    """
    from mail2ticket.intake.quarantine import list_entries

    rows = list_entries(app.db, include_resolved=include_resolved)
    if as_json:
        print_json(rows)
        return
    print_table(
        [[r["id"], r["account"], r["reason"], r["size"], shown_time(r["created_at"]), r["error"]] for r in rows],
        ["id", "account", "reason", "bytes", "since", "error"],
        fit=("shrink error 30", "hide bytes", "hide account", "shrink error 16", "shrink reason 12"),
    )


@quarantine_group.command("show")
@click.argument("qid", type=TicketId("quarantine entry"))
@click.option("--raw", is_flag=True, help="Write the raw message to stdout (to save as .eml).")
@json_option
@click.pass_obj
def quarantine_show(app, qid, raw, as_json):
    """Show one quarantined message (or its raw bytes with --raw).

    \b
    Examples:
      mail2ticket quarantine show 12
      mail2ticket quarantine show 12 --raw > message.eml
    """
    from mail2ticket.intake.quarantine import get_entry, raw_of

    entry = get_entry(app.db, qid)
    if raw:
        data = raw_of(app.db, entry)
        import sys

        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if as_json:
        print_json(entry)
        return
    for key, value in entry.items():
        click.echo(f"{key:>16}: {'' if value is None else value}")


@quarantine_group.command("retry")
@click.argument("qids", type=TicketId("quarantine entry"), nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Retry every waiting entry.")
@click.pass_obj
def quarantine_retry(app, qids, retry_all):
    """Import quarantined messages again, once the cause is fixed (or the limit raised).

    \b
    Example:
      mail2ticket quarantine retry 12
    """
    from mail2ticket.intake.quarantine import list_entries, retry

    cfg = app.config()
    if retry_all:
        qids = [e["id"] for e in list_entries(app.db)]
    if not qids:
        raise click.UsageError("name entries to retry, or --all")
    failed = 0
    for qid in qids:
        entry = retry(cfg, app.db, qid)
        if entry["discarded_at"]:
            failed += 1
            click.echo(f"#{qid}: discarded; nothing to retry", err=True)
        elif entry["resolved_at"]:
            click.echo(f"#{qid}: imported as message {entry['resolved_message']}")
        else:
            failed += 1
            click.echo(f"#{qid}: still failing: {entry['error']}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


@quarantine_group.command("discard")
@click.argument("qids", type=TicketId("quarantine entry"), nargs=-1, required=True)
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the raw messages are kept (default: quarantine-discarded/ beside the database).")
@click.option("--no-export", is_flag=True, help="Keep no copy of the raw messages.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def quarantine_discard(app, qids, export_dir, no_export, yes):
    """Take messages that will never import out of the quarantine for good.

    Each message's raw bytes are first written to a file (mode 600) in the
    export directory, then removed from the database; the command says where,
    or that no copy is kept (--no-export, or a message that was never
    downloaded: it is still on the server). A discarded message no longer counts
    as waiting in 'status' and is never imported again. Asks for confirmation
    unless --yes (required when not on a terminal).

    \b
    Examples:
      mail2ticket quarantine discard 12
      mail2ticket quarantine discard 12 13 --yes --export-dir /var/tmp/bad-mail
    """
    import sys

    from mail2ticket.intake.quarantine import discard, get_entry

    entries = [get_entry(app.db, qid) for qid in dict.fromkeys(qids)]
    if export_dir is None and not no_export:
        export_dir = app.config().database.parent / "quarantine-discarded"
    if no_export:
        export_dir = None
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("confirm with --yes when not on a terminal")
        kept = f"a copy of each is kept in {export_dir}" if export_dir else "NO copy is kept"
        n = len(entries)
        click.confirm(f"Discard {n} quarantined message{'' if n == 1 else 's'} ({kept})?", abort=True)
    for entry in entries:
        done = discard(app.db, entry["id"], export_dir)
        if done["export_path"]:
            click.echo(f"#{entry['id']}: discarded; its raw bytes are kept in {done['export_path']}")
        elif entry["raw_sha256"] is None:
            click.echo(f"#{entry['id']}: discarded; no bytes kept: it was never downloaded and is still on "
                       f"the server (UID {entry['uid']} in {entry['folder']})")
        else:
            click.echo(f"#{entry['id']}: discarded; its raw bytes are not kept")


@quarantine_group.command("export")
@click.argument("qid", type=TicketId("quarantine entry"))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="The file to write ('-': standard output; default: quarantine-ID.eml here).")
@click.pass_obj
def quarantine_export(app, qid, output):
    """Write a quarantined message's raw bytes to a file (.eml), e.g. for a bug report.

    The file is created with mode 600 and never overwrites one that exists; the
    entry stays in the quarantine.

    \b
    Examples:
      mail2ticket quarantine export 12
      mail2ticket quarantine export 12 -o /tmp/bug-12.eml
    """
    from mail2ticket.intake.quarantine import get_entry, raw_of, write_private

    data = raw_of(app.db, get_entry(app.db, qid))
    if str(output) == "-":
        import sys

        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    path = output or Path(f"quarantine-{qid}.eml")
    write_private(path, data)
    click.echo(f"Quarantine entry #{qid} written to {path} ({len(data)} bytes).")


def register(cli: click.Group) -> None:
    cli.add_command(poll)
    cli.add_command(status)
    cli.add_command(quarantine_group)
