"""Import speed, idle-poll cost and memory of mail2ticket against a private Dovecot on loopback.

Run from the repository root:

    python3 benchmarks/bench_import.py                 # N = 10,000, 3 runs each
    python3 benchmarks/bench_import.py --messages 2000 --runs 1 --skip-large   # quick look

It prints, side by side: (a) a bare imapclient fetch loop, (b) a minimal single-process
importer (fetch, parse with the email package, text body, SQLite insert, WAL, one transaction
per batch), (c) `mail2ticket poll` into a fresh database, and the ratios c/a and c/b; then the
cost of a poll that finds nothing new on mailboxes of 1,000 and 100,000 messages, the peak RSS
of the imports, and the idle daemon's RSS and CPU with 20 accounts. Figures are medians of
--runs runs, with min and max.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mailgen  # noqa: E402
from imapclient import IMAPClient  # noqa: E402

from tests.servers import CertificateAuthority, Dovecot  # noqa: E402

BATCH = 200


def fmt(values: list[float], unit: str = "s") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.3f} {unit}"
    return f"{med:.3f} {unit} (min {min(values):.3f}, max {max(values):.3f})"


def client(dovecot: Dovecot, user) -> IMAPClient:
    return dovecot.connect(user, timeout=120)


def bare_fetch(dovecot: Dovecot, user) -> int:
    """(a) fetch only: UID FETCH BODY.PEEK[] in batches of 200."""
    n = 0
    with client(dovecot, user) as c:
        c.select_folder("INBOX", readonly=True)
        uids = sorted(c.search("ALL"))
        for i in range(0, len(uids), BATCH):
            for _uid, data in c.fetch(uids[i : i + BATCH], ["BODY.PEEK[]"]).items():
                n += len(data[b"BODY[]"]) > 0
    return n


def minimal_importer(dovecot: Dovecot, user, db_path: Path) -> int:
    """(b) fetch, parse with the email package, take the text body, insert into SQLite (WAL)."""
    db = sqlite3.connect(db_path)
    db.execute("pragma journal_mode=wal")
    db.execute("create table m (uid integer primary key, subject text, sender text, body text, raw blob)")
    n = 0
    with client(dovecot, user) as c:
        c.select_folder("INBOX", readonly=True)
        uids = sorted(c.search("ALL"))
        for i in range(0, len(uids), BATCH):
            rows = []
            for uid, data in c.fetch(uids[i : i + BATCH], ["BODY.PEEK[]"]).items():
                raw = data[b"BODY[]"]
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                part = msg.get_body(("plain", "html"))
                try:
                    body = part.get_content() if part is not None else ""
                except Exception:
                    body = ""
                rows.append((uid, str(msg["subject"]), str(msg["from"]), body, raw))
            with db:
                db.executemany("insert into m values (?, ?, ?, ?, ?)", rows)
            n += len(rows)
    db.close()
    return n


class Env:
    """A config directory with accounts reading from the benchmark's Dovecot."""

    def __init__(self, base: Path, dovecot: Dovecot):
        self.base = base
        self.dovecot = dovecot
        self.creds = base / "credentials"
        self.creds.mkdir(parents=True, exist_ok=True)
        self.accounts: list[str] = []

    def config(self, users, db_name: str, poll: str = "*/5") -> Path:
        lines = [
            f'[storage]\ndatabase = "{db_name}"\nattachments = "{db_name}.files"\n',
            f'[schedule]\npoll = "{poll}"\n',
            '[limits]\nmax_message_size = "200MB"\nmax_attachment_size = "200MB"\n',
        ]
        for user in users:
            (self.creds / user.name).write_text(user.password)
            lines.append(
                f'[[accounts]]\nname = "{user.name}"\nemail = "{user.email}"\nimap_host = "127.0.0.1"\n'
                f"imap_port = {self.dovecot.imaps_port}\nca_file = \"{self.dovecot.ca_file}\"\n"
                "acknowledge = false\n"
            )
        path = self.base / f"{db_name}.toml"
        path.write_text("\n".join(lines))
        return path

    def environ(self) -> dict:
        env = dict(os.environ)
        env["CREDENTIALS_DIRECTORY"] = str(self.creds)
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
        env["XDG_DATA_HOME"] = str(self.base / "xdg")
        return env


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the parser workers of a poll)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _proc_kib(pid: int, field: str, name: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Run:
    wall: float
    code: int
    main_hwm: int = 0  # KiB: the main process's high-water RSS
    worker_hwm: int = 0  # KiB: the largest parser worker's high-water RSS
    tree_pss: int = 0  # KiB: peak PSS of main + workers together (shared pages counted once)
    cpu: float = 0.0  # s: CPU time (user + system) of the process and the workers it waited for


def measured(cmd: list[str], env: dict) -> Run:
    """Run ``cmd`` and sample its memory every 20 ms from /proc.

    Not the kernel's ru_maxrss: for a child started by (v)fork + exec it includes the RSS of the
    process that started it (here the benchmark, holding the whole generated mailbox)."""
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm: dict[int, int] = {}
    pss = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            for p in pids:
                hwm[p] = max(hwm.get(p, 0), _proc_kib(p, "VmHWM"))
            pss[0] = max(pss[0], sum(_proc_kib(p, "Pss", "smaps_rollup") for p in pids))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(proc.stderr.read().decode(errors="replace")[-2000:], file=sys.stderr)
    workers = [v for p, v in hwm.items() if p != proc.pid]
    return Run(wall, code, hwm.get(proc.pid, 0), max(workers, default=0), pss[0], usage.ru_utime + usage.ru_stime)


def print_memory(title: str, runs: list[Run]) -> None:
    print(f"{title}: peak RSS of the main process {fmt([r.main_hwm / 1024 for r in runs], 'MiB')}")
    print(f"    of the largest parser worker {fmt([r.worker_hwm / 1024 for r in runs], 'MiB')}; "
          f"peak PSS of main + workers together {fmt([r.tree_pss / 1024 for r in runs], 'MiB')}")


def poll_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "mail2ticket", "--config", str(config), "poll"]


