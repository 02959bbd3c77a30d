"""The kill test of issue 17.3: three real daemons on one real PostgreSQL share six accounts on
the test Dovecot while a random daemon is SIGKILLed again and again (and started again), and the
database connections of a random daemon are cut in the middle of its transactions (a TCP relay
between each daemon and PostgreSQL). At the end every message is stored exactly once with the
server's bytes, every attachment file matches its hash, and no acknowledgement went out twice
except the documented at-most-one repeat (a daemon killed between the SMTP server's 250 and the
row marked sent: docs/reliability.md).

CI runs a small size; MAIL2TICKET_KILL_TEST=full runs the issue's: 3,000 messages, 20 kills.
The figures are printed (docs/scaling.md has the full run's)."""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import keyring
import tomli_w

from mail2ticket.files.attachments import AttachmentStore
from tests.helpers import file_sha256, make_mail, sha256_hex, wait_until
from tests.postgres import TEST_PASSWORD
from tests.test_daemons_shared import _sql

FULL = os.environ.get("MAIL2TICKET_KILL_TEST") == "full"
MESSAGES, KILLS = (3000, 20) if FULL else (60, 3)
ACCOUNTS, DAEMONS = 6, 3


def test_three_daemons_six_accounts_random_kills_and_cut_connections_lose_and_duplicate_nothing(
    tmp_path, pg_url, postgres_server, dovecot, account_config, smtp_server, start_daemon, tcp_relay,
    monkeypatch, capsys,
):
    monkeypatch.setenv("PGPASSWORD", TEST_PASSWORD)
    rng = random.Random(int(os.environ.get("MAIL2TICKET_KILL_SEED", "17")))
    users = [dovecot.add_user() for _ in range(ACCOUNTS)]
    for user in users:
        keyring.set_password("mail2ticket", user.name, user.password)
    accounts = [account_config(u, smtp_server) for u in users]
    sent_mail: dict[str, bytes] = {}
    chunks: list[list[tuple]] = [[] for _ in range(KILLS)]  # the mail arrives while daemons are killed
    for k, user in enumerate(users):
        for i in range(MESSAGES // ACCOUNTS):
            n = k * 100_000 + i
            raw = make_mail(f"case {n}", sender=f"Customer {n} <c{n}@customer.test>",
                            message_id=f"<kill-{n}@customer.test>", body=f"message {n} " + "x" * 1500,
                            attachment=f"%PDF-1.4 invoice {n}\n".encode() * 40 if i % 10 == 0 else None)
            sent_mail[f"<kill-{n}@customer.test>"] = raw
            chunks[i * KILLS // (MESSAGES // ACCOUNTS)].append((user, raw))

    host, port = "127.0.0.1", postgres_server.port
    relays = [tcp_relay(host, port) for _ in range(DAEMONS)]
    configs = []
    for d, relay in enumerate(relays):
        main = tmp_path / f"d{d}" / "config.toml"
        main.parent.mkdir()
        main.write_text(tomli_w.dumps({
            "storage": {"database": pg_url.replace(f":{port}/", f":{relay.port}/"),
                        "attachments": str(tmp_path / "att"), "instance": f"d{d}"},
            "schedule": {"poll": "2s", "outbox": "2s", "overdue": "1h"},
            "daemon": {"lease_renew": "1s", "lease_ttl": "3s"},
            "accounts": accounts,
        }))
        configs.append(main)
    env = {"PGPASSWORD": TEST_PASSWORD}
    daemons = [start_daemon(main, env=env) for main in configs]
    for daemon in daemons:
        daemon.notify.wait_for("READY", "1", timeout=60)

    def stored() -> int:
        return _sql(pg_url, "select count(*) from messages where direction = 'in'")[0][0]

    exits = 0  # a daemon whose start was cut exits 75 (EX_TEMPFAIL) and systemd starts it again

    def restart_exited() -> None:
        nonlocal exits
        for d in range(DAEMONS):
            if daemons[d].proc.poll() is not None:
                assert daemons[d].proc.returncode == 75, daemons[d].log()[-2000:]
                exits += 1
                daemons[d] = start_daemon(configs[d], env=env)

    t0 = time.monotonic()
    kills = cuts = 0
    progress = []  # messages stored at each kill: the kills are spread over the whole import
    while kills < KILLS:
        restart_exited()
        for user in users:
            dovecot.append_many(user, [raw for u, raw in chunks[kills] if u is user])
        # Kill k waits until about k/(KILLS+1) of the mail is stored (or a while at most), so that
        # the kills fall all along the import and not only on its first minutes.
        goal, waited = kills * len(sent_mail) // (KILLS + 1), time.monotonic()
        while stored() < goal and time.monotonic() - waited < (60 if FULL else 20):
            restart_exited()
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 2.5))
        progress.append(stored())
        d = rng.randrange(DAEMONS)
        daemons[d].proc.kill()  # whatever it was doing: fetching, storing, sending
        daemons[d].proc.wait()
        kills += 1
        daemons[d] = start_daemon(configs[d], env=env)
        if kills % 2:
            time.sleep(rng.uniform(0.2, 1.0))
            relays[rng.randrange(DAEMONS)].cut_all()  # a daemon's database connections, mid-transaction or not
            cuts += 1
    at_last_kill = progress[-1]
    time.sleep(2)
    restart_exited()
    wait_until(lambda: stored() >= len(sent_mail), 600 if FULL else 240, "every message stored")
    # A mail whose send failed waits its backoff (30 s, then 60 s, 120 s: outgoing/sender.py), so
    # a mail deferred three times by the cuts needs 210 s; the rows left say why if it never drains.
    try:
        wait_until(lambda: not _sql(pg_url, "select count(*) from outbox where status in ('queued', 'sending')")[0][0],
                   360, "the outbox drained")
    except AssertionError:
        left = _sql(pg_url, "select id, status, claimed_by, attempts, next_attempt_at, last_error from outbox "
                            "where status in ('queued', 'sending') order by id")
        raise AssertionError(f"the outbox did not drain in 360 s; left: {left}") from None
    took = time.monotonic() - t0

    # Every message exactly once, byte for byte what the server has.
    per_id = Counter(dict(_sql(pg_url, "select message_id, count(*) from messages where direction = 'in' "
                                       "group by message_id")))
    lost = [m for m in sent_mail if m not in per_id]
    duplicated = {m: n for m, n in per_id.items() if n > 1}
    on_server = {sha256_hex(raw) for user in users for raw in dovecot.fetch_raw(user).values()}
    stored_raw = dict(_sql(pg_url, "select m.message_id, m.raw_sha256 from messages m where direction = 'in'"))
    assert lost == [] and duplicated == {}
    # The kills fell along the import: the last one with most of the mail already stored.
    assert at_last_kill >= len(sent_mail) // 2, progress
    assert set(stored_raw.values()) <= on_server
    for digest, raw in _sql(pg_url, "select sha256, raw from raw_messages"):
        assert sha256_hex(bytes(raw)) == digest
    store = AttachmentStore(tmp_path / "att")
    attachments = _sql(pg_url, "select distinct sha256 from attachments")
    assert len(attachments) == len(sent_mail) // 10
    for (digest,) in attachments:
        assert file_sha256(store.path(digest)) == digest
    # Each acknowledgement to the SMTP server once; a second copy only of a mail whose sender was
    # killed between the server's 250 and the row marked sent (at most one repeat each).
    acks = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    repeats = {m: n for m, n in acks.items() if n > 1}
    sent_rows = _sql(pg_url, "select count(*) from outbox where status = 'sent'")[0][0]
    assert max(acks.values(), default=1) <= 2 and len(repeats) <= kills
    assert len(acks) == sent_rows
    outbox = dict(_sql(pg_url, "select status, count(*) from outbox group by status"))
    not_acked = Counter(reason.split(":")[1].split("(")[0].strip() for (reason,) in _sql(
        pg_url, "select ack_reason from messages where direction = 'in' and left(ack_reason, 12) != 'acknowledged'"))
    with capsys.disabled():
        print(f"\nkill test: {DAEMONS} daemons, {ACCOUNTS} accounts, {len(sent_mail)} messages "
              f"({len(attachments)} with an attachment), {kills} SIGKILLs with restarts, {cuts} database "
              f"connection cuts ({exits} daemon exits 75 at a cut start, started again), {took:.0f} s; stored {len(per_id)}, lost {len(lost)}, duplicated "
              f"{len(duplicated)}; stored at the kills {progress}; acknowledgements sent "
              f"{len(acks)}, repeated {len(repeats)}; outbox {outbox}; not acknowledged: {dict(not_acked)}")
    for daemon in daemons:  # a clean stop; or the exit 75 of a start whose connection was cut
        if daemon.proc.poll() is None:
            assert daemon.stop()[0] == 0
        else:
            assert daemon.proc.returncode == 75, daemon.log()[-2000:]
