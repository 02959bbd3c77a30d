"""Real servers for integration tests: a test CA, a private Dovecot, an SMTP server, a TCP relay.

Everything listens on 127.0.0.1 only. The pytest fixtures that hand these out live in
``tests/conftest.py``; this module has no pytest fixtures of its own, so it can also be used from a
script or a REPL when a test needs debugging.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime as dt
import email.policy
import fcntl
import grp
import itertools
import os
import pwd
import re
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import string
import struct
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import NoReturn

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from imapclient import IMAPClient

LOOPBACK = "127.0.0.1"
MAIL_DOMAIN = "example.test"
DOVECOT_MISSING = (
    "Dovecot is not installed: run 'sudo apt-get install dovecot-imapd' "
    "(see README, Running the tests)"
)
# Where Debian puts the binaries; /usr/sbin is often missing from a normal user's PATH.
_BINARY_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"]
)


class ServerError(RuntimeError):
    """A test server could not be started or did not behave; the message says why."""


# --------------------------------------------------------------------------------------- ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (and of ``bind(0)``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on *host* that nothing listens on right now.

    Chosen at random below the kernel's ephemeral range, so that the many outgoing test
    connections (which take ephemeral ports) cannot grab it between this check and the server's
    bind. A server that cannot hand over a bound socket must still retry on "address in use".
    """
    low, _ = ephemeral_range()
    candidates = range(10000, low) if low > 11000 else range(0)
    for _ in range(50):
        port = secrets.choice(candidates) if candidates else 0
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise ServerError(f"no free TCP port found on {host}")


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_free(host: str = LOOPBACK) -> socket.socket:
    for _ in range(20):
        try:
            return _bind(host, free_port(host))
        except OSError:
            continue
    raise ServerError(f"could not bind a free TCP port on {host}")


# ----------------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class CertFiles:
    """A server certificate (chain) and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


class CertificateAuthority:
    """A throw-away CA (trustme) and the PEM files the servers and clients need.

    ``ca_file`` is the CA to trust; ``server`` is a certificate for 127.0.0.1 and localhost that
    it signed; ``other_ca_file`` is an unrelated CA, for "verified against the wrong CA" tests.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="mail2ticket test CA")
        self.other_ca = trustme.CA(organization_name="mail2ticket unrelated CA")
        self.ca_file = self.directory / "ca.pem"
        self.other_ca_file = self.directory / "other-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca.cert_pem.write_to_path(str(self.other_ca_file))
        self._names = itertools.count(1)
        self.server = self.issue(LOOPBACK, "localhost", name="server")

    def issue(
        self,
        *hostnames: str,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        untrusted: bool = False,
        name: str | None = None,
    ) -> CertFiles:
        """Issue a server certificate for *hostnames* (IP addresses allowed) and write it out.

        ``untrusted=True`` has the unrelated CA sign it, so clients trusting ``ca_file`` reject it.
        """
        ca = self.other_ca if untrusted else self.ca
        leaf = ca.issue_cert(*hostnames, not_before=not_before, not_after=not_after)
        stem = name or f"cert{next(self._names)}"
        files = CertFiles(self.directory / f"{stem}.pem", self.directory / f"{stem}.key")
        with files.cert_file.open("wb") as out:
            for pem in leaf.cert_chain_pems:
                out.write(pem.bytes())
        leaf.private_key_pem.write_to_path(str(files.key_file))
        files.key_file.chmod(0o600)
        return files

    def expired_cert(self) -> CertFiles:
        """A certificate for 127.0.0.1 and localhost that expired yesterday."""
        now = dt.datetime.now(dt.UTC)
        return self.issue(
            LOOPBACK,
            "localhost",
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )

    def wrong_host_cert(self) -> CertFiles:
        """A valid certificate from the trusted CA, but for another host name."""
        return self.issue("wrong-host.example.test")

    def server_context(self, cert: CertFiles | None = None) -> ssl.SSLContext:
        """A server-side TLS context presenting *cert* (default: the 127.0.0.1 certificate)."""
        cert = cert or self.server
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert_file, cert.key_file)
        return context

    def client_context(self, ca_file: Path | None = None) -> ssl.SSLContext:
        """A verifying client context that trusts *ca_file* (default: this CA) and nothing else."""
        return ssl.create_default_context(cafile=str(ca_file or self.ca_file))


