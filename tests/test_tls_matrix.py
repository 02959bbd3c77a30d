"""The TLS matrix (RELIABILITY figure 11, items 47-49): every bad transport is refused, and no
credential byte ever crosses the wire in clear.

Each case puts a tiny loopback server (or a rewriting relay in front of the real Dovecot or
aiosmtpd) where mail2ticket expects its IMAP or SMTP server, runs the real CLI (`poll` for IMAP,
`accounts test` for SMTP, which signs in to the real Dovecot first), and then reads what the
server received: the bytes before any TLS must hold no password in any form (raw, base64,
``\\0user\\0pass``), and no sign-in may have reached the server at all.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from mail2ticket.accounts.secrets import store_password
from mail2ticket.cli import cli
from tests.helpers import engine_storage
from tests.servers import LOOPBACK, CertFiles, CertificateAuthority

PASSWORD = "Canary-tls-7f3a9c"  # noqa: S105 - the value the captures are searched for


def credential_forms(user: str, password: str = PASSWORD) -> list[bytes]:
    """Every form a password takes on the wire: raw, AUTH PLAIN, AUTH LOGIN, base64 of it."""
    plain = f"\0{user}\0{password}".encode()
    forms = [password.encode(), plain, base64.b64encode(plain), base64.b64encode(password.encode())]
    return forms + [base64.b64encode(b"\0" + password.encode())]


# -------------------------------------------------------------------------- the fake servers


@dataclass
class Capture:
    """What one fake server saw: bytes received before TLS, and sign-in attempts (any phase)."""

    clear: bytearray = field(default_factory=bytearray)
    logins: list[bytes] = field(default_factory=list)
    tls_versions: list[str] = field(default_factory=list)
    connections: int = 0


class Wire:
    """One accepted connection, as a script sees it: lines in and out, and a switch to TLS."""

    def __init__(self, sock: socket.socket, capture: Capture) -> None:
        self.sock: socket.socket = sock
        self.capture = capture
        self.tls = False
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            if not self.tls:
                self.capture.clear.extend(chunk)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def start_tls(self, context: ssl.SSLContext) -> None:
        """Hand the socket to TLS; bytes the client sent before its handshake are kept as clear."""
        if self._buffer:
            self.capture.clear.extend(b"")  # already recorded when read
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.tls = True
        self.capture.tls_versions.append(self.sock.version() or "?")


Script = Callable[[Wire], None]


class FakeServer:
    """A loopback TCP server running *script* for each connection, on its own thread."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.capture = Capture()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-server")
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.settimeout(10)
            self._socks.append(sock)
            self.capture.connections += 1
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        wire = Wire(sock, self.capture)
        with contextlib.suppress(EOFError, OSError, ssl.SSLError):
            self.script(wire)
        with contextlib.suppress(OSError):
            wire.sock.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


