"""Past one host (issue 17.7): SQLite against PostgreSQL, several daemons, takeover, triage.

Run from the repository root:

    python3 benchmarks/bench_scaling.py                 # the full sizes (see below for the time)
    python3 benchmarks/bench_scaling.py --quick         # a few minutes: small sizes, short leases
    python3 benchmarks/bench_scaling.py --only 1,3      # some parts only
    python3 benchmarks/bench_scaling.py --only 4 --keep --dir /var/tmp/m2t-scaling   # keep the big database

It starts its own Dovecot (tests/servers.py) and its own PostgreSQL cluster (tests/postgres.py's
PostgresServer, but durable: fsync, synchronous_commit and full_page_writes on, as a production
server runs, where the tests turn them off), both on 127.0.0.1, and prints, in one run:

1. import: `mail2ticket poll` of the same N mixed messages (benchmarks/mailgen.py) into a fresh
   SQLite file and into a fresh PostgreSQL database: messages/s each and the ratio.
2. daemons: one, two and three `mail2ticket run` daemons sharing eight push accounts on one fresh
   PostgreSQL database each time. The daemons start on empty mailboxes; once the leases are
   shared out, --daemon-messages messages (in eight equal parts, appended beforehand to a folder
   of each mailbox) are moved into the eight INBOXes at once (doveadm move), and the time runs
   until every message is in the import ledger: total messages/s and the change with each daemon.
3. takeover: two daemons on eight accounts; the one holding the most leases is killed (SIGKILL)
   and a new mail is appended to one of its accounts; the time until the survivor holds all eight
   leases and until that mail is a ticket. --takeovers repetitions (a new daemon replaces the
   dead one each time), the median, with lease_ttl and lease_renew printed beside.
4. triage on PostgreSQL: bench_triage.py's commands, each run as a user runs it (a new process,
   start-up included; the target is under 0.5 s), on a database of --tickets tickets made from
   bench_triage's own rows (bench_triage.batches) written with COPY into the real schema (open_db
   on the URL), then the indexes, the real search index (filled on every core with the function
   its trigger calls, tickets/fts_pg.py; the trigger on again) and VACUUM ANALYZE (what
   autovacuum does by itself after a bulk load). With --keep the cluster lives in --dir and the
   database is built once: later runs reuse it.

The load average is printed before and after each part: the machine may be shared. At the end a
Markdown table of every figure, ready for docs/scaling.md.

How long it takes (2 vCPUs): --quick (N = 1,000, 1,600 messages for the daemons, leases 2 s/6 s,
3 takeovers, 20,000 tickets, 1 run each) took 764 s at a load average of 11-18 (other test
suites on the same two cores): part 1 76 s, part 2 372 s (of which 110 s filling the source
mailbox three times, since fixed: once), part 3 44 s, part 4 221 s (build 85 s); on a quiet
machine expect a third of that. The full sizes (N = 10,000 and 3 runs, 8,000 messages for the
daemons, leases 10 s/30 s, 3 takeovers, 1,000,000 tickets and 3 runs of each command) were not
run on the shared machine; scaled from the quick run they need about 12 minutes for parts 1-3 on
a quiet machine and 10-20 more the first time to build the million tickets (100,000 took 198 s
at a load of 10-13), which --keep then saves: build it first with `--only 4 --keep`, then run
`--keep` (docs/scaling.md, "Figures").
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_triage  # noqa: E402
import mailgen  # noqa: E402

from tests.postgres import TEST_PASSWORD, PostgresServer, find_postgres  # noqa: E402
from tests.servers import LOOPBACK, CertificateAuthority, Dovecot, free_port  # noqa: E402

ACCOUNTS = 8
STAGING = "Staging"
SOURCE = "Source"


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def say(text: str) -> None:
    print(text, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f" ({min(values):.1f}-{max(values):.1f})"


class DurablePostgres(PostgresServer):
    """tests/postgres.py's private cluster, run as a production server runs (fsync and
    synchronous_commit on), optionally kept in a directory of its own between runs (--keep)."""

    def __init__(self, bindir: Path, keep_dir: Path | None) -> None:
        super().__init__(bindir)
        self.keep_dir = keep_dir
        if keep_dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = keep_dir / "postgresql"
            self.data = self.dir / "data"
            self.socket_dir = self.dir / "run"
            self.log_file = self.dir / "postgres.log"

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            super().start()  # initdb, launch, the role
            return
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "HOME": str(self.dir)}
        for _ in range(5):
            self.port = free_port()
            if self._launch(env):
                return
        raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}")

    def _launch(self, env: dict[str, str]) -> bool:
        # The command line of PostgresServer with the durability the tests turn off turned back on
        # (a -c given twice: the last one counts).
        real_popen = subprocess.Popen

        def popen(args, *a, **kw):
            if args and str(args[0]).endswith("/postgres"):
                args = [*args, "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
                        "-c", "shared_buffers=256MB", "-c", "max_wal_size=4GB"]
            return real_popen(args, *a, **kw)

        subprocess.Popen = popen  # type: ignore[misc]
        try:
            return super()._launch(env)
        finally:
            subprocess.Popen = real_popen  # type: ignore[misc]

    def stop(self, timeout: float = 60.0) -> None:
        if self.keep_dir is None:
            super().stop(timeout)
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout)

    def connect(self, url: str, **kw):
        import psycopg

        return psycopg.connect(url, password=TEST_PASSWORD, autocommit=True, **kw)

    def database(self, name: str, *, fresh: bool = True) -> str:
        """The URL of database ``name`` (dropped and made again when ``fresh``)."""
        url = self.url(name)
        with self.admin() as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone()
            if exists and fresh:
                conn.execute(f'drop database "{name}" with (force)')
            if fresh or not exists:
                conn.execute(f'create database "{name}" owner m2t')
        return url


class Bench:
    """The servers, the credentials (the accounts' and the database's) and the processes started."""

    def __init__(self, base: Path, dovecot: Dovecot | None, pg: DurablePostgres):
        self.base = base
        self.dovecot = dovecot
        self.pg = pg
        self.creds = base / "credentials"
        self.creds.mkdir(parents=True, exist_ok=True)
        (self.creds / "database").write_text(TEST_PASSWORD)  # the systemd credential 'database'
        self.procs: list[subprocess.Popen] = []
        self._configs = 0
        self._source = None

    def environ(self, home: Path) -> dict:
        env = dict(os.environ)
        env.update(CREDENTIALS_DIRECTORY=str(self.creds), PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
                   XDG_DATA_HOME=str(home))
        env.pop("NOTIFY_SOCKET", None)
        env.pop("NO_COLOR", None)
        return env

    def config(self, database: str, users, *, push: bool = False, daemon: tuple[str, str] | None = None,
               extra: str = "") -> Path:
        self._configs += 1
        path = self.base / f"config{self._configs}.toml"
        # One attachments directory for every daemon of the config, as docs/scaling.md asks.
        lines = [f'[storage]\ndatabase = "{database}"\nattachments = "{self.base / f"files{self._configs}"}"\n',
                 '[schedule]\npoll = "60m"\noutbox = "1h"\noverdue = "1h"\n',
                 '[limits]\nmax_message_size = "200MB"\nmax_attachment_size = "200MB"\n', extra]
        if daemon:
            lines.append(f'[daemon]\nlease_renew = "{daemon[0]}"\nlease_ttl = "{daemon[1]}"\n')
        for user in users:
            (self.creds / user.name).write_text(user.password)
            lines.append(
                f'[[accounts]]\nname = "{user.name}"\nemail = "{user.email}"\nimap_host = "{LOOPBACK}"\n'
                f'imap_port = {self.dovecot.imaps_port}\nca_file = "{self.dovecot.ca_file}"\n'
                f"acknowledge = false\npush = {'true' if push else 'false'}\n"
            )
        path.write_text("\n".join(lines))
        return path

    def daemon(self, config: Path, name: str) -> subprocess.Popen:
        home = self.base / f"home-{name}"  # its own data directory (its lock files): as on its own host
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "mail2ticket", "--config", str(config), "run"],
                                env=self.environ(home), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.base)
        log.close()
        self.procs.append(proc)
        return proc

    def source(self, n: int):
        """A user whose folder Source holds ``n`` mixed messages (bench_import's), filled once;
        the parts copy from it with doveadm (server-side, fast) instead of appending again."""
        if self._source is None or self._source[1] < n:
            user = self.dovecot.add_user()
            self.dovecot.create_folder(user, SOURCE)
            t = time.perf_counter()
            size, rng = 0, random.Random(1)  # the mailbox of bench_import.py (mailgen.mailbox(n))
            for start in range(0, n, 2000):
                msgs = [mailgen.message(i, rng) for i in range(start, min(n, start + 2000))]
                size += sum(map(len, msgs))
                self.dovecot.append_many(user, msgs, folder=SOURCE)
            say(f"    source mailbox: {n:,} mixed messages, {size / 1e6:.1f} MB, appended in "
                f"{time.perf_counter() - t:.0f} s")
            self._source = (user, n)
        return self._source[0]

    def copy(self, n: int, to_user, folder: str, first: int = 1) -> None:
        """Messages first..first+n-1 of the source mailbox into ``folder`` of ``to_user``."""
        source = self.source(first + n - 1)
        self.dovecot.doveadm("copy", "-u", to_user.email, folder, "user", source.email,
                             "mailbox", SOURCE, "uid", f"{first}:{first + n - 1}")

    def stop_daemons(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def wait_for(what: str, check, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def ledger_count(conn) -> int:
    return conn.execute("select count(*) from sources").fetchone()[0]


def holders(conn) -> dict[str, list[str]]:
    """daemon id -> the accounts whose unexpired lease it holds (the database's clock)."""
    import psycopg

    try:
        rows = conn.execute(
            "select daemon_id, account from account_leases where expires_at > extract(epoch from clock_timestamp())"
        ).fetchall()
    except psycopg.errors.UndefinedTable:  # no daemon has made the schema yet
        return {}
    out: dict[str, list[str]] = {}
    for daemon_id, account in rows:
        out.setdefault(daemon_id, []).append(account)
    return out


def daemon_ids(conn) -> dict[int, str]:
    """pid -> daemon id of the daemons registered and not stopping."""
    return {pid: i for i, pid in conn.execute("select id, pid from daemons where stopping = 0").fetchall()}


def shared_out(conn, n_daemons: int) -> bool:
    h = holders(conn)
    share = -(-ACCOUNTS // n_daemons)
    return (len(h) == n_daemons and sum(map(len, h.values())) == ACCOUNTS
            and max(map(len, h.values())) <= share)


# ------------------------------------------------------------------------------ part 1

def part_import(bench: Bench, n: int, runs: int) -> dict:
    say(f"\n[1] import of N = {n:,} mixed messages by 'mail2ticket poll', SQLite and PostgreSQL ({load()})")
    user = bench.dovecot.add_user()
    bench.copy(n, user, "INBOX")
    walls: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    for run in range(runs):
        for engine in walls:
            if engine == "sqlite":
                database = str(bench.base / f"import{run}.db")
            else:
                database = bench.pg.database(f"import{run}")
            config = bench.config(database, [user])
            home = bench.base / f"home-import-{engine}{run}"
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "mail2ticket", "--config", str(config), "poll"],
                                  env=bench.environ(home), capture_output=True, text=True)
            walls[engine].append(time.perf_counter() - t)
            if done.returncode != 0:
                raise RuntimeError(f"poll into {engine} failed: {done.stderr[-2000:]}")
            if engine == "postgresql":
                with bench.pg.connect(database) as conn:
                    stored = ledger_count(conn)
                bench.pg.database(f"import{run}")  # emptied: the disk is not ours
            else:
                import sqlite3

                with sqlite3.connect(database) as conn:
                    stored = ledger_count(conn)
                for f in bench.base.glob(f"import{run}.db*"):
                    f.unlink()
            if stored != n:
                raise RuntimeError(f"poll into {engine} stored {stored} of {n} messages")
            say(f"    run {run + 1}, {engine:<10}: {walls[engine][-1]:6.1f} s, {n / walls[engine][-1]:5.0f} msg/s "
                f"({load()})")
    result = {e: median(w) for e, w in walls.items()}
    say(f"    SQLite {n / result['sqlite']:.0f} msg/s, PostgreSQL {n / result['postgresql']:.0f} msg/s, "
        f"PostgreSQL/SQLite {result['sqlite'] / result['postgresql']:.2f} ({load()})")
    return {"n": n, "walls": walls, **result}


# ------------------------------------------------------------------------------ part 2

def part_daemons(bench: Bench, total: int, counts: list[int]) -> dict:
    say(f"\n[2] {', '.join(map(str, counts))} daemon(s) sharing {ACCOUNTS} push accounts on one PostgreSQL, "
        f"{total:,} messages ({load()})")
    per = total // ACCOUNTS
    results = {}
    users = [bench.dovecot.add_user() for _ in range(ACCOUNTS)]
    bench.source(per * ACCOUNTS)  # filled once, all of it (not grown account by account)
    for i, user in enumerate(users):
        bench.dovecot.create_folder(user, STAGING)
        bench.copy(per, user, STAGING, first=1 + i * per)
    for k in counts:
        url = bench.pg.database(f"daemons{k}")
        config = bench.config(url, users, push=True)
        with bench.pg.connect(url) as conn:
            for i in range(k):
                bench.daemon(config, f"d{k}-{i}")
            wait_for("the leases to be shared out", lambda k=k: shared_out(conn, k), 120, 0.25)
            shares = sorted(len(a) for a in holders(conn).values())
            t = time.perf_counter()
            for user in users:
                bench.dovecot.doveadm("move", "-u", user.email, "INBOX", "mailbox", STAGING, "all")
            moved = time.perf_counter() - t
            wait_for(f"{per * ACCOUNTS} tickets", lambda: ledger_count(conn) >= per * ACCOUNTS, 3600, 0.2)
            wall = time.perf_counter() - t
            bench.stop_daemons()
        for user in users:  # back where they were, for the next number of daemons (a fresh database)
            bench.dovecot.doveadm("move", "-u", user.email, STAGING, "mailbox", "INBOX", "all")
        bench.pg.database(f"daemons{k}")  # emptied
        results[k] = wall
        say(f"    {k} daemon(s), accounts {shares}: {wall:6.1f} s, {per * ACCOUNTS / wall:5.0f} msg/s "
            f"(the moves took {moved:.1f} s; {load()})")
    return {"messages": per * ACCOUNTS, "walls": results}


# ------------------------------------------------------------------------------ part 3

def part_takeover(bench: Bench, renew: str, ttl: str, repeats: int) -> dict:
    say(f"\n[3] takeover of a dead daemon's accounts: 2 daemons, {ACCOUNTS} push accounts, "
        f"lease_renew {renew}, lease_ttl {ttl}, {repeats} kills ({load()})")
    users = [bench.dovecot.add_user() for _ in range(ACCOUNTS)]
    by_name = {u.name: u for u in users}
    url = bench.pg.database("takeover")
    config = bench.config(url, users, push=True, daemon=(renew, ttl))
    lease_times, ticket_times = [], []
    with bench.pg.connect(url) as conn:
        live = [bench.daemon(config, "t0"), bench.daemon(config, "t1")]
        for rep in range(repeats):
            wait_for("the leases to be shared out", lambda: shared_out(conn, 2), 180, 0.25)
            ids = daemon_ids(conn)
            h = holders(conn)
            victim = max(live, key=lambda p: len(h.get(ids.get(p.pid, ""), [])))
            survivor = next(p for p in live if p is not victim)
            account = h[ids[victim.pid]][0]
            subject = f"takeover {rep} {time.time()}"
            victim.kill()
            t = time.perf_counter()
            victim.wait()
            bench.dovecot.append(by_name[account], mailgen.tiny(rep).replace(b"tiny", subject.encode(), 1))
            survivor_id = ids[survivor.pid]
            lease_at = ticket_at = None
            deadline = time.monotonic() + 600
            while (lease_at is None or ticket_at is None) and time.monotonic() < deadline:
                now = time.perf_counter() - t
                if lease_at is None and len(holders(conn).get(survivor_id, [])) == ACCOUNTS:
                    lease_at = now
                if ticket_at is None and conn.execute("select 1 from tickets where subject like %s",
                                                      [subject + "%"]).fetchone():
                    ticket_at = now
                time.sleep(0.1)
            if lease_at is None or ticket_at is None:
                raise RuntimeError(f"no takeover within 600 s (leases {lease_at}, ticket {ticket_at}); "
                                   f"see the logs in {bench.base}")
            lease_times.append(lease_at)
            ticket_times.append(ticket_at)
            say(f"    kill {rep + 1}: every lease held by the survivor after {lease_at:.1f} s, the new mail "
                f"a ticket after {ticket_at:.1f} s ({load()})")
            live = [survivor, bench.daemon(config, f"t{rep + 2}")]
        bench.stop_daemons()
    return {"renew": renew, "ttl": ttl, "leases": lease_times, "ticket": ticket_times}


# ------------------------------------------------------------------------------ part 4

BIG_TABLES = ("tickets", "messages", "ticket_tags", "events", "messages_fts")


def build_pg(pg: DurablePostgres, url: str, n_tickets: int, seed: int) -> dict:
    """bench_triage's rows into the real PostgreSQL schema with COPY; indexes and search after."""
    import random

    from mail2ticket.tickets import fts_pg
    from mail2ticket.tickets.db import open_db

    t0 = time.perf_counter()
    open_db(url, password=TEST_PASSWORD).close()  # the schema: tables, indexes, search index, trigger
    with pg.connect(url) as conn:
        saved = conn.execute(
            "select indexname, indexdef from pg_indexes where schemaname = current_schema() "
            "and tablename = any(%s) and indexname not in (select conname from pg_constraint)",
            [list(BIG_TABLES)]).fetchall()
        for name, _ in saved:
            conn.execute(f'drop index "{name}"')
        # The search index is filled after the rows, on both cores (below), not row by row.
        conn.execute(f"alter table messages disable trigger {fts_pg.TRIGGER}")
        n_messages = 0
        with conn.transaction():
            for rows in bench_triage.batches(n_tickets, random.Random(seed)):
                for table, data in zip(bench_triage.COLUMNS, rows[:4], strict=True):
                    with conn.cursor().copy(f"copy {table} ({', '.join(bench_triage.COLUMNS[table])}) "
                                            "from stdin") as copy:
                        for row in data:
                            copy.write_row(row)
                n_messages = rows[5]
                print(f"\r    rows: {rows[4]:,} tickets, {n_messages:,} messages", end="", file=sys.stderr,
                      flush=True)
        print(file=sys.stderr)
        conn.execute("select setval(pg_get_serial_sequence('tickets', 'id'), (select max(id) from tickets))")
        t_rows = time.perf_counter()
        for name, sql in saved:
            if not name.startswith(fts_pg.FTS_TABLE):
                conn.execute(sql)
        t_index = time.perf_counter()
        conn.execute(f"alter table messages enable trigger {fts_pg.TRIGGER}")
        fill_search_index(pg, url, workers=os.cpu_count() or 1)
        for name, sql in saved:
            if name.startswith(fts_pg.FTS_TABLE):
                conn.execute(sql)
        t_fts = time.perf_counter()
        conn.execute("vacuum analyze")
        size = conn.execute("select pg_database_size(current_database())").fetchone()[0]
    t_end = time.perf_counter()
    return {"tickets": n_tickets, "messages": n_messages, "rows_s": t_rows - t0, "indexes_s": t_index - t_rows,
            "fts_s": t_fts - t_index, "analyze_s": t_end - t_fts, "total_s": t_end - t0, "size_mb": size / 1e6}


def fill_search_index(pg: DurablePostgres, url: str, workers: int) -> None:
    """Every message into the search index with the function the trigger of tickets/fts_pg.py
    calls (the same vectors), in ``workers`` connections at once over slices of the ids."""
    import threading

    from mail2ticket.tickets import fts_pg

    def work(k: int) -> None:
        with pg.connect(url) as conn:
            conn.execute(
                f"insert into {fts_pg.FTS_TABLE} (id, vector) select id, mail2ticket_search_vector(subject, "
                f"from_name, from_address, body_text) from messages where id % {workers} = {k}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pg.connect(url) as conn:
        indexed, stored = conn.execute(
            f"select (select count(*) from {fts_pg.FTS_TABLE}), (select count(*) from messages)").fetchone()
    if indexed != stored:
        raise RuntimeError(f"the search index holds {indexed} of {stored} messages")


def sqlite_triage(n_tickets: int, seed: int) -> Path:
    """bench_triage's SQLite database of ``n_tickets`` (in its own default place, so that either
    benchmark builds it once for both) and its config."""
    work = Path(tempfile.gettempdir()) / f"mail2ticket-bench-triage-{n_tickets}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "tickets.db").exists():
        t = time.perf_counter()
        bench_triage.build(work / "tickets.db", n_tickets, seed)
        say(f"    SQLite database for the comparison built in {time.perf_counter() - t:.0f} s ({work})")
    config = work / "config.toml"
    config.write_text(bench_triage.config_text("tickets.db"))
    return config


def part_triage(bench: Bench, n_tickets: int, runs: int, seed: int, compare: bool) -> dict:
    say(f"\n[4] triage commands on PostgreSQL, {n_tickets:,} tickets ({load()})")
    name = f"triage{n_tickets}"
    url = bench.pg.database(name, fresh=False)
    with bench.pg.connect(url) as conn:
        built = conn.execute("select to_regclass('tickets') is not null").fetchone()[0] and conn.execute(
            "select count(*) from tickets").fetchone()[0] == n_tickets
    if built:
        with bench.pg.connect(url) as conn:
            m = conn.execute("select count(*) from messages").fetchone()[0]
            size = conn.execute("select pg_database_size(current_database())").fetchone()[0]
        stats = None
        say(f"    using the kept database {name}: {n_tickets:,} tickets, {m:,} messages, {size / 1e6:,.0f} MB")
    else:
        url = bench.pg.database(name)
        stats = build_pg(bench.pg, url, n_tickets, seed)
        say(f"    built {stats['tickets']:,} tickets and {stats['messages']:,} messages in {stats['total_s']:.0f} s "
            f"(rows {stats['rows_s']:.0f} s, indexes {stats['indexes_s']:.0f} s, search index "
            f"{stats['fts_s']:.0f} s, vacuum analyze {stats['analyze_s']:.0f} s); {stats['size_mb']:,.0f} MB "
            f"({load()})")
    config = bench.base / "triage.toml"
    config.write_text(bench_triage.config_text(url))
    env = {**bench.environ(bench.base / "home-triage"), "MAIL2TICKET_CONFIG": str(config)}
    sqlite_env = None
    if compare:
        sqlite_config = sqlite_triage(n_tickets, seed)
        sqlite_env = {**bench.environ(bench.base / "home-triage"), "MAIL2TICKET_CONFIG": str(sqlite_config)}
    base = bench_triage.mail2ticket_command()
    rows = []
    say(f"    {'command':<46} {'best':>8} {'median':>8} {'lines':>8}" + ("   SQLite: median, lines" if compare else ""))
    for label, argv in bench_triage.commands(n_tickets):
        times, lines = bench_triage.time_command(label, [*base, *argv], env, runs)
        row = [label, min(times), median(times), lines, None, None]
        text = f"    {label:<46} {min(times):>7.3f}s {median(times):>7.3f}s {lines:>8,}"
        if sqlite_env:  # right after, under the same load
            s_times, s_lines = bench_triage.time_command(label, [*base, *argv], sqlite_env, runs)
            row[4:] = [median(s_times), s_lines]
            text += f"   {median(s_times):>7.3f}s {s_lines:>8,}"
        rows.append(tuple(row))
        say(text)
    say(f"    ({load()})")
    return {"tickets": n_tickets, "build": stats, "rows": rows}


# ------------------------------------------------------------------------------ the table

def table(results: dict, args) -> str:
    out = ["| part | figure | value |", "|---|---|---:|"]
    if "import" in results:
        r = results["import"]
        n = r["n"]
        out.append(f"| 1. import, `mail2ticket poll`, N = {n:,} | SQLite | {r['sqlite']:.1f} s, "
                   f"{n / r['sqlite']:.0f} msg/s |")
        out.append(f"| | PostgreSQL | {r['postgresql']:.1f} s, {n / r['postgresql']:.0f} msg/s |")
        out.append(f"| | PostgreSQL / SQLite (msg/s) | {r['sqlite'] / r['postgresql']:.2f} |")
    if "daemons" in results:
        r = results["daemons"]
        m = r["messages"]
        first = next(iter(r["walls"].values()))
        for k, wall in r["walls"].items():
            label = f"| 2. daemons sharing {ACCOUNTS} accounts, {m:,} messages" if k == min(r["walls"]) else "|"
            out.append(f"{label} | {k} daemon{'s' if k > 1 else ''} | {wall:.1f} s, {m / wall:.0f} msg/s "
                       f"(x{first / wall:.2f}) |")
    if "takeover" in results:
        r = results["takeover"]
        out.append(f"| 3. takeover after SIGKILL, lease_renew {r['renew']}, lease_ttl {r['ttl']}, "
                   f"median of {len(r['leases'])} | every lease held by the survivor | "
                   f"{median(r['leases']):.1f} s{spread(r['leases'])} |")
        out.append(f"| | a new mail to a dead daemon's account is a ticket | "
                   f"{median(r['ticket']):.1f} s{spread(r['ticket'])} |")
    if "triage" in results:
        r = results["triage"]
        b = r["build"]
        if b:
            out.append(f"| 4. triage on PostgreSQL, {r['tickets']:,} tickets | build ({b['messages']:,} messages, "
                       f"{b['size_mb']:,.0f} MB) | {b['total_s']:.0f} s |")
        worst = max(r["rows"], key=lambda x: x[2])
        if r["rows"][0][4] is not None:
            out.append(f"| | commands under 0.5 s on SQLite, the same rows, run right after each | "
                       f"{sum(1 for x in r['rows'] if x[4] < 0.5)} of {len(r['rows'])} |")
        under = sum(1 for x in r["rows"] if x[2] < 0.5)
        first = "" if b else f"4. triage on PostgreSQL, {r['tickets']:,} tickets (kept)"
        out.append(f"| {first} | commands under 0.5 s (median) | {under} of {len(r['rows'])} |")
        out.append(f"| | slowest: {worst[0]} | {worst[2]:.3f} s |")
        for label, _best, med, _lines, s_med, _s_lines in r["rows"]:
            beside = f" (SQLite {s_med:.3f} s)" if s_med is not None else ""
            out.append(f"| | `{label}` | {med:.3f} s{beside} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and short leases: a few minutes")
    parser.add_argument("--only", default="1,2,3,4", help="the parts to run, such as 1,3 (default all)")
    parser.add_argument("--messages", type=int, help="N for part 1 (default 10,000; --quick 1,000)")
    parser.add_argument("--runs", type=int, help="runs of part 1 and of each triage command (default 3; --quick 1)")
    parser.add_argument("--daemon-messages", type=int, help="messages for part 2 (default 8,000; --quick 1,600)")
    parser.add_argument("--daemons", default="1,2,3", help="the numbers of daemons of part 2 (default 1,2,3)")
    parser.add_argument("--lease-renew", help="[daemon] lease_renew for part 3 (default 10s; --quick 2s)")
    parser.add_argument("--lease-ttl", help="[daemon] lease_ttl for part 3 (default 30s; --quick 6s)")
    parser.add_argument("--takeovers", type=int, default=3, help="kills in part 3 (default 3)")
    parser.add_argument("--tickets", type=int, help="tickets for part 4 (default 1,000,000; --quick 20,000)")
    parser.add_argument("--compare-sqlite", action=argparse.BooleanOptionalAction, default=None,
                        help="run each triage command on bench_triage's SQLite database of the same size too, "
                             "right after (default with --quick; built once in bench_triage's own place)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the PostgreSQL cluster (and part 4's database) in --dir for later runs")
    parser.add_argument("--dir", type=Path, help="where --keep keeps it (default $TMPDIR/mail2ticket-bench-scaling)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    # SIGTERM (and SIGINT, which a background job ignores) stops the daemons and the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    quick = args.quick
    args.messages = args.messages or (1_000 if quick else 10_000)
    args.runs = args.runs or (1 if quick else 3)
    args.daemon_messages = args.daemon_messages or (1_600 if quick else 8_000)
    args.lease_renew = args.lease_renew or ("2s" if quick else "10s")
    args.lease_ttl = args.lease_ttl or ("6s" if quick else "30s")
    args.tickets = args.tickets or (20_000 if quick else 1_000_000)
    if args.compare_sqlite is None:
        args.compare_sqlite = quick
    parts = {int(p) for p in args.only.split(",") if p.strip()}
    keep_dir = (args.dir or Path(tempfile.gettempdir()) / "mail2ticket-bench-scaling") if args.keep else None

    bindir = find_postgres()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (initdb and postgres): apt-get install postgresql")
    say(f"Machine: {os.cpu_count()} cores, {load()}; Python {sys.version.split()[0]}; PostgreSQL {bindir.parent.name}")
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="m2t-scaling-"))
    os.chmod(base, 0o755)
    results: dict = {}
    bench = None
    try:
        with DurablePostgres(bindir, keep_dir) as pg:
            dovecot = Dovecot(CertificateAuthority(base / "ca")) if parts & {1, 2, 3} else None
            if dovecot:
                dovecot.start()
            try:
                bench = Bench(base, dovecot, pg)
                for part in sorted(parts):
                    t = time.perf_counter()
                    if part == 1:
                        results["import"] = part_import(bench, args.messages, args.runs)
                    elif part == 2:
                        results["daemons"] = part_daemons(bench, args.daemon_messages,
                                                          [int(k) for k in args.daemons.split(",")])
                    elif part == 3:
                        results["takeover"] = part_takeover(bench, args.lease_renew, args.lease_ttl, args.takeovers)
                    elif part == 4:
                        results["triage"] = part_triage(bench, args.tickets, args.runs, args.seed, args.compare_sqlite)
                    say(f"    part {part} took {time.perf_counter() - t:.0f} s ({load()})")
            finally:
                if bench:
                    bench.stop_daemons()
                if dovecot:
                    dovecot.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    say(f"\nFigures ({'--quick, ' if quick else ''}{os.cpu_count()} cores, {load()} at the end; "
        f"the whole run took {time.perf_counter() - started:.0f} s):\n")
    say(table(results, args))


if __name__ == "__main__":
    main()
