"""The PostgreSQL server the tests start: a cluster of their own, made with initdb in a temporary
directory, run as an unprivileged user (initdb and postgres refuse root), on a loopback port.

One server per pytest process (so one per pytest-xdist worker: its own port and directory); a
fresh database per test (``new_database``), owned by a test role that signs in with a password
over TCP (scram-sha-256: the password chain is really exercised). A test's database is a copy of a
template that mail2ticket's own schema code migrated once in this process (``CREATE DATABASE ...
TEMPLATE``: about a tenth of the cost of running the migrations again for every test; the
template's name holds a hash of the names of tickets/pg_schema.PG_MIGRATIONS, so a new step makes
a new template). ``new_database(migrated=False)`` gives an empty database instead, for the tests of
the schema's creation itself. Nothing is mocked: it is the
Debian package ``postgresql``'s own server. fsync is off: a test cluster need not survive a power
cut, and the tests that kill a client (not the server) still see every commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
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


# Everything a database of the tests holds besides its rows: its schemas, relations, columns,
# constraints, indexes, views, functions, triggers, collations, sequences, the schema steps
# applied (m2t_schema) and large objects. A database is reused for the next test only while this
# is the template's (recycle_database); a test that changed any of it leaves one that is dropped.
SCHEMA_FINGERPRINT = """
    select md5(string_agg(item, E'\\n' order by item)) from (
        select format('schema %s', nspname) as item from pg_namespace where nspname not like 'pg\\_%'
            and nspname <> 'information_schema'
        union all select format('relation %s %s', c.oid::regclass, c.relkind) from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
        union all select format('column %s.%s %s %s %s', a.attrelid::regclass, a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity) from pg_attribute a
            join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
            where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
              and a.attnum > 0 and not a.attisdropped
        union all select format('constraint %s %s', conrelid::regclass, pg_get_constraintdef(oid))
            from pg_constraint where connamespace = 'public'::regnamespace
        union all select format('index %s', pg_get_indexdef(indexrelid)) from pg_index i
            join pg_class c on c.oid = i.indrelid where c.relnamespace = 'public'::regnamespace
        union all select format('view %s %s', c.oid::regclass, md5(pg_get_viewdef(c.oid))) from pg_class c
            where c.relkind in ('v', 'm') and c.relnamespace = 'public'::regnamespace
        union all select format('function %s %s', p.oid::regprocedure, md5(p.prosrc)) from pg_proc p
            where p.pronamespace = 'public'::regnamespace
        union all select format('trigger %s', pg_get_triggerdef(oid)) from pg_trigger where not tgisinternal
        union all select format('collation %s', collname) from pg_collation
            where collnamespace = 'public'::regnamespace
        union all select format('sequence %s.%s %s', schemaname, sequencename, start_value) from pg_sequences
        union all select format('step %s', name) from m2t_schema
        union all select format('large objects %s', count(*)) from pg_largeobject_metadata
    ) items
"""

# Every row of every table of mail2ticket's schema deleted (not m2t_schema's: the schema is
# kept), the sequences (identity columns) restarted: a test's database as the template has it.
# DELETE, not TRUNCATE: TRUNCATE makes new files for every table and costs ~5x more.
# session_replication_role = replica: the foreign keys and the full-text trigger are not checked.
EMPTY_DATABASE = """
    do $$
    declare item record;
    begin
        perform set_config('session_replication_role', 'replica', true);
        for item in select format('%I.%I', schemaname, tablename) as name from pg_tables
                where schemaname not in ('pg_catalog', 'information_schema') and tablename <> 'm2t_schema' loop
            execute 'delete from ' || item.name;
        end loop;
        for item in select format('%I.%I', schemaname, sequencename) as name from pg_sequences loop
            execute 'alter sequence ' || item.name || ' restart';
        end loop;
    end
    $$
