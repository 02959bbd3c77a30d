"""The quarantine: messages that could not become tickets, kept raw until a sysadmin retries them."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mail2ticket.accounts.credentials import imap_mailbox
from mail2ticket.config.model import Config
from mail2ticket.errors import Mail2TicketError, NotFoundError
from mail2ticket.files.spool import Spool
from mail2ticket.intake.importer import (
    ImportContext,
    Incoming,
    PreparedItem,
    import_batch,
    prepare_item,
)
from mail2ticket.parse.bigmessage import BIG_MESSAGE
from mail2ticket.tickets.blobs import attachment_store
from mail2ticket.tickets.db import get_raw, log_event, now_iso, transaction
from mail2ticket.tickets.ledger import (
    open_quarantine_count,
    quarantine_discarded,
    quarantine_entries,
    quarantine_entry,
    quarantine_resolved,
    quarantine_retried,
)
from mail2ticket.tickets.messages import take_stored

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)


def list_entries(db: Database, *, include_resolved: bool = False) -> list[dict]:
    return quarantine_entries(db, include_resolved=include_resolved)


def get_entry(db: Database, qid: int) -> dict:
    row = quarantine_entry(db, qid)
    if row is None:
        raise NotFoundError(f"no quarantine entry #{qid}", "see 'mail2ticket quarantine list'")
    return row


def raw_of(db: Database, entry: dict) -> bytes:
    """The raw bytes of a quarantined message; a one-line error when there are none."""
    if entry["discarded_at"]:
        kept = f"; they were exported to {entry['export_path']}" if entry["export_path"] else ""
        raise Mail2TicketError(f"quarantine entry #{entry['id']} was discarded{kept}")
    data = get_raw(db, entry["raw_sha256"]) if entry["raw_sha256"] else None
    if data is None:
        raise Mail2TicketError(
            f"quarantine entry #{entry['id']} was never downloaded (over the size limit or not sent by "
            f"the server): it is still on the server, UID {entry['uid']} in {entry['folder']}",
            "fetch it with 'mail2ticket quarantine retry' once the limit allows, or with a mail client",
        )
    return data


def write_private(path: Path, data: bytes | BinaryIO) -> None:
    """A new file readable by its owner only (mail is private), on disk before this returns.
    Never overwrites an existing file. ``data``: the bytes, or a file to copy them from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Mail2TicketError(f"{path} exists already", "choose another file name") from None
    except OSError as exc:
        raise Mail2TicketError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        if isinstance(data, bytes):
            f.write(data)
        else:
            shutil.copyfileobj(data, f, 1 << 20)
        f.flush()
        os.fsync(f.fileno())


def discard(db: Database, qid: int, export_dir: Path | None) -> dict:
    """Take an entry out of the quarantine for good. Its raw bytes are first written to a file in
    ``export_dir`` (unless None), then removed from the database. The import ledger keeps its
    source, so the message is not imported again. Returns the updated entry."""
    entry = get_entry(db, qid)
    if entry["discarded_at"]:
        return entry
    if entry["resolved_at"]:
        raise Mail2TicketError(
            f"quarantine entry #{qid} was imported already (message {entry['resolved_message']})",
            "nothing to discard",
        )
    export_path = None
    data = get_raw(db, entry["raw_sha256"]) if entry["raw_sha256"] else None
    if data is not None and export_dir is not None:
        export_path = export_dir / f"quarantine-{qid}-{entry['raw_sha256'][:12]}.eml"
        write_private(export_path, data)  # on disk before the database lets go of the bytes
    now = now_iso()
    with transaction(db):
        quarantine_discarded(db, qid, str(export_path) if export_path else None, now, entry["raw_sha256"])
        log_event(db, "quarantine-discarded", f"#{qid}" + (f" exported to {export_path}" if export_path else ""),
                  account=entry["account"])
    return get_entry(db, qid)


def open_count(db: Database) -> int:
    return open_quarantine_count(db)


def _limit(cfg: Config, account_name: str) -> int:
    try:
        account = cfg.account(account_name)
    except NotFoundError:
        return cfg.max_message_size
    return account.max_message_size or cfg.max_message_size


