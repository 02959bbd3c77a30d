"""The quarantine: messages that could not become tickets, kept raw until a sysadmin retries them."""

from __future__ import annotations

import logging

from sqlite_utils import Database

from mail2ticket.attachments import AttachmentStore
from mail2ticket.config import Config
from mail2ticket.errors import Mail2TicketError, NotFoundError
from mail2ticket.importer import ImportContext, Incoming, import_batch
from mail2ticket.store import get_raw, now_iso, transaction

log = logging.getLogger(__name__)


def list_entries(db: Database, *, include_resolved: bool = False) -> list[dict]:
    sql = (
        "select id, account, folder, uidvalidity, uid, raw_sha256, size, reason, error, created_at, "
        "retries, resolved_at, resolved_message from quarantine"
    )
    if not include_resolved:
        sql += " where resolved_at is null"
    return list(db.query(sql + " order by id"))


def get_entry(db: Database, qid: int) -> dict:
    rows = list(db.query("select * from quarantine where id = ?", [qid]))
    if not rows:
        raise NotFoundError(f"no quarantine entry #{qid}", "see 'mail2ticket quarantine list'")
    return rows[0]


def open_count(db: Database) -> int:
    return db.execute("select count(*) from quarantine where resolved_at is null").fetchone()[0]


def _fetch_from_server(cfg: Config, entry: dict) -> bytes:
    """A too-large message was left on the server: fetch it now, limit lifted."""
    from mail2ticket.imap import Mailbox
    from mail2ticket.secrets import get_password

    account = cfg.account(entry["account"])
    with Mailbox(account, get_password(account)) as box:
        info = box.select(entry["folder"])
        if info.uidvalidity != entry["uidvalidity"]:
            raise Mail2TicketError(
                f"folder {entry['folder']} was re-created since (UIDVALIDITY changed)",
                "the message is imported again by the next poll's re-scan",
            )
        data = box.fetch([entry["uid"]])
        if entry["uid"] not in data:
            raise Mail2TicketError(f"UID {entry['uid']} is no longer in {entry['folder']} on the server")
        raw = data[entry["uid"]][0]
        if account.after_import not in (None, "none"):
            box.apply_action(account.after_import, [entry["uid"]])
        return raw


def retry(cfg: Config, db: Database, qid: int) -> dict:
    """Parse and import a quarantined message again; returns the updated entry."""
    entry = get_entry(db, qid)
    if entry["resolved_at"]:
        return entry
    if entry["raw_sha256"]:
        raw = get_raw(db, entry["raw_sha256"])
    else:
        raw = _fetch_from_server(cfg, entry)
    ctx = ImportContext(db=db, attachments=AttachmentStore(cfg.attachments))
    # Parse first: on failure the entry stays, with the new error and one more retry counted.
    try:
        ctx.parse(raw)
    except Exception as exc:
        with transaction(db):
            db.execute(
                "update quarantine set retries = retries + 1, error = ? where id = ?",
                [f"{exc.__class__.__name__}: {exc}", qid],
            )
        return get_entry(db, qid)
    # The raw bytes are already recorded against this entry; import them as a fresh message.
    with transaction(db):
        db.execute("update quarantine set raw_sha256 = null where id = ? and raw_sha256 is null", [qid])
        outcomes = import_batch(ctx, [Incoming(entry["account"], raw)])
        outcome = outcomes[0]
        if outcome.message_row:
            db.execute(
                "update quarantine set resolved_at = ?, resolved_message = ?, retries = retries + 1 where id = ?",
                [now_iso(), outcome.message_row, qid],
            )
            db.execute("update sources set message = ? where quarantine = ?", [outcome.message_row, qid])
    return get_entry(db, qid)
