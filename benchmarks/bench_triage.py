"""Triage at scale: the wall time of each 'tickets' command on a database of 1,000,000 tickets.

Run from the repository root:

    python3 benchmarks/bench_triage.py                    # 1,000,000 tickets, 3,000,000 messages
    python3 benchmarks/bench_triage.py --tickets 20000    # a quick look

It builds the database once (rows generated directly with executemany, not through the importer;
the schema is the real one, made by the migrations, and the search index is the real FTS5 index
with its triggers), keeps it in --dir for later runs, and then runs each command as a user does:
the installed 'mail2ticket' in a new process, output piped, start-up included. Each command runs
--runs times; it prints the best and the median wall time and the lines of output.

The data is shaped like years of a busy help desk: tickets spread over five years, most closed,
the open ones mostly recent; 1 to 5 messages each (3 on average) of 15 to 60 words drawn from a
Zipf-distributed vocabulary; four accounts, 25 assignees, tags on a fifth of the tickets, 100,000
requesters at 5,000 domains. No ANALYZE is run (mail2ticket does not run one either).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ACCOUNTS = ["support", "sales", "billing", "ops"]
ASSIGNEES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
             "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "uma", "victor", "walter",
             "xena", "yusuf", "zoe", "quinn", "pat"]
TAGS = ["vip", "billing", "hardware", "network", "printer", "vpn", "password", "onboarding", "bug",
        "feature", "refund", "legal", "security", "spam", "ignored", "escalated", "waiting-vendor",
        "linux", "windows", "mac", "mobile", "email", "calendar", "storage", "backup", "dns", "ssl",
        "database", "licence", "training"]
TOPICS = ["printer", "VPN", "invoice", "password", "laptop", "e-mail", "calendar", "backup", "Wi-Fi",
          "license", "server", "phone", "monitor", "account", "refund", "order", "delivery", "login",
          "database", "website", "certificate", "firewall", "scanner", "keyboard", "headset"]
SUBJECTS = ["{t} not working", "Problem with {t}", "{t} broken since this morning", "Question about {t}",
            "Cannot access {t}", "{t} is very slow", "Help needed: {t}", "Urgent: {t} down",
            "Request: new {t}", "{t} error after update", "How do I set up {t}?", "{t} keeps crashing"]
WORDS = ("the a to and is of in it for on not we our my this that with have has be can you please "
         "thanks hello regards error again since today yesterday morning office floor room team user "
         "users working broken slow fails failed crash update restart reboot install installed "
         "configure settings screen message shows says code help urgent asap customer order invoice "
         "payment amount wrong paper jam toner tray cartridge network cable router switch connection "
         "timeout password reset locked account login access denied permission folder file share "
         "drive disk full backup restore mail mailbox outlook thunderbird calendar meeting invite "
         "phone mobile app version upgrade license key expired renew certificate browser page "
         "website server database query report export import spreadsheet monday tuesday wednesday "
         "thursday friday week month attached screenshot log logs ticket issue problem question "
         "request still same again works worked fixed thank you kind best").split()

DAY = 86400


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """Real words first (frequent), then 20,000 made-up ones (rare): a Zipf-like distribution."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "xi", "be", "do", "fu", "gi", "ha", "je", "pu"]
    made_up = {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(25000)}
    words = WORDS + [t.lower() for t in TOPICS] + sorted(made_up)[:20000]
    weights = [1.0 / (rank + 10) for rank in range(len(words))]
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    return words, cum