# ------------------------------------------------------------------------------------- Dovecot


def in_ci() -> bool:
    """True on a CI runner (``CI=true``, as GitHub Actions, GitLab and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_dependency(reason: str) -> NoReturn:
    """Fail the test in CI, where a missing test dependency is a broken setup; skip elsewhere."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def find_dovecot() -> str | None:
    """The path of the dovecot binary, or None when Dovecot is not installed."""
    binary = shutil.which("dovecot", path=_BINARY_PATH)
    if binary and shutil.which("doveadm", path=_BINARY_PATH):
        return binary
    return None


@dataclass(frozen=True)
class User:
    """A mailbox user; it logs in as ``email`` (Dovecot strips the domain) or ``name``."""

    name: str
    password: str = field(repr=False)

    @property
    def email(self) -> str:
        return f"{self.name}@{MAIL_DOMAIN}"


# Each user has their own passwd-file (users.d/<name>): Dovecot re-reads a passwd-file at most once
# a second, so a user appended to one shared file may not be able to log in at once; a file that
# Dovecot has never opened is read on first use.
# To extend (XOAUTH2 passdb, other listeners...), pass extra_conf to Dovecot(); later settings win.
_DOVECOT_CONF = string.Template("""\
# Generated by tests/servers.py for one test session. Not the system configuration.
instance_name = $instance
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
protocols = imap
listen = $host
shutdown_clients = yes

default_internal_user = $internal_user
default_internal_group = $internal_group
default_login_user = $login_user
first_valid_uid = $uid
last_valid_uid = $uid
first_valid_gid = $gid
last_valid_gid = $gid

ssl = yes
ssl_cert = <$cert_file
ssl_key = <$key_file

auth_mechanisms = plain login
auth_username_format = %n
auth_verbose = yes
auth_failure_delay = 0
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n $dir/users.d/%n
}
userdb {
  driver = passwd-file
  args = username_format=%n $dir/users.d/%n
  default_fields = uid=$uid gid=$gid home=$dir/home/%n
}

mail_location = maildir:~/Maildir
# Tests open many connections per user; Dovecot's default is 10 per user and IP.
mail_max_userip_connections = 200
namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \\Drafts
  }
  mailbox Sent {
    special_use = \\Sent
  }
  mailbox Junk {
    special_use = \\Junk
  }
  mailbox Trash {
    special_use = \\Trash
  }
}

# No growing delay for an IP after failed logins: every test connects from 127.0.0.1, and one
# test's wrong password would slow down the logins of the tests after it (up to 15 s each).
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

service imap-login {
  inet_listener imap {
    address = $host
    port = $starttls_port
  }
  inet_listener imaps {
    address = $host
    port = $imaps_port
    ssl = yes
  }
}
$unprivileged
$extra_conf
""")

# Without root, Dovecot can neither chroot its login processes nor switch users.
_UNPRIVILEGED_CONF = """\
service imap-login {
  chroot =
}
service anvil {
  chroot =
}
"""

_APPENDUID = re.compile(rb"\[APPENDUID \d+ ([0-9:,]+)\]")
_running: set[Dovecot] = set()  # stopped at interpreter exit if still running


def _parse_uid_set(text: bytes) -> list[int]:
    uids: list[int] = []
    for part in text.decode().split(","):
        first, _, last = part.partition(":")
        uids.extend(range(int(first), int(last or first) + 1))
    return uids