def idle_poll_cost(env: Env, config: Path, runs: int) -> tuple[list[float], list[float]]:
    """(wall of 'mail2ticket poll', in-process IMAP time of one poll) with nothing new."""
    sys.path.insert(0, str(ROOT))
    from mail2ticket.config.load import load_config
    from mail2ticket.intake.poller import poll_account
    from mail2ticket.tickets.db import open_db

    walls, imap_times = [], []
    os.environ.update({k: v for k, v in env.environ().items() if k in ("CREDENTIALS_DIRECTORY",)})
    cfg = load_config(config)
    db = open_db(cfg.database)
    account = cfg.accounts[0]
    password = (env.creds / account.name).read_text()
    for _ in range(runs):
        polled = measured(poll_cmd(config), env.environ())
        assert polled.code == 0
        walls.append(polled.wall)
        start = time.perf_counter()
        result = poll_account(cfg, db, account, password)
        imap_times.append(time.perf_counter() - start)
        assert result.imported == 0
    db.close()
    return walls, imap_times


def set_watermark(config: Path) -> None:
    """As if everything had been imported before: the mailbox's last UID is the highest UID."""
    from mail2ticket.config.load import load_config
    from mail2ticket.tickets.db import open_db, set_mailbox

    cfg = load_config(config)
    account = cfg.accounts[0]
    with IMAPClient("127.0.0.1", account.imap_port, ssl=True,
                    ssl_context=__import__("ssl").create_default_context(cafile=account.ca_file)) as c:
        c.login(account.username, Path(os.environ["CREDENTIALS_DIRECTORY"], account.name).read_text())
        info = c.select_folder("INBOX", readonly=True)
        high = max(c.search("ALL"))
    db = open_db(cfg.database)
    with db.conn:
        set_mailbox(db, account.name, "INBOX", int(info[b"UIDVALIDITY"]), high)
    db.close()


