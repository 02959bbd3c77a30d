"""Read a local Maildir: import new messages exactly once, then mark them seen (commit, then flag)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mail2ticket.config.model import Account, Config
from mail2ticket.errors import ConfigError, ParseError, StoreError
from mail2ticket.files.attachments import fsync_dir
from mail2ticket.files.spool import Spool
from mail2ticket.intake.importer import ImportContext, Incoming, Source, import_batch
from mail2ticket.intake.pipeline import Pipeline, ahead
from mail2ticket.intake.results import PollResult
from mail2ticket.parse.bigmessage import take
from mail2ticket.parse.parsed import ParsedMessage
from mail2ticket.tickets.blobs import attachment_store
from mail2ticket.tickets.db import now_iso, transaction
from mail2ticket.tickets.ledger import (
    maildir_ids,
    maildir_names_imported,
    maildir_pending_actions,
    mark_actions_done,
)
from mail2ticket.transport.imap import chunks

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)

UIDVALIDITY = 0  # a Maildir has no UIDVALIDITY: the ledger's ids come from the maildir_names table
SEEN = "S"
_TIME_PREFIX = re.compile(r"^(\d{9,})\.")


@dataclass(frozen=True)
class MaildirFile:
    """One message file. ``name`` is the unique name: the file name without its ':2,FLAGS' info."""

    name: str
    subdir: str  # "new" or "cur"
    filename: str

    def path(self, root: Path) -> Path:
        return root / self.subdir / self.filename

    @property
    def flags(self) -> str:
        _, sep, info = self.filename.partition(":2,")
        return info if sep else ""

    @property
    def seen(self) -> bool:
        return self.subdir == "cur" and SEEN in self.flags


def unique_name(filename: str) -> str:
    """The part of a Maildir file name that never changes (flags follow the first ':')."""
    return filename.split(":", 1)[0]


def check_maildir(account: Account) -> Path:
    """The account's Maildir, or ConfigError naming what is missing."""
    root = Path(account.path or "")
    missing = [sub for sub in ("new", "cur") if not (root / sub).is_dir()]
    if missing:
        raise ConfigError(
            f"account {account.name}: {root} is not a Maildir (no {' or '.join(m + '/' for m in missing)} in it)",
            "check the account's path; a Maildir has the directories new/, cur/ and tmp/",
        )
    return root


def scan(root: Path) -> dict[str, MaildirFile]:
    """Every message file in new/ and cur/ by unique name (tmp/ holds deliveries in progress)."""
    found: dict[str, MaildirFile] = {}
    for subdir in ("new", "cur"):
        try:
            names = os.listdir(root / subdir)
        except OSError as exc:
            raise StoreError(f"cannot read the Maildir {root / subdir}: {exc.strerror or exc}",
                             "check the directory's permissions") from None
        for filename in names:
            if filename.startswith("."):
                continue
            found.setdefault(unique_name(filename), MaildirFile(unique_name(filename), subdir, filename))
    return found


def locate(root: Path, name: str) -> MaildirFile | None:
    """Where the message ``name`` is now (a mail client may have moved it since the scan)."""
    if (root / "new" / name).is_file():
        return MaildirFile(name, "new", name)
    try:
        for filename in os.listdir(root / "cur"):
            if unique_name(filename) == name:
                return MaildirFile(name, "cur", filename)
    except OSError:
        return None
    return None


def size_limited(parse: Callable[[bytes], ParsedMessage], limit: int) -> Callable[[bytes], ParsedMessage]:
    """``parse``, but a message over ``limit`` bytes goes to the quarantine (raw kept) instead.

    Used by the local sources (Maildir and 'ingest'): they have no server to leave a large message on,
    so it is kept raw in the quarantine, where 'mail2ticket quarantine retry' can import it later.
    """

    def parse_within_limit(raw: bytes) -> ParsedMessage:
        if len(raw) > limit:
            raise ParseError(
                f"message of {len(raw)} bytes is over the size limit of {limit} bytes (max_message_size)"
            )
        return parse(raw)

    return parse_within_limit