"""
RECYCLE_MAX_BYTES = 64 * 1024 * 1024  # a bigger database is dropped, not emptied (its dead rows' space)


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
        self._templates: dict[str, str] = {}  # template database -> its SCHEMA_FINGERPRINT
        self._origin: dict[str, str] = {}  # a database copied from a template -> that template
        self._spare: dict[str, list[str]] = {}  # template -> emptied databases of its schema (recycle_database)

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

    def admin(self, dbname: str = "postgres"):
        """A connection as the superuser over the Unix socket (autocommit), for the fixtures."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres",
                               dbname=dbname, autocommit=True, connect_timeout=5)

    def _new_name(self, prefix: str = "t") -> str:
        return f"{prefix}{os.getpid()}_{next(self._names)}"

    def new_database(self, prefix: str = "t", *, migrated: bool = False) -> str:
        """A new database owned by the test role; its URL (without the password). Empty, or with
        ``migrated`` mail2ticket's whole schema and no rows: an emptied database of a test that
        ended (recycle_database) or else a copy of the template (template_database)."""
        template = self.template_database() if migrated else None
        if template is not None and self._spare.get(template):
            return self.url(self._spare[template].pop())
        name = self._new_name(prefix)
        with self.admin() as conn:
            conn.execute(f'create database "{name}" owner {TEST_ROLE}' + (f' template "{template}"' if template else ""))
        if template is not None:
            self._origin[name] = template
        return self.url(name)

    def template_database(self) -> str:
        """The name of a database with mail2ticket's whole schema and no rows, made and migrated
        by mail2ticket itself (open_db) at the first call, then only copied: no one connects to
        it again (CREATE DATABASE ... TEMPLATE needs that). Named after the steps of
        tickets/pg_schema.PG_MIGRATIONS, so a changed list of steps gets a template of its own."""
        from mail2ticket.tickets import pg_schema
        from mail2ticket.tickets.db import open_db

        steps = "\n".join(name for name, _ in pg_schema.PG_MIGRATIONS)
        name = "m2t_template_" + hashlib.sha256(steps.encode()).hexdigest()[:12]
        if name not in self._templates:
            with self.admin() as conn:
                conn.execute(f'drop database if exists "{name}"')
                conn.execute(f'create database "{name}" owner {TEST_ROLE}')
            open_db(self.url(name), password=TEST_PASSWORD).close()
            with self.admin(name) as conn:
                fingerprint = conn.execute(SCHEMA_FINGERPRINT).fetchone()[0]
            with self.admin() as conn:
                conn.execute(f'alter database "{name}" with is_template true allow_connections false')
            self._templates[name] = fingerprint
        return name

    def recycle_database(self, url: str) -> None:
        """The database of a test that ended, made ready for the next one (new_database(migrated=True)):
        its clients disconnected, renamed (a process of the old test that is still alive cannot
        connect to it again: it knows only the old name), every row of every table deleted and
        the sequences restarted, so the next test sees no row of this one. A database whose
        schema is no longer the template's (SCHEMA_FINGERPRINT: a test changed it), that has
        grown past RECYCLE_MAX_BYTES, or that was not copied from the current template is
        dropped instead, as is any database when something here fails."""
        import psycopg

        name = url.rsplit("/", 1)[1].split("?")[0]
        template = self._origin.pop(name, None)
        if template is None or template != self.template_database():
            self.drop_database(url)
            return
        fresh = self._new_name()
        try:
            with self.admin() as conn:
                for attempt in itertools.count():
                    conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                                 "where datname = %s and pid != pg_backend_pid()", [name])
                    try:
                        conn.execute(f'alter database "{name}" rename to "{fresh}"')
                        break
                    except psycopg.errors.ObjectInUse:  # a client connected again in between
                        if attempt >= 50:
                            raise
                        time.sleep(0.01)
            with self.admin(fresh) as conn:
                fingerprint, size = conn.execute(
                    f"select ({SCHEMA_FINGERPRINT}), pg_database_size(current_database())").fetchone()
                if fingerprint != self._templates[template] or size > RECYCLE_MAX_BYTES:
                    raise ValueError("not the template's schema, or too big to reuse")
                conn.execute(EMPTY_DATABASE)
        except Exception:
            for gone in (name, fresh):
                with contextlib.suppress(Exception):
                    self.drop_database(self.url(gone))
            return
        self._origin[fresh] = template
        self._spare.setdefault(template, []).append(fresh)

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


def fresh_database(*, migrated: bool = True) -> str:
    """A new database on the shared server for this test, with mail2ticket's schema and no rows
    (PostgresServer.new_database), emptied for the next test or dropped after it (drop_created);
    with ``migrated=False`` an empty database (no schema), dropped after the test."""
    url = shared_server().new_database(migrated=migrated)
    _created.append(url)
    return url


def drop_created() -> None:
    """Drop the databases fresh_database made for the test that just ended, or empty them for
    the next test (PostgresServer.recycle_database)."""
    while _created:
        url = _created.pop()
        if _shared is not None and _shared.running:
            with contextlib.suppress(Exception):
                _shared.recycle_database(url)
