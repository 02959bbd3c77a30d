"""Talk to an IMAP server: verified TLS, login, new UIDs, batched BODY.PEEK[] fetches, UID flags."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from mail2ticket.config.model import Account
from mail2ticket.config.providers import auth_failure_hint
from mail2ticket.errors import AuthError, ConnectError, ConnectTimeout, ServerError, TLSError
from mail2ticket.files.perms import makedirs, open_new
from mail2ticket.files.spool import PIECE, Spool
from mail2ticket.transport.fetchreader import parse_fetch

log = logging.getLogger(__name__)


_TLS_CONTEXTS: dict[tuple[str | None, int | None], ssl.SSLContext] = {}


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system trust store plus the account's own CA file; hostname checked, TLS 1.2+.

    Built once per CA file (and version of it) in a process: loading the system trust store
    takes about 20 ms, half of a daemon's poll that finds nothing new."""
    try:
        stamp = os.stat(ca_file).st_mtime_ns if ca_file else None
    except OSError:
        stamp = None
    cached = _TLS_CONTEXTS.get((ca_file, stamp))
    if cached is not None:
        return cached
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot read ca_file {ca_file}: {exc}", "check the path and that it is PEM") from None
    _TLS_CONTEXTS[(ca_file, stamp)] = ctx
    return ctx


class StartTLSGuard:
    """Stands in for the SSL context of a STARTTLS upgrade: before the handshake it refuses the
    connection if the server already sent anything after its OK, because such bytes would be
    read as if they had come over TLS (response injection, CVE-2020-14954, RELIABILITY 49)."""

    def __init__(self, ctx: ssl.SSLContext, reader, what: str, host: str, port: int):
        self.ctx, self.reader, self.what, self.host, self.port = ctx, reader, what, host, port

    def wrap_socket(
        self, sock: socket.socket, server_hostname: str | None = None, **kwargs
    ) -> ssl.SSLSocket:
        if pending_bytes(sock, self.reader()):
            raise TLSError(
                f"{self.what} server {self.host}:{self.port} sent data before the TLS handshake "
                "(a STARTTLS injection attempt?); refusing the connection",
                "check for a man in the middle on the way to the server, or use implicit TLS",
            )
        return self.ctx.wrap_socket(sock, server_hostname=server_hostname, **kwargs)


def pending_bytes(sock: socket.socket, reader) -> bytes:
    """What the peer has sent that nobody read yet: in *reader*'s buffer or the socket's queue."""
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        data = reader.peek(1) if reader is not None and hasattr(reader, "peek") else b""
        return data or sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError, ValueError):
        return b""
    finally:
        sock.settimeout(timeout)