def build(db_path: Path, n_tickets: int, seed: int) -> dict:
    """The database: schema from the real migrations, rows from executemany, indexes after."""
    from mail2ticket.tickets.db import open_db

    rng = random.Random(seed)
    t0 = time.perf_counter()
    open_db(db_path).close()  # every migration: tables, indexes, FTS5 table, triggers, views
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("pragma synchronous = off")
    conn.execute("pragma cache_size = -1000000")
    # Bulk load: drop the indexes and triggers of the big tables, put them back afterwards.
    saved = conn.execute(
        "select type, name, sql from sqlite_master where type in ('index', 'trigger') and sql is not null "
        "and tbl_name in ('tickets', 'messages', 'ticket_tags', 'events')"
    ).fetchall()
    for kind, name, _ in saved:
        conn.execute(f"drop {kind} {name}")
    conn.execute("begin")
    for tickets, messages, tags, events, done, n_messages in batches(n_tickets, rng):
        _flush(conn, tickets, messages, tags, events)
        print(f"\r  rows: {done:,} tickets, {n_messages:,} messages", end="", file=sys.stderr, flush=True)
    conn.execute("commit")
    print(file=sys.stderr)
    t_rows = time.perf_counter()
    for kind, _name, sql in saved:
        if kind == "index":
            conn.execute(sql)
    t_index = time.perf_counter()
    conn.execute("insert into messages_fts (messages_fts) values ('rebuild')")
    for kind, _name, sql in saved:
        if kind == "trigger":
            conn.execute(sql)
    t_fts = time.perf_counter()
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    return {
        "tickets": n_tickets,
        "messages": n_messages,
        "rows_s": t_rows - t0,
        "indexes_s": t_index - t_rows,
        "fts_s": t_fts - t_index,
        "total_s": time.perf_counter() - t0,
        "size_mb": db_path.stat().st_size / 1e6,
    }


def batches(n_tickets: int, rng: random.Random):
    """The rows of the database, about 100,000 messages at a time: (tickets, messages, tags, events,
    tickets so far, messages so far), each a list of tuples in the column order of _flush.
    bench_scaling.py writes the same rows to PostgreSQL."""
    words, cum = vocabulary(rng)
    now = time.time()
    start = now - 5 * 365 * DAY
    span = now - start
    requesters = [(f"user{k}@domain{k % 5000}.example", f"Customer {k}") for k in range(100_000)]
    tickets, messages, tags, events = [], [], [], []
    n_messages = 0
    for ticket_id in range(1, n_tickets + 1):
        created = start + span * (ticket_id - 1) / n_tickets + rng.random() * 3600
        age = now - created
        r = rng.random()
        if age < 30 * DAY:
            status = "open" if r < 0.6 else ("pending" if r < 0.8 else "closed")
        else:
            status = "open" if r < 0.002 else ("pending" if r < 0.003 else "closed")
        p = rng.random()
        priority = "urgent" if p < 0.03 else "high" if p < 0.15 else "low" if p < 0.30 else "normal"
        assignee = rng.choice(ASSIGNEES) if rng.random() < 0.7 else None
        account = rng.choice(ACCOUNTS)
        address, name = rng.choice(requesters)
        topic = rng.choice(TOPICS)
        subject = rng.choice(SUBJECTS).format(t=topic)
        n_msg = rng.randint(1, 5)
        updated = min(now - 60, created + rng.random() * 10 * DAY * (n_msg / 3))
        responded = None
        if status == "closed" or rng.random() < 0.5:
            responded = min(updated, created + rng.random() * 8 * 3600)
        due_response, due_resolution = created + 4 * 3600, created + 3 * DAY
        closed_at = updated if status == "closed" else None
        response_late = responded is None and due_response <= now and status != "closed"
        resolution_late = due_resolution <= now and status != "closed"
        tickets.append((
            ticket_id, account, subject, address, name, status, priority, assignee, iso(created), iso(updated),
            iso(closed_at) if closed_at else None, iso(responded) if responded else None, iso(due_response),
            iso(due_resolution), 1 if (response_late or resolution_late) else 0,
            iso(due_response) if response_late else None, iso(due_resolution) if resolution_late else None,
        ))
        if rng.random() < 0.2:
            for tag in rng.sample(TAGS, rng.randint(1, 2)):
                tags.append((ticket_id, tag))
        events.append((ticket_id, account, iso(created), "created", "system", f"from {address}: new conversation"))
        if closed_at:
            events.append((ticket_id, account, iso(closed_at), "closed", rng.choice(ASSIGNEES), "by agent"))
        step = (updated - created) / n_msg
        for k in range(n_msg):
            incoming = k % 2 == 0
            when = iso(created + k * step)
            body = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(15, 60)))
            if k == 0:
                body = f"Hello, our {topic} has a problem. " + body
            messages.append((
                ticket_id, "in" if incoming else "out", account, f"<b{ticket_id}.{k}@bench.example>",
                subject if k == 0 else f"Re: {subject}", address if incoming else f"{account}@example.com",
                name if incoming else None, f'["{account}@example.com"]' if incoming else f'["{address}"]', "[]",
                when, when, body, "[]", "[]",
            ))
        n_messages += n_msg
        if len(messages) >= 100_000 or ticket_id == n_tickets:
            yield tickets, messages, tags, events, ticket_id, n_messages
            tickets, messages, tags, events = [], [], [], []


