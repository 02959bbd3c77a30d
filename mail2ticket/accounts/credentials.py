"""The one place that yields what an account signs in with, and opens its connections.

A password account signs in with its password (accounts/secrets.py: keyring, systemd credential,
password_command); an ``auth = "oauth2"`` account with a fresh access token (accounts/oauth.py).
Every part that talks to a server (polls, push sessions, quarantine retries, the outbox, the
daemon's checks, ``accounts test``) gets its secret and its connection here.
"""

from __future__ import annotations

from mail2ticket.accounts.oauth import access_token
from mail2ticket.accounts.secrets import get_password
from mail2ticket.config.model import Account
from mail2ticket.transport.imap import Mailbox
from mail2ticket.transport.smtp import smtp_connect


def sign_in_secret(account: Account) -> str:
    """The password, or for ``auth = "oauth2"`` an access token (refreshed when it is due).

    SecretError names every source tried; AuthError when the OAuth2 sign-in must be redone."""
    if account.auth == "oauth2":

        return access_token(account)
    return get_password(account)


def imap_mailbox(account: Account, secret: str | None = None) -> Mailbox:
    """An IMAP mailbox of ``account``, not yet connected (``secret`` defaults to sign_in_secret)."""

    return Mailbox(account, sign_in_secret(account) if secret is None else secret)


def open_smtp(account: Account, connect=None):
    """An SMTP connection of ``account``, signed in (``connect`` defaults to smtp.smtp_connect)."""
    return (connect or smtp_connect)(account, sign_in_secret(account))