def describe_tls_error(exc: ssl.SSLError, host: str, port: int) -> TLSError:
    """Turn an ssl error into a sentence that says which certificate problem it is."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        if "expired" in reason:
            hint = "the server's certificate has expired: the server's admin must renew it"
        elif "Hostname mismatch" in reason or "IP address mismatch" in reason:
            hint = f"the certificate is not for {host}: check the host name (or the provider preset)"
        elif "self-signed" in reason or "unable to get local issuer" in reason:
            hint = "the certificate is signed by a CA this machine does not trust: set ca_file for this account"
        else:
            hint = "check the host name, or set ca_file for a private CA"
        return TLSError(f"TLS certificate of {host}:{port} not trusted: {reason}", hint)
    return TLSError(
        f"TLS handshake with {host}:{port} failed: {exc.reason or exc}",
        "check the port and security mode (tls for 993/465, starttls for 143/587)",
    )


def network_error(exc: OSError, host: str, port: int, what: str = "IMAP") -> ConnectError:
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve {what} host {host!r}: {exc.strerror}", "check the host name and DNS")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(
            f"{what} server {host}:{port} refused the connection", "check the host and port, and that the server runs"
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ConnectTimeout(f"{what} server {host}:{port} did not answer in time", "check the host, port and firewall")
    return ConnectError(f"{what} connection to {host}:{port} failed: {exc}", "check the network and try again")


@dataclass
class FolderInfo:
    uidvalidity: int
    uidnext: int | None
    exists: int


class Mailbox:
    """One logged-in IMAP connection for one account. Use as a context manager."""

    def __init__(self, account: Account, password: str):
        self.account = account
        self._password = password
        self.client = None
        self.folder: str | None = None
        # X-GM-MSGID and X-GM-THRID of the messages of the last fetch(), when the server offers
        # X-GM-EXT-1 (Gmail): {uid: (msgid, thrid)}.
        self.gmail_ids: dict[int, tuple[int | None, int | None]] = {}
        # Why the last fetch() got no usable content for a UID: {uid: reason} (RELIABILITY 5, 9).
        self.fetch_failures: dict[int, str] = {}
        self._archive_folder: str | None = None

    # --- connection -----------------------------------------------------------------
    def __enter__(self) -> Mailbox:
        self.connect()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # After a failure the connection may be dead or stalled: do not wait for a LOGOUT answer.
        self.close(quick=exc_type is not None)

    def connect(self) -> None:
        """Open the connection (TLS verified) and sign in."""
        self.open()
        self.login()

    def open(self) -> None:
        """Connect and set up TLS (implicit or STARTTLS), without signing in yet."""
        from imapclient import (
            IMAPClient,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )
        from imapclient.imapclient import (
            SocketTimeout,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )

        acct = self.account
        host, port, mode = acct.imap_host, acct.imap_port, acct.imap_security
        ctx = tls_context(acct.ca_file)
        timeout = SocketTimeout(connect=min(30, acct.timeout), read=acct.timeout)
        try:
            client = IMAPClient(host, port=port, ssl=(mode == "tls"), ssl_context=ctx, timeout=timeout)
        except ssl.SSLError as exc:
            raise describe_tls_error(exc, host, port) from None
        except OSError as exc:
            raise network_error(exc, host, port) from None
        except Exception as exc:  # imaplib.error on a garbled greeting
            raise ServerError(f"IMAP server {host}:{port} sent an unexpected greeting: {exc}") from None
        self.client = client
        quiet_imaplib(client)
        try:
            if mode != "tls" and getattr(client._imap, "state", "NONAUTH") != "NONAUTH":
                raise TLSError(  # RELIABILITY 48: a plaintext session must not start signed in
                    f"IMAP server {host}:{port} greeted with PREAUTH on an unencrypted connection; "
                    "refusing to use it",
                    'use imap_security = "tls" (port 993), and check for a man in the middle',
                )
            if mode == "starttls":
                caps = client.capabilities()
                if b"STARTTLS" not in caps:
                    raise TLSError(
                        f"IMAP server {host}:{port} does not offer STARTTLS; refusing to send the password in clear",
                        'use imap_security = "tls" (port 993) if the server supports it',
                    )
                try:
                    reader = lambda: getattr(client._imap, "file", None)  # noqa: E731
                    client.starttls(StartTLSGuard(ctx, reader, "IMAP", host, port))
                except ssl.SSLError as exc:
                    raise describe_tls_error(exc, host, port) from None
                client._cached_capabilities = None  # never trust what was said before TLS
            elif mode == "none":
                log.warning("account %s: logging in WITHOUT encryption (allow_insecure = true)", acct.name)
        except BaseException:
            self._password = ""
            self.close(quick=True)
            raise

    def login(self) -> None:
        """Sign in on the open connection: LOGIN, or SASL XOAUTH2 when the account uses OAuth2."""
        from imapclient.exceptions import (
            LoginError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )


        acct, client = self.account, self.client
        try:
            try:
                if acct.auth == "oauth2":
                    client.oauth2_login(acct.username, self._password)
                else:
                    client.login(acct.username, self._password)
            except LoginError as exc:
                text = exc.args[0] if exc.args else exc
                if isinstance(text, str) and text[:2] in ("b'", 'b"'):  # str() of the server's bytes

                    try:
                        text = ast.literal_eval(text)
                    except (ValueError, SyntaxError):
                        pass
                if isinstance(text, bytes):
                    text = text.decode(errors="replace")
                text = " ".join(str(text).split())
                raise AuthError(
                    f"IMAP login as {acct.username!r} at {acct.imap_host} was refused: {text}",
                    auth_failure_hint(acct, str(text)),
                ) from None
        except BaseException:
            self.close(quick=True)
            raise
        finally:
            self._password = ""  # keep the secret for as short as we can

    def close(self, quick: bool = False) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if quick:
                raise ConnectionAbortedError("closing without LOGOUT")
            client.logout()
        except Exception:
            try:
                client.shutdown()
            except Exception:
                pass

    def capabilities(self) -> set[bytes]:
        return set(self.client.capabilities())

    # --- folder -------------------------------------------------------------------
    def status(self, folder: str) -> tuple[int, int]:
        """(UIDVALIDITY, UIDNEXT) of a folder without opening it: cheap, whatever its size."""
        from imapclient.exceptions import (
            IMAPClientError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )

        try:
            info = self.client.folder_status(folder, [b"UIDVALIDITY", b"UIDNEXT"])
        except IMAPClientError as exc:
            raise ServerError(
                f"cannot read the status of folder {folder!r} of account {self.account.name}: {exc}",
                "check the folder name (mail2ticket accounts test NAME lists them)",
            ) from None
        return int(info[b"UIDVALIDITY"]), int(info[b"UIDNEXT"])

    def select(self, folder: str) -> FolderInfo:
        from imapclient.exceptions import (
            IMAPClientError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )

        try:
            info = self.client.select_folder(folder)
        except IMAPClientError as exc:
            raise ServerError(
                f"cannot open folder {folder!r} of account {self.account.name}: {exc}",
                "check the folder name (mail2ticket accounts test NAME lists them)",
            ) from None
        self.folder = folder
        return FolderInfo(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(info[b"UIDNEXT"]) if b"UIDNEXT" in info else None,
            exists=int(info.get(b"EXISTS", 0)),
        )

    def new_uids(self, after_uid: int, since: date | None = None) -> list[int]:
        """UIDs above ``after_uid`` (ascending): cost grows with new mail only."""
        criteria: list = ["UID", f"{after_uid + 1}:*"]
        if since:
            criteria += ["SINCE", since]
        uids = self.client.search(criteria)
        # "n:*" always matches the highest UID even when it is below n.
        return sorted(u for u in uids if u > after_uid)

    def existing(self, uids: Sequence[int]) -> list[int]:
        """Which of ``uids`` are still in the folder (UID SEARCH)."""
        if not uids:
            return []
        found = set(self.client.search(["UID", ",".join(str(u) for u in uids)]))
        return sorted(u for u in uids if u in found)

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for chunk in chunks(uids, 1000):
            found, _failed = self._fetch_each(chunk, ["RFC822.SIZE"])
            for uid, data in found.items():
                with contextlib.suppress(TypeError, ValueError):  # no size: fetched like any other
                    out[uid] = int(data[b"RFC822.SIZE"])
        return out

    def _fetch_tolerant(self, uids: Sequence[int], items: list[str]) -> dict[int, dict]:
        """UID FETCH; a NO because some of the UIDs were expunged meanwhile ("Some of the requested
        messages no longer exist", RELIABILITY 6) keeps what the server did send for the others."""
        from imapclient.exceptions import (
            IMAPClientError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )
        from imapclient.response_parser import (
            parse_fetch_response,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )

        try:
            return self._uid_fetch(uids, items, parse_fetch_response)
        except IMAPClientError as exc:
            if not gone_error(exc):
                raise
            _typ, data = self.client._imap._untagged_response("OK", [None], "FETCH")
            log.info("account %s: %s; fetching the others", self.account.name, exc)
            if data == [None]:
                return {}
            return parse_fetch_response(data, self.client.normalise_times, self.client.use_uid)

    def _uid_fetch(self, uids: Sequence[int], items: list[str], parse_fetch_response) -> dict[int, dict]:
        """What ``self.client.fetch(uids, items)`` returns, read by fetchreader.parse_fetch: the
        usual answer without imapclient's character-by-character parser, any other with it."""
        client = self.client
        if not uids:
            return {}
        imap = client._imap
        tag = imap._command("UID", "FETCH", ",".join(str(u) for u in uids), "(" + " ".join(i.upper() for i in items) + ")")
        typ, data = imap._command_complete("FETCH", tag)
        client._checkok("fetch", typ, data)
        typ, data = imap._untagged_response(typ, data, "FETCH")
        response = parse_fetch(data, lambda d: parse_fetch_response(d, client.normalise_times, True))
        return {uid: response[uid] for uid in uids if uid in response}  # no unsolicited answers for others

    def _fetch_each(self, uids: Sequence[int], items: list[str]) -> tuple[dict[int, dict], dict[int, str]]:
        """Like _fetch_tolerant; when the answer cannot be parsed (RELIABILITY 9), each UID is fetched
        on its own, so one unreadable answer costs only its own UID: ({uid: data}, {uid: why})."""
        from imapclient.exceptions import (
            ProtocolError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )

        try:
            return self._fetch_tolerant(uids, items), {}
        except (ProtocolError, ValueError) as exc:
            if len(uids) == 1:
                return {}, {uids[0]: f"the server's answer could not be read ({exc.__class__.__name__}: {exc})"}
            log.warning("account %s: the server's FETCH answer could not be read (%s); one UID at a time",
                        self.account.name, exc)
        found: dict[int, dict] = {}
        failed: dict[int, str] = {}
        for uid in uids:
            one, bad = self._fetch_each([uid], items)
            found.update(one)
            failed.update(bad)
        return found, failed

    def fetch(self, uids: Sequence[int]) -> dict[int, tuple[bytes, object]]:
        """{uid: (raw bytes, internaldate)} with BODY.PEEK[] (never sets \\Seen)."""
        out = {}
        items = fetch_items(self.capabilities())
        data, self.fetch_failures = self._fetch_each(uids, items)
        self.gmail_ids = {}
        for uid, item in data.items():
            raw = item.get(b"BODY[]")
            # No body, or an empty one (iCloud answers OK with nothing, RELIABILITY 5): the UID is
            # gone since the search, or the server failed to send it. Never stored, never flagged.
            if raw is None or not isinstance(raw, bytes) or not raw:
                self.fetch_failures[uid] = (
                    "the server answered without the message's content" if raw is None
                    else "the server sent an empty message content"
                )
                continue
            size = item.get(b"RFC822.SIZE")
            try:
                announced = int(size) if size is not None else len(raw)
            except (TypeError, ValueError):
                announced = -1
            if announced != len(raw):
                self.fetch_failures[uid] = f"the server sent {len(raw)} bytes but announced {size}"
                continue
            out[uid] = (bytes(raw), item.get(b"INTERNALDATE"))
            ids = gmail_ids(item)
            if ids != (None, None):
                self.gmail_ids[uid] = ids
        return out

    def fetch_to_file(self, uid: int, size: int, directory, piece: int | None = None):
        """Fetch one large message in pieces (``UID FETCH BODY.PEEK[]<offset.length>``) into a
        temp file in ``directory``, hashing while writing: ``(Spool, internaldate)``. Never holds
        more than one piece in memory.

        None when the server does not send it properly (no content, an empty one, an unreadable
        answer, pieces that do not add up to its RFC822.SIZE): no file is left, and the reason is
        in ``fetch_failures[uid]``, as fetch() does for a whole message. A cut connection raises."""


        piece = piece or PIECE
        directory = Path(directory)

        makedirs(directory)  # the attachment store's tmp/: private, whatever the umask
        path = directory / f"raw-{uid}-{os.urandom(4).hex()}.{os.getpid()}.tmp"
        digest = hashlib.sha256()
        offset = 0
        idate = None
        why = None
        extra = [i for i in fetch_items(self.capabilities()) if not i.startswith("BODY")]
        try:
            with open_new(path) as out:
                while True:
                    items = [f"BODY.PEEK[]<{offset}.{piece}>"] + (extra if offset == 0 else [])
                    found, failed = self._fetch_each([uid], items)
                    item = found.get(uid) or {}
                    key = next((k for k in item if isinstance(k, bytes) and k.startswith(b"BODY[")), None)
                    data = item.get(key) if key is not None else None
                    if uid in failed or not isinstance(data, bytes) or (offset == 0 and not data):
                        why = failed.get(uid) or (
                            "the server answered without the message's content" if offset == 0 and data is None
                            else "the server sent an empty message content" if offset == 0
                            else f"the server stopped sending the message at byte {offset} of {size}"
                        )
                        break
                    if offset == 0:
                        idate = item.get(b"INTERNALDATE")
                        with contextlib.suppress(TypeError, ValueError):
                            size = int(item.get(b"RFC822.SIZE", size))
                        ids = gmail_ids(item)
                        if ids != (None, None):
                            self.gmail_ids[uid] = ids
                    out.write(data)
                    digest.update(data)
                    offset += len(data)
                    del found, item, data
                    if offset >= size or offset % piece:
                        break
            if why is None and offset != size:
                why = f"the server sent {offset} bytes but announced {size}"
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if why is not None:
            path.unlink(missing_ok=True)
            self.fetch_failures[uid] = why
            return None
        return Spool(str(path), offset, digest.hexdigest()), idate

    # --- after import ---------------------------------------------------------------
    def apply_action(self, action: str, uids: Sequence[int]) -> None:
        """The after-import action for stored messages, with UID commands only."""
        if not uids or action in (None, "none"):
            return
        if action == "seen":
            self._add_flags(uids, [b"\\Seen"])
        elif action == "delete":
            self._add_flags(uids, [b"\\Deleted"])
            if b"UIDPLUS" in self.capabilities():
                self.client.uid_expunge(uids)
            else:
                log.warning(
                    "account %s: server lacks UIDPLUS; messages marked \\Deleted but not expunged "
                    "(a plain EXPUNGE would also remove other clients' deleted mail)",
                    self.account.name,
                )
        elif action == "archive":
            self.apply_action("move:" + self.archive_folder(), uids)
        elif action.startswith("move:"):
            target = action[5:]
            if b"MOVE" in self.capabilities():
                self.client.move(uids, target)
            else:
                self.client.copy(uids, target)
                self.client.add_flags(uids, [b"\\Deleted", b"\\Seen"], silent=True)
                if b"UIDPLUS" in self.capabilities():
                    self.client.uid_expunge(uids)
        else:  # pragma: no cover - config validation prevents this
            raise ValueError(action)

    def _add_flags(self, uids: Sequence[int], flags: list[bytes]) -> None:
        """UID STORE +FLAGS.SILENT. A NO because some UIDs were expunged meanwhile (RELIABILITY 6)
        is a no-op for those: the store is repeated for the ones still there."""
        from imapclient.exceptions import (
            IMAPClientError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        )

        try:
            self.client.add_flags(uids, flags, silent=True)
        except IMAPClientError as exc:
            if not gone_error(exc):
                raise
            still = self.existing(uids)
            log.info("account %s: %s; %d of %d UIDs still there", self.account.name, exc, len(still), len(uids))
            if still:
                self.client.add_flags(still, flags, silent=True)

    def special_folders(self) -> list[tuple[tuple[bytes, ...], str]]:
        """(attributes, name) of the folders the server marks with a special-use attribute
        (RFC 6154): ``LIST (SPECIAL-USE) "" "*"`` where offered, else a plain LIST."""
        client = self.client
        if b"SPECIAL-USE" in self.capabilities():
            typ, dat = client._imap._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
            client._checkok("list", typ, dat)
            typ, dat = client._imap._untagged_response(typ, dat, "LIST")
            folders = client._proc_folder_list(dat)
        else:
            folders = client.list_folders()
        return [(tuple(flags), name) for flags, _, name in folders]

    def archive_folder(self) -> str:
        """Where after_import = "archive" moves mail: the \\Archive folder, else the \\All folder
        (Gmail's "[Gmail]/All Mail": moving there removes only the label of the polled folder).
        Found by special-use attribute, never by name. Raises ServerError when there is none."""
        if self._archive_folder is None:
            self._archive_folder = choose_archive_folder(self.special_folders(), self.folder)
        return self._archive_folder


def quiet_imaplib(client) -> None:
    """Turn imaplib's debug output off unless it is logged (``--debug``).

    imapclient sets imaplib's debug level to 5 and hands its output to the logger
    "imapclient.imaplib". imaplib builds that output before the logger is asked: the repr of
    every FETCH response, whole message bodies included, twice per command. Unlogged, that was
    about half of the fetch thread's CPU in a poll (docs/performance.md, issue 19.6, fourth step)."""
    if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
        client._imap.debug = 0


def gone_error(exc: Exception) -> bool:
    """Whether a NO means that some of the UIDs no longer exist (expunged by another client)."""
    text = str(exc).lower()
    return "no longer exist" in text or "expungeissued" in text


def fetch_items(capabilities: set[bytes]) -> list[str]:
    """What fetch() asks for: the Gmail ids only from a server that offers X-GM-EXT-1."""
    items = ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"]
    if b"X-GM-EXT-1" in capabilities:
        items += ["X-GM-MSGID", "X-GM-THRID"]
    return items


def gmail_ids(item: dict) -> tuple[int | None, int | None]:
    """(X-GM-MSGID, X-GM-THRID) from one message of imapclient's fetch() answer, None if absent."""

    def number(key: bytes) -> int | None:
        value = item.get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    return number(b"X-GM-MSGID"), number(b"X-GM-THRID")


def choose_archive_folder(folders: Sequence[tuple[Sequence[bytes], str]], polled: str | None) -> str:
    """The folder for after_import = "archive" among ``(attributes, name)``: \\Archive, else \\All."""
    for wanted in (b"\\Archive", b"\\All"):
        for flags, name in folders:
            if any(f.lower() == wanted.lower() for f in flags):
                if name == polled:
                    raise ServerError(
                        f"after_import = \"archive\" would move mail from {name!r} into itself",
                        "poll another folder, or choose another after_import",
                    )
                return name
    raise ServerError(
        "after_import = \"archive\": the server marks no folder as \\Archive or \\All (RFC 6154)",
        'use after_import = "move:FOLDER" with the folder to archive to',
    )


def chunks(seq: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(seq), size):
        yield list(seq[i : i + size])
