"""Attachments in the PostgreSQL database when no attachments location is given (issue 17,
point 5; catalogue 116): a real poll from the real Dovecot into the real PostgreSQL puts each
attachment once into attachment_blobs, the CLI reads it back byte for byte checked against its
SHA-256, and a changed row is refused in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tomli_w

from mail2ticket.accounts.secrets import store_password
from mail2ticket.errors import EXIT_TEMPFAIL
from tests.helpers import LONG_AGO, files_mail, run_cli, sha256_hex
from tests.postgres import TEST_PASSWORD


def _mail(n: int, attachments: list[tuple[str, bytes]]) -> bytes:
    return files_mail(n, attachments, "blob")


def _ok(config: Path, *args: str):
    result = run_cli(config, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def _sql(url: str, sql: str, params=()):
    import psycopg

    with psycopg.connect(url, password=TEST_PASSWORD, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def test_with_postgresql_and_no_location_attachments_go_into_the_database_once_and_come_back_checked(
        tmp_path, pg_url, dovecot, imap_user, account_config):
    rng = random.Random(116)
    shared, small, large = rng.randbytes(30_000), rng.randbytes(2_000), rng.randbytes(3 * 1024 * 1024 + 7)
    store_password("database", TEST_PASSWORD)
    store_password(imap_user.name, imap_user.password)
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({"storage": {"database": pg_url},
                                     "accounts": [account_config(imap_user, added_at=LONG_AGO)]}))
    dovecot.append(imap_user, _mail(1, [("report.pdf", shared), ("note.txt", small)]))
    dovecot.append(imap_user, _mail(2, [("report-again.pdf", shared), ("big.bin", large)]))

    # The table refusing writes (a full disk, a server going away): the poll fails, nothing of
    # the batch is committed, no mail is flagged; the next poll imports every mail once.
    _ok(config, "status")  # creates the schema
    _sql(pg_url, "create function refuse() returns trigger language plpgsql as "
                 "$$ begin raise exception 'could not extend file: No space left on device'; end $$")
    _sql(pg_url, "create trigger refuse before insert on attachment_blobs for each row execute function refuse()")
    failed = run_cli(config, "poll")
    assert failed.exit_code == EXIT_TEMPFAIL, (failed.stdout, failed.stderr)
    assert "No space left on device" in failed.stderr and "the next poll fetches the mail again" in failed.stderr, failed.stderr
    assert _sql(pg_url, "select count(*) from messages") == [(0,)]
    assert not [uid for uid, flags in dovecot.flags(imap_user).items() if "\\Seen" in flags]
    _sql(pg_url, "drop trigger refuse on attachment_blobs")

    _ok(config, "poll")

    assert _sql(pg_url, "select count(*) from messages") == [(2,)]
    stored = _sql(pg_url, "select sha256, size, length(data) from attachment_blobs order by size")
    assert stored == [(sha256_hex(d), len(d), len(d)) for d in (small, shared, large)]  # the shared file once
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and len(p.name) == 64], \
        "an attachment was left on the local disk"

    tickets = json.loads(_ok(config, "tickets", "list", "--status", "all", "--json", "--sort", "id").stdout)
    for ticket, which, data in ((tickets[0], "1", shared), (tickets[0], "note.txt", small),
                                (tickets[1], "report-again.pdf", shared), (tickets[1], "big.bin", large)):
        out = tmp_path / f"saved-{ticket['id']}-{which}"
        _ok(config, "tickets", "attachment", str(ticket["id"]), which, "-o", str(out))
        assert out.read_bytes() == data
    assert "attachment_blobs" in _ok(config, "tickets", "show", str(tickets[0]["id"])).stdout

    # A row changed in the database is refused, naming the attachment; nothing is written.
    _sql(pg_url, "update attachment_blobs set data = %s where sha256 = %s", [b"X" * 2_000, sha256_hex(small)])
    out = tmp_path / "tampered"
    result = run_cli(config, "tickets", "attachment", str(tickets[0]["id"]), "note.txt", "-o", str(out))
    assert result.exit_code != 0 and not out.exists()
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1, error
    assert "'note.txt'" in error and "does not match its SHA-256" in error and "restore it" in error


def test_an_explicit_attachments_location_keeps_its_meaning_on_postgresql(tmp_path, pg_url):
    from mail2ticket.config.load import load_config
    from mail2ticket.files.attachments import AttachmentStore
    from mail2ticket.tickets.blobs import BlobStore, attachment_store

    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({"storage": {"database": pg_url, "attachments": str(tmp_path / "files")}}))
    store = attachment_store(load_config(config))
    assert isinstance(store, AttachmentStore) and store.root == tmp_path / "files"
    config.write_text(tomli_w.dumps({"storage": {"database": pg_url}}))
    assert isinstance(attachment_store(load_config(config)), BlobStore)
    shown = run_cli(config, "config", "check").stdout
    assert f"Attachments: {pg_url} table attachment_blobs (staging " in shown, shown
    config.write_text(tomli_w.dumps({"storage": {"database": str(tmp_path / "m2t.db")}}))
    assert type(attachment_store(load_config(config))) is AttachmentStore  # SQLite: unchanged


@pytest.mark.sqlite_only("the source of db copy is a SQLite file")
def test_db_copy_puts_the_default_directorys_attachments_into_the_database_checked(
        tmp_path, pg_url, dovecot, imap_user, account_config):
    rng = random.Random(1160)
    shared, other = rng.randbytes(20_000), rng.randbytes(5_000)
    store_password("database", TEST_PASSWORD)
    store_password(imap_user.name, imap_user.password)
    account = account_config(imap_user, added_at=LONG_AGO)
    config = tmp_path / "config.toml"  # SQLite, attachments not set: the default directory
    config.write_text(tomli_w.dumps({"storage": {"database": str(tmp_path / "m2t.db")}, "accounts": [account]}))
    dovecot.append(imap_user, _mail(1, [("a.bin", shared), ("b.bin", other)]))
    dovecot.append(imap_user, _mail(2, [("a-again.bin", shared)]))
    _ok(config, "poll")
    [damaged] = [p for p in tmp_path.rglob(sha256_hex(other)) if p.is_file()]
    damaged.write_bytes(b"Y" * 5_000)

    # A file that does not match its SHA-256 is not copied: exit 1 naming it; the rest is copied.
    first = run_cli(config, "db", "copy", "--to", pg_url)
    assert first.exit_code == 1, (first.stdout, first.stderr)
    assert "not matching their SHA-256" in first.stderr and sha256_hex(other) in first.stderr
    assert _sql(pg_url, "select sha256 from attachment_blobs") == [(sha256_hex(shared),)]

    damaged.write_bytes(other)  # restored from a backup: the copy run again copies the rest
    again = run_cli(config, "db", "copy", "--to", pg_url, "--json")
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["attachments_copy"] == {"copied": 1, "present": 1, "missing": [], "damaged": [],
                                           "damaged_in_database": [], "verified": True}
    assert "copied into the database's table attachment_blobs" in summary["attachments"]
    assert summary["config_change"] == {"storage": {"database": pg_url}}
    assert damaged.read_bytes() == other, "the directory is left as it is"

    # The config as db copy says: only the database; the attachments come from the database.
    pg_config = tmp_path / "pg.toml"
    pg_config.write_text(tomli_w.dumps({"storage": {"database": pg_url}, "accounts": [account]}))
    tickets = json.loads(_ok(pg_config, "tickets", "list", "--status", "all", "--json", "--sort", "id").stdout)
    for ticket, which, data in ((tickets[0], "b.bin", other), (tickets[1], "a-again.bin", shared)):
        out = tmp_path / f"saved-{which}"
        _ok(pg_config, "tickets", "attachment", str(ticket["id"]), which, "-o", str(out))
        assert out.read_bytes() == data