def _appended_uids(response: object) -> list[int]:
    """UIDs from an APPEND answer, whichever shape imapclient returned it in."""
    if isinstance(response, tuple):  # multiappend: (typ, [data])
        response = b" ".join(x for x in response[1] if isinstance(x, bytes))
    assert isinstance(response, bytes), response
    match = _APPENDUID.search(response)
    if not match:
        raise ServerError(f"no APPENDUID in the APPEND answer: {response!r}")
    return _parse_uid_set(match.group(1))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Dovecot:
    """A private Dovecot instance: own config, runtime dirs, logs and users, under one temp dir.

    ``start()`` writes the config and runs ``dovecot -F`` in the foreground as a child of this
    process; ``stop()`` ends it. Use as a context manager for both.
    """

    host = LOOPBACK

    def __init__(
        self,
        certs: CertificateAuthority,
        *,
        server_cert: CertFiles | None = None,
        extra_conf: str = "",
        start_timeout: float = 30.0,
    ) -> None:
        binary = find_dovecot()
        if binary is None:
            raise ServerError(DOVECOT_MISSING)
        self.binary = binary
        self.doveadm_binary = shutil.which("doveadm", path=_BINARY_PATH) or "doveadm"
        self.certs = certs
        self.ca_file = certs.ca_file
        self.server_cert = server_cert or certs.server
        self.extra_conf = extra_conf
        self.start_timeout = start_timeout
        self.imaps_port = 0
        self.starttls_port = 0
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user_names = itertools.count(1)
        self._users_lock = threading.Lock()

    # -- lifecycle

    @property
    def conf_file(self) -> Path:
        return self._dir / "dovecot.conf"

    @property
    def log_file(self) -> Path:
        return self._dir / "dovecot.log"

    @property
    def stderr_file(self) -> Path:
        return self._dir / "stderr.log"

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise ServerError("Dovecot has not been started")
        return self.directory

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.running:
            raise ServerError("Dovecot is already running")
        # Not pytest's tmp_path: that is mode 0700, and Dovecot's unprivileged processes (login,
        # auth, mail as the 'mail' user) must be able to reach their files below this directory.
        self.directory = Path(tempfile.mkdtemp(prefix="mail2ticket-dovecot-"))
        self.directory.chmod(0o755)
        for sub in ("state", "users.d", "home"):
            (self.directory / sub).mkdir(mode=0o755)
        uid, gid = self._mail_ids()
        os.chown(self.directory / "home", uid, gid)
        _running.add(self)
        try:
            for _attempt in range(5):
                self.imaps_port, self.starttls_port = free_port(), free_port()
                if self.imaps_port != self.starttls_port:
                    self._write_conf()
                    if self._launch():
                        return
            raise ServerError("Dovecot could not bind its ports in 5 attempts\n" + self.log_tail())
        except BaseException:
            self.stop()  # the error message carries the log tail; the files go
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to *timeout*, then SIGKILL the whole process group; remove the files."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end(proc, timeout)
        _running.discard(self)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    @staticmethod
    def _end(proc: subprocess.Popen[bytes], timeout: float) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
            # The master is not reaped yet, so its process group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _mail_ids(self) -> tuple[int, int]:
        if os.geteuid() == 0:
            # Dovecot never touches mail as root; Debian's 'mail' user (uid 8) owns the Maildirs.
            return pwd.getpwnam("mail").pw_uid, grp.getgrnam("mail").gr_gid
        return os.getuid(), os.getgid()

    def _write_conf(self) -> None:
        uid, gid = self._mail_ids()
        if os.geteuid() == 0:
            internal_user, internal_group, login_user = "dovecot", "dovecot", "dovenull"
            unprivileged = ""
        else:
            internal_user = login_user = pwd.getpwuid(os.getuid()).pw_name
            internal_group = grp.getgrgid(os.getgid()).gr_name
            unprivileged = _UNPRIVILEGED_CONF
        text = _DOVECOT_CONF.substitute(
            instance=f"mail2ticket-test-{os.getpid()}-{self._dir.name}",
            dir=self._dir,
            host=self.host,
            internal_user=internal_user,
            internal_group=internal_group,
            login_user=login_user,
            uid=uid,
            gid=gid,
            cert_file=self.server_cert.cert_file,
            key_file=self.server_cert.key_file,
            starttls_port=self.starttls_port,
            imaps_port=self.imaps_port,
            unprivileged=unprivileged,
            extra_conf=self.extra_conf,
        )
        self.conf_file.write_text(text)

    def _launch(self) -> bool:
        """Start the master and wait for both ports; False if a port was taken meanwhile."""
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        # The master keeps stderr open for its whole life: never a pipe, always a file.
        with self.stderr_file.open("ab") as stderr:
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env={"PATH": _BINARY_PATH, "LANG": "C"},
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                new_log = self._read_log(log_offset)
                self._proc = None
                if "Address already in use" in new_log:
                    return False
                raise ServerError(
                    f"Dovecot exited at start with status {self._proc_status(new_log)}\n"
                    + self.log_tail()
                )
            if self._answers():
                return True
            time.sleep(0.02)
        proc, self._proc = self._proc, None
        self._end(proc, 5)
        raise ServerError(
            f"Dovecot did not accept connections on {self.host}:{self.imaps_port} and "
            f":{self.starttls_port} within {self.start_timeout:.0f}s\n" + self.log_tail()
        )

    @staticmethod
    def _proc_status(log: str) -> str:
        fatal = [line for line in log.splitlines() if "Fatal" in line]
        return fatal[-1] if fatal else "(see the log)"

    def _answers(self) -> bool:
        """Both listeners accept, and the plain one greets like an IMAP server."""
        try:
            with socket.create_connection((self.host, self.imaps_port), timeout=1):
                pass
            with socket.create_connection((self.host, self.starttls_port), timeout=5) as sock:
                return sock.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def _read_log(self, offset: int = 0) -> str:
        with contextlib.suppress(OSError), self.log_file.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
        return ""

    def log_tail(self, lines: int = 40) -> str:
        """The end of Dovecot's log and of its stderr, for failure messages."""
        if self.directory is None:
            return "(no Dovecot log: not started)"
        parts = []
        for path in (self.stderr_file, self.log_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts) or "(Dovecot wrote no log)"

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm`` against this instance and return its stdout."""
        result = subprocess.run(
            [self.doveadm_binary, "-c", str(self.conf_file), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": _BINARY_PATH, "LANG": "C"},
        )
        if result.returncode != 0:
            raise ServerError(
                f"doveadm {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip()}\n{self.log_tail(10)}"
            )
        return result.stdout

    # -- users and connections

    def add_user(self, name: str | None = None, password: str | None = None) -> User:
        """Create a mail user; it can log in at once. Unique name and random password by default."""
        with self._users_lock:
            if name is None:
                name = f"user{next(self._user_names)}"
                while (self._dir / "users.d" / name).exists():
                    name = f"user{next(self._user_names)}"
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
                raise ValueError(f"user name {name!r}: use lower-case letters, digits, . _ -")
            path = self._dir / "users.d" / name
            if path.exists():
                raise ValueError(f"user {name!r} already exists")
            user = User(name, password if password is not None else secrets.token_urlsafe(12))
            if ":" in user.password or "\n" in user.password:
                raise ValueError("a Dovecot passwd-file password cannot contain ':' or a newline")
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(f"{name}:{{PLAIN}}{user.password}::::::\n")
            tmp.chmod(0o644)
            tmp.replace(path)
        return user

    def connect(self, user: User, starttls: bool = False, timeout: float = 10) -> IMAPClient:
        """An IMAPClient logged in as *user* over TLS verified against the test CA.

        ``starttls=True`` uses the plain port and upgrades with STARTTLS before logging in.
        Use it as a context manager (``with dovecot.connect(user) as imap:``) to log out.
        """
        context = self.certs.client_context()
        if starttls:
            client = IMAPClient(self.host, self.starttls_port, ssl=False, timeout=timeout)
            client.starttls(context)
        else:
            client = IMAPClient(
                self.host, self.imaps_port, ssl=True, ssl_context=context, timeout=timeout
            )
        try:
            client.login(user.email, user.password)
        except Exception:
            client.shutdown()
            raise
        return client

    @contextlib.contextmanager
    def _selected(self, user: User, folder: str, readonly: bool = True) -> Iterator[IMAPClient]:
        with self.connect(user) as client:
            client.select_folder(folder, readonly=readonly)
            yield client

    # -- mailbox content

    def append(
        self,
        user: User,
        raw: bytes,
        folder: str = "INBOX",
        flags: Iterable[str | bytes] = (),
        msg_time: dt.datetime | None = None,
    ) -> int:
        """Store one message as-is (IMAP APPEND) and return its UID."""
        with self.connect(user) as client:
            response = client.append(folder, raw, flags=tuple(flags), msg_time=msg_time)
        return _appended_uids(response)[0]

    def append_many(
        self,
        user: User,
        messages: Iterable[bytes],
        folder: str = "INBOX",
        flags: Iterable[str | bytes] = (),
        batch: int = 200,
    ) -> list[int]:
        """Store many messages over one connection (MULTIAPPEND); their UIDs, in order."""
        flags = tuple(flags)
        items = [{"msg": raw, "flags": flags} if flags else raw for raw in messages]
        uids: list[int] = []
        with self.connect(user) as client:
            for start in range(0, len(items), batch):
                response = client.multiappend(folder, items[start : start + batch])
                uids.extend(_appended_uids(response))
        return uids

    def create_folder(self, user: User, folder: str) -> None:
        with self.connect(user) as client:
            client.create_folder(folder)

    def uids(self, user: User, folder: str = "INBOX") -> list[int]:
        """The UIDs in *folder*, ascending."""
        with self._selected(user, folder) as client:
            return sorted(client.search("ALL"))

    def uidvalidity(self, user: User, folder: str = "INBOX") -> int:
        with self.connect(user) as client:
            return int(client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

    def flags(self, user: User, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        """{uid: flags} for every message; ``\\Recent`` is left out (it depends on the session)."""
        with self._selected(user, folder) as client:
            found = client.get_flags(client.search("ALL"))
        return {
            uid: frozenset(f.decode() for f in flags if f != b"\\Recent")
            for uid, flags in found.items()
        }

    def fetch_raw(self, user: User, folder: str = "INBOX") -> dict[int, bytes]:
        """{uid: the exact stored bytes} for every message, without setting ``\\Seen``."""
        with self._selected(user, folder) as client:
            uids = client.search("ALL")
            found = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return {uid: data[b"BODY[]"] for uid, data in found.items()}

    def recreate_folder(self, user: User, folder: str = "INBOX", *, keep_uids: bool = False) -> int:
        """Make Dovecot hand out a new UIDVALIDITY for *folder*; messages and flags stay.

        By default the folder's UID list and indexes are dropped, so Dovecot also numbers the
        messages again from 1, as after a server rebuild or restore. ``keep_uids=True`` changes
        only the UIDVALIDITY (``doveadm mailbox update``). Works for INBOX, which Dovecot can
        neither delete nor rename. The user's open IMAP sessions are disconnected first (a session
        kept open would go on with the old numbering); returns the new UIDVALIDITY.
        """
        old = self.uidvalidity(user, folder)
        self.disconnect_sessions(user)
        if keep_uids:
            new = old
        else:
            control = self.doveadm("mailbox", "path", "-u", user.name, "-t", "control", folder)
            index = self.doveadm("mailbox", "path", "-u", user.name, "-t", "index", folder)
            with contextlib.suppress(FileNotFoundError):
                Path(control.strip(), "dovecot-uidlist").unlink()
            for path in Path(index.strip()).glob("dovecot.index*"):
                path.unlink()
            new = self.uidvalidity(user, folder)
        if new == old:
            wanted = (old + 1) % 2**32 or 1
            self.doveadm(
                "mailbox", "update", "-u", user.name, "--uid-validity", str(wanted), folder
            )
            new = self.uidvalidity(user, folder)
        if new == old:
            raise ServerError(f"UIDVALIDITY of {folder} stayed {old}\n{self.log_tail(10)}")
        return new

    def sessions(self, user: User) -> int:
        """How many IMAP connections *user* has open right now."""
        lines = self.doveadm("who", "-1", user.name).splitlines()[1:]
        return sum(1 for line in lines if line.split()[:1] == [user.name])

    def disconnect_sessions(self, user: User, timeout: float = 10.0) -> None:
        """Disconnect all of *user*'s IMAP sessions (``doveadm kick``) and wait until they end."""
        if not self.sessions(user):
            return
        self.doveadm("kick", user.name)
        deadline = time.monotonic() + timeout
        while self.sessions(user):
            if time.monotonic() > deadline:
                raise ServerError(f"{user.name}'s IMAP sessions did not end\n{self.log_tail(10)}")
            time.sleep(0.01)


