"""Check an account step by step (DNS, TCP, TLS, capabilities, sign-in, folder, SMTP) and say what to do.

Each step that passes is reported through ``report(step, detail)``; the first that fails raises a
Mail2TicketError of the same kind as the underlying one, its message starting with the step's name.
One IMAP connection is open at a time, as providers limit connections per account.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime

from mail2ticket.config.model import Account
from mail2ticket.errors import ConnectError, Mail2TicketError, ServerError, TLSError
from mail2ticket.transport.imap import Mailbox, network_error
from mail2ticket.transport.smtp import smtp_connect

Report = Callable[[str, str], None]


def _fail(step: str, exc: Mail2TicketError) -> Mail2TicketError:
    """The same kind of error (so the same exit code), saying which step failed."""
    new = type(exc)(f"{step}: {exc}", exc.hint)
    return new


def check_dns(host: str, port: int, what: str) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectError(
            f"cannot resolve {what} host {host!r}: {exc.strerror}",
            "check the host name for typos (or the provider preset), and this machine's DNS",
        ) from None
    addresses = sorted({info[4][0] for info in infos})
    return f"{host} is {', '.join(addresses)}"


def check_tcp(host: str, port: int, what: str, timeout: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 30)) as sock:
            peer = sock.getpeername()
    except OSError as exc:
        err = network_error(exc, host, port, what)
        if isinstance(exc, (TimeoutError, socket.timeout)):
            err.hint = f"a firewall may drop the connection: check outgoing port {port}"
        raise err from None
    return f"connected to {peer[0]}:{peer[1]}"


def describe_certificate(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert() or {}
    subject = dict(x[0] for x in cert.get("subject", ()))
    issuer = dict(x[0] for x in cert.get("issuer", ()))
    expires = cert.get("notAfter")
    days = ""
    if expires:
        left = datetime.fromtimestamp(ssl.cert_time_to_seconds(expires), UTC) - datetime.now(UTC)
        days = f", expires in {left.days} days"
    return (
        f"{sock.version()}, certificate for {subject.get('commonName', '?')} "
        f"issued by {issuer.get('organizationName') or issuer.get('commonName', '?')}{days}"
    )


def check_imap(account: Account, secret: str, report: Report) -> None:
    host, port = account.imap_host, account.imap_port
    step = "IMAP DNS"
    try:
        report(step, check_dns(host, port, "IMAP"))
        step = "IMAP TCP connect"
        report(step, check_tcp(host, port, "IMAP", account.timeout))
        step = "IMAP TLS handshake" if account.imap_security != "none" else "IMAP greeting"
        box = Mailbox(account, secret)
        box.open()
    except Mail2TicketError as exc:
        raise _fail(step, exc) from None
    try:
        sock = box.client.socket()
        report(step, describe_certificate(sock) if isinstance(sock, ssl.SSLSocket) else "no TLS")
        step = "IMAP capabilities"
        caps = box.capabilities()
        names = sorted(c.decode(errors="replace") for c in caps)
        if account.auth == "oauth2" and b"AUTH=XOAUTH2" not in caps:
            raise ServerError(
                f"IMAP server {host} does not offer AUTH=XOAUTH2 (it offers {' '.join(names)})",
                'check imap_host, or use auth = "password" for this server',
            )
        if account.auth != "oauth2" and b"LOGINDISABLED" in caps:
            raise ServerError(
                f"IMAP server {host} does not allow password sign-in here (LOGINDISABLED)",
                "use TLS (port 993) or STARTTLS, or OAuth2 where the provider offers it",
            )
        report(step, " ".join(names))
        step = "IMAP sign-in"
        box.login()
        report(step, f"signed in as {account.username}" + (" (XOAUTH2)" if account.auth == "oauth2" else ""))
        step = f"IMAP folder {account.folder}"
        folder_exists(box, account.folder)
        info = box.select(account.folder)
        report(step, f"{info.exists} messages, UIDVALIDITY {info.uidvalidity}")
        target = move_target(account.after_import)
        if target is not None:
            step = f"IMAP after_import folder {target}"
            report(step, check_move_folder(box, target))
    except Mail2TicketError as exc:
        raise _fail(step, exc) from None
    except ssl.SSLError as exc:
        raise _fail(step, TLSError(f"TLS error: {exc}", "try again; if it persists, check the server")) from None
    except OSError as exc:
        raise _fail(step, network_error(exc, host, port)) from None
    finally:
        box.close()


def folder_exists(box: Mailbox, folder: str) -> None:
    from imapclient.exceptions import (
        IMAPClientError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
    )

    try:
        names = [name for _flags, _sep, name in box.client.list_folders()]
    except IMAPClientError:
        return  # let SELECT say it
    if folder in names or (folder.upper() == "INBOX" and any(n.upper() == "INBOX" for n in names)):
        return
    shown = ", ".join(sorted(str(n) for n in names)[:20])
    raise ServerError(
        f"folder {folder!r} does not exist",
        f"set folder to one of: {shown}",
    )


def move_target(after_import: str | None) -> str | None:
    """The folder of ``after_import = "move:FOLDER"``, else None."""
    if after_import and after_import.startswith("move:"):
        return after_import[5:]
    return None


def server_folders(box: Mailbox) -> tuple[list[str], str]:
    """The folders the server lists, and how it lays them out: "separator '.', namespace 'INBOX.'"."""
    folders = box.client.list_folders()
    names = sorted(str(name) for _flags, _sep, name in folders)
    separators = sorted({sep.decode() if isinstance(sep, bytes) else str(sep) for _f, sep, _n in folders if sep})
    layout = [f"separator {sep!r}" for sep in separators[:1]]
    try:
        if b"NAMESPACE" in box.capabilities():
            personal = box.client.namespace().personal or ()
            prefixes = [str(prefix) for prefix, _sep in personal]
            if prefixes:
                layout.append("namespace " + ", ".join(repr(p) for p in prefixes))
    except Exception:  # noqa: BLE001 - the namespace only helps to read the names
        pass
    return names, ", ".join(layout)


def check_move_folder(box: Mailbox, folder: str) -> str:
    """Check that ``folder`` (of after_import = "move:FOLDER") exists on a signed-in ``box``.

    Returns a one-line description when it does; raises ServerError naming the folders the server
    has, with its hierarchy separator and personal namespace, when it does not. Used by
    'add-account', 'accounts test', the poll (when a move fails) and 'config check --online'."""
    names, layout = server_folders(box)
    if folder in names or (folder.upper() == "INBOX" and any(n.upper() == "INBOX" for n in names)):
        return f"{folder} exists"
    leaf = folder.rsplit("/", 1)[-1].rsplit(".", 1)[-1].lower()
    close = [n for n in names if re.split(r"[./]", n)[-1].lower() == leaf]
    shown = ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
    hint = f'set after_import = "move:{close[0]}"' if close else 'create it, or set after_import = "move:FOLDER"'
    raise ServerError(
        f"after_import folder {folder!r} does not exist; the server has ({layout}): {shown}",
        hint + " (then 'mail2ticket accounts test NAME')",
    )


SMTP_STEPS = {
    "tls": ["SMTP TLS handshake", "SMTP EHLO", "SMTP AUTH"],
    "starttls": ["SMTP connect", "SMTP EHLO", "SMTP STARTTLS", "SMTP AUTH"],
    "none": ["SMTP connect", "SMTP EHLO", "SMTP AUTH"],
}
_PROGRESS = {"connect": 0, "ehlo": 1, "starttls": 2, "auth": -1}


def check_smtp(account: Account, secret: str, report: Report) -> None:

    host, port = account.smtp_host, account.smtp_port
    steps = SMTP_STEPS.get(account.smtp_security, SMTP_STEPS["starttls"])
    state = {"next": 0}

    def progress(name: str, detail: str) -> None:
        index = len(steps) - 1 if name == "auth" else _PROGRESS[name]
        report(steps[index], detail)
        state["next"] = index + 1

    step = "SMTP DNS"
    try:
        report(step, check_dns(host, port, "SMTP"))
        step = "SMTP TCP connect"
        report(step, check_tcp(host, port, "SMTP", account.timeout))
    except Mail2TicketError as exc:
        raise _fail(step, exc) from None
    import smtplib  # smtplib loads only for the SMTP check

    try:
        conn = smtp_connect(account, secret, progress=progress)
    except Mail2TicketError as exc:
        raise _fail(steps[min(state["next"], len(steps) - 1)], exc) from None
    except smtplib.SMTPException as exc:
        raise _fail(
            steps[min(state["next"], len(steps) - 1)],
            ServerError(f"SMTP server {host}:{port} failed: {exc}"),
        ) from None
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        pass


def check_account(account: Account, secret: str, report: Report | None = None) -> int:
    """Run every check in order; raise at the first failure. Returns how many steps passed."""
    passed = []

    def note(step: str, detail: str) -> None:
        passed.append(step)
        if report:
            report(step, detail)

    if account.source == "imap":
        check_imap(account, secret, note)
    if account.smtp_host and account.smtp_port:
        check_smtp(account, secret, note)
    return len(passed)