class StrippingRelay(FakeServer):
    """A man in the middle before the real server's plain port: drops STARTTLS from what it says."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        super().__init__(self._relay)

    def _relay(self, wire: Wire) -> None:
        upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=10)

        def down() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    data = data.replace(b" STARTTLS", b"").replace(b"250-STARTTLS\r\n", b"")
                    wire.sock.sendall(data.replace(b"250 STARTTLS\r\n", b"250 HELP\r\n"))
            with contextlib.suppress(OSError):
                wire.sock.shutdown(socket.SHUT_WR)

        threading.Thread(target=down, daemon=True).start()
        with upstream:
            while data := wire.sock.recv(65536):
                self.capture.clear.extend(data)
                upstream.sendall(data)


# ------------------------------------------------------------------------------ IMAP scripts


def imap_session(wire: Wire, caps: str, *, tls: ssl.SSLContext | None, inject: bytes = b"") -> None:
    """An IMAP server that says yes to everything, LOGIN included: a trap for the password."""
    while True:
        line = wire.readline()
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        if command == b"CAPABILITY":
            wire.send(b"* CAPABILITY IMAP4rev1 " + caps.encode() + b"\r\n" + tag + b" OK done\r\n")
        elif command == b"STARTTLS" and tls is not None:
            # CVE-2020-14954: whatever follows the OK in the same breath is an injection.
            wire.send(tag + b" OK Begin TLS negotiation now\r\n" + inject)
            wire.start_tls(tls)
            caps = caps.replace("STARTTLS", "")
        elif command in (b"LOGIN", b"AUTHENTICATE"):
            wire.capture.logins.append(line)
            wire.send(tag + b" OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] Logged in\r\n")
        elif command == b"LOGOUT":
            wire.send(b"* BYE\r\n" + tag + b" OK bye\r\n")
            return
        elif command == b"SELECT":
            wire.send(b"* 0 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n* OK [UIDNEXT 1] ok\r\n")
            wire.send(tag + b" OK [READ-WRITE] done\r\n")
        else:
            wire.send(tag + b" OK done\r\n")


def imap_plain(caps: str, *, greeting: bytes = b"OK", tls=None, inject: bytes = b"") -> Script:
    def script(wire: Wire) -> None:
        wire.send(b"* " + greeting + b" [CAPABILITY IMAP4rev1 " + caps.encode() + b"] hi\r\n")
        imap_session(wire, caps, tls=tls, inject=inject)

    return script


def imap_implicit_tls(context: ssl.SSLContext) -> Script:
    def script(wire: Wire) -> None:
        wire.start_tls(context)
        wire.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        imap_session(wire, "AUTH=PLAIN", tls=None)

    return script


# ------------------------------------------------------------------------------ SMTP scripts


def smtp_session(wire: Wire, *, starttls: ssl.SSLContext | None, inject: bytes = b"") -> None:
    """An SMTP server that accepts any AUTH: a trap for the password."""
    wire.send(b"220 fake.example.test ESMTP\r\n")
    while True:
        line = wire.readline()
        command = line.split(b" ", 1)[0].upper()
        if command in (b"EHLO", b"HELO"):
            features = [b"AUTH PLAIN LOGIN"]
            if starttls is not None and not wire.tls:
                features.insert(0, b"STARTTLS")
            body = b"".join(b"250-" + f + b"\r\n" for f in [b"fake.example.test", *features[:-1]])
            wire.send(body + b"250 " + features[-1] + b"\r\n")
        elif command == b"STARTTLS" and starttls is not None:
            wire.send(b"220 2.0.0 Ready to start TLS\r\n" + inject)
            wire.start_tls(starttls)
        elif command == b"AUTH":
            wire.capture.logins.append(line)
            if line.upper().startswith(b"AUTH LOGIN"):
                wire.send(b"334 VXNlcm5hbWU6\r\n")
                wire.capture.logins.append(wire.readline())
                wire.send(b"334 UGFzc3dvcmQ6\r\n")
                wire.capture.logins.append(wire.readline())
            wire.send(b"235 2.7.0 Authentication successful\r\n")
        elif command == b"QUIT":
            wire.send(b"221 bye\r\n")
            return
        else:
            wire.send(b"250 OK\r\n")


def smtp_plain(*, starttls=None, inject: bytes = b"") -> Script:
    return lambda wire: smtp_session(wire, starttls=starttls, inject=inject)


def smtp_implicit_tls(context: ssl.SSLContext) -> Script:
    def script(wire: Wire) -> None:
        wire.start_tls(context)
        smtp_session(wire, starttls=None)

    return script


# --------------------------------------------------------------------------------- the matrix


def tls10_context(certs: CertificateAuthority) -> ssl.SSLContext:
    """A server context that speaks TLS 1.0 and nothing newer (skips when OpenSSL cannot)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
        context.load_cert_chain(certs.server.cert_file, certs.server.key_file)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.set_ciphers("DEFAULT:@SECLEVEL=0")
        probe.minimum_version = probe.maximum_version = ssl.TLSVersion.TLSv1
        probe.load_verify_locations(certs.ca_file)
    server = FakeServer(lambda wire: wire.start_tls(context))
    try:
        with socket.create_connection((LOOPBACK, server.port), timeout=5) as raw:
            with probe.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
                version = tls.version()
    except (OSError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL ({ssl.OPENSSL_VERSION}) cannot offer TLS 1.0 at all: {exc}")
    finally:
        server.close()
    assert version == "TLSv1", version
    return context


def bad_cert(certs: CertificateAuthority, case: str) -> CertFiles:
    if case == "expired":
        return certs.expired_cert()
    if case == "untrusted":
        return certs.issue(LOOPBACK, "localhost", untrusted=True)
    return certs.wrong_host_cert()


def context_for(certs: CertificateAuthority, case: str) -> ssl.SSLContext:
    if case == "tls1.0-only":
        return tls10_context(certs)
    if case in ("expired", "untrusted", "wrong-host"):
        return certs.server_context(bad_cert(certs, case))
    return certs.server_context()


INJECTED_IMAP = b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nA0003 OK LOGIN completed\r\n"
INJECTED_SMTP = b"250-fake.example.test\r\n250 AUTH PLAIN\r\n235 2.7.0 Authentication successful\r\n"

# case -> (words the one-line error must contain, case-insensitive)
IMAP_CASES = {
    "expired": "expired",
    "untrusted": "not trusted",
    "wrong-host": "not for 127.0.0.1",
    "no-starttls": "does not offer starttls",
    "stripped-starttls": "does not offer starttls",
    "preauth-plaintext": "preauth",
    "tls1.0-only": "tls handshake",
    "injected-pre-tls-bytes": "before the tls handshake",
}
SMTP_CASES = {
    "expired": "expired",
    "untrusted": "not trusted",
    "wrong-host": "not for 127.0.0.1",
    "no-starttls": "does not offer starttls",
    "stripped-starttls": "does not offer starttls",
    "tls1.0-only": "tls handshake",
    "injected-pre-tls-bytes": "before the tls handshake",
}


@pytest.fixture
def canary_user(dovecot):
    """A Dovecot user whose password is the canary, so SMTP cases pass the IMAP steps first."""
    return dovecot.add_user(password=PASSWORD)


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    started: list[FakeServer] = []
    yield started
    for server in started:
        server.close()


def imap_server_for(case: str, certs: CertificateAuthority, dovecot) -> tuple[FakeServer, str]:
    """The fake IMAP server of *case* and the imap_security the account uses with it."""
    if case == "no-starttls":
        return FakeServer(imap_plain("AUTH=PLAIN")), "starttls"
    if case == "stripped-starttls":
        return StrippingRelay(dovecot.starttls_port), "starttls"
    if case == "preauth-plaintext":
        return FakeServer(imap_plain("STARTTLS", greeting=b"PREAUTH", tls=certs.server_context())), "starttls"
    if case == "injected-pre-tls-bytes":
        script = imap_plain("STARTTLS AUTH=PLAIN", tls=certs.server_context(), inject=INJECTED_IMAP)
        return FakeServer(script), "starttls"
    return FakeServer(imap_implicit_tls(context_for(certs, case))), "tls"


def smtp_server_for(case: str, certs: CertificateAuthority, smtp_server) -> tuple[FakeServer, str]:
    if case == "no-starttls":
        return FakeServer(smtp_plain()), "starttls"
    if case == "stripped-starttls":
        return StrippingRelay(smtp_server.port), "starttls"
    if case == "injected-pre-tls-bytes":
        return FakeServer(smtp_plain(starttls=certs.server_context(), inject=INJECTED_SMTP)), "starttls"
    return FakeServer(smtp_implicit_tls(context_for(certs, case))), "tls"


def write_config(root: Path, account: dict) -> Path:
    config = root / "config.toml"
    config.write_text(tomli_w.dumps({"storage": engine_storage(root, {"database": "m2t.db"}), "accounts": [account]}))
    store_password(account["name"], PASSWORD)
    return config


def assert_nothing_in_clear(capture: Capture, user: str) -> None:
    assert capture.logins == [], "a sign-in reached a server that should have been refused"
    for form in credential_forms(user):
        assert form not in capture.clear, f"credential bytes {form!r} crossed the wire in clear"


@pytest.mark.parametrize("case", list(IMAP_CASES))
def test_poll_refuses_every_unsafe_imap_transport_and_never_sends_the_password_in_clear(
    case, tmp_path, test_ca, dovecot, imap_user, account_config, servers
):
    server, security = imap_server_for(case, test_ca, dovecot)
    servers.append(server)
    account = account_config(imap_user, imap_port=server.port, imap_security=security, timeout=5)
    config = write_config(tmp_path, account)

    result = CliRunner().invoke(cli, ["--config", str(config), "poll"])

    assert result.exit_code != 0, result.output
    assert IMAP_CASES[case] in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr
    assert server.capture.connections >= 1
    assert_nothing_in_clear(server.capture, imap_user.email)
    if case == "tls1.0-only":
        assert server.capture.tls_versions == []  # the handshake never completed


@pytest.mark.parametrize("case", list(SMTP_CASES))
def test_sending_refuses_every_unsafe_smtp_transport_and_never_sends_the_password_in_clear(
    case, tmp_path, test_ca, dovecot, canary_user, smtp_server, account_config, servers
):
    server, security = smtp_server_for(case, test_ca, smtp_server)
    servers.append(server)
    account = account_config(
        canary_user, smtp_server, smtp_port=server.port, smtp_security=security, timeout=5
    )
    config = write_config(tmp_path, account)

    result = CliRunner().invoke(cli, ["--config", str(config), "accounts", "test", account["name"]])

    assert result.exit_code != 0, result.output
    assert "smtp" in result.stderr.lower() and SMTP_CASES[case] in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr
    assert server.capture.connections >= 1
    assert_nothing_in_clear(server.capture, canary_user.email)
    assert smtp_server.messages == []


def test_the_same_fake_servers_do_receive_the_login_when_nothing_is_wrong(
    tmp_path, test_ca, imap_user, account_config, servers
):
    """The traps work: over good TLS they see the sign-in, so their silence above means something."""
    server = FakeServer(imap_plain("STARTTLS AUTH=PLAIN", tls=test_ca.server_context()))
    servers.append(server)
    account = account_config(imap_user, imap_port=server.port, imap_security="starttls", timeout=5)
    config = write_config(tmp_path, account)
    result = CliRunner().invoke(cli, ["--config", str(config), "poll"])
    assert result.exit_code == 0, result.output
    assert len(server.capture.logins) == 1 and PASSWORD.encode() in server.capture.logins[0]
    assert_nothing_in_clear(Capture(clear=server.capture.clear), imap_user.email)