@atexit.register
def _stop_leftover_dovecots() -> None:
    for server in list(_running):
        server.stop(timeout=5)


def account_config(
    user: User,
    dovecot: Dovecot,
    smtp: SmtpServer | None = None,
    **overrides: object,
) -> dict[str, object]:
    """The config keys of one account that reads *user*'s mail from *dovecot*.

    With *smtp*, the account sends through it (and *user* is added to its users); without,
    there is no ``smtp_port``. An override of None removes that key.
    """
    config: dict[str, object] = {
        "name": user.name,
        "email": user.email,
        "username": user.email,
        "imap_host": dovecot.host,
        "imap_port": dovecot.imaps_port,
        "imap_security": "tls",
        "smtp_host": LOOPBACK,
        "smtp_security": "starttls",
        "ca_file": str(dovecot.ca_file),
    }
    if smtp is not None:
        smtp.add_user(user)
        config.update(smtp_host=smtp.host, smtp_port=smtp.port, smtp_security=smtp.security)
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


# ---------------------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class SmtpMessage:
    """One message the SMTP server accepted (answered 250 to DATA)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    auth_user: str | None

    @property
    def message(self) -> EmailMessage:
        """*data* parsed with the modern email policy."""
        return BytesParser(policy=email.policy.default).parsebytes(self.data)  # type: ignore[return-value]


@dataclass(frozen=True)
class SmtpRejection:
    """One command the server was told to refuse (see ``SmtpServer.fail_next``)."""

    stage: str
    reply: str
    mail_from: str | None
    rcpt_tos: tuple[str, ...]


class _SmtpHandler:
    """aiosmtpd hooks: authentication, injected failures, and recording what was accepted."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    def authenticate(self, smtp, session, envelope, mechanism, auth_data) -> AuthResult:
        if mechanism in ("PLAIN", "LOGIN") and isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode(errors="replace")
            password = auth_data.password.decode(errors="replace")
            if self.server.users.get(login) == password:
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(self, smtp, session, envelope, address, mail_options) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        if reply := self.server._injected("MAIL", address, ()):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options) -> str:
        if reply := self.server._injected("RCPT", envelope.mail_from, (address,)):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, smtp, session, envelope) -> str:
        rcpt_tos = tuple(envelope.rcpt_tos)
        if reply := self.server._injected("DATA", envelope.mail_from, rcpt_tos):
            return reply
        self.server.messages.append(
            SmtpMessage(envelope.mail_from, rcpt_tos, bytes(envelope.content), session.auth_data)
        )
        return "250 2.0.0 OK: queued"


