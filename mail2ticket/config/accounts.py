"""The [[accounts]] table: its keys, provider presets filled in, OAuth2 endpoints, one Account each."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Any

from mail2ticket.config.checks import (
    REQUIRED,
    check_schedule,
    check_table,
    is_bool,
    is_date,
    is_int,
    is_str,
    is_str_or_list,
    parse_size,
)
from mail2ticket.config.model import Account
from mail2ticket.config.providers import PRESETS, find_preset, get_preset
from mail2ticket.config.storage import DATABASE_SECRET_NAME, SECRET_NAME
from mail2ticket.errors import ConfigError

ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


SECURITY_MODES = ("tls", "starttls", "none")


ACCOUNT_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (is_str, REQUIRED, "a short name of letters, digits, '.', '_' or '-'"),
    "email": (is_str, REQUIRED, "an e-mail address"),
    "username": (is_str, None, "the IMAP/SMTP login (defaults to email)"),
    "provider": (is_str, None, "a provider preset name (see 'mail2ticket providers')"),
    "source": (is_str, "imap", '"imap", "maildir" or "pipe" (mail arrives only by \'mail2ticket ingest\')'),
    "path": (is_str, None, "the Maildir path (source = \"maildir\")"),
    "imap_host": (is_str, None, "a host name"),
    "imap_port": (is_int, None, "a port number"),
    "imap_security": (is_str, None, '"tls", "starttls" or "none"'),
    "smtp_host": (is_str, None, "a host name"),
    "smtp_port": (is_int, None, "a port number"),
    "smtp_security": (is_str, None, '"tls", "starttls" or "none"'),
    "allow_insecure": (is_bool, False, "true or false"),
    "folder": (is_str, "INBOX", "an IMAP folder name"),
    "enabled": (is_bool, True, "true or false"),
    "ca_file": (is_str, None, "a path to a PEM CA bundle"),
    "since": (is_date, None, "a date such as 2026-01-31"),
    "after_import": (is_str, "seen", '"seen", "none", "delete", "archive" or "move:FOLDER"'),
    "poll": (is_str, None, 'a schedule such as "*/5" or "10m"'),
    "push": (is_bool, False, "true or false"),
    "password_command": (is_str, None, "a shell command that prints the password"),
    "acknowledge": (is_bool, True, "true or false"),
    "max_message_size": (is_str, None, 'a size such as "50MB"'),
    "timeout": (is_int, 60, "seconds"),
    "batch_size": (is_int, 100, "a number of messages"),
    "added_at": (is_str, None, "when the account was added (ISO 8601); older mail gets no acknowledgement"),
    # Sign-in (docs/providers.md): a password / app password, or OAuth2 with SASL XOAUTH2.
    "auth": (is_str, "password", '"password" or "oauth2"'),
    "smtp_username": (is_str, None, "the SMTP login, if not the IMAP one (iCloud: the full address)"),
    "oauth_client_id": (is_str, None, "the client (application) id registered with the provider"),
    "oauth_client_secret": (is_str, None, "the client secret, where the provider needs one (Google)"),
    "oauth_tenant": (is_str, None, 'a Microsoft Entra tenant: "organizations", "consumers" or an id'),
    "oauth_authorize_url": (is_str, None, "an OAuth2 authorization endpoint URL"),
    "oauth_token_url": (is_str, None, "an OAuth2 token endpoint URL"),
    "oauth_device_url": (is_str, None, "an OAuth2 device-authorization endpoint URL"),
    "oauth_scopes": (is_str, None, "space-separated OAuth2 scopes"),
    "oauth_redirect_uri": (is_str, None, 'the redirect URI registered for the app (default "http://localhost")'),
    # Threading and replies (docs/conversations.md).
    "allow_anyone_by_tag": (is_bool, False, "true or false"),
    "reopen_on_reply": (is_bool, True, "true or false"),
    # RELIABILITY 40: the authserv-id of OUR mail server, whose Authentication-Results are trusted.
    "authserv_id": (is_str_or_list, None, 'the authserv-id of your own mail server, such as "mx.example.com"'),
    # Monitoring mail (docs/monitoring.md): false turns recognising it off for this account.
    "monitoring": (is_bool, None, "true or false (default: [monitoring] enabled)"),
    "monitoring_on_recovery": (is_str, None, '"close" or "mark" (default: [monitoring] on_recovery)'),
}


def account_name_problem(name: str) -> tuple[str, str] | None:
    """What is wrong with ``name`` as an account's name, and what to do; None if nothing.
    An account's password is the keyring entry and systemd credential of its name, so the names
    other secrets are kept under are not account names: the S3 secret key (config/storage.py)
    and a webhook's credential NAME.hook (accounts/secrets.py)."""
    if not ACCOUNT_NAME_RE.match(name):
        return f"{name!r} is not a valid account name", "use letters, digits, '.', '_' or '-' (at most 64)"
    if name == SECRET_NAME:
        return (f"{name!r} cannot be an account name: the attachment store's secret key is kept under it "
                "(keyring entry and systemd credential)", "choose another name")
    if name == DATABASE_SECRET_NAME:
        return (f"{name!r} cannot be an account name: the PostgreSQL database's password is kept under it "
                "(keyring entry and systemd credential)", "choose another name")
    if name.endswith(".hook"):
        return (f"{name!r} cannot be an account name: NAME.hook is a webhook's signing secret "
                "(systemd credential)", "choose a name that does not end in '.hook'")
    return None


