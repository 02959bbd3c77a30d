"""Peak memory of every way a large message comes in: poll, ingest, Maildir poll, quarantine
retry, reparse.

Run from the repository root:

    python3 benchmarks/bench_memory.py                      # every path, every message
    python3 benchmarks/bench_memory.py --paths ingest,reparse --messages qp

Three messages of about 50 MB each (the sizes are printed):

- ``attachment``: a short text part and a 50 MB random attachment (base64, CRLF lines);
- ``qp``: a 50 MB quoted-printable text body made of soft line breaks only (``=`` CRLF);
- ``junk-b64``: a 50 MB "base64" attachment of junk (printable characters, most of them
  outside the base64 alphabet).

Each path is run as a user runs it, as its own ``mail2ticket`` process (the parser workers are
its children), and its peak RSS is read from the kernel: VmHWM of the main process and of each
child, sampled every 20 ms from /proc (not ru_maxrss: for a child started by fork + exec it
includes the RSS of the benchmark that started it). The figure per path is the largest VmHWM of
the process tree. The goal is under 150 MB for every path.

- poll: ``mail2ticket poll`` of an IMAP account on a private Dovecot (loopback, TLS);
- ingest: ``mail2ticket ingest --account pipe < message``;
- maildir: ``mail2ticket poll maildir`` of a Maildir account holding the message in new/;
- retry: ``mail2ticket quarantine retry N`` of the message stored in the quarantine (by an
  ``ingest`` with a 1 MB max_message_size), after the limit was raised;
- reparse: ``mail2ticket reparse --all`` of a database holding the message.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_import import Run, measured  # noqa: E402

MiB = 1024 * 1024
SIZE = 50 * MiB
PATHS = ("poll", "ingest", "maildir", "retry", "reparse")
MESSAGES = ("attachment", "qp", "junk-b64")
GOAL_MB = 150

HEAD = (
    b"From: Big Customer <big@example.org>\r\nTo: support@example.test\r\n"
    b"Message-ID: <%s@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
)


def attachment_message(size: int = SIZE) -> bytes:
    data = random.Random(9).randbytes(size)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        HEAD % b"attachment" + b"Subject: the scans you asked for\r\n"
        b'Content-Type: multipart/mixed; boundary="==b=="\r\n\r\n'
        b"--==b==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Please find the scans attached.\r\n\r\n"
        b"--==b==\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="scans.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"\r\n--==b==--\r\n"
    )


def qp_message(size: int = SIZE) -> bytes:
    """A text body of soft line breaks only: it decodes to one short line."""
    return (
        HEAD % b"qp" + b"Subject: soft line breaks\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Hello,=\r\n" + b"=\r\n" * (size // 3) + b" the end.\r\n"
    )


def junk_b64_message(size: int = SIZE) -> bytes:
    """A "base64" attachment of junk: printable characters, most outside the base64 alphabet."""
    rng = random.Random(7)
    alphabet = bytes(range(0x21, 0x7F))
    line = 76
    lines = (size + line + 1) // (line + 2)
    body = b"".join(bytes(rng.choices(alphabet, k=line)) + b"\r\n" for _ in range(min(lines, 4096)))
    body = body * (lines // 4096 + 1)
    body = body[: lines * (line + 2)]
    return (
        HEAD % b"junk" + b"Subject: junk base64\r\n"
        b'Content-Type: multipart/mixed; boundary="==j=="\r\n\r\n'
        b"--==j==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the file.\r\n\r\n"
        b"--==j==\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="junk.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--==j==--\r\n"
    )


BUILD = {"attachment": attachment_message, "qp": qp_message, "junk-b64": junk_b64_message}


class Setup:
    """A config directory: one IMAP account (when Dovecot runs), one pipe and one Maildir account."""

    def __init__(self, base: Path, dovecot=None, user=None):
        self.base = base
        self.dovecot = dovecot
        self.user = user
        self.creds = base / "credentials"
        self.creds.mkdir(parents=True, exist_ok=True)

    def config(self, name: str, max_size: str = "200MB") -> Path:
        """A config with its own database, attachment store and Maildir."""
        maildir = self.base / f"{name}.maildir"
        for sub in ("new", "cur", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        lines = [
            f'[storage]\ndatabase = "{name}.db"\nattachments = "{name}.files"\n',
            f'[limits]\nmax_message_size = "{max_size}"\nmax_attachment_size = "200MB"\n',
            # Memory is measured here, not time: a slow old parser must not end in the quarantine.
            "[performance]\nparse_timeout = 900\n",
            '[[accounts]]\nname = "pipe"\nemail = "pipe@example.test"\nsource = "pipe"\nacknowledge = false\n',
            f'[[accounts]]\nname = "maildir"\nemail = "maildir@example.test"\nsource = "maildir"\n'
            f'path = "{maildir}"\nacknowledge = false\n',
        ]
        if self.dovecot is not None:
            (self.creds / self.user.name).write_text(self.user.password)
            lines.append(
                f'[[accounts]]\nname = "{self.user.name}"\nemail = "{self.user.email}"\n'
                f'imap_host = "127.0.0.1"\nimap_port = {self.dovecot.imaps_port}\n'
                f'ca_file = "{self.dovecot.ca_file}"\nacknowledge = false\n'
            )
        path = self.base / f"{name}.toml"
        path.write_text("\n".join(lines))
        return path

    def environ(self) -> dict:
        env = dict(os.environ)
        env["CREDENTIALS_DIRECTORY"] = str(self.creds)
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
        env["XDG_DATA_HOME"] = str(self.base / "xdg")
        return env


def m2t(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mail2ticket", "--config", str(config), *args]


def with_stdin(cmd: list[str], path: Path) -> list[str]:
    """``cmd < path`` without a shell in between (the shell's RSS would not matter, but its pid would)."""
    return [sys.executable, "-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.dup2(fd, 0); "
            "os.execv(sys.argv[2], sys.argv[2:])", str(path), *cmd]


def _run_quiet(cmd: list[str], env: dict) -> None:
    import subprocess

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"setup step failed: {' '.join(cmd[-4:])}: {done.stderr[-1500:]}")


