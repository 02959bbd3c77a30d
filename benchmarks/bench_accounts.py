"""Hundreds of push accounts in one `mail2ticket run`: idle cost, push latency, start and stop.

Run from the repository root:

    python3 benchmarks/bench_accounts.py                          # 100, 500 and 1,000 accounts
    python3 benchmarks/bench_accounts.py --accounts 100 --mails 50 --idle-seconds 30   # quick look
    python3 benchmarks/bench_accounts.py --src /tmp/old-checkout  # the daemon of another checkout

It starts its own Dovecot on loopback with the limits a large installation needs raised (see
DOVECOT_CONF below and docs/performance.md; as root it also raises fs.inotify.max_user_instances), creates one mail user per account, writes a config
with every account on ``push = true`` (passwords in $CREDENTIALS_DIRECTORY) and starts
``python -m mail2ticket run`` from --src. For each number of accounts it prints:

- start-up: seconds from the start until every account has an IMAP session open on the server
  (``doveadm who``), and the sessions then open;
- idle: RSS, CPU (% of one core, over --idle-seconds once every session is open) and threads;
- latency: --mails mails appended to random accounts, one every --gap seconds, each timed from
  the end of its APPEND to its ticket in the database: p50/p95/p99 and the worst; first on a quiet
  daemon, then again while --burst accounts import --burst-size messages each;
- stop: seconds from SIGTERM to the exit, and the exit code.

The machine's load average is printed with each figure: on a shared machine idle CPU and
latency move with it.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import CertificateAuthority, Dovecot  # noqa: E402

# What a Dovecot serving a thousand IDLE sessions needs (the defaults stop at 100 processes per
# service, and 1000 clients per process): see docs/performance.md.
DOVECOT_CONF = """
default_process_limit = 5000
default_client_limit = 20000
default_vsz_limit = 0
mail_max_userip_connections = 50
service imap-login {
  service_count = 0
  process_min_avail = 2
  client_limit = 5000
  process_limit = 10
}
service imap {
  process_limit = 5000
}
service anvil {
  client_limit = 20000
}
service auth {
  client_limit = 20000
}
"""


def mail(subject: str, body: str = "Hello.") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <customer@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="customer.test")
    msg["Date"] = format_datetime(__import__("datetime").datetime.now(__import__("datetime").UTC))
    msg.set_content(body)
    return msg.as_bytes()


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


class Setup:
    def __init__(self, base: Path, dovecot: Dovecot, n: int, poll: str, src: Path, login_rate: float | None):
        self.base = base
        self.dovecot = dovecot
        self.creds = base / "credentials"
        self.creds.mkdir(parents=True)
        self.users = [dovecot.add_user() for _ in range(n)]
        self.db = base / "m2t.db"
        lines = [
            f'[storage]\ndatabase = "{self.db}"\nattachments = "{base / "files"}"\n',
            f'[schedule]\npoll = "{poll}"\noutbox = "1h"\noverdue = "1h"\n',
        ]
        if login_rate:
            lines.append(f"[performance]\nlogins_per_second = {login_rate}\n")
        for user in self.users:
            (self.creds / user.name).write_text(user.password)
            lines.append(
                f'[[accounts]]\nname = "{user.name}"\nemail = "{user.email}"\nusername = "{user.email}"\n'
                f'imap_host = "127.0.0.1"\nimap_port = {dovecot.imaps_port}\nca_file = "{dovecot.ca_file}"\n'
                "acknowledge = false\npush = true\n"
            )
        self.config = base / "config.toml"
        self.config.write_text("\n".join(lines))
        self.src = src
        self.log = base / "daemon.log"

    def start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(
            CREDENTIALS_DIRECTORY=str(self.creds),
            PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
            XDG_DATA_HOME=str(self.base / "xdg"),
            PYTHONPATH=str(self.src),
        )
        env.pop("NOTIFY_SOCKET", None)
        return subprocess.Popen(
            [sys.executable, "-m", "mail2ticket", "--config", str(self.config), "run"],
            env=env, stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            cwd=str(self.base),
        )

    def users_with_sessions(self) -> int:
        wanted = {u.name for u in self.users}
        try:
            out = self.dovecot.doveadm("who", "-1")
        except Exception:
            return -1
        return len({line.split()[0] for line in out.splitlines()[1:] if line.split()[:1]} & wanted)

    def tickets(self, prefix: str) -> set[str]:
        if not self.db.exists():
            return set()
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
                return {r[0] for r in conn.execute("select subject from tickets where subject like ?", [prefix + "%"])}
        except sqlite3.OperationalError:
            return set()


def measure_latency(setup: Setup, targets: list, mails: int, gap: float, tag: str, timeout: float = 120) -> list[float]:
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()
    prefix = f"lat-{tag}-"

    def watch() -> None:
        while not done.is_set():
            now = time.monotonic()
            for subject in setup.tickets(prefix):
                seen.setdefault(subject, now)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for i in range(mails):
        user = random.choice(targets)
        subject = f"{prefix}{i}-{secrets.token_hex(3)}"
        setup.dovecot.append(user, mail(subject))
        sent[subject] = time.monotonic()
        time.sleep(gap)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < len(sent):
        time.sleep(0.1)
    done.set()
    watcher.join()
    lat = [seen[s] - t if s in seen else float("inf") for s, t in sent.items()]
    return lat


def describe(lat: list[float]) -> str:
    lost = sum(1 for x in lat if x == float("inf"))
    ok = [x for x in lat if x != float("inf")]
    if not ok:
        return "no ticket appeared"
    text = (f"p50 {pct(ok, 50):.2f} s, p95 {pct(lat, 95):.2f} s, p99 {pct(lat, 99):.2f} s, "
            f"max {max(lat):.2f} s ({len(lat)} mails)")
    return text + (f", {lost} not a ticket within the timeout" if lost else "")


INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")


def inotify_instances(n: int) -> None:
    """Each Dovecot imap process watches its mailbox with one inotify instance, all under the mail
    user's uid; past fs.inotify.max_user_instances (128 by default) Dovecot falls back to looking
    every mailbox_idle_check_interval (30 s), and IDLE announces new mail up to 30 s late."""
    try:
        current = int(INOTIFY.read_text())
    except (OSError, ValueError):
        return
    wanted = 2 * n + 1024  # other Dovecots of the same uid on this machine use some too
    if current >= wanted:
        return
    try:
        INOTIFY.write_text(f"{wanted}\n")
        print(f"raised fs.inotify.max_user_instances from {current} to {wanted}", flush=True)
    except OSError as exc:
        print(f"WARNING: fs.inotify.max_user_instances is {current} ({exc}): with more than about "
              f"{current} sessions Dovecot announces new mail up to 30 s late", flush=True)


def run_one(n: int, args, ca: CertificateAuthority) -> dict:
    base = Path(tempfile.mkdtemp(prefix=f"m2t-bench-accounts-{n}-"))
    result: dict = {"accounts": n}
    inotify_instances(n)
    try:
        with Dovecot(ca, extra_conf=DOVECOT_CONF, start_timeout=60) as dovecot:
            setup = Setup(base, dovecot, n, args.poll, Path(args.src).resolve(), args.login_rate)
            print(f"\n== {n} accounts (push = true, poll {args.poll!r}, daemon from {setup.src}) ==", flush=True)
            t0 = time.monotonic()
            proc = setup.start()
            try:
                opened = 0
                while time.monotonic() - t0 < args.start_timeout:
                    if proc.poll() is not None:
                        raise SystemExit("daemon exited:\n" + setup.log.read_text(errors="replace")[-2000:])
                    opened = setup.users_with_sessions()
                    if opened >= n:
                        break
                    time.sleep(0.5)
                startup = time.monotonic() - t0
                result["startup"] = startup if opened >= n else None
                print(f"start-up: {opened} of {n} accounts with a session after {startup:.1f} s "
                      f"(load {loadavg()})", flush=True)
                time.sleep(args.settle)
                c0, w0 = cpu_seconds(proc.pid), time.monotonic()
                time.sleep(args.idle_seconds)
                c1, w1 = cpu_seconds(proc.pid), time.monotonic()
                st = proc_status(proc.pid)
                result["rss"] = int(st["VmRSS"].split()[0]) / 1024
                result["threads"] = int(st["Threads"])
                result["cpu"] = 100 * (c1 - c0) / (w1 - w0)
                result["sessions"] = setup.users_with_sessions()
                result["fds"] = len(os.listdir(f"/proc/{proc.pid}/fd"))
                print(f"idle: RSS {result['rss']:.1f} MiB, CPU {result['cpu']:.2f} % of one core over "
                      f"{args.idle_seconds} s, {result['threads']} threads, {result['fds']} open files, "
                      f"{result['sessions']} accounts with a session (load {loadavg()})", flush=True)

                users = list(setup.users)
                random.shuffle(users)
                burst_users, targets = users[: args.burst], users[args.burst:] or users
                lat = measure_latency(setup, targets, args.mails, args.gap, "quiet")
                result["lat_quiet"] = lat
                print(f"latency, quiet: {describe(lat)} (load {loadavg()})", flush=True)

                if args.burst:
                    def burst(user) -> None:
                        msgs = [mail(f"burst-{user.name}-{i}", "x" * 2000) for i in range(args.burst_size)]
                        dovecot.append_many(user, msgs)

                    threads = [threading.Thread(target=burst, args=(u,)) for u in burst_users]
                    for t in threads:
                        t.start()
                    lat = measure_latency(setup, targets, args.mails, args.gap, "burst")
                    for t in threads:
                        t.join()
                    result["lat_burst"] = lat
                    got = len(setup.tickets("burst-"))
                    print(f"latency, while {args.burst} accounts import {args.burst_size} messages each: "
                          f"{describe(lat)}; {got} burst tickets by then (load {loadavg()})", flush=True)
                t = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=120)
                result["stop"] = time.monotonic() - t
                print(f"SIGTERM: exit {code} after {result['stop']:.2f} s", flush=True)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", default="100,500,1000", help="comma-separated numbers of accounts")
    parser.add_argument("--src", default=str(ROOT), help="the checkout whose mail2ticket runs (PYTHONPATH)")
    parser.add_argument("--poll", default="*/15", help="[schedule] poll of every account (a safety net beside push)")
    parser.add_argument("--login-rate", type=float, default=None,
                        help="[performance] logins_per_second (default: the daemon's default)")
    parser.add_argument("--mails", type=int, default=50, help="mails for the latency figures")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between two of those mails")
    parser.add_argument("--burst", type=int, default=5, help="accounts that import a burst during the second run")
    parser.add_argument("--burst-size", type=int, default=200)
    parser.add_argument("--idle-seconds", type=int, default=60, help="window for the idle CPU figure")
    parser.add_argument("--settle", type=float, default=10, help="seconds after start-up before measuring idle")
    parser.add_argument("--start-timeout", type=float, default=600)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="m2t-bench-ca-"))
    results = []
    try:
        ca = CertificateAuthority(base)
        for n in (int(x) for x in args.accounts.split(",")):
            results.append(run_one(n, args, ca))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("\n| accounts | RSS | idle CPU | threads | sessions | start-up | latency p50/p95/p99 (quiet) "
          "| latency p50/p95/p99 (burst) | SIGTERM |")
    print("|---:|---:|---:|---:|---:|---:|---|---|---:|")

    def lat(key: str, r: dict) -> str:
        values = r.get(key)
        if not values:
            return "—"
        return f"{pct(values, 50):.2f} / {pct(values, 95):.2f} / {pct(values, 99):.2f} s"

    for r in results:
        startup = f"{r['startup']:.0f} s" if r.get("startup") is not None else "not all"
        print(f"| {r['accounts']} | {r.get('rss', 0):.0f} MiB | {r.get('cpu', 0):.2f} % | {r.get('threads')} "
              f"| {r.get('sessions')} | {startup} | {lat('lat_quiet', r)} | {lat('lat_burst', r)} "
              f"| {r.get('stop', 0):.1f} s |")


if __name__ == "__main__":
    main()
