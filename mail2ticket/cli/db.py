"""The 'db' commands: the database itself (moving a SQLite database to PostgreSQL)."""

from __future__ import annotations

import click

from mail2ticket.cli.output import json_option, print_json, print_table

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


@click.group("db")
def db_group():
    """The database: move a SQLite database to PostgreSQL."""


@db_group.command("copy")
@click.option("--to", "url", required=True, metavar="URL",
              help="The PostgreSQL database to fill: postgresql://user@host:5432/dbname (libpq syntax, "
                   "no password in it).")
@click.option("--password-command", metavar="COMMAND",
              help="A command that prints the PostgreSQL password (else the keyring entry or systemd "
                   "credential 'database', else libpq's PGPASSFILE/PGSERVICE).")
@click.option("--batch-rows", type=click.IntRange(1, 100_000), default=500, show_default=True,
              help="Rows per transaction (and at most about 32 MB of values per transaction).")
@click.option("--attachments", "attachments_mode", type=click.Choice(["auto", "keep", "into-database"]),
              default="auto", show_default=True,
              help="keep: attachments stay in their directory or bucket. into-database: the directory's "
                   "files are copied into the PostgreSQL table attachment_blobs, each SHA-256 checked. auto: "
                   "into-database when the config sets no [storage] attachments, else keep.")
@json_option
@click.pass_obj
def db_copy(app, url, password_command, batch_rows, attachments_mode, as_json):
    """Copy the whole SQLite database of the config into an empty PostgreSQL database.

    Every table is copied with its ids (tickets keep their numbers), the raw
    bytes of every message included, in batches of one transaction each. Then
    the number and the values of the rows of every table are compared, and the
    SHA-256 of every raw message as PostgreSQL stores it is checked. It prints
    the config change to make.

    \b
    Safe to stop and run again: an interrupted copy continues where it
    stopped, and copies no row twice. A PostgreSQL database that holds other
    data is refused. The daemon must be stopped first (it is refused while one
    runs on the database, and none can start during the copy); the copy reads
    one consistent snapshot, and says so if anything wrote to the SQLite
    database meanwhile (run it again, or stop what wrote).

    \b
    Attachments: with a PostgreSQL database and no [storage] attachments,
    they are kept in the database itself. So when the config sets no
    attachments (the default directory), --attachments auto copies the
    directory's files into the database (table attachment_blobs, each
    SHA-256 checked by PostgreSQL; the directory is left as it is). A
    directory or bucket the config names stays where it is (keep [storage]
    attachments as it is), unless --attachments into-database. The output
    says which happened.

    \b
    The password never goes on the command line (nor in the URL): it comes
    from the keyring entry 'database' ('keyring set mail2ticket database'),
    the systemd credential 'database', --password-command, or libpq's own
    PGPASSFILE / PGSERVICE.

    \b
    Exit codes: 0 copied and verified; 1 the verification found a difference;
    3 the URL or the target is refused; 75 a daemon runs on the database, the
    database changed during the copy, or the server could not be reached
    (run it again).

    \b
    Examples:
      systemctl stop mail2ticket
      mail2ticket db copy --to postgresql://mail2ticket@db.example.net/helpdesk
      mail2ticket db copy --to postgresql://mail2ticket@db.example.net/helpdesk --json
    """
    import dataclasses
    import sys

    from mail2ticket.accounts.storage import database_password  # noqa: I001  # the secret chain
    from mail2ticket.config.storage import DATABASE_SECRET_NAME, is_postgres
    from mail2ticket.errors import ConfigError, StoreError, TempFailError
    from mail2ticket.tickets.copy import open_snapshot
    from mail2ticket.tickets.db import open_db

    cfg = app.config()
    check_target_url(url, is_postgres, DATABASE_SECRET_NAME)
    into_database = attachments_mode == "into-database" or (attachments_mode == "auto" and not cfg.attachments_given)
    if into_database and cfg.object_store is not None:
        raise click.UsageError(f"--attachments into-database copies a directory; the attachments of {cfg.path} are "
                               f"in {cfg.object_store.url}: keep them there (--attachments keep)")
    if cfg.database_url is not None:
        raise ConfigError(f"the database of {cfg.path} is a PostgreSQL database already ({cfg.database_url})",
                          "db copy copies a SQLite database: run it with the config that names the .db file")
    if not cfg.database.exists():
        raise ConfigError(f"there is no database at {cfg.database}", "check [storage] database in the config")
    open_db(cfg.database).close()  # its schema up to date, as every command makes it
    lock = hold_daemon_lock(cfg.database)
    target_cfg = dataclasses.replace(cfg, database_url=url, database_password_command=password_command)
    target = open_db(url, password=lambda: database_password(target_cfg))
    progress = None
    if sys.stderr.isatty() and not as_json:
        def progress(table: str, done: int, total: int) -> None:
            click.echo(f"\r{table}: {done} of {total}\033[K", nl=False, err=True)
    src = open_snapshot(cfg.database)
    try:
        from mail2ticket.tickets.copy import copy_database

        result = copy_database(src, str(cfg.database.resolve()), target, batch_rows=batch_rows, progress=progress)
        blobs = copy_attachments(src, target_cfg, cfg.attachments) if into_database and result.verified else None
    finally:
        src.close()
        target.close()
        lock.close()
    if progress:
        click.echo("\r\033[K", nl=False, err=True)
    if as_json:
        change = {"database": url} if into_database or cfg.attachments_given else {
            "database": url, "attachments": str(cfg.attachments)}
        print_json({**result.as_dict(), "attachments": attachments_note(cfg, into_database, blobs),
                    "attachments_copy": blobs.as_dict() if blobs is not None else None,
                    "config_change": {"storage": change}})
    else:
        print_summary(cfg, url, result, into_database, blobs)
    if not result.verified:
        raise StoreError("the copy differs from the SQLite database (see above): it changed since an earlier run",
                         "stop everything that writes to the SQLite database, then copy into a new, empty "
                         "PostgreSQL database")
    if blobs is not None and not blobs.verified:
        raise StoreError(f"{len(blobs.missing)} attachment file(s) missing from {cfg.attachments}, "
                         f"{len(blobs.damaged) + len(blobs.damaged_in_database)} not matching their SHA-256 "
                         "(the first: " + (blobs.missing + blobs.damaged + blobs.damaged_in_database)[0] + ")",
                         "restore them from a backup and run db copy again, or keep the directory "
                         "(--attachments keep and [storage] attachments set to it)")
    if result.source_changed:
        raise TempFailError("the SQLite database changed during the copy (a poll or a command wrote to it)",
                            "stop what writes to it (daemon, cron polls, MTA delivery), then run db copy again")