def _fetch_from_server(cfg: Config, entry: dict, after_commit: list) -> tuple[bytes | None, Spool | None]:
    """A too-large message was left on the server: fetch it now that the limit allows it.

    ``(raw, None)``, or ``(None, spool)`` for a large message: fetched in pieces into a temp file,
    as poll does (bigmessage). The server-side action (\\Seen, move, delete) is not run here but
    appended to ``after_commit``: it may only run once the message is stored.
    """

    account = cfg.account(entry["account"])
    limit = _limit(cfg, entry["account"])
    if entry["size"] is not None and entry["size"] > limit:
        raise Mail2TicketError(
            f"message of {entry['size']} bytes is still over the size limit of {limit} bytes",
            "raise max_message_size (in [limits] or the account) and retry",
        )
    box = imap_mailbox(account)
    box.connect()
    try:
        info = box.select(entry["folder"])
        if info.uidvalidity != entry["uidvalidity"]:
            raise Mail2TicketError(
                f"folder {entry['folder']} was re-created since (UIDVALIDITY changed)",
                "the message is imported again by the next poll's re-scan",
            )
        if (entry["size"] or 0) > BIG_MESSAGE:
            got = box.fetch_to_file(entry["uid"], entry["size"], Path(cfg.attachments) / "tmp")
            data = {entry["uid"]: (None, got[0])} if got is not None else {}
        else:
            data = {uid: (raw, None) for uid, (raw, _idate) in box.fetch([entry["uid"]]).items()}
        if entry["uid"] not in data:
            if box.existing([entry["uid"]]):
                raise Mail2TicketError(
                    f"the server still lists UID {entry['uid']} of {entry['folder']} but sends no "
                    "usable content for it",
                    "check the message with another mail client or the server's admin, then retry",
                )
            raise Mail2TicketError(f"UID {entry['uid']} is no longer in {entry['folder']} on the server")
    except BaseException:
        box.close(quick=True)
        raise
    after_commit.append(lambda stored: _finish_on_server(box, account.after_import, entry["uid"], stored))
    return data[entry["uid"]]


def _finish_on_server(box, action: str | None, uid: int, stored: bool) -> None:
    try:
        if stored and action not in (None, "none"):
            box.apply_action(action, [uid])
    finally:
        box.close()


def retry(cfg: Config, db: Database, qid: int) -> dict:
    """Parse and import a quarantined message again; returns the updated entry."""
    entry = get_entry(db, qid)
    if entry["resolved_at"]:
        return entry
    after_commit: list = []
    spool: Spool | None = None
    # A large message is never read whole: it is copied from the database (or fetched from the
    # server) into a temp file and parsed from there, as poll does (bigmessage).
    if entry["raw_sha256"]:
        raw, spool = take_stored(db, entry["raw_sha256"], Path(cfg.attachments) / "tmp") or (None, None)
    else:
        try:
            raw, spool = _fetch_from_server(cfg, entry, after_commit)
        except Mail2TicketError as exc:
            with transaction(db):
                quarantine_retried(db, qid, exc.one_line())
            return get_entry(db, qid)
    stored = False
    try:
        result = _retry_stored(cfg, db, qid, entry, raw, spool)
        stored = bool(result["resolved_at"])
        return result
    finally:
        if spool is not None:
            spool.unlink()
        for finish in after_commit:  # only now, with the import committed, touch the server
            finish(stored)


def _retry_stored(cfg: Config, db: Database, qid: int, entry: dict, raw: bytes | None,
                  spool: Spool | None) -> dict:
    ctx = ImportContext(db=db, attachments=attachment_store(cfg), config=cfg)
    incoming = Incoming(entry["account"], raw, spool=spool, size=spool.size if spool is not None else None)
    # Parse first (and write the attachment files): on failure the entry stays, with the new
    # error and one more retry counted.
    if raw is None and spool is None:
        prepared = PreparedItem(incoming, None, None, "the raw bytes are missing from the database", [])
    else:
        prepared = prepare_item(ctx, incoming)
    if prepared.error is not None:
        with transaction(db):
            quarantine_retried(db, qid, prepared.error)
        return get_entry(db, qid)
    # The raw bytes are already recorded against this entry; import them as a fresh message.
    with transaction(db):
        outcomes = import_batch(ctx, [incoming], prepared=[prepared])
        outcome = outcomes[0]
        if outcome.message_row:
            digest = prepared.sha256
            quarantine_resolved(db, qid, outcome.message_row, digest, now_iso())
    return get_entry(db, qid)
