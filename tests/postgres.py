"""The PostgreSQL server the tests start: a cluster of their own, made with initdb in a temporary
directory, run as an unprivileged user (initdb and postgres refuse root), on a loopback port.

One server per pytest process (so one per pytest-xdist worker: its own port and directory); a
fresh database per test (``new_database``), owned by a test role that signs in with a password
over TCP (scram-sha-256: the password chain is really exercised). Nothing is mocked: it is the
Debian package ``postgresql``'s own server. fsync is off: a test cluster need not survive a power
cut, and the tests that kill a client (not the server) still see every commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import LOOPBACK, ServerError, free_port

POSTGRES_MISSING = (
    "PostgreSQL is not installed (initdb and postgres): apt-get install postgresql "
    "(and pip install -e '.[postgresql]' for psycopg)"
)
PSYCOPG_MISSING = "psycopg is not installed: pip install -e '.[test]' (the postgresql extra)"

TEST_ROLE = "m2t"
TEST_PASSWORD = "pg-test-secret-7f3a"  # a test role's password on a loopback-only server


def find_postgres() -> Path | None:
    """The directory of initdb and postgres (Debian keeps them in /usr/lib/postgresql/N/bin)."""
    candidates = [os.environ.get("MAIL2TICKET_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    return None


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def _die_with_parent() -> None:  # runs in the child between fork and exec, after setuid
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG: immediate stop


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1; ``new_database()`` gives a test a database URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        # Under /tmp itself: pytest's tmp_path is under a root-only (0700) folder.
        self.dir = Path(tempfile.mkdtemp(prefix="m2t-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.log_file = self.dir / "postgres.log"
        self._user = self._run_as()
        self._names = itertools.count(1)

    @staticmethod
    def _run_as() -> str | None:
        """The user to run the server as: 'nobody' when we are root, else ourselves (None)."""
        if os.geteuid() != 0:
            return None
        return "nobody"

    def _spawn_kwargs(self) -> dict:
        if self._user is None:
            return {}
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self.dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "HOME": str(self.dir)}
        init = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
             "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            capture_output=True, env=env, cwd=self.dir, **self._spawn_kwargs(),
        )
        if init.returncode != 0:
            raise ServerError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        for _ in range(5):  # a port another process takes between free_port() and bind: try another
            self.port = free_port()
            if self._launch(env):
                break
        else:
            raise ServerError(f"PostgreSQL did not start: {self.log_tail()}")
        with self.admin() as conn:
            conn.execute(f"create role {TEST_ROLE} login createdb password '{TEST_PASSWORD}'")

    def _launch(self, env: dict[str, str]) -> bool:
        log = open(self.log_file, "ab")
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.log_file, entry.pw_uid, entry.pw_gid)
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={self.socket_dir}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
            preexec_fn=_die_with_parent, **self._spawn_kwargs(),
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with self.admin():
                    return True
            except Exception:
                time.sleep(0.05)
        return False

    def admin(self):
        """A connection as the superuser over the Unix socket (autocommit), for the fixtures."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres",
                               dbname="postgres", autocommit=True, connect_timeout=5)

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database owned by the test role; its URL (without the password)."""
        name = f"{prefix}{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'create database "{name}" owner {TEST_ROLE}')
        return self.url(name)

    def url(self, dbname: str) -> str:
        return f"postgresql://{TEST_ROLE}@{LOOPBACK}:{self.port}/{dbname}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1].split("?")[0]
        with self.admin() as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')

    def backends(self, dbname: str) -> list[int]:
        """The pids of the server processes serving clients of ``dbname``."""
        with self.admin() as conn:
            return [r[0] for r in conn.execute(
                "select pid from pg_stat_activity where datname = %s and pid != pg_backend_pid()", [dbname])]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, then stop
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------- the engine the tests run on

ENGINE_VARIABLE = "MAIL2TICKET_TEST_ENGINE"  # "postgresql": write_config and Desk use PostgreSQL
_shared: PostgresServer | None = None
_created: list[str] = []


def engine_under_test() -> str:
    """'postgresql' when this run tests the PostgreSQL engine (MAIL2TICKET_TEST_ENGINE), else 'sqlite'."""
    return "postgresql" if os.environ.get(ENGINE_VARIABLE, "").strip().lower() in ("postgresql", "postgres", "pg") \
        else "sqlite"


def shared_server() -> PostgresServer:
    """This pytest process's server (started at the first use; the session fixture
    postgres_server stops it at the end)."""
    global _shared
    if _shared is None or not _shared.running:
        bindir = find_postgres()
        if bindir is None:
            raise ServerError(POSTGRES_MISSING)
        _shared = PostgresServer(bindir)
        try:
            _shared.start()
        except BaseException:
            _shared.stop()
            _shared = None
            raise
    return _shared


def stop_shared_server() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


def fresh_database() -> str:
    """A new database on the shared server, dropped after the test (drop_created)."""
    url = shared_server().new_database()
    _created.append(url)
    return url


def drop_created() -> None:
    """Drop the databases fresh_database made for the test that just ended."""
    while _created:
        url = _created.pop()
        if _shared is not None and _shared.running:
            with contextlib.suppress(Exception):
                _shared.drop_database(url)