def check_target_url(url: str, is_postgres, secret_name: str) -> None:
    """A postgresql:// URL without a password (a password on the command line is seen by every
    user of the host)."""
    from urllib.parse import parse_qs, urlsplit

    from mail2ticket.errors import ConfigError

    if not is_postgres(url):
        raise ConfigError(f"--to {url!r} is not a PostgreSQL URL", "expected postgresql://user@host:5432/dbname")
    parts = urlsplit(url)
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise ConfigError("--to holds a password: the command line is no place for it (every user sees it)",
                          f"remove it from the URL and run 'keyring set mail2ticket {secret_name}' (or use "
                          "--password-command, the systemd credential, or libpq's PGPASSFILE)")


def hold_daemon_lock(database):
    """The daemon's lock of the SQLite database, held for the copy: refused while a daemon runs,
    and no daemon starts until the copy ends."""
    from mail2ticket.errors import TempFailError
    from mail2ticket.service.daemon import DaemonError, acquire_lock

    try:
        return acquire_lock(database)
    except DaemonError:
        raise TempFailError(f"a mail2ticket daemon is running on {database}: mail it imports during the "
                            "copy would be missing from the copy",
                            "stop the daemon first (systemctl stop mail2ticket), then run db copy") from None


def copy_attachments(src, target_cfg, directory):
    """The directory's attachment files into the target's attachment_blobs (BlobCopy)."""
    import dataclasses

    from mail2ticket.tickets.blobs import BlobStore
    from mail2ticket.tickets.copy import attachment_files

    store = BlobStore(dataclasses.replace(target_cfg, attachments_in_database=True))
    try:
        return store.copy_directory(directory, attachment_files(src))
    finally:
        store.close()


def attachments_note(cfg, into_database: bool = False, blobs=None) -> str:
    if blobs is not None:
        return (f"attachments of {cfg.attachments} copied into the database's table attachment_blobs: "
                f"{blobs.copied} copied, {blobs.present} there already, each SHA-256 checked by PostgreSQL; "
                f"the directory is left where it is (remove it once satisfied)")
    if into_database:
        return f"attachments of {cfg.attachments} NOT copied (the copy was not verified)"
    where = cfg.object_store.url if cfg.object_store is not None else str(cfg.attachments)
    if not cfg.attachments_given:
        return (f"attachments stay in {where}: set [storage] attachments to it (without it, PostgreSQL keeps "
                "attachments in the database)")
    return f"attachments stay in {where}: keep [storage] attachments as it is"


def print_summary(cfg, url: str, result, into_database: bool = False, blobs=None) -> None:
    click.echo(f"{'Continued the copy of' if result.resumed else 'Copied'} {result.source} into {result.target}.")
    print_table([[t.name, t.source_rows, t.target_rows, t.copied, "" if t.ok else "DIFFERS"]
                 for t in result.tables], ["table", "rows (SQLite)", "rows (PostgreSQL)", "copied now", ""])
    if result.verified:
        click.echo(f"Verified: every table has the same rows on both (their number and their values); the "
                   f"{result.raw_checked} raw message(s) match their SHA-256.")
    else:
        differ = ", ".join(t.name for t in result.tables if not t.ok) or "none"
        click.echo(f"NOT verified: tables that differ: {differ}; {result.raw_mismatched} raw message(s) do not "
                   f"match their SHA-256, {result.raw_missing} are missing.")
    click.echo(f"The {attachments_note(cfg, into_database, blobs)}.")
    keep_dir = "" if into_database or cfg.attachments_given else f"    attachments = \"{cfg.attachments}\"\n"
    drop = "  (and remove 'attachments')" if into_database and cfg.attachments_given else ""
    click.echo(f"\nNow change [storage] in {cfg.path}:\n\n    [storage]\n    database = \"{url}\"{drop}\n{keep_dir}")
    click.echo("and give mail2ticket the database's password, one of: 'keyring set mail2ticket database' "
               "(as the service user), the systemd credential 'database', [storage] password_command, or "
               "libpq's PGPASSFILE. Then start the daemon (docs/storage.md, \"Moving to PostgreSQL\").")


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