class _BoundController(Controller):
    """An aiosmtpd Controller serving on a socket that is already bound, so no port race."""

    def __init__(self, handler: _SmtpHandler, sock: socket.socket, **kwargs: object) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class SmtpServer:
    """A real SMTP submission server (aiosmtpd) on 127.0.0.1 that records what it accepts.

    ``security="starttls"``: plain port, STARTTLS required before anything else, AUTH offered only
    after it. ``security="tls"``: TLS from the first byte (port 465 style). Either way, MAIL is
    refused until AUTH PLAIN or LOGIN succeeded for a user added with ``add_user``.
    """

    host = LOOPBACK

    def __init__(self, certs: CertificateAuthority, security: str = "starttls") -> None:
        if security not in ("starttls", "tls"):
            raise ValueError(f"security must be 'starttls' or 'tls', not {security!r}")
        self.certs = certs
        self.ca_file = certs.ca_file
        self.security = security
        self.port = 0
        self.users: dict[str, str] = {}
        self.messages: list[SmtpMessage] = []
        self.rejections: list[SmtpRejection] = []
        self._failures: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._controller: _BoundController | None = None

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Start serving; after a ``stop()`` it comes back on the same port."""
        if self._controller is not None:
            return
        sock = _bind(self.host, self.port) if self.port else _bind_free(self.host)
        self.port = sock.getsockname()[1]
        handler = _SmtpHandler(self)
        context = self.certs.server_context()
        if self.security == "tls":
            # aiosmtpd only counts a STARTTLS upgrade as TLS, so with auth_require_tls it would
            # never offer AUTH on an implicit-TLS socket. Every byte here is encrypted anyway.
            tls_kwargs: dict[str, object] = {"ssl_context": context, "auth_require_tls": False}
        else:
            tls_kwargs = {
                "tls_context": context,
                "require_starttls": True,
                "auth_require_tls": True,
            }
        controller = _BoundController(
            handler,
            sock,
            server_hostname="smtp.example.test",  # no getfqdn(): it can hang without DNS
            authenticator=handler.authenticate,
            auth_required=False,  # handle_MAIL answers 530 instead, for both security modes
            **tls_kwargs,
        )
        try:
            controller.start()
        except Exception:
            sock.close()
            raise
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and drop open connections, as a crashed or stopped server would."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def add_user(self, name: str | User, password: str | None = None) -> None:
        """Accept AUTH from *name* with *password*; a ``User`` is added under its email and name."""
        if isinstance(name, User):
            self.users[name.email] = name.password
            self.users[name.name] = name.password
            return
        if password is None:
            raise TypeError("add_user(name, password): password missing")
        self.users[name] = password

    def fail_next(
        self, count: int = 1, code: int = 451, text: str | None = None, stage: str = "DATA"
    ) -> None:
        """Answer *code* to the next *count* MAIL, RCPT or DATA commands (*stage*).

        A 4xx is a temporary failure (the sender should retry), a 5xx a permanent one. At DATA
        stage the message is refused after it was sent, and is not added to ``messages``.
        """
        stage = stage.upper()
        if stage not in ("MAIL", "RCPT", "DATA"):
            raise ValueError(f"stage must be MAIL, RCPT or DATA, not {stage!r}")
        if not 400 <= code <= 599:
            raise ValueError(f"code {code}: a failure is 4xx or 5xx")
        if text is None:
            text = (
                "4.3.0 Temporary failure (injected by the test)"
                if code < 500
                else "5.7.1 Rejected (injected by the test)"
            )
        with self._lock:
            self._failures.extend([(stage, f"{code} {text}")] * count)

    def _injected(self, stage: str, mail_from: str | None, rcpt_tos: tuple[str, ...]) -> str | None:
        with self._lock:
            if not self._failures or self._failures[0][0] != stage:
                return None
            _, reply = self._failures.pop(0)
            self.rejections.append(SmtpRejection(stage, reply, mail_from, rcpt_tos))
            return reply


# ----------------------------------------------------------------------------------- TCP relay


class _Conn:
    """One relayed connection: the client's socket, the upstream socket, and bytes sent down."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.down = 0  # bytes forwarded server -> client
        self.closed = False