def limit_size(ctx: ImportContext, limit: int) -> None:
    """Apply a local source's size limit to both ways of parsing: in memory (``size_limited``) and
    from a spool file (bigmessage.parse_file, by ``ctx.limits``)."""

    ctx.parse = size_limited(ctx.parse, limit)
    ctx.limits = dataclasses.replace(ctx.limits, max_message_bytes=limit)


def _delivery_order(entry: MaildirFile, mtime: float) -> tuple[float, str]:
    """Oldest first: delivery agents start the unique name with the delivery time."""
    match = _TIME_PREFIX.match(entry.name)
    return (float(match.group(1)) if match else mtime, entry.name)


def _ids(db: Database, folder: str, names: Iterable[str]) -> dict[str, int]:
    """The stable integer id of each unique name (assigned on first sight, never changed)."""
    names = list(names)
    with transaction(db):
        return maildir_ids(db, folder, names, now_iso())


def _in_ledger(db: Database, account: str, folder: str) -> set[str]:
    return maildir_names_imported(db, account, folder, UIDVALIDITY)


def _with_seen(entry: MaildirFile) -> str:
    flags = "".join(sorted(set(entry.flags) | {SEEN}))
    return f"{entry.name}:2,{flags}"


def _apply(root: Path, entry: MaildirFile, action: str) -> set[Path]:
    """Do the after-import action to one file; returns the directories to fsync."""
    source = entry.path(root)
    if action == "seen":
        if entry.seen:
            return set()
        target = root / "cur" / _with_seen(entry)
    elif action == "delete":
        source.unlink()
        return {source.parent}
    elif action.startswith("move:"):
        folder = root / ("." + action[5:].strip("/").replace("/", "."))  # a Maildir++ subfolder
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        target = folder / "cur" / _with_seen(entry)
    else:
        return set()
    os.rename(source, target)
    return {source.parent, target.parent}


def finish_pending(db: Database, account: Account, root: Path, known: dict[str, MaildirFile]) -> int:
    """Apply the after-import action of every stored message whose file was not handled yet.

    This is also the crash recovery: a message stored by a run that stopped before it moved the
    file is moved now. Returns how many files were handled.
    """
    folder = str(root)
    rows = maildir_pending_actions(db, account.name, folder, UIDVALIDITY)
    if not rows:
        return 0
    touched: set[Path] = set()
    done: list[int] = []
    for row in rows:
        entry = known.get(row["name"])
        for _attempt in range(2):
            if entry is None or not entry.path(root).exists():
                entry = locate(root, row["name"])
            if entry is None:
                log.info("account %s: %s is gone from %s; nothing to do", account.name, row["name"], root)
                break
            try:
                touched |= _apply(root, entry, row["action"] or "none")
                break
            except FileNotFoundError:
                entry = None  # moved by someone else meanwhile: look again
            except OSError as exc:
                raise StoreError(
                    f"account {account.name}: cannot mark {entry.path(root)} as read: {exc.strerror or exc}",
                    "check the Maildir's permissions; the message is stored and is moved by the next poll",
                ) from None
        done.append(row["id"])
    for directory in touched:  # the renames are durable before the ledger says so
        fsync_dir(directory)
    with transaction(db):
        for chunk in chunks(done, 500):
            mark_actions_done(db, chunk)
    return len(done)