def idle_daemon(env: Env, users, seconds: int) -> tuple[float, float] | None:
    """RSS (MiB) and CPU (% of one core) of `mail2ticket run` with 20 accounts, over ``seconds``."""
    config = env.config(users, "daemon.db", poll="*/5")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mail2ticket", "--config", str(config), "run"],
        env=env.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(10)  # start-up and the first poll of every account
    if proc.poll() is not None:
        print("daemon exited:", proc.stderr.read().decode(errors="replace")[-1000:], file=sys.stderr)
        return None
    stat = Path(f"/proc/{proc.pid}/stat")
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    c0, t0 = cpu(), time.perf_counter()
    time.sleep(seconds)
    c1, t1 = cpu(), time.perf_counter()
    rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return rss_kib / 1024, 100 * (c1 - c0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="N for the import comparison")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (median, min, max)")
    parser.add_argument("--idle-sizes", default="1000,100000", help="mailbox sizes for the idle-poll cost")
    parser.add_argument("--skip-large", action="store_true", help="skip the 50 MB attachment and the daemon")
    parser.add_argument("--skip-import", action="store_true", help="skip the N-message comparison")
    parser.add_argument("--daemon-seconds", type=int, default=60)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="m2t-bench-"))
    try:
        ca = CertificateAuthority(base / "ca")
        with Dovecot(ca) as dovecot:
            env = Env(base / "env", dovecot)
            os.environ["CREDENTIALS_DIRECTORY"] = str(env.creds)
            print(f"Filling a mailbox with {args.messages} mixed messages ...", flush=True)
            user = dovecot.add_user()
            t = time.perf_counter()
            msgs = mailgen.mailbox(args.messages)
            dovecot.append_many(user, msgs)
            size_mb = sum(len(m) for m in msgs) / 1e6
            print(f"  {args.messages} messages, {size_mb:.1f} MB, appended in {time.perf_counter() - t:.1f} s")

            a, b, c = [], [], []
            b_cpu: list[float] = []
            c_mem: list[Run] = []
            for run in range(0 if args.skip_import else args.runs):
                t = time.perf_counter()
                assert bare_fetch(dovecot, user) == args.messages
                a.append(time.perf_counter() - t)
                t, cpu = time.perf_counter(), time.process_time()
                assert minimal_importer(dovecot, user, base / f"minimal{run}.db") == args.messages
                b.append(time.perf_counter() - t)
                b_cpu.append(time.process_time() - cpu)
                config = env.config([user], f"poll{run}.db")
                polled = measured(poll_cmd(config), env.environ())
                assert polled.code == 0, "mail2ticket poll failed"
                c.append(polled.wall)
                c_mem.append(polled)
                print(f"  run {run + 1}: a {a[-1]:.2f} s, b {b[-1]:.2f} s, c {c[-1]:.2f} s (c/b {c[-1] / b[-1]:.2f}); "
                      f"CPU b {b_cpu[-1]:.2f} s, c {polled.cpu:.2f} s; load average {os.getloadavg()[0]:.1f}",
                      flush=True)

            n = args.messages
            if a:
                print()
                print(f"Import of N = {n} messages (TLS, loopback), {args.runs} run(s): median (min, max)")
                print(f"  (a) bare fetch loop        {fmt(a)}   {n / statistics.median(a):8.0f} msg/s")
                print(f"  (b) minimal importer       {fmt(b)}   {n / statistics.median(b):8.0f} msg/s")
                print(f"  (c) mail2ticket poll       {fmt(c)}   {n / statistics.median(c):8.0f} msg/s")
                print(f"  c/a = {statistics.median(c) / statistics.median(a):.2f}   "
                      f"c/b = {statistics.median(c) / statistics.median(b):.2f}")
                print(f"  CPU time (user + system; the IMAP server's not counted): (b) {fmt(b_cpu)}, "
                      f"(c) main + workers {fmt([r.cpu for r in c_mem])}")
                print_memory("  memory of (c)", c_mem)

            print()
            print("Poll that finds nothing new (watermark at the top):")
            for size in [int(s) for s in args.idle_sizes.split(",") if s]:
                idle_user = dovecot.add_user()
                t = time.perf_counter()
                for start in range(0, size, 5000):
                    dovecot.append_many(idle_user, [mailgen.tiny(i) for i in range(start, min(size, start + 5000))])
                config = env.config([idle_user], f"idle{size}.db")
                set_watermark(config)
                walls, imap = idle_poll_cost(env, config, args.runs)
                print(f"  {size:>7} messages: IMAP work {fmt([x * 1000 for x in imap], 'ms')}; "
                      f"whole 'mail2ticket poll' {fmt(walls)}  (filled in {time.perf_counter() - t:.0f} s)")

            if not args.skip_large:
                big_user = dovecot.add_user()
                dovecot.append(big_user, mailgen.message(0, __import__("random").Random(5),
                                                         big_attachment=50 * 1024 * 1024))
                big_runs = []
                for run in range(args.runs):
                    config = env.config([big_user], f"big{run}.db")
                    big_runs.append(measured(poll_cmd(config), env.environ()))
                    assert big_runs[-1].code == 0
                print()
                print_memory("Importing one message with a 50 MB attachment", big_runs)
                users = [dovecot.add_user() for _ in range(20)]
                for u in users:
                    dovecot.append(u, mailgen.tiny(1))
                idle = idle_daemon(env, users, args.daemon_seconds)
                if idle:
                    print(f"Idle daemon, 20 accounts, over {args.daemon_seconds} s: "
                          f"RSS {idle[0]:.1f} MiB, CPU {idle[1]:.2f} % of one core")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
