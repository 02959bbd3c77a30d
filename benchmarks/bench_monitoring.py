"""What one ticket per monitoring problem costs the import (issue 18.2).

Run from the repository root:

    python3 benchmarks/bench_monitoring.py               # 3,000 messages of each kind, 3 runs
    python3 benchmarks/bench_monitoring.py --messages 1000 --runs 1

It stores, in process (no IMAP: the importer's own cost), into fresh databases with the same
config: (a) the import benchmark's mix of ordinary mail (benchmarks/mailgen.py), (b) Nagios
monitoring mail of N / 3 services, each a PROBLEM, a repeat and a RECOVERY (so every mail after
the first of a service looks up its problem and changes its ticket), (c) the mix again with
[monitoring] enabled = false and (d) the Nagios mail with it off (each mail its own ticket). It prints the milliseconds per message of each (median, min, max)
and what recognising costs per message of the mix.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mailgen  # noqa: E402

from mail2ticket.config.load import load_config  # noqa: E402
from mail2ticket.files.attachments import AttachmentStore  # noqa: E402
from mail2ticket.intake.importer import ImportContext, Incoming, import_batch  # noqa: E402
from mail2ticket.parse.message import parse_message  # noqa: E402
from mail2ticket.parse.monitoring import recognise  # noqa: E402
from mail2ticket.tickets.db import open_db  # noqa: E402
from tests.helpers import nagios_service  # noqa: E402

BATCH = 100


def nagios_night(n: int) -> list[bytes]:
    """PROBLEM, repeat, RECOVERY of n // 3 services, in that order per service, interleaved."""
    start = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    services = max(1, n // 3)
    out = []
    for step, (kind, state) in enumerate((("PROBLEM", "CRITICAL"), ("PROBLEM", "CRITICAL"), ("RECOVERY", "OK"))):
        for s in range(services):
            out.append(nagios_service(kind, f"host{s % 100}", f"svc{s // 100}", state, f"{state} output",
                                      date=start + timedelta(minutes=30 * step, seconds=s)))
    return out[:n]


def run(messages: list[bytes], enabled: bool) -> float:
    """Seconds to import ``messages`` in batches into a fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[storage]\ndatabase = "m2t.db"\nattachments = "files"\n[monitoring]\nenabled = {str(enabled).lower()}\n'
            '[[accounts]]\nname = "ops"\nemail = "ops@example.com"\nsource = "pipe"\nacknowledge = false\n'
        )
        cfg = load_config(config)
        db = open_db(cfg.database)
        ctx = ImportContext(db=db, attachments=AttachmentStore(cfg.attachments), config=cfg)
        t = time.perf_counter()
        for i in range(0, len(messages), BATCH):
            import_batch(ctx, [Incoming("ops", raw) for raw in messages[i : i + BATCH]])
        elapsed = time.perf_counter() - t
        db.close()
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    mix = mailgen.mailbox(args.messages)
    night = nagios_night(args.messages)
    parsed = [parse_message(raw) for raw in mix]
    per_mail = float("inf")
    for _ in range(5):  # the best of five passes over the mix
        t = time.perf_counter()
        recognised = sum(recognise(p) is not None for p in parsed)
        per_mail = min(per_mail, (time.perf_counter() - t) / len(parsed))
    print(f"N = {args.messages} of each kind, {args.runs} run(s), in-process import (parse and store, no IMAP)")
    for label, messages, enabled in (("(a) ordinary mail, monitoring on ", mix, True),
                                     ("(b) Nagios mail, one ticket each problem", night, True),
                                     ("(c) ordinary mail, monitoring off", mix, False),
                                     ("(d) Nagios mail, monitoring off", night, False)):
        times = [run(messages, enabled) * 1000 / len(messages) for _ in range(args.runs)]
        print(f"  {label:42s} {statistics.median(times):6.2f} ms/message (min {min(times):.2f}, max {max(times):.2f})")
    print(f"  recognise() on the mix: {per_mail * 1e6:.1f} us per message ({recognised} recognised)")


if __name__ == "__main__":
    main()
