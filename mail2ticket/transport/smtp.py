"""Talk to an SMTP server: implicit TLS or STARTTLS with verified certificates, AUTH, then send."""

from __future__ import annotations

import logging
import smtplib
import ssl

from mail2ticket.config.model import Account
from mail2ticket.config.providers import auth_failure_hint
from mail2ticket.errors import AuthError, ConfigError, ServerError, TLSError
from mail2ticket.transport.imap import StartTLSGuard, describe_tls_error, network_error, tls_context

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
                conn.starttls(context=StartTLSGuard(ctx, lambda: conn.file, "SMTP", host, port))
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


# RFC 5321 4.5.3.2: a client waits at least 10 minutes for the answer to the end of DATA.
DATA_TIMEOUT = 600


class SendFailure(Exception):
    """One mail was not accepted. ``permanent`` for a 5xx answer: sending again will not help."""

    def __init__(self, text: str, *, permanent: bool = False, code: int | None = None):
        super().__init__(text)
        self.permanent = permanent
        self.code = code


def _reply(code: int, text: bytes | str) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(text.split())}"


def send_raw(conn: smtplib.SMTP, mail_from: str, recipients: list[str], raw: bytes) -> tuple[str, dict]:
    """Send ``raw`` as is; returns (the server's answer to DATA, refused recipients).

    Raises SendFailure unless the server accepted the mail (250 after DATA) for at least one
    recipient. The bytes are sent unchanged, so a repeated send carries the same Message-ID.
    """
    if conn.sock is not None:
        conn.sock.settimeout(max(DATA_TIMEOUT, conn.timeout or 0))
    try:
        code, text = conn.mail(mail_from)
        if code != 250:
            conn.rset()
            raise SendFailure(f"sender {mail_from} refused: {_reply(code, text)}", permanent=code >= 500, code=code)
        refused: dict[str, str] = {}
        permanent = True
        for rcpt in recipients:
            code, text = conn.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = _reply(code, text)
                permanent = permanent and code >= 500
        if len(refused) == len(recipients):
            conn.rset()
            detail = "; ".join(f"{r}: {t}" for r, t in refused.items())
            raise SendFailure(f"all recipients refused: {detail}", permanent=permanent)
        code, text = conn.data(raw)  # raises for a refused DATA; returns the final answer
        if code != 250:  # only this is acceptance: a 4xx or 5xx after the data is a refusal
            raise SendFailure(f"message refused after DATA: {_reply(code, text)}", permanent=code >= 500, code=code)
        return _reply(code, text), refused
    except smtplib.SMTPDataError as exc:
        raise SendFailure(
            f"message refused after DATA: {_reply(exc.smtp_code, exc.smtp_error)}",
            permanent=exc.smtp_code >= 500, code=exc.smtp_code,
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise SendFailure(
            f"SMTP error: {_reply(exc.smtp_code, exc.smtp_error)}",
            permanent=exc.smtp_code >= 500, code=exc.smtp_code,
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise SendFailure(f"connection lost while sending: {exc.__class__.__name__}: {exc}") from None
