"""What queueing hook events costs the import: tickets/db.log_event against the plain INSERT it
was before hooks (issue 18.3), per event, in one transaction as the import makes them.

Run from the repository root:

    python3 benchmarks/bench_hooks.py              # 20,000 events, 5 runs each
    python3 benchmarks/bench_hooks.py --events 5000 --runs 3

It prints the median microseconds per event (min, max) for: (a) the plain INSERT into events,
(b) log_event with no hook configured (the INSERT ... SELECT over an empty subscriptions table),
(c) log_event with hooks that want other events, (d) log_event with a hook that wants every one
of these events (queued, and its payload frozen at the commit with the ticket object).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mail2ticket.tickets import hookqueue  # noqa: E402
from mail2ticket.tickets.db import log_event, now_iso, open_db, transaction  # noqa: E402
from mail2ticket.tickets.tickets import create_ticket  # noqa: E402


def plain(db, kind: str, detail: str, *, ticket_id: int, account: str) -> None:
    """The event INSERT as log_event made it before hooks."""
    db.conn.execute("insert into events (ticket_id, account, created_at, kind, actor, detail) "
                    "values (?, ?, ?, ?, ?, ?)", [ticket_id, account, now_iso(), kind, "system", detail])


def run(db, log, n: int) -> float:
    """Microseconds per event: ``n`` 'followup' events on one ticket, one transaction."""
    with transaction(db):
        ticket = create_ticket(db, account="support", subject="Benchmark", requester="a@example.org",
                               requester_name=None, now=now_iso())
    start = time.perf_counter()
    with transaction(db):
        for i in range(n):
            log(db, "followup", f"message {i}", ticket_id=ticket, account="support")
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "(a) plain INSERT (before hooks)": (set(), plain),
        "(b) log_event, no hook": (set(), log_event),
        "(c) log_event, hooks for other events": ({("chat", "closed", "ticket.status", None),
                                                    ("pager", "created", "ticket.created", None)}, log_event),
        "(d) log_event, a hook wants each event": ({("log", "followup", "ticket.followup", None)}, log_event),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, (subscriptions, log) in cases.items():
                db = open_db(Path(tmp) / f"bench-{len(subscriptions)}-{log.__name__}.db")
                with transaction(db):
                    hookqueue.replace_subscriptions(db, subscriptions)
                results[name].append(run(db, log, args.events))
                db.close()
    print(f"{args.events} events per run, {args.runs} runs: microseconds per event, median (min, max)")
    for name, values in results.items():
        print(f"  {name:42s} {statistics.median(values):7.2f} ({min(values):.2f}, {max(values):.2f})")


if __name__ == "__main__":
    main()