def _stored(db: Path) -> str:
    """What the database holds, for a line after each figure: messages / quarantine / attachments."""
    with sqlite3.connect(db) as conn:
        msgs = conn.execute("select count(*) from messages").fetchone()[0]
        quarantined = conn.execute("select count(*) from quarantine where resolved_at is null").fetchone()[0]
        atts = conn.execute("select coalesce(sum(size), 0) from attachments").fetchone()[0]
    return f"{msgs} message(s), {quarantined} in quarantine, attachments {atts / MiB:.1f} MiB"


def run_path(path: str, kind: str, eml: Path, setup: Setup, n: int) -> tuple[Run, str]:
    env = setup.environ()
    name = f"{kind}-{path}-{n}"
    if path == "poll":
        config = setup.config(name)
        cmd = m2t(config, "poll", setup.user.name)
    elif path == "ingest":
        config = setup.config(name)
        cmd = with_stdin(m2t(config, "ingest", "--account", "pipe"), eml)
    elif path == "maildir":
        config = setup.config(name)
        shutil.copy(eml, setup.base / f"{name}.maildir" / "new" / f"1700000000.{kind}.bench")
        cmd = m2t(config, "poll", "maildir")
    elif path == "retry":
        small = setup.config(name, max_size="1MB")
        _run_quiet(with_stdin(m2t(small, "ingest", "--account", "pipe"), eml), env)
        config = setup.config(name)  # the same database, the limit raised
        with sqlite3.connect(setup.base / f"{name}.db") as conn:
            qid = conn.execute("select max(id) from quarantine").fetchone()[0]
        cmd = m2t(config, "quarantine", "retry", str(qid))
    elif path == "reparse":
        config = setup.config(name)
        _run_quiet(with_stdin(m2t(config, "ingest", "--account", "pipe"), eml), env)
        cmd = m2t(config, "reparse", "--all")
    else:
        raise ValueError(path)
    run = measured(cmd, env)
    return run, _stored(setup.base / f"{name}.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--messages", default=",".join(MESSAGES), help=f"comma-separated, of {', '.join(MESSAGES)}")
    parser.add_argument("--runs", type=int, default=1, help="runs of each measurement (the largest is shown)")
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    kinds = [k for k in args.messages.split(",") if k]
    for p in paths:
        if p not in PATHS:
            parser.error(f"unknown path {p!r}")
    for k in kinds:
        if k not in BUILD:
            parser.error(f"unknown message {k!r}")

    base = Path(tempfile.mkdtemp(prefix="m2t-bench-mem-"))
    try:
        emls = {}
        for kind in kinds:
            raw = BUILD[kind]()
            emls[kind] = base / f"{kind}.eml"
            emls[kind].write_bytes(raw)
            print(f"message {kind}: {len(raw) / 1e6:.1f} MB", flush=True)
            del raw
        with contextlib.ExitStack() as stack:
            setup = Setup(base / "env")
            if "poll" in paths:
                from tests.servers import CertificateAuthority, Dovecot

                dovecot = stack.enter_context(Dovecot(CertificateAuthority(base / "ca")))
                user = dovecot.add_user()
                setup = Setup(base / "env", dovecot, user)
            print()
            print(f"Peak RSS (largest VmHWM of the process and its workers), goal under {GOAL_MB} MB")
            print(f"{'path':<9} {'message':<11} {'peak':>9} {'main':>9} {'worker':>9}  stored")
            worst = 0.0
            for kind in kinds:
                for path in paths:
                    peaks = []
                    for n in range(args.runs):
                        if path == "poll":
                            setup.user = setup.dovecot.add_user()
                            setup.dovecot.append(setup.user, emls[kind].read_bytes())
                        run, stored = run_path(path, kind, emls[kind], setup, n)
                        if run.code != 0:
                            stored = f"EXIT {run.code}; {stored}"
                        peaks.append((max(run.main_hwm, run.worker_hwm), run, stored))
                    peak, run, stored = max(peaks, key=lambda p: p[0])
                    worst = max(worst, peak * 1024 / 1e6)
                    mark = "" if peak * 1024 / 1e6 < GOAL_MB else "  OVER"
                    print(f"{path:<9} {kind:<11} {peak / 1024:>5.0f} MiB {run.main_hwm / 1024:>5.0f} MiB "
                          f"{run.worker_hwm / 1024:>5.0f} MiB  {stored}{mark}", flush=True)
            print()
            print(f"largest peak: {worst:.0f} MB ({'within' if worst < GOAL_MB else 'OVER'} the {GOAL_MB} MB goal)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