def poll_maildir(cfg: Config, db: Database, account: Account, hooks=None, stop=None, fence=None) -> PollResult:
    """Import every message of the account's Maildir that is not in the ledger yet.

    Each batch is committed before its files are moved to cur/ with the S flag (or handled as
    ``after_import`` says; "none" leaves them alone). Raises Mail2TicketError on failure.
    ``stop`` (a threading.Event): once set, the poll ends after the batch being imported is
    committed and its files are handled; the rest waits for the next poll.
    """
    root = check_maildir(account)
    folder = str(root)
    result = PollResult(account.name)
    ctx = ImportContext(
        db=db, attachments=attachment_store(cfg), hooks=list(hooks or []), config=cfg, fence=fence
    )  # config: rules, SLA and acknowledgements as for IMAP mail
    limit_size(ctx, account.max_message_size or cfg.max_message_size)
    ctx.attachments.sweep_temp()  # temp files of a run that was killed mid-write
    files = scan(root)
    result.flagged += finish_pending(db, account, root, files)
    stored = _in_ledger(db, account.name, folder)
    todo: list[tuple[MaildirFile, float]] = []
    for name, entry in files.items():
        if name in stored:
            continue
        try:
            mtime = entry.path(root).stat().st_mtime
        except FileNotFoundError:
            continue  # moved since the scan: found again by the next poll
        if account.since and datetime.fromtimestamp(mtime, UTC).date() < account.since:
            continue
        todo.append((entry, mtime))
    if not todo:
        return result
    todo.sort(key=lambda item: _delivery_order(*item))
    ids = _ids(db, folder, (entry.name for entry, _ in todo))
    unreadable: list[str] = []
    spools: list[Spool] = []  # large messages copied into temp files: removed when the poll ends
    spool_dir = ctx.attachments.root / "tmp"

    def read_batches():
        for batch in chunks(todo, max(1, account.batch_size)):
            items = []
            for entry, mtime in batch:
                got = _read(root, entry, unreadable, spool_dir)
                if got is not None:
                    raw, spool = got
                    if spool is not None:
                        spools.append(spool)
                    source = Source(account.name, folder, UIDVALIDITY, ids[entry.name])
                    items.append(Incoming(account.name, raw, source, action=account.after_import,
                                          received_at=datetime.fromtimestamp(mtime, UTC), spool=spool,
                                          size=spool.size if spool is not None else None))
            if items:
                yield items

    # As for IMAP: batch k+1 is read and parsed (in worker processes, each message with a time
    # limit) while batch k is committed; a batch's files are handled only after its own commit.
    try:
        with Pipeline(ctx, getattr(cfg, "workers", None), getattr(cfg, "parse_timeout", None)) as pipe:
            for items, job in ahead(read_batches(), pipe.submit):
                if stop is not None and stop.is_set():
                    log.info("account %s: stopping after the last committed batch", account.name)
                    break
                for outcome in import_batch(ctx, items, prepared=job.result()):
                    result.count(outcome)
                    outcome.incoming.raw = None  # stored: a large Maildir must not stay in memory
                    if outcome.incoming.spool is not None:
                        outcome.incoming.spool.unlink()
                # Committed and durable: now, and only now, move the files.
                result.flagged += finish_pending(db, account, root, files)
    finally:
        for spool in spools:
            spool.unlink()
    if unreadable:
        result.error = (
            f"{len(unreadable)} message(s) in {root} could not be read, e.g. {unreadable[0]}; "
            "fix the permissions: they are imported by the next poll"
        )
        result.cause = "local"
    return result


def _read(root: Path, entry: MaildirFile, unreadable: list[str], spool_dir: Path
          ) -> tuple[bytes | None, Spool | None] | None:
    """The file's bytes, or for a large message a copy in a temp file in ``spool_dir``
    (bigmessage.take: parsed and stored from there in bounded memory, as poll does);
    None if it is gone (picked up again next poll) or unreadable (noted)."""
    for _attempt in range(2):
        try:
            with open(entry.path(root), "rb") as f:
                return take(f, spool_dir)
        except FileNotFoundError:
            moved = locate(root, entry.name)  # a mail client moved it to cur/ meanwhile
            if moved is None:
                return None
            entry = moved
        except OSError as exc:
            log.warning("cannot read %s: %s", entry.path(root), exc.strerror or exc)
            unreadable.append(f"{entry.path(root)}: {exc.strerror or exc}")
            return None
    return None