def build_account(path: Path, index: int, data: Any) -> Account:

    label = f"accounts[{index}]"
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        label = f"accounts.{data['name']}"
    values = check_table(path, label, data, ACCOUNT_KEYS)
    name = values["name"]
    problem = account_name_problem(name)
    if problem:
        raise ConfigError(f"{path}: '{label}.name' = {problem[0]}", problem[1])
    if "@" not in values["email"]:
        raise ConfigError(f"{path}: '{label}.email' = {values['email']!r} is not an e-mail address")
    if values["provider"]:
        try:
            preset = get_preset(values["provider"])
        except KeyError:

            raise ConfigError(
                f"{path}: '{label}.provider' = {values['provider']!r} is not a known provider",
                f"expected one of: {', '.join(PRESETS)}",
            ) from None
        for key in ("imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security"):
            if values[key] is None:
                values[key] = getattr(preset, key)
    values["imap_security"] = values["imap_security"] or "tls"
    values["smtp_security"] = values["smtp_security"] or "starttls"
    for key in ("imap_security", "smtp_security"):
        if values[key] not in SECURITY_MODES:
            raise ConfigError(
                f"{path}: '{label}.{key}' = {values[key]!r} is not valid",
                'expected "tls" or "starttls" ("none" only with allow_insecure = true)',
            )
        if values[key] == "none" and not values["allow_insecure"]:
            raise ConfigError(
                f"{path}: '{label}.{key}' = \"none\" sends the password in clear text",
                'use "tls" or "starttls", or set allow_insecure = true for this account if you really must',
            )
    if values["source"] not in ("imap", "maildir", "pipe"):
        raise ConfigError(f"{path}: '{label}.source' must be \"imap\", \"maildir\" or \"pipe\"")
    if values["source"] == "maildir":
        if not values["path"]:
            raise ConfigError(f"{path}: '{label}.path' is required when source = \"maildir\"")
        values["path"] = str((path.parent / os.path.expanduser(values["path"])).resolve())
    elif values["source"] == "imap":
        if not values["imap_host"]:
            raise ConfigError(
                f"{path}: '{label}.imap_host' is required",
                "set imap_host (and imap_port), or a provider preset",
            )
        if values["imap_port"] is None:
            values["imap_port"] = 993 if values["imap_security"] == "tls" else 143
    if values["smtp_host"] and values["smtp_port"] is None:
        values["smtp_port"] = 465 if values["smtp_security"] == "tls" else 587
    after = values["after_import"]
    if after not in ("seen", "none", "delete", "archive") and not (
        after.startswith("move:") and len(after) > 5
    ):
        raise ConfigError(
            f"{path}: '{label}.after_import' = {after!r} is not valid",
            'expected "seen", "none", "delete", "archive" or "move:FOLDER"',
        )
    if after == "archive" and values["source"] != "imap":
        raise ConfigError(  # archive asks an IMAP server for its \Archive or \All folder
            f"{path}: '{label}.after_import' = \"archive\" needs an IMAP account",
            'use "move:Archive" for a Maildir',
        )
    if isinstance(values["since"], str):
        values["since"] = date.fromisoformat(values["since"])
    if values["max_message_size"] is not None:
        try:
            values["max_message_size"] = parse_size(values["max_message_size"])
        except ValueError:
            raise ConfigError(
                f"{path}: '{label}.max_message_size' = {values['max_message_size']!r} is not a size",
                'expected a size such as "50MB"',
            ) from None
    if values["ca_file"]:
        values["ca_file"] = str((path.parent / os.path.expanduser(values["ca_file"])).resolve())
    for key in ("poll",):
        if values[key]:
            check_schedule(path, f"{label}.{key}", values[key])
    if not values["username"] and values["provider"]:
        values["username"] = get_preset(values["provider"]).imap_username(values["email"])
        values["smtp_username"] = values["smtp_username"] or values["email"]
    values["username"] = values["username"] or values["email"]
    if values["monitoring_on_recovery"] not in (None, "close", "mark"):
        raise ConfigError(
            f"{path}: '{label}.monitoring_on_recovery' = {values['monitoring_on_recovery']!r} is not valid",
            '"close" closes the ticket of a problem that recovered, "mark" only marks it recovered',
        )
    if values["auth"] not in ("password", "oauth2"):
        raise ConfigError(
            f"{path}: '{label}.auth' = {values['auth']!r} is not valid", 'expected "password" or "oauth2"'
        )
    if values["auth"] == "oauth2":

        check_oauth_config(path, label, values)
    return Account(**values, defined_in=str(path))


