"""The Maildir source: each message imported exactly once, then moved to cur/ with the S flag."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from email.message import EmailMessage
from functools import partial
from pathlib import Path

import pytest
import tomli_w

from tests.helpers import (
    all_tickets,
    command,
    connect,
    engine_storage,
    open_store,
    request_mail,
    rows,
    run_cli,
    sha256_hex,
)
from tests.parallel import HEAVY

REPO = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("MAIL2TICKET_KILLS", "25"))
SEED = int(os.environ.get("MAIL2TICKET_SEED", str(random.randrange(1 << 30))))


def make_maildir(root: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def deliver(root: Path, raw: bytes, name: str, subdir: str = "new", info: str = "") -> Path:
    """Deliver like an MDA: write in tmp/, then rename into new/ (or cur/ with an info suffix)."""
    tmp = root / "tmp" / name
    tmp.write_bytes(raw)
    target = root / subdir / (name + (f":2,{info}" if subdir == "cur" else ""))
    os.rename(tmp, target)
    return target


def message(n: int, subject: str | None = None, **headers: str) -> bytes:
    return request_mail(n, subject, f"customer{n}@example.org", f"<request-{n}@example.org>", headers)


def write_config(tmp_path: Path, maildir: Path, **account: object) -> Path:
    config = tmp_path / "config.toml"
    data = {
        "storage": engine_storage(tmp_path, {"database": "data/m2t.db", "attachments": "data/files"},
                                  replaces="data/m2t.db"),
        "accounts": [
            {"name": "local", "email": "support@example.com", "source": "maildir",
             "path": os.path.relpath(maildir, tmp_path), "acknowledge": False, **account}
        ],
    }
    config.write_text(tomli_w.dumps(data))
    return config


run = partial(run_cli, catch_exceptions=False)  # an exception in the CLI fails with its traceback


def files_in(root: Path, subdir: str) -> list[str]:
    return sorted(f for f in os.listdir(root / subdir) if not f.startswith("."))


def test_poll_imports_every_message_of_new_and_cur_once_and_marks_it_seen_in_cur(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    deliver(root, message(2), "1772442001.M2P1.host")
    # Already in cur/ (a mail client looked at it), flagged but not seen: still new to us.
    deliver(root, message(3), "1772442002.M3P1.host", subdir="cur", info="F")
    config = write_config(tmp_path, root)

    first = run(config, "poll")
    assert first.exit_code == 0, first.stderr
    assert "local: 3 imported" in first.stdout
    assert files_in(root, "new") == []
    assert files_in(root, "cur") == [
        "1772442000.M1P1.host:2,S", "1772442001.M2P1.host:2,S", "1772442002.M3P1.host:2,FS"
    ]
    assert sorted(t["subject"] for t in all_tickets(config)) == [
        "Request number 1", "Request number 2", "Request number 3"
    ]

    second = run(config, "poll")
    assert second.exit_code == 0, second.stderr
    assert "local: 0 imported" in second.stdout
    assert len(all_tickets(config)) == 3


def test_new_mail_arriving_later_is_imported_by_the_next_poll(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    config = write_config(tmp_path, root)
    assert run(config, "poll").exit_code == 0
    deliver(root, message(2), "1772442100.M2P1.host")
    result = run(config, "poll")
    assert "local: 1 imported" in result.stdout
    assert len(all_tickets(config)) == 2
    assert files_in(root, "cur") == ["1772442000.M1P1.host:2,S", "1772442100.M2P1.host:2,S"]


def test_a_reply_delivered_in_the_same_poll_as_its_original_joins_the_original_ticket(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    # The reply's file is written first, but its unique name says it was delivered later.
    # From the same customer: a stranger naming their Message-ID gets a ticket of its own (item 53).
    reply = message(2, "Re: Printer jams", In_Reply_To="<request-1@example.org>")
    deliver(root, reply.replace(b"customer2@example.org", b"customer1@example.org"), "1772442500.M2P1.host")
    deliver(root, message(1, "Printer jams"), "1772442000.M1P1.host")
    config = write_config(tmp_path, root)
    result = run(config, "poll")
    assert "(1 new, 1 follow-ups)" in result.stdout
    (ticket,) = all_tickets(config)
    assert ticket["subject"] == "Printer jams" and ticket["message_count"] == 2


def test_after_import_none_leaves_every_file_where_and_as_it_was(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    deliver(root, message(2), "1772442001.M2P1.host", subdir="cur", info="")
    config = write_config(tmp_path, root, after_import="none")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    assert "local: 2 imported" in run(config, "poll").stdout
    assert "local: 0 imported" in run(config, "poll").stdout
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    assert after == before
    assert len(all_tickets(config)) == 2


def test_after_import_delete_removes_each_file_once_its_message_is_stored(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    deliver(root, message(2), "1772442001.M2P1.host", subdir="cur", info="S")
    config = write_config(tmp_path, root, after_import="delete")
    assert "local: 2 imported" in run(config, "poll").stdout
    assert files_in(root, "new") == [] and files_in(root, "cur") == []
    raw = run(config, "tickets", "show", "1", "--json")
    assert json.loads(raw.stdout)["messages"][0]["subject"] == "Request number 1"


def test_after_import_move_puts_each_file_in_a_maildirplusplus_folder_marked_seen(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    deliver(root, message(2), "1772442001.M2P1.host", subdir="cur", info="F")
    config = write_config(tmp_path, root, after_import="move:Archive/2026")
    assert "local: 2 imported" in run(config, "poll").stdout
    assert files_in(root, "new") == [] and files_in(root, "cur") == []
    archive = root / ".Archive.2026"
    assert files_in(archive, "cur") == ["1772442000.M1P1.host:2,S", "1772442001.M2P1.host:2,FS"]
    assert (archive / "new").is_dir() and (archive / "tmp").is_dir()
    assert "local: 0 imported" in run(config, "poll").stdout  # the subfolder is not read as new mail


def test_a_file_that_cannot_be_read_is_skipped_and_named_while_the_rest_is_imported(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    (root / "new" / "1772442001.M2P1.host").mkdir()  # unreadable as a file, even for root
    config = write_config(tmp_path, root)
    result = run(config, "poll")
    assert result.exit_code == 1
    assert "1 message(s) in" in result.stderr and "1772442001.M2P1.host" in result.stderr
    assert [t["subject"] for t in all_tickets(config)] == ["Request number 1"]
    assert files_in(root, "cur") == ["1772442000.M1P1.host:2,S"]
    # Once it is a readable file, the next poll imports it.
    (root / "new" / "1772442001.M2P1.host").rmdir()
    deliver(root, message(2), "1772442001.M2P1.host")
    fixed = run(config, "poll")
    assert fixed.exit_code == 0 and "local: 1 imported" in fixed.stdout


def test_a_message_stored_but_not_yet_moved_when_the_poll_died_is_moved_by_the_next_poll(
    tmp_path: Path,
) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    deliver(root, message(2), "1772442001.M2P1.host")
    config = write_config(tmp_path, root)
    assert run(config, "poll").exit_code == 0
    # Recreate the state a kill between COMMIT and rename leaves: stored, action pending, file in new/.
    os.rename(root / "cur" / "1772442001.M2P1.host:2,S", root / "new" / "1772442001.M2P1.host")
    with connect(tmp_path) as conn:
        changed = conn.execute(
            "update sources set action_state = 'pending' where uid = "
            "(select id from maildir_names where name = '1772442001.M2P1.host')"
        ).rowcount
    assert changed == 1

    result = run(config, "poll")
    assert result.exit_code == 0, result.stderr
    assert "local: 0 imported" in result.stdout
    assert files_in(root, "new") == []
    assert files_in(root, "cur") == ["1772442000.M1P1.host:2,S", "1772442001.M2P1.host:2,S"]
    assert len(all_tickets(config)) == 2


def test_the_same_bytes_delivered_twice_make_one_ticket_and_both_files_are_marked_seen(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    deliver(root, message(1), "1772442000.M1P1.host")
    deliver(root, message(1), "1772442009.M9P1.host")
    config = write_config(tmp_path, root)
    result = run(config, "poll")
    assert "1 new" in result.stdout and "1 duplicates" in result.stdout
    assert len(all_tickets(config)) == 1
    assert files_in(root, "cur") == ["1772442000.M1P1.host:2,S", "1772442009.M9P1.host:2,S"]


def test_a_message_over_the_size_limit_is_kept_raw_in_the_quarantine_and_marked_seen(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    big = message(1, "Huge scan") + b"x" * 4000 + b"\n"
    deliver(root, big, "1772442000.M1P1.host")
    deliver(root, message(2), "1772442001.M2P1.host")
    config = write_config(tmp_path, root, max_message_size="2KB")
    result = run(config, "poll")
    assert result.exit_code == 0, result.stderr
    assert "1 new" in result.stdout and "1 quarantined" in result.stdout
    listed = json.loads(run(config, "quarantine", "list", "--json").stdout)
    assert [q["raw_sha256"] for q in listed] == [sha256_hex(big)]
    assert "over the size limit" in listed[0]["error"]
    raw = run(config, "quarantine", "show", str(listed[0]["id"]), "--raw").stdout_bytes
    assert raw == big
    assert files_in(root, "new") == []


def test_a_stop_request_ends_the_poll_after_the_committed_batch_and_the_next_poll_takes_the_rest(
    tmp_path: Path,
) -> None:
    """What the daemon does on SIGTERM: run_poll(stop=event) finishes the batch in hand, no more."""
    import threading

    from mail2ticket.config.load import load_config
    from mail2ticket.intake.poller import run_poll

    root = make_maildir(tmp_path / "Maildir")
    for n in range(20):
        deliver(root, message(n), f"{1772442000 + n}.M{n}P1.host")
    config = write_config(tmp_path, root, batch_size=5)
    cfg = load_config(config)
    stop = threading.Event()
    db = open_store(tmp_path)
    try:
        # The stop request arrives while the first message is being stored.
        result = run_poll(cfg, db, cfg.accounts[0], hooks=[lambda *_: stop.set()], stop=stop)
    finally:
        db.close()
    assert result.ok and result.imported == 5
    assert len(files_in(root, "cur")) == 5 and len(files_in(root, "new")) == 15
    assert "local: 15 imported" in run(config, "poll").stdout
    assert len(all_tickets(config)) == 20 and files_in(root, "new") == []


def test_a_path_that_is_not_a_maildir_fails_the_poll_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "Maildir").mkdir()
    config = write_config(tmp_path, tmp_path / "Maildir")
    result = run(config, "poll")
    assert result.exit_code == 3  # a config that cannot work (README: exit codes)
    assert "is not a Maildir (no new/ or cur/ in it)" in result.stderr


def test_a_maildir_account_needs_a_path(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[[accounts]]\nname = "local"\nemail = "support@example.com"\nsource = "maildir"\n'
    )
    result = run(config, "poll")
    assert result.exit_code == 3
    assert "'accounts.local.path' is required when source = \"maildir\"" in result.stderr


# --------------------------------------------------------------------- SIGKILL, exactly once


def _kill_test_message(rng: random.Random, n: int) -> bytes:
    """Message *n*: mostly plain, some with an attachment, some in another charset."""
    msg = EmailMessage()
    msg["From"] = f"user{rng.randrange(40)}@customer.example"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Request {n}"
    msg["Message-ID"] = f"<kill-{n}-{rng.randrange(1 << 30)}@customer.example>"
    kind = rng.random()
    if kind < 0.15:
        msg.set_content(f"Größe {n}: Bürostühle", charset="iso-8859-1", cte="quoted-printable")
    else:
        msg.set_content(f"Request {n}.\n" + "Details. " * rng.randrange(1, 200))
    if 0.15 <= kind < 0.45:
        msg.add_attachment(rng.randbytes(rng.choice([500, 20_000, 200_000])),
                           maintype="application", subtype="octet-stream", filename=f"file-{n}.bin")
    return bytes(msg)


def _kill_leftovers(marker: str) -> int:
    """SIGKILL processes this test started that outlived their killed parent (parse workers)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                count += 1
            except ProcessLookupError:
                pass
    return count


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
@pytest.mark.xdist_group(HEAVY)  # never beside the other SIGKILL loop: it counts kills mid-import
def test_sigkill_at_random_moments_while_polling_a_maildir_imports_every_message_exactly_once(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED)
    print(f"\nseed {SEED} (MAIL2TICKET_SEED={SEED} replays this run), kills {KILLS}")
    root = make_maildir(tmp_path / "Maildir")
    delivered: dict[str, bytes] = {}  # unique name -> bytes

    def new_mail(count: int) -> None:
        for _ in range(count):
            n = len(delivered)
            raw = _kill_test_message(rng, n)
            if n % 97 == 5:  # now and then the same mail delivered twice
                raw = delivered[f"{1772442000 + n - 1}.M{n - 1}P7.host"]
            name = f"{1772442000 + n}.M{n}P7.host"
            deliver(root, raw, name)
            delivered[name] = raw

    config = write_config(tmp_path, root, batch_size=10)
    # A parse worker of a killed poll can outlive it: clean up what this test started.
    request.addfinalizer(lambda: print(f"leftover processes killed: {_kill_leftovers(str(config))}"))
    env = _subprocess_env()
    # How long a poll takes to find nothing to do: the kill delays are drawn around it, so most
    # kills land inside the import (reading, attachment files, commit, renames).
    started = time.monotonic()
    subprocess.run(command(config, "poll"), env=env, check=True, capture_output=True, timeout=60)
    startup = time.monotonic() - started
    new_mail(300)

    kills = mid_import = finished = stored_not_moved = 0
    log = tmp_path / "poll-stderr.log"
    while kills < KILLS:
        with log.open("ab") as err:
            proc = subprocess.Popen(command(config, "poll"), env=env, stdout=subprocess.DEVNULL, stderr=err)
        delay = startup * rng.uniform(0.5, 1.0) + rng.expovariate(1 / 0.25)
        try:
            proc.wait(delay)
            finished += 1
            # The poll ended before its kill: the polls are quicker than the first, empty one that
            # the delays were drawn from (PostgreSQL's first open migrates). Draw shorter delays, or
            # no kill would ever land and the mail would grow by 150 a round (it once ran 15 min).
            startup *= 0.7
            assert finished <= 20 * KILLS, f"{finished} polls ended before their kill; only {kills} kills landed"
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        assert proc.returncode in (0, -signal.SIGKILL), f"poll failed with {proc.returncode}; see {log}"
        # After any kill: no file is marked seen unless its message is durably stored.
        seen = {f.split(":", 1)[0] for f in files_in(root, "cur")}
        stored = {r[0] for r in rows(
            tmp_path, "select n.name from maildir_names n join sources s on s.uid = n.id "
            "and s.folder = n.folder and s.account = 'local'")}
        assert seen <= stored, f"marked seen but not stored: {sorted(seen - stored)[:10]}"
        if proc.returncode == -signal.SIGKILL and len(stored) < len(delivered):
            mid_import += 1
        if proc.returncode == -signal.SIGKILL and len(seen) < len(stored):
            stored_not_moved += 1  # killed between COMMIT and rename: the next poll moves them
        if len(stored) == len(delivered) and kills < KILLS:
            new_mail(150)  # new mail arrives, so the next kills land in an import too
    final = subprocess.run(command(config, "poll"), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    print(f"kills: {kills} (mid-import: {mid_import}, leaving stored files not yet moved: "
          f"{stored_not_moved}); polls that finished first: {finished}; "
          f"messages: {len(delivered)}")
    assert mid_import >= kills // 2, "most kills should land in the middle of an import"

    # Every file ended in cur/ with the S flag, under its own unique name.
    assert files_in(root, "new") == []
    assert files_in(root, "cur") == sorted(f"{name}:2,S" for name in delivered)
    with connect(tmp_path) as conn:
        # Every file is in the ledger exactly once, pointing at byte-identical stored bytes.
        ledger = conn.execute(
            "select n.name, s.raw_sha256, r.raw from maildir_names n join sources s on s.uid = n.id "
            "and s.folder = n.folder join raw_messages r on r.sha256 = s.raw_sha256 where s.account = 'local'"
        ).fetchall()
        assert len(ledger) == len(delivered) == len({name for name, _, _ in ledger})
        for name, sha, raw in ledger:
            assert sha == sha256_hex(delivered[name]) and raw == delivered[name], name
        # Each distinct message is one ticket message, no more; no ticket without a message.
        distinct = {sha256_hex(raw) for raw in delivered.values()}
        in_db = conn.execute("select raw_sha256, count(*) from messages group by raw_sha256").fetchall()
        assert {sha for sha, _ in in_db} == distinct
        assert all(count == 1 for _, count in in_db)
        assert conn.execute("select count(*) from tickets").fetchone()[0] == len(distinct)
        assert conn.execute("select count(*) from sources where action_state != 'done'").fetchone()[0] == 0
        for sha, size, path in conn.execute("select sha256, size, path from attachments"):
            data = (tmp_path / "data" / "files" / path).read_bytes()
            assert sha256_hex(data) == sha and len(data) == size
        if getattr(conn, "engine", None) != "postgresql":
            assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