# The columns of the rows batches() makes, table by table (bench_scaling.py copies them as they are).
COLUMNS = {
    "tickets": ("id", "account", "subject", "requester", "requester_name", "status", "priority", "assignee",
                "created_at", "updated_at", "closed_at", "first_response_at", "due_response_at",
                "due_resolution_at", "overdue", "response_breached_at", "resolution_breached_at"),
    "messages": ("ticket_id", "direction", "account", "message_id", "subject", "from_address", "from_name",
                 "to_addrs", "cc_addrs", "date", "received_at", "body_text", "refs", "defects"),
    "ticket_tags": ("ticket_id", "tag"),
    "events": ("ticket_id", "account", "created_at", "kind", "actor", "detail"),
}


def _flush(conn, tickets, messages, tags, events) -> None:
    for table, rows in zip(COLUMNS, (tickets, messages, tags, events), strict=True):
        columns = COLUMNS[table]
        conn.executemany(
            f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' * len(columns))})", rows
        )


def commands(n_tickets: int) -> list[tuple[str, list[str]]]:
    some = max(1, n_tickets // 2)
    deep = max(0, n_tickets // 2)
    return [
        ("start-up only (--version)", ["--version"]),
        ("list: the terminal page (50 not closed)", ["tickets", "list", "--limit", "50"]),
        ("list: every ticket not closed, piped", ["tickets", "list"]),
        ("list: --status all, newest 50", ["tickets", "list", "--status", "all", "--limit", "50"]),
        ("list: --overdue --sort due", ["tickets", "list", "--overdue", "--sort", "due", "--limit", "50"]),
        ("list: --priority urgent --unassigned", ["tickets", "list", "--priority", "urgent", "--unassigned",
                                                   "--limit", "50"]),
        ("list: --assignee alice --sort priority", ["tickets", "list", "--assignee", "alice", "--sort",
                                                     "priority", "--limit", "50"]),
        ("list: --tag vip --status all", ["tickets", "list", "--tag", "vip", "--status", "all", "--limit", "50"]),
        ("list: --account billing, one month", ["tickets", "list", "--account", "billing", "--status", "all",
                                                "--since", "60d", "--until", "30d", "--limit", "50"]),
        ("list: --requester (one address)", ["tickets", "list", "--requester", "user4242@domain4242.example",
                                             "--status", "all", "--limit", "50"]),
        ("list: --requester @domain (all of it)", ["tickets", "list", "--requester", "@domain77.example",
                                                   "--status", "all", "--limit", "50"]),
        ("list: --status all --offset N/2 (deep page)", ["tickets", "list", "--status", "all", "--offset",
                                                         str(deep), "--limit", "50"]),
        ("list: --json, 1000 tickets", ["tickets", "list", "--status", "all", "--limit", "1000", "--json"]),
        ("list: --csv, 1000 tickets", ["tickets", "list", "--status", "all", "--limit", "1000", "--csv"]),
        ("count: not closed", ["tickets", "count"]),
        ("count: --status all", ["tickets", "count", "--status", "all"]),
        ("count: --status all --by status", ["tickets", "count", "--status", "all", "--by", "status"]),
        ("count: --overdue", ["tickets", "count", "--overdue"]),
        ("count: --status all --by assignee", ["tickets", "count", "--status", "all", "--by", "assignee"]),
        ("search: a common word (printer)", ["tickets", "search", "printer"]),
        ("search: a phrase (\"paper jam\")", ["tickets", "search", '"paper jam"']),
        ("search: a rare word", ["tickets", "search", "kalomi"]),
        ("search: two words, --status open", ["tickets", "search", "vpn timeout", "--status", "open"]),
        ("search: a prefix (cert*) --json", ["tickets", "search", "cert*", "--json"]),
        ("show: one ticket", ["tickets", "show", str(some)]),
        ("show: one ticket --json", ["tickets", "show", str(some), "--json"]),
        ("overdue check (the scheduled job)", ["overdue", "check"]),
        ("status --prometheus (the metrics)", ["status", "--prometheus"]),
    ]


def config_text(database: str) -> str:
    """The config the commands run with: the database (a path or a PostgreSQL URL), an SLA, the accounts."""
    accounts = "\n".join(
        f'[[accounts]]\nname = "{a}"\nemail = "{a}@example.com"\nsource = "pipe"\n' for a in ACCOUNTS
    )
    return (f'[storage]\ndatabase = "{database}"\nattachments = "attachments"\n\n'
            f'[sla]\nresponse = "4h"\nresolution = "3d"\n\n{accounts}')


def mail2ticket_command() -> list[str]:
    script = Path(sys.executable).with_name("mail2ticket")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mail2ticket"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1_000_000, help="tickets to generate (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (default 3)")
    parser.add_argument("--dir", type=Path, help="where the database is kept (default: a directory in $TMPDIR)")
    parser.add_argument("--rebuild", action="store_true", help="build the database again even if it exists")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    work = args.dir or Path(tempfile.gettempdir()) / f"mail2ticket-bench-triage-{args.tickets}"
    db_path = work / "tickets.db"
    config = work / "config.toml"
    if args.rebuild and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text("tickets.db"))
    if not db_path.exists():
        print(f"Building {args.tickets:,} tickets in {db_path} ...", file=sys.stderr)
        stats = build(db_path, args.tickets, args.seed)
        print(
            f"Built {stats['tickets']:,} tickets and {stats['messages']:,} messages in {stats['total_s']:.0f} s "
            f"(rows {stats['rows_s']:.0f} s, indexes {stats['indexes_s']:.0f} s, search index "
            f"{stats['fts_s']:.0f} s); {stats['size_mb']:,.0f} MB"
        )
    else:
        conn = sqlite3.connect(db_path)
        n, m = conn.execute("select (select count(*) from tickets), (select count(*) from messages)").fetchone()
        conn.close()
        print(f"Using {db_path}: {n:,} tickets, {m:,} messages ({db_path.stat().st_size / 1e6:,.0f} MB)")
    base = mail2ticket_command()
    env = {**os.environ, "MAIL2TICKET_CONFIG": str(config)}
    env.pop("NO_COLOR", None)
    print(f"\n{'command':<46} {'best':>8} {'median':>8} {'lines':>8}   (wall time, start-up included)")
    for label, argv in commands(args.tickets):
        times, lines = time_command(label, [*base, *argv], env, args.runs)
        print(f"{label:<46} {min(times):>7.3f}s {statistics.median(times):>7.3f}s {lines:>8,}")


def time_command(label: str, cmd: list[str], env: dict, runs: int) -> tuple[list[float], int]:
    """Run ``cmd`` ``runs`` times as a user does (output piped): the wall times and the lines printed
    (an error is printed to stderr and ends the runs)."""
    times, lines = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if result.returncode != 0:
            print(f"{label}: exit {result.returncode}: {result.stderr.strip()}", file=sys.stderr)
            break
        lines = result.stdout.count("\n")
    return times, lines


if __name__ == "__main__":
    main()
