"""Talk to an SMTP server: implicit TLS or STARTTLS with verified certificates, then AUTH."""

from __future__ import annotations

import logging
import smtplib
import ssl

from mail2ticket.config import Account
from mail2ticket.errors import AuthError, ConfigError, ServerError, TLSError
from mail2ticket.imap import describe_tls_error, network_error, tls_context

log = logging.getLogger(__name__)


def smtp_connect(
    account: Account, password: str, *, timeout: float | None = None, progress=None
) -> smtplib.SMTP:
    """A logged-in SMTP connection. Never authenticates over an unencrypted connection.

    ``progress(step, detail)``, if given, is called as each step passes (diagnostics).
    """
    progress = progress or (lambda _step, _detail: None)
    host, port, mode = account.smtp_host, account.smtp_port, account.smtp_security
    if not host or not port:
        raise ConfigError(
            f"account {account.name!r} has no smtp_host/smtp_port",
            "set them in the account, or use a provider preset",
        )
    ctx = tls_context(account.ca_file)
    timeout = timeout or account.timeout
    try:
        if mode == "tls":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ctx)
        else:
            conn = smtplib.SMTP(host, port, timeout=timeout)
    except ssl.SSLError as exc:
        raise describe_tls_error(exc, host, port) from None
    except OSError as exc:
        raise network_error(exc, host, port, "SMTP") from None
    try:
        progress("connect", f"{host}:{port}" + (" (TLS)" if mode == "tls" else ""))
        conn.ehlo()
        progress("ehlo", " ".join(sorted(conn.esmtp_features)))
        if mode == "starttls":
            if not conn.has_extn("starttls"):
                raise TLSError(
                    f"SMTP server {host}:{port} does not offer STARTTLS; refusing to send the password in clear",
                    'use smtp_security = "tls" (port 465) if the server supports it',
                )
            try:
                conn.starttls(context=ctx)
            except ssl.SSLError as exc:
                raise describe_tls_error(exc, host, port) from None
            conn.ehlo()  # what was said before TLS is forgotten
            progress("starttls", "TLS set up, certificate verified")
        elif mode == "none":
            log.warning("account %s: SMTP WITHOUT encryption (allow_insecure = true)", account.name)
        if not conn.has_extn("auth"):
            raise ServerError(
                f"SMTP server {host}:{port} offers no AUTH after {'TLS' if mode != 'none' else 'EHLO'}",
                "check the port: submission is 587 (starttls) or 465 (tls)",
            )
        from mail2ticket.providers import auth_failure_hint

        user = account.smtp_username or account.username
        try:
            if account.auth == "oauth2":
                if "xoauth2" not in conn.esmtp_features.get("auth", "").lower().split():
                    raise ServerError(
                        f"SMTP server {host}:{port} does not offer AUTH XOAUTH2 "
                        f"(it offers: {conn.esmtp_features.get('auth', 'nothing')})",
                        'check smtp_host, or use auth = "password" for this server',
                    )
                bearer = f"user={user}\x01auth=Bearer {password}\x01\x01"
                # On failure the server sends a JSON challenge; the answer is an empty line.
                conn.auth("XOAUTH2", lambda challenge=None: "" if challenge else bearer)
            else:
                conn.login(user, password)
        except smtplib.SMTPAuthenticationError as exc:
            text = (
                exc.smtp_error.decode(errors="replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            raise AuthError(
                f"SMTP login as {user!r} at {host} was refused: {exc.smtp_code} {text}",
                auth_failure_hint(account, text),
            ) from None
        progress("auth", f"signed in as {user}")
    except BaseException:
        try:
            conn.close()
        except Exception:
            pass
        raise
    return conn


def verify_smtp(account: Account, password: str) -> None:
    """Log in and out; raises a Mail2TicketError saying what is wrong."""
    try:
        conn = smtp_connect(account, password)
    except smtplib.SMTPException as exc:
        raise ServerError(f"SMTP server {account.smtp_host}:{account.smtp_port} failed: {exc}") from None
    try:
        conn.quit()
    except smtplib.SMTPException:
        pass
