"""Commands that manage mailboxes: add-account, accounts ..., providers."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from mail2ticket.cli.output import is_tty, json_option, print_json, print_table
from mail2ticket.config.model import Account
from mail2ticket.errors import Mail2TicketError

# Each command imports what it needs inside it: every command module loads at each start-up
# (cli.COMMAND_MODULES), and a command's work must not slow the others' start.


def read_password(password_stdin: bool, prompt: str = "App password") -> str:
    """From stdin (--password-stdin) or a hidden prompt; never from argv."""
    if password_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise click.UsageError("--password-stdin was given but standard input was empty")
        return value
    if not sys.stdin.isatty():
        raise click.UsageError(
            "no terminal to ask for the password: pipe it in with --password-stdin"
        )
    return click.prompt(prompt, hide_input=True)


def read_line(prompt: str) -> str:
    """One line from the terminal, or from standard input when it is not a terminal."""
    if sys.stdin.isatty():
        return click.prompt(prompt)
    click.echo(f"{prompt}: ", err=True, nl=False)
    return sys.stdin.readline().strip()


def verify_account(account: Account, password: str, *, echo=None) -> int:
    """Check the account step by step (mail2ticket.accounts.diagnostics); raise at the first failure."""
    from mail2ticket.accounts.diagnostics import check_account

    report = (lambda step, detail: echo(f"ok  {step}: {detail}")) if echo else None
    return check_account(account, password, report)


def first_import(account: Account, secret: str, since=None) -> tuple[int, str | None]:
    """How many messages the first poll of ``account`` would import (from ``since`` on), and the
    day the oldest of them arrived (YYYY-MM-DD), or None when there are none."""
    from mail2ticket.accounts.credentials import imap_mailbox

    with imap_mailbox(account, secret) as box:
        box.select(account.folder)
        uids = box.new_uids(0, since)
        if not uids:
            return 0, None
        data = box.client.fetch([uids[0]], ["INTERNALDATE"]).get(uids[0], {})
        arrived = data.get(b"INTERNALDATE")
        return len(uids), arrived.date().isoformat() if arrived else None


def _ask_since(account: Account, secret: str, count: int, oldest: str | None):
    """On a terminal: offer to import only the mail from a date on. The date, or None for all."""
    from datetime import date

    click.echo(
        f"The first poll would import all {count} messages in {account.folder} as tickets"
        + (f" (the oldest from {oldest})." if oldest else "."),
        err=True,
    )
    while True:
        answer = click.prompt(
            f"Import mail from which date on? YYYY-MM-DD, or Enter for all {count}",
            default="", show_default=False, err=True,
        ).strip()
        if not answer:
            return None
        try:
            since = date.fromisoformat(answer)
        except ValueError:
            click.echo(f"{answer!r} is not a date such as 2026-01-31.", err=True)
            continue
        count, _ = first_import(account, secret, since)
        click.echo(f"From {since} on: {count} messages.", err=True)
        return since


def _rerun_hint(hint: str | None, name: str) -> str:
    """The hint of a refused sign-in during add-account: the account does not exist yet, so
    'accounts set-password' cannot help; add-account must be run again."""
    import re

    rest = re.sub(r"\(?(then run )?'?mail2ticket accounts set-password \S+?'?(\)|(?=\s|$))", "", hint or "")
    rest = re.sub(r";\s*\(", " (", " ".join(rest.split())).strip(" ;")
    rerun = f"nothing was saved: run 'mail2ticket add-account {name} ...' again with the right password"
    return f"{rest}; {rerun}" if rest else rerun


def show_preset_steps(preset, err: bool = True) -> None:
    """What to do at the provider before the password (or sign-in) is asked for."""
    if not preset:
        return
    click.echo(f"{preset.title}: sign in with {', '.join(preset.sign_in).replace('_', ' ')}; "
               f"username: {preset.username}.", err=err)
    for number, step in enumerate(preset.steps, 1):
        click.echo(f"  {number}. {step}", err=err)
    if preset.docs:
        click.echo(f"  (settings checked against {preset.docs})", err=err)


@click.command("add-account")
@click.argument("name")
@click.option("--email", required=True, help="The mailbox's e-mail address.")
@click.option("--username", help="Login name, if not the e-mail address.")
@click.option("--provider", help="Provider preset that fills hosts and ports (see 'mail2ticket providers').")
@click.option("--imap-host")
@click.option("--imap-port", type=int)
@click.option("--imap-security", type=click.Choice(["tls", "starttls"]))
@click.option("--smtp-host")
@click.option("--smtp-port", type=int)
@click.option("--smtp-security", type=click.Choice(["tls", "starttls"]))
@click.option("--folder", default="INBOX", show_default=True, help="The folder to import from.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="Extra CA bundle to trust (private servers).")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]),
              help="Import only mail from this date on (YYYY-MM-DD). Without it, add-account says how many "
              "messages the first poll would import, and asks for a date on a terminal.")
@click.option("--after-import", default="seen", show_default=True,
              help='What to do with a message on the server once it is stored: "seen" (flag it \\Seen), '
              '"none" (leave it as it is), "delete", "archive" (the folder the server marks \\Archive, else \\All) or '
              '"move:FOLDER".')
@click.option("--disabled", is_flag=True, help="Write the account but do not poll it yet.")
@click.option("--password-stdin", is_flag=True, help="Read the app password from standard input.")
@click.option("--no-verify", is_flag=True, help="Save without logging in to IMAP and SMTP first.")
@click.option("--oauth", is_flag=True, help="Sign in with OAuth2 (Microsoft, Google) instead of a password.")
@click.option("--oauth-client-id", help="The client (application) id you registered (see docs/providers.md).")
@click.option("--oauth-tenant", help="Microsoft Entra tenant: organizations, consumers, or your tenant id.")
@click.option("--oauth-token-url", help="Token endpoint, for a provider without a preset.")
@click.option("--oauth-device-url", help="Device-authorization endpoint, for a provider without a preset.")
@click.option("--oauth-authorize-url", help="Authorization endpoint, for a provider without a preset.")
@click.option("--oauth-scopes", help="Space-separated scopes, if not the preset's.")
@click.pass_obj
def add_account(app, name, email, username, provider, imap_host, imap_port, imap_security, smtp_host,
                smtp_port, smtp_security, folder, ca_file, since, after_import, disabled, password_stdin,
                no_verify, oauth, oauth_client_id, oauth_tenant, oauth_token_url, oauth_device_url,
                oauth_authorize_url, oauth_scopes):
    """Register a mailbox: check it, keep its password in the keyring, write it to the config.

    The account is written to accounts.d/NAME.toml beside the main config (which is created
    if missing), so the main file and its comments are never rewritten. The password goes
    to the OS keyring only, never into a file.

    \b
    Examples:
      mail2ticket add-account support --email support@example.com --provider gmail
      echo "$APP_PASSWORD" | mail2ticket add-account help --email help@example.org \\
          --imap-host mail.example.org --smtp-host mail.example.org --password-stdin
      mail2ticket add-account desk --email desk@contoso.com --provider microsoft365 \\
          --oauth --oauth-client-id 00000000-0000-0000-0000-000000000000
    """
    import os

    from mail2ticket.accounts.secrets import store_password
    from mail2ticket.config.accounts import build_account
    from mail2ticket.config.files import write_account
    from mail2ticket.config.providers import get_preset

    cfg = app.config(must_exist=False)
    if any(a.name == name for a in cfg.accounts):
        raise click.UsageError(
            f"an account named {name!r} exists already: choose another name, or change it with "
            f"'mail2ticket accounts set-password {name}' / remove it with 'mail2ticket accounts remove {name}'"
        )
    preset = None
    if provider:
        try:
            preset = get_preset(provider)
        except KeyError:
            from mail2ticket.config.providers import PRESETS

            raise click.BadParameter(
                f"unknown provider {provider!r}; known: {', '.join(PRESETS)}, or give --imap-host", param_hint="--provider"
            ) from None
    elif not imap_host:
        raise click.UsageError("give --provider or --imap-host (and --smtp-host)")
    values = {
        "name": name,
        "email": email,
        "username": username,
        "provider": preset.name if preset else None,
        "imap_host": imap_host,
        "imap_port": imap_port,
        "imap_security": imap_security,
        "smtp_host": smtp_host,
        "smtp_port": smtp_port,
        "smtp_security": smtp_security,
        "folder": folder if folder != "INBOX" else None,
        "ca_file": os.path.abspath(ca_file) if ca_file else None,
        "since": since.date() if since else None,
        "after_import": after_import if after_import != "seen" else None,
        "enabled": False if disabled else None,
        "added_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    if oauth:
        if preset and not preset.oauth and not oauth_token_url:
            raise click.UsageError(f"{preset.title} offers no OAuth2 sign-in here; leave out --oauth")
        if not oauth_client_id:
            raise click.UsageError(
                "--oauth needs --oauth-client-id: register an application first (docs/providers.md)"
            )
        values.update(
            auth="oauth2", oauth_client_id=oauth_client_id, oauth_tenant=oauth_tenant,
            oauth_token_url=oauth_token_url, oauth_device_url=oauth_device_url,
            oauth_authorize_url=oauth_authorize_url, oauth_scopes=oauth_scopes,
        )
        if preset and preset.oauth and preset.oauth.needs_client_secret:
            values["oauth_client_secret"] = read_line("Client secret of the Desktop app (Google Cloud console)")
    elif preset and preset.sign_in == ("oauth2",):
        raise click.UsageError(
            f"{preset.title} accepts no passwords for IMAP/SMTP: add --oauth and --oauth-client-id "
            "(see docs/providers.md)"
        )
    account = build_account(cfg.path, 0, {k: v for k, v in values.items() if v is not None})
    show_preset_steps(preset)
    if oauth:
        from mail2ticket.accounts import oauth as oauth2

        tokens = oauth2.sign_in(account, lambda m: click.echo(m, err=True), read_line)
        secret, refresh = tokens.access_token, tokens.refresh_token
    else:
        secret = read_password(password_stdin)
    first = None  # (messages the first poll imports, day the oldest arrived)
    if not no_verify:
        from mail2ticket.errors import AuthError

        # A refused password: on a terminal, ask again (three tries in all); otherwise say that
        # nothing was saved and to run add-account again ('accounts set-password' has no account).
        tries = 3 if not oauth and not password_stdin and sys.stdin.isatty() else 1
        for attempt in range(1, tries + 1):
            try:
                count = verify_account(account, secret, echo=lambda m: click.echo(m, err=True))
                break
            except AuthError as exc:
                if attempt == tries:
                    raise AuthError(str(exc), _rerun_hint(exc.hint, name)) from None
                click.echo(f"Sign-in refused: {exc} Try again ({attempt + 1} of {tries}).", err=True)
                secret = read_password(False)
        click.echo(f"All {count} checks passed.", err=True)
        try:
            first = first_import(account, secret, values["since"])
        except (Mail2TicketError, OSError) as exc:
            click.echo(f"Could not count the messages in {account.folder}: {exc}", err=True)
        if first and first[0] and not values["since"] and not password_stdin and sys.stdin.isatty():
            values["since"] = _ask_since(account, secret, *first)
            first = None  # said already
    if oauth:
        from mail2ticket.accounts.secrets import store_token

        store_token(name, refresh)
        kept = "OAuth2 refresh token stored in the keyring"
    else:
        store_password(name, secret)
        kept = "password stored in the keyring"
    path = write_account(cfg, values)
    click.echo(f"Account {name!r} saved to {path}; {kept}.")
    if first is not None:
        count, oldest = first
        if values["since"]:
            click.echo(f"The first poll will import {count} messages in {account.folder} "
                       f"(from {values['since']} on).", err=True)
        elif count:
            click.echo(
                f"The first poll will import all {count} messages in {account.folder} as tickets"
                + (f" (the oldest from {oldest})" if oldest else "") + ". To import only recent mail, edit "
                f"{path} before the next poll and add a line: since = YYYY-MM-DD. Or, after the poll, "
                f"close the old ones: mail2ticket tickets close --account {name} --before YYYY-MM-DD --yes",
                err=True,
            )


@click.group("accounts")
def accounts_group():
    """List, check and manage the configured mailboxes."""


# Config values that may hold a secret (a client secret; a command line that may carry a password
# or a token): shown as set, never in clear (issue 13.10). Read them in the account's file.
HIDDEN_KEYS = ("oauth_client_secret", "password_command")
HIDDEN = "(hidden)"
# Keys that apply only to mailboxes read over IMAP, and those that apply only to polled sources.
IMAP_ONLY = ("imap_host", "imap_port", "imap_security", "folder", "push", "batch_size")
POLLED_ONLY = ("since", "after_import", "poll", "path")


def _applicable(row: dict) -> dict:
    """The keys of an account that apply to it, for people: no oauth_* keys on a password account,
    no IMAP keys on a Maildir or pipe account, no unset (empty) values."""
    out = {}
    for key, value in row.items():
        if value is None or value == "" or value == []:
            continue
        if key.startswith("oauth_") and row.get("auth") != "oauth2":
            continue
        if key in IMAP_ONLY and row.get("source") != "imap":
            continue
        if key in POLLED_ONLY and row.get("source") == "pipe":
            continue
        if key == "path" and row.get("source") != "maildir":
            continue
        out[key] = value
    return out


def _account_rows(app):
    from mail2ticket.tickets.db import account_status

    cfg = app.config()
    status = account_status(app.db) if cfg.database_url or cfg.database.exists() else {}
    out = []
    for a in cfg.accounts:
        d = a.to_dict()
        for key in HIDDEN_KEYS:
            if d.get(key):
                d[key] = HIDDEN
        st = status.get(a.name, {})
        d["last_poll_at"] = st.get("last_poll_at")
        d["last_result"] = st.get("last_result")
        d["last_error"] = st.get("last_error")
        out.append(d)
    return out


@accounts_group.command("list")
@json_option
@click.pass_obj
def accounts_list(app, as_json):
    """List the accounts of the config, with their servers and whether they are polled.

    \b
    Example:
      mail2ticket accounts list --json
    """
    rows = _account_rows(app)
    if as_json:
        print_json(rows)
        return
    print_table(
        [
            [r["name"], r["email"], "yes" if r["enabled"] else "no", r["source"],
             f"{r['imap_host']}:{r['imap_port']}" if r["source"] == "imap" else r["path"],
             r["folder"], r["last_result"] or "never polled"]
            for r in rows
        ],
        ["name", "email", "enabled", "source", "server", "folder", "last poll"],
        fit=("shrink last poll 20", "hide source", "hide folder", "shrink email 24", "shrink server 20",
             "shrink last poll 12", "shrink email 16", "hide server"),
    )


@accounts_group.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def accounts_show(app, name, as_json):
    """Show one account's settings and health.

    Only the settings that apply to the account are shown (no OAuth2 keys on a
    password account, no IMAP keys on a Maildir account, nothing unset); --json
    has every key. A client secret and a password_command are shown as
    "(hidden)": read them in the account's file (defined_in).

    \b
    Examples:
      mail2ticket accounts show support
      mail2ticket accounts show support --json | jq .last_error
    """
    app.config().account(name)
    row = next(r for r in _account_rows(app) if r["name"] == name)
    if as_json:
        print_json(row)
        return
    shown = _applicable(row)
    shown.setdefault("last_result", "never polled")
    for key, value in shown.items():
        click.echo(f"{key:>18}: {value}")


@accounts_group.command("test")
@click.argument("name")
@click.option("-v", "--verbose", is_flag=True, help="Show each step as it passes.")
@click.pass_obj
def accounts_test(app, name, verbose):
    """Check an account step by step, stopping at the first failure with what to do.

    The steps: DNS, TCP connect, TLS handshake and certificate, IMAP capabilities, sign-in,
    the folder, the after_import "move:" folder (naming the folders the server has when it is
    missing), then SMTP: DNS, connect, EHLO, STARTTLS, AUTH. Exits non-zero on a failure.

    \b
    Example:
      mail2ticket accounts test support -v
    """
    from mail2ticket.accounts.credentials import sign_in_secret

    account = app.config().account(name)
    try:
        password = sign_in_secret(account)
    except Mail2TicketError as exc:
        raise type(exc)(f"secret: {exc}", exc.hint) from None
    count = verify_account(account, password, echo=click.echo if verbose else None)
    click.echo(f"Account {name!r}: all {count} checks passed (IMAP and SMTP sign-in work).")


@accounts_group.command("sign-in")
@click.argument("name")
@click.option("--no-verify", is_flag=True, help="Store the new sign-in without checking it first.")
@click.pass_obj
def accounts_sign_in(app, name, no_verify):
    """Sign an OAuth2 account in again (after its grant expired or was revoked).

    \b
    Example:
      mail2ticket accounts sign-in desk
    """
    from mail2ticket.accounts import oauth
    from mail2ticket.accounts.secrets import store_token

    account = app.config().account(name)
    if account.auth != "oauth2":
        raise click.UsageError(
            f"account {name!r} signs in with a password: use 'mail2ticket accounts set-password {name}'"
        )
    oauth.forget(name)
    tokens = oauth.sign_in(account, lambda m: click.echo(m, err=True), read_line)
    if not no_verify:
        verify_account(account, tokens.access_token)
    store_token(name, tokens.refresh_token)
    click.echo(f"Account {name!r} signed in; OAuth2 refresh token stored in the keyring.")


def _set_enabled(app, name: str, enabled: bool) -> None:
    from mail2ticket.config.files import update_account

    path = update_account(app.config(), name, {"enabled": None if enabled else False})
    click.echo(f"Account {name!r} {'enabled' if enabled else 'disabled'} ({path}).")


@accounts_group.command("enable")
@click.argument("name")
@click.pass_obj
def accounts_enable(app, name):
    """Switch polling on for an account.

    \b
    Example:
      mail2ticket accounts enable support
    """
    _set_enabled(app, name, True)


@accounts_group.command("disable")
@click.argument("name")
@click.pass_obj
def accounts_disable(app, name):
    """Switch polling off for an account (its tickets stay).

    \b
    Example:
      mail2ticket accounts disable support
    """
    _set_enabled(app, name, False)


@accounts_group.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--no-verify", is_flag=True, help="Store without logging in first.")
@click.pass_obj
def accounts_set_password(app, name, password_stdin, no_verify):
    """Replace the password of an account in the keyring (after checking it works).

    \b
    Examples:
      mail2ticket accounts set-password support
      echo "$APP_PASSWORD" | mail2ticket accounts set-password support --password-stdin
    """
    from mail2ticket.accounts.secrets import store_password

    account = app.config().account(name)
    if account.auth == "oauth2":
        raise click.UsageError(f"account {name!r} signs in with OAuth2: use 'mail2ticket accounts sign-in {name}'")
    password = read_password(password_stdin)
    if not no_verify:
        verify_account(account, password)
    store_password(name, password)
    click.echo(f"Password of account {name!r} updated in the keyring.")


@accounts_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def accounts_remove(app, name, yes):
    """Remove an account's entry and its password from the keyring (tickets are kept).

    The account's file is deleted when it holds only that account; in a file with several
    [[accounts]] only that entry (and the comment right above it) is cut out, and the other
    accounts, their comments and their passwords stay.

    \b
    Example:
      mail2ticket accounts remove support --yes
    """
    from mail2ticket.config.files import own_account_file
    from mail2ticket.service.accounts import remove_account

    cfg = app.config()
    src = own_account_file(cfg, name, "remove")
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("confirm with --yes when not on a terminal")
        click.confirm(f"Remove account {name!r} ({src}) and its password?", abort=True)
    deleted = remove_account(cfg, name)
    click.echo(f"Account {name!r} removed" + ("; its secret deleted from the keyring." if deleted else "."))


@accounts_group.command("rename")
@click.argument("old")
@click.argument("new")
@click.pass_obj
def accounts_rename(app, old, new):
    """Rename an account: its file, its keyring entries and its name on tickets and history.

    The database is changed in one transaction; tickets, messages and the import ledger keep
    pointing at the account, so nothing is imported twice.

    \b
    Example:
      mail2ticket accounts rename support helpdesk
    """
    from mail2ticket.service.accounts import rename_account

    path = rename_account(app.config(), app.db, old, new)
    click.echo(f"Account {old!r} renamed to {new!r} ({path}).")


@click.command("providers")
@json_option
def providers(as_json):
    """List the provider presets: servers, ports, TLS modes and how to sign in.

    \b
    Example:
      mail2ticket providers --json
    """
    from mail2ticket.config.providers import PRESETS

    if as_json:
        print_json([p.to_dict() for p in PRESETS.values()])
        return
    print_table(
        [
            [p.name, f"{p.imap_host}:{p.imap_port} ({p.imap_security})",
             f"{p.smtp_host}:{p.smtp_port} ({p.smtp_security})", ", ".join(p.sign_in)]
            for p in PRESETS.values()
        ],
        ["name", "IMAP", "SMTP", "sign-in"],
    )
    if is_tty():
        click.echo("Details: mail2ticket providers --json")


def register(cli: click.Group) -> None:
    cli.add_command(add_account)
    cli.add_command(accounts_group)
    cli.add_command(providers)