class TcpRelay:
    """A threaded TCP relay from 127.0.0.1:``port`` to a target, with faults on demand.

    Offsets count bytes on the wire from the server to the client, per connection (TLS records
    included when the relayed protocol is TLS). Faults apply to open and future connections:

    - ``cut_after(n)``: cut every connection once it has carried n bytes down;
    - ``cut_once_at(n)``: cut the first connection that reaches byte n, then relay normally;
    - ``stall(after=0)``: stop forwarding down after that many bytes, holding the rest, until
      ``resume()`` (which also clears the cut rules);
    - ``cut_all()``: cut every open connection now.

    A cut is a TCP reset by default (``reset=False``: an orderly close, the client sees EOF). The
    client always gets exactly the bytes up to the offset first.
    """

    def __init__(self, target_host: str, target_port: int, host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self._listener = _bind_free(host)
        self.host, self.port = self._listener.getsockname()[:2]
        self.connections = 0
        self.accepted_at: list[float] = []  # time.monotonic() of each connection accepted
        self.cuts = 0
        self._cut_after: int | None = None
        self._cut_once_at: int | None = None
        self._stall_after: int | None = None
        self._reset = True
        self._conns: set[_Conn] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Condition()
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._spawn(self._accept_loop)

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- controls

    def cut_after(self, nbytes: int, *, reset: bool = True) -> None:
        with self._lock:
            self._cut_after, self._reset = nbytes, reset
            self._lock.notify_all()

    def cut_once_at(self, offset: int, *, reset: bool = True) -> None:
        with self._lock:
            self._cut_once_at, self._reset = offset, reset
            self._lock.notify_all()

    def stall(self, after: int = 0) -> None:
        with self._lock:
            self._stall_after = after

    def resume(self) -> None:
        """Relay normally again: release stalled data, forget the cut rules."""
        with self._lock:
            self._cut_after = self._cut_once_at = self._stall_after = None
            self._lock.notify_all()

    def cut_all(self, *, reset: bool = True) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._cut(conn, reset)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
            self._lock.notify_all()
        self._wake_w.send(b"x")
        for conn in conns:
            self._close_conn(conn)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- machinery

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tcp-relay")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r or self._closed:
                        return
                    try:
                        client, _ = self._listener.accept()
                    except OSError:
                        continue
                    with self._lock:
                        self.connections += 1
                        self.accepted_at.append(time.monotonic())
                    try:
                        upstream = socket.create_connection(self.target, timeout=10)
                    except OSError:
                        client.close()
                        continue
                    upstream.settimeout(None)
                    conn = _Conn(client, upstream)
                    with self._lock:
                        self._conns.add(conn)
                    self._spawn(self._pump_up, conn)
                    self._spawn(self._pump_down, conn)

    def _pump_up(self, conn: _Conn) -> None:
        """Client -> server: forwarded as is; the client's EOF is passed on as a half-close."""
        try:
            while data := conn.client.recv(65536):
                conn.upstream.sendall(data)
            conn.upstream.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_conn(conn)

    def _pump_down(self, conn: _Conn) -> None:
        """Server -> client, applying the stall and cut rules."""
        try:
            while data := conn.upstream.recv(65536):
                while data:
                    with self._lock:
                        limit, rule = self._down_limit(conn)
                        while limit == 0 and rule == "stall":
                            self._lock.wait()
                            if conn.closed or self._closed:
                                return
                            limit, rule = self._down_limit(conn)
                        cut = (
                            rule not in (None, "stall") and limit is not None and limit <= len(data)
                        )
                        if cut and rule == "once":
                            self._cut_once_at = None
                        reset = self._reset
                    chunk = data if limit is None else data[:limit]
                    if chunk:
                        conn.client.sendall(chunk)
                        conn.down += len(chunk)
                        data = data[len(chunk) :]
                    if cut:
                        self._cut(conn, reset)
                        return
            conn.client.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_conn(conn)

    def _down_limit(self, conn: _Conn) -> tuple[int | None, str | None]:
        """How many more bytes *conn* may send down, and the rule that stops it there."""
        rules = [
            (at, name)
            for at, name in (
                (self._cut_after, "every"),
                (self._cut_once_at, "once"),
                (self._stall_after, "stall"),
            )
            if at is not None
        ]
        if not rules:
            return None, None
        # The nearest offset wins; at the same offset a cut wins over a stall.
        at, name = min(rules, key=lambda rule: (rule[0], rule[1] == "stall"))
        return max(at - conn.down, 0), name

    def _cut(self, conn: _Conn, reset: bool) -> None:
        if reset:
            _drain_send_queue(conn.client)
        self._close_conn(conn, cut=True, reset=reset)

    def _close_conn(self, conn: _Conn, *, cut: bool = False, reset: bool = False) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            self.cuts += cut  # counted before the client can notice
            self._conns.discard(conn)
            self._lock.notify_all()
        if reset:
            # Linger 0 makes close() send RST; SHUT_RD wakes our own blocked recv without a FIN.
            with contextlib.suppress(OSError):
                conn.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD if reset and sock is conn.client else socket.SHUT_RDWR)
            sock.close()


def _drain_send_queue(sock: socket.socket, timeout: float = 1.0) -> None:
    """Wait until the kernel has sent what we wrote, so a reset does not discard it."""
    deadline = time.monotonic() + timeout
    buf = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
        except OSError:
            return
        if int.from_bytes(buf, "little") == 0:
            return
        time.sleep(0.001)
