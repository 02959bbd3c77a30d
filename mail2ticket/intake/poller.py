"""One poll of one mailbox: new UIDs, fetch in batches, import, commit, then flag on the server."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mail2ticket.accounts.credentials import imap_mailbox, sign_in_secret
from mail2ticket.accounts.diagnostics import check_move_folder, move_target
from mail2ticket.config.model import Account, Config
from mail2ticket.errors import (
    EXIT_FAILURE,
    ConnectError,
    ConnectTimeout,
    Mail2TicketError,
    ServerError,
    StoreError,
    TLSError,
)
from mail2ticket.files.spool import Spool
from mail2ticket.intake.importer import ImportContext, Incoming, Source, import_batch
from mail2ticket.intake.locks import AccountBusy, account_lock, lock_path
from mail2ticket.intake.maildir import poll_maildir
from mail2ticket.intake.pipeline import Pipeline, ahead, prefetch, size_batches
from mail2ticket.intake.results import PollResult, failure_cause
from mail2ticket.parse.bigmessage import BIG_MESSAGE
from mail2ticket.tickets.blobs import attachment_store
from mail2ticket.tickets.db import (
    get_mailbox,
    log_event,
    now_iso,
    poll_failures,
    record_poll,
    set_mailbox,
    transaction,
)
from mail2ticket.tickets.failure_causes import count_poll_failure
from mail2ticket.tickets.leases import LeaseLost
from mail2ticket.tickets.ledger import (
    count_failure,
    forget_failures,
    has_pending_actions,
    mark_actions_done,
    mark_mailbox_checked,
    pending_actions,
    supersede_quarantine,
)
from mail2ticket.transport.imap import Mailbox, chunks

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)

BACKOFF_MIN = 60
BACKOFF_MAX = 15 * 60


def backoff_seconds(failures: int) -> int:
    return min(BACKOFF_MAX, BACKOFF_MIN * (2 ** max(0, failures - 1)))


def _internaldate(value) -> datetime | None:
    if isinstance(value, datetime):
        # imapclient hands INTERNALDATE over as naive *local* time (normalise_times=True).
        return value if value.tzinfo else value.astimezone(UTC)
    return None


def _apply_pending(db: Database, box: Mailbox, account: Account, uidvalidity: int, result: PollResult) -> int:
    """Run the server action of every stored message still waiting for it, as the CURRENT config
    says (a fixed or changed after_import applies to the waiting ones too).

    A failing action never stops the poll: the messages stay pending (retried by the next poll),
    ``result.action_error`` says why, naming the folder, and later calls in this poll do nothing."""
    if result.action_error is not None:
        return 0
    rows = pending_actions(db, account.name, account.folder, uidvalidity)
    if not rows:
        return 0
    action = account.after_import or "none"
    done = 0
    for chunk in chunks(rows, 500):
        try:
            box.apply_action(action, [r["uid"] for r in chunk])
        except Exception as exc:  # noqa: BLE001 - recorded and retried; never stops the import
            result.action_error = _action_error(box, action, exc)
            log.warning("account %s: %s", account.name, result.action_error)
            return done
        with transaction(db):
            mark_actions_done(db, [r["id"] for r in chunk], action)
        done += len(chunk)
    return done


def _action_error(box: Mailbox, action: str, exc: Exception) -> str:
    """One line on a failed after-import action: for a move, which folder and which ones exist."""
    from imapclient.exceptions import (
        IMAPClientAbortError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
    )


    if isinstance(exc, (ssl.SSLError, OSError, IMAPClientAbortError)):
        raise exc  # the connection is gone: the poll fails as any lost connection does
    target = move_target(action)
    if target is not None:
        try:
            check_move_folder(box, target)
        except Mail2TicketError as missing:
            exc = missing
        except Exception:  # noqa: BLE001 - keep the original error
            pass
    text = exc.one_line() if isinstance(exc, Mail2TicketError) else str(exc)
    return (
        f"after_import = {action!r} failed: {text}; the messages are stored and their server "
        "action waits (retried at every poll, with the after_import the config then has)"
    )


# A poll that finds nothing new asks only STATUS; a full SELECT and UID SEARCH still runs at
# least this often, as a safety net against a server whose STATUS would be stale.
FULL_CHECK_SECONDS = 3600


def _nothing_new(db: Database, box: Mailbox, account: Account) -> bool:
    """True when STATUS shows no UID above the watermark (same UIDVALIDITY), nothing waits to be
    flagged, and the folder had a full check within FULL_CHECK_SECONDS: the poll can end here."""
    state = get_mailbox(db, account.name, account.folder)
    if state is None or not state.get("checked_at") or not state.get("uidvalidity"):
        return False
    checked = datetime.fromisoformat(state["checked_at"].replace("Z", "+00:00"))
    if (datetime.now(UTC) - checked).total_seconds() > FULL_CHECK_SECONDS:
        return False
    if has_pending_actions(db, account.name, account.folder):
        return False
    uidvalidity, uidnext = box.status(account.folder)
    return uidvalidity == state["uidvalidity"] and uidnext <= (state["last_uid"] or 0) + 1


def _mark_checked(db: Database, account: Account) -> None:
    with transaction(db):
        mark_mailbox_checked(db, account.name, account.folder, now_iso())


# A UID whose content the server fails to send (no body, an empty one, an answer imapclient
# cannot parse) holds the watermark for this many polls, then goes to the quarantine without its
# bytes: it stays on the server unflagged, and 'quarantine retry' fetches it (RELIABILITY 5, 9).
FETCH_TRIES = 3


def _failure_key(account: Account, uidvalidity: int, uid: int | str) -> str:
    return f"fetch-failures:{account.name}/{account.folder}/{uidvalidity}/{uid}"


def _count_fetch_failures(
    db: Database, account: Account, uidvalidity: int, held: list[int], reasons: dict[int, str],
    failures: dict[int, tuple[int, str]],
) -> dict[int, str]:
    """Count one more failed fetch of each held UID; {uid: error} of those to quarantine now."""
    give_up: dict[int, str] = {}
    if not held:
        return give_up
    with transaction(db):
        for uid in held:
            why = reasons.get(uid, "the server sent no content")
            key = _failure_key(account, uidvalidity, uid)
            tries = count_failure(db, key)
            failures[uid] = (tries, why)
            log.warning("account %s: UID %s of %s could not be fetched (try %d of %d): %s",
                        account.name, uid, account.folder, tries, FETCH_TRIES, why)
            if tries >= FETCH_TRIES:
                give_up[uid] = f"could not be read from the server in {tries} polls: {why}"
    return give_up


def _forget_fetch_failures(db: Database, account: Account, uidvalidity: int, uids: list[int]) -> None:
    """Drop the failure counts of UIDs now accounted for (stored, quarantined or gone)."""
    prefix = _failure_key(account, uidvalidity, "")
    forget_failures(db, prefix, {prefix + str(uid) for uid in uids})


# UIDs whose RFC822.SIZE one command asks for (the fetch thread asks as it goes).
SIZES_CHUNK = 1000


@contextlib.contextmanager
def _lost_marks(lost: threading.Event):
    """Set ``lost`` when the block fails because the IMAP connection is gone (cut, timed out)."""
    from imapclient.exceptions import (
        IMAPClientAbortError,  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
    )

    try:
        yield
    except (OSError, IMAPClientAbortError):  # ssl.SSLError and TimeoutError are OSErrors
        lost.set()
        raise


@contextlib.contextmanager
def _set_on_exit(done: threading.Event):
    """Set ``done`` when the block ends, however it ends (finished, stopped or failed)."""
    try:
        yield
    finally:
        done.set()


def poll_account(
    cfg: Config, db: Database, account: Account, password: str | None, *, hooks=None, stop=None, box=None,
    result: PollResult | None = None, fence=None,
) -> PollResult:
    """Import everything new in ``account``'s folder. Raises Mail2TicketError on failure.

    ``stop`` (a threading.Event): once set, the poll ends after the batch being imported is
    committed and flagged, and logs out; the rest waits for the next poll. ``box``: an open,
    logged-in Mailbox to import over (the daemon's IDLE session), left open afterwards;
    without one the poll opens its own connection with ``password``. ``result``: counted into
    as batches commit, so a caller still knows what was stored when the poll raises."""
    result = result if result is not None else PollResult(account.name)
    ctx = ImportContext(  # config: rules, SLA and acknowledgements (the outbox sends them later)
        db=db, attachments=attachment_store(cfg), hooks=list(hooks or []), config=cfg, fence=fence
    )
    limit = account.max_message_size or cfg.max_message_size
    ctx.attachments.sweep_temp()  # temp files of a run that was killed mid-write
    spools: list[Spool] = []  # large messages fetched into temp files: removed when the poll ends
    try:
        return _poll(cfg, db, account, password, ctx, limit, result, spools, stop, box)
    finally:
        for spool in spools:
            spool.unlink()


def _poll(cfg: Config, db: Database, account: Account, password: str, ctx: ImportContext, limit: int,
          result: PollResult, spools: list[Spool], stop, box=None) -> PollResult:
    borrowed = box is not None
    with contextlib.nullcontext(box) if borrowed else imap_mailbox(account, password) as box:
        # STATUS of the selected mailbox (the IDLE connection's) may show the session's older
        # view (RFC 3501 6.3.10): over a borrowed connection the poll SELECTs and searches.
        if not borrowed and _nothing_new(db, box, account):
            return result
        info = box.select(account.folder)
        gm_mailbox = f"{account.imap_host.lower()}/{account.username.lower()}"
        state = get_mailbox(db, account.name, account.folder)
        last_uid = 0
        if state is not None and state["uidvalidity"] == info.uidvalidity:
            last_uid = state["last_uid"] or 0
        elif state is not None:
            result.uidvalidity_changed = True
            msg = (
                f"UIDVALIDITY of {account.folder} changed from {state['uidvalidity']} to "
                f"{info.uidvalidity}: re-scanning the folder, matching messages by content"
            )
            log.warning("account %s: %s", account.name, msg)
            with transaction(db):
                log_event(db, "uidvalidity-changed", msg, account=account.name)
                set_mailbox(db, account.name, account.folder, info.uidvalidity, 0)
                # Over-size messages were never downloaded, so no hash can match them: their
                # entries name UIDs that no longer exist. The re-scan makes fresh entries.
                supersede_quarantine(db, account.name, account.folder, info.uidvalidity, now_iso())
        else:
            with transaction(db):
                set_mailbox(db, account.name, account.folder, info.uidvalidity, 0)
        result.flagged += _apply_pending(db, box, account, info.uidvalidity, result)
        uids = box.new_uids(last_uid, account.since)
        _mark_checked(db, account)
        if not uids:
            return result
        # RFC822.SIZE of SIZES_CHUNK UIDs at a time, asked by the fetch thread just before it
        # fetches them: not a serial pass over the whole folder before the import starts.
        sizes: dict[int, int] = {}
        action = account.after_import

        failures: dict[int, tuple[int, str]] = {}  # {uid: (tries, why)} of the UIDs held back
        held_back: list[int] = []

        imap_lock = threading.Lock()  # the fetch thread and the server actions share one connection
        # Set when the connection is lost (in either thread) or the import loop has ended: the
        # other thread then sends no further command (it would only wait out the timeout again).
        no_more_imap = threading.Event()

        def planned_batches():
            for part in chunks(uids, SIZES_CHUNK):
                if stop is not None and stop.is_set():
                    return
                with imap_lock, _lost_marks(no_more_imap):
                    if no_more_imap.is_set():
                        return
                    sizes.update(box.sizes(part))
                yield from size_batches(part, sizes, max(1, account.batch_size), limit=limit)

        def raw_batches():
            # IMAP only (runs in the fetch thread): by count and by announced size, so a batch
            # never holds more than a few tens of MB.
            for batch in planned_batches():
                if stop is not None and stop.is_set():
                    return
                big = [u for u in batch if sizes.get(u, 0) > limit]
                # Large (but allowed) messages are fetched in pieces into temp files, never whole
                # in memory; they are parsed from there and stored with incremental blob I/O.
                large = [u for u in batch if u not in big and sizes.get(u, 0) > BIG_MESSAGE]
                small = [u for u in batch if u not in big and u not in large]
                with imap_lock, _lost_marks(no_more_imap):
                    if no_more_imap.is_set():
                        return
                    box.fetch_failures, box.gmail_ids = {}, {}
                    fetched = box.fetch(small) if small else {}
                    spooled: dict[int, tuple[Spool, object]] = {}
                    for uid in large:
                        got = box.fetch_to_file(uid, sizes[uid], ctx.attachments.root / "tmp")
                        if got is not None:
                            spools.append(got[0])
                            spooled[uid] = got
                    # A UID the server sent no body for may be gone (expunged meanwhile: fine) or
                    # the server failed to send it: then the watermark must stay below it.
                    missing = box.existing([u for u in small + large if u not in fetched and u not in spooled])
                    reasons, gm_ids = dict(box.fetch_failures), dict(box.gmail_ids)
                yield batch, big, fetched, spooled, missing, reasons, gm_ids

        def fetched_batches():
            # The next batch is fetched (in a thread) while this one is parsed and committed;
            # closing this generator stops the fetch thread.
            with contextlib.closing(prefetch(raw_batches())) as fetching:
                yield from _items(fetching)

        def _items(fetching):
            for batch, big, fetched, spooled, held, reasons, gm_ids in fetching:
                # ... but not forever (RELIABILITY 5, 9): after FETCH_TRIES polls it is quarantined.
                give_up = _count_fetch_failures(db, account, info.uidvalidity, held, reasons, failures)
                held = [u for u in held if u not in give_up]
                items: list[Incoming] = []
                for uid in batch:
                    source = Source(account.name, account.folder, info.uidvalidity, uid)
                    if uid in big:
                        items.append(Incoming(account.name, None, source, size=sizes[uid], too_large_limit=limit))
                    elif uid in give_up:
                        items.append(Incoming(account.name, None, source, size=sizes.get(uid), fetch_error=give_up[uid]))
                    elif uid in fetched:
                        raw, idate = fetched.pop(uid)
                        msgid, thrid = gm_ids.get(uid, (None, None))
                        items.append(
                            Incoming(account.name, raw, source, received_at=_internaldate(idate), action=action,
                                     gm_mailbox=gm_mailbox if msgid else None, gm_msgid=msgid, gm_thrid=thrid)
                        )
                    elif uid in spooled:
                        spool, idate = spooled.pop(uid)
                        msgid, thrid = gm_ids.get(uid, (None, None))
                        items.append(
                            Incoming(account.name, None, source, received_at=_internaldate(idate), action=action,
                                     gm_mailbox=gm_mailbox if msgid else None, gm_msgid=msgid, gm_thrid=thrid,
                                     spool=spool, size=spool.size)
                        )
                yield batch, items, held  # later batches go on: the watermark stays below held UIDs

        # Batch k+2 is fetched (a thread) and batch k+1 parsed (worker processes) while batch k is
        # committed here, in order; each batch's server action still runs only after its own commit.
        batches = fetched_batches()
        with Pipeline(ctx, getattr(cfg, "workers", None), getattr(cfg, "parse_timeout", None)) as pipe, \
                contextlib.closing(batches), _set_on_exit(no_more_imap):
            for (batch, items, held), job in ahead(batches, lambda b: pipe.submit(b[1])):
                if stop is not None and stop.is_set():
                    log.info("account %s: stopping after the last committed batch", account.name)
                    break
                held_back.extend(held)
                high = min(held_back) - 1 if held_back else max(batch)

                def advance(db: Database, high=high, batch=batch, held=held) -> None:
                    set_mailbox(db, account.name, account.folder, info.uidvalidity, high)
                    _forget_fetch_failures(db, account, info.uidvalidity, [u for u in batch if u not in held])

                outcomes = import_batch(ctx, items, before_commit=advance, prepared=job.result())
                for outcome in outcomes:
                    result.count(outcome)
                # Committed and durable: now, and only now, change the server.
                to_flag = [
                    o.incoming.source.uid
                    for o in outcomes
                    if o.flag_on_server and o.incoming.action and o.incoming.action != "none"
                    and o.incoming.source is not None
                ]
                if to_flag and not no_more_imap.is_set():  # else left pending: the next poll flags them
                    with imap_lock, _lost_marks(no_more_imap):  # a FETCH in progress ends first
                        result.flagged += _apply_pending(db, box, account, info.uidvalidity, result)
                for outcome in outcomes:
                    outcome.incoming.raw = None  # stored: a long first import must not keep every body
                    if outcome.incoming.spool is not None:
                        outcome.incoming.spool.unlink()
        if held_back:
            tries, why = failures.get(held_back[0], (1, "the server sent no content"))
            result.error = ServerError(
                f"UID {held_back[0]} of {account.folder} (still on the server) could not be fetched: {why} "
                f"(try {tries} of {FETCH_TRIES}); it is not stored and not flagged",
                f"the next poll fetches it again; after {FETCH_TRIES} tries it goes to the quarantine",
            ).one_line()
            result.cause = "server"
    if result.action_error and not result.error:
        result.error = result.action_error
        result.cause = "server"  # the server refused the after-import action
    return result


def run_poll(cfg: Config, db: Database, account: Account, *, hooks=None, stop=None, box=None,
             fence=None) -> PollResult:
    """poll_account with errors caught, logged and recorded in account_status (never raises).

    A poll of an account that another poll holds (this process or another on the same database)
    is skipped at once: ``result.skipped`` says by whom; nothing is recorded. ``fence``: the
    daemon's lease check (importer.ImportContext.fence); a batch it refuses is not stored, the
    poll ends as skipped and the account's status is left to the daemon that holds it."""

    if account.source == "pipe":
        return PollResult(account.name)  # nothing to fetch: its mail arrives by 'mail2ticket ingest'
    # One poll per account at a time (daemon pool, push, cron 'poll'): one IMAP connection each.
    try:
        with account_lock(cfg.database, account.name):
            return _run_poll_locked(cfg, db, account, hooks=hooks, stop=stop, box=box, fence=fence)
    except AccountBusy as exc:
        log.info("%s; this poll skipped", exc)
        return PollResult(account.name, skipped=f"{exc}: skipped")
    except Exception as exc:  # noqa: BLE001 - the lock file, permissions: every failure reaches 'status'
        error = _early_error(cfg, account, exc)
        result = PollResult(account.name, error=error.one_line(), exit_code=error.exit_code,
                            cause=failure_cause(error))
        return _record(db, account, result)


def _early_error(cfg: Config, account: Account, exc: Exception) -> Mail2TicketError:
    """A failure outside the poll proper (taking the lock, a file it cannot write)."""

    if isinstance(exc, Mail2TicketError):
        return exc
    if isinstance(exc, OSError) and exc.filename:
        return _file_error(exc)
    lock = lock_path(cfg.database, account.name)
    return Mail2TicketError(
        f"the poll could not start: {exc.__class__.__name__}: {exc} (lock file {lock})",
        "run 'mail2ticket --debug poll' as the service user for the traceback",
    )


def _file_error(exc: OSError) -> Mail2TicketError:
    """A file the poll cannot open or write: which one, who owns it, and what to do."""

    path = Path(exc.filename)
    owner = ""
    try:
        uid = path.stat().st_uid
        try:
            owner = f", owned by {pwd.getpwuid(uid).pw_name}"
        except KeyError:
            owner = f", owned by uid {uid}"
    except OSError:
        pass
    me = _user_name()
    return StoreError(
        f"cannot open {path}{owner}: {exc.strerror}",
        f"give it to the user the service runs as ({me}): chown {me} '{path}' "
        "(a command once run as root may have left it)",
    )


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _run_poll_locked(cfg: Config, db: Database, account: Account, *, hooks=None, stop=None,
                     box=None, fence=None) -> PollResult:
    from imapclient.exceptions import (  # imapclient loads only when a server is contacted (slow to import; most commands never connect)
        IMAPClientAbortError,
        IMAPClientError,
    )


    progress = PollResult(account.name)  # what was stored before a failure, for 'status'
    err: Mail2TicketError | None = None
    try:
        if account.source == "maildir":
            result = poll_maildir(cfg, db, account, hooks=hooks, stop=stop, fence=fence)
        else:
            password = None if box is not None else sign_in_secret(account)
            result = poll_account(cfg, db, account, password, hooks=hooks, stop=stop, box=box,
                                  result=progress, fence=fence)
    except LeaseLost as exc:  # another daemon holds the account now: not a failure of the account
        log.warning("%s", exc.one_line())
        result = PollResult(account.name, skipped=str(exc))
        for name in ("imported", "followups", "duplicates", "quarantined", "flagged"):
            setattr(result, name, getattr(progress, name))
        return result
    except Mail2TicketError as exc:
        err = exc
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:  # cut mid-stream, not a TLS problem
        err = ConnectError(
            f"connection to {account.imap_host}:{account.imap_port} was lost: {exc}",
            "the next poll resumes where the last stored message ended",
        )
    except ssl.SSLError as exc:
        err = TLSError(f"TLS error: {exc}")
    except PermissionError as exc:  # a file or folder of ours, not the connection
        err = _file_error(exc) if exc.filename else StoreError(str(exc))
    except TimeoutError:
        err = ConnectTimeout(
            f"IMAP server {account.imap_host}:{account.imap_port} did not answer within {account.timeout} s",
            "the next poll resumes where the last stored message ended",
        )
    except (OSError, IMAPClientAbortError) as exc:
        err = ConnectError(
            f"connection to {account.imap_host}:{account.imap_port} was lost: {exc}",
            "the next poll resumes where the last stored message ended",
        )
    except IMAPClientError as exc:
        err = ServerError(f"IMAP error from {account.imap_host}: {exc}", "the next poll resumes where this stopped")
    if err is not None:
        result = PollResult(account.name, error=err.one_line(), exit_code=err.exit_code, cause=failure_cause(err))
    if result is not progress and result.error and not progress.error:
        # The poll raised after committing some batches: those messages are stored; count them.
        for name in ("imported", "followups", "duplicates", "quarantined", "flagged"):
            setattr(result, name, getattr(progress, name))
    return _record(db, account, result)


def _record(db: Database, account: Account, result: PollResult) -> PollResult:
    """The poll's outcome into account_status ('status' shows it), and the log."""
    if result.ok:
        record_poll(db, account.name, ok=True, imported=result.stored, result=result.summary())
        log.info("account %s: %s", account.name, result.summary())
        return result
    try:
        failures = poll_failures(db, account.name) + 1
        next_at = (datetime.now(UTC) + timedelta(seconds=backoff_seconds(failures))).replace(microsecond=0)
        # Only the after-import action failed: new mail was imported and must go on being
        # imported at the usual pace, so no backoff; the failure shows in 'status' all the same.
        action_only = result.error == result.action_error
        with transaction(db):  # the failure and its cause's counter (metrics), together
            record_poll(
                db, account.name, ok=False, imported=result.stored,
                result=result.summary() if action_only else "failed", error=result.error,
                next_attempt_at=None if action_only else next_at.isoformat().replace("+00:00", "Z"),
            )
            count_poll_failure(db, account.name, result.cause or "other", now_iso())
    except Exception as exc:  # noqa: BLE001 - the database itself may be what fails
        log.error("account %s: could not record the failure in the database: %s", account.name, exc)
    if not result.exit_code:
        result.exit_code = EXIT_FAILURE
    # 'poll' says each failure once, in its summary: it drops log records marked so.
    log.error("account %s: %s", account.name, result.error, extra={"account_failure": True})
    return result