def _preset_of(provider: str | None):

    preset = find_preset(provider)
    return preset.oauth if preset else None


def oauth_endpoints(values: dict[str, Any]) -> dict[str, Any]:
    """Endpoint settings of an account (dict of config keys): its own keys win over the preset's."""
    preset = _preset_of(values.get("provider"))
    tenant = values.get("oauth_tenant") or (preset.default_tenant if preset else None) or "common"

    def pick(key: str, attr: str):
        own = values.get(key)
        if own:
            return own
        value = getattr(preset, attr, None) if preset else None
        return value.replace("{tenant}", tenant) if isinstance(value, str) else value

    scopes = values.get("oauth_scopes")
    return {
        "token_url": pick("oauth_token_url", "token_url"),
        "authorize_url": pick("oauth_authorize_url", "authorize_url"),
        "device_url": pick("oauth_device_url", "device_url"),
        "scopes": tuple(scopes.split()) if scopes else (preset.scopes if preset else ()),
        "needs_secret": bool(preset and preset.needs_client_secret),
        "extra": preset.extra_auth_params if preset else (),
    }


def check_oauth_config(path: Path, label: str, values: dict[str, Any]) -> None:
    """Config validation for auth = "oauth2": a client id and somewhere to get tokens from."""
    where = oauth_endpoints(values)
    if not values.get("oauth_client_id"):
        raise ConfigError(
            f"{path}: '{label}.oauth_client_id' is required with auth = \"oauth2\"",
            "register an application with the provider (docs/providers.md) and set its client id",
        )
    if not where["token_url"] or not (where["device_url"] or where["authorize_url"]):
        raise ConfigError(
            f"{path}: '{label}' uses auth = \"oauth2\" but its provider has no OAuth2 endpoints",
            "use provider outlook, microsoft365, gmail or google-workspace, or set oauth_token_url "
            "and oauth_device_url or oauth_authorize_url",
        )
    if where["needs_secret"] and not values.get("oauth_client_secret"):
        raise ConfigError(
            f"{path}: '{label}.oauth_client_secret' is required for this provider",
            "copy the client secret of the Desktop app from the Google Cloud console",
        )
