"""Store fetched messages exactly once: raw bytes, ticket, message, attachments, or quarantine."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mail2ticket.config.model import Config
from mail2ticket.errors import StoreError, TempFailError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.files.objectstore import ObjectStore
from mail2ticket.files.spool import Spool
from mail2ticket.intake import after_store
from mail2ticket.outgoing.acknowledge import expected_reason
from mail2ticket.parse import message as parse_module
from mail2ticket.parse.autoreply import is_auto_answer
from mail2ticket.parse.parsed import DEFAULT_LIMITS, ParsedMessage, ParseLimits
from mail2ticket.parse.prepare import prepare
from mail2ticket.tickets import monitoring
from mail2ticket.tickets.db import iso, log_event, now_iso, savepoint, transaction
from mail2ticket.tickets.engine import STORE_ERRORS, TRANSIENT_ERRORS
from mail2ticket.tickets.ledger import (
    contents_in_use,
    existing_source,
    existing_sources,
    imported_message,
    insert_quarantine,
    known_contents,
    known_uids,
    open_quarantine_entry,
    record_source,
    same_gmail_message,
    store_raw_spool,
)
from mail2ticket.tickets.messages import insert_attachment, insert_incoming, store_raw
from mail2ticket.tickets.rules import evaluate_rules
from mail2ticket.tickets.threading import (
    ThreadDecision,
    find_ticket,
    sender_unverified,
    settings_for,
)
from mail2ticket.tickets.tickets import add_tags, create_ticket, follow_up, ticket_status, touch

if TYPE_CHECKING:  # sqlite-utils is imported where the database is opened (tickets/db.py)
    from sqlite_utils import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where a message was read: the identity of exactly-once import."""

    account: str
    folder: str
    uidvalidity: int
    uid: int


@dataclass
class Incoming:
    """One fetched message. ``raw`` is None for a message too large to download."""

    account: str
    raw: bytes | None
    source: Source | None = None
    received_at: datetime | None = None
    size: int | None = None
    action: str | None = None  # what to do on the server once stored ("seen", "move:X", ...)
    too_large_limit: int | None = None
    # Gmail (X-GM-EXT-1): the message's id, the same under every label of one mailbox
    # (``gm_mailbox``: "imap host/username"), and its thread id (a threading hint).
    gm_mailbox: str | None = None
    gm_msgid: int | None = None
    gm_thrid: int | None = None
    # A large message fetched into a temp file instead of ``raw`` (mail2ticket.parse.bigmessage).
    spool: Spool | None = None

    @property
    def downloaded(self) -> bool:
        """Whether the message's bytes were fetched (in memory or in a spool file)."""
        return self.raw is not None or self.spool is not None

    @property
    def raw_size(self) -> int:
        return self.spool.size if self.spool is not None else len(self.raw or b"")
    # Why the server's copy could not be read (no content, an unreadable answer) after several
    # polls: ``raw`` is None and the message goes to the quarantine, left on the server unflagged.
    fetch_error: str | None = None


@dataclass
class Outcome:
    incoming: Incoming
    status: str  # imported | followup | duplicate | already | quarantined | skipped
    ticket_id: int | None = None
    message_row: int | None = None
    quarantine_id: int | None = None
    quarantine_reason: str | None = None  # a quarantined message's: _quarantine_reason
    detail: str = ""
    previous_status: str | None = None  # a follow-up's ticket status before this mail reopened it
    no_ack: str | None = None  # why no acknowledgement may be sent (set by rules; see rules.suppresses_ack)
    rules: Any = None  # what rules.evaluate_rules gave for this mail, before the transaction
    # The ack_reason written with the message row (acknowledge.expected_reason), None if none.
    stored_ack_reason: str | None = None

    @property
    def flag_on_server(self) -> bool:
        """Whether the server-side action may now run (the message is durably accounted for)."""
        return self.status != "skipped" and self.incoming.downloaded


@dataclass
class ImportContext:
    db: Database
    attachments: AttachmentStore | ObjectStore  # accounts/storage.attachment_store: one interface
    parse: Callable[[bytes], ParsedMessage] | None = None  # default: mail2ticket.parse.message.parse_message
    # The caller's own steps after a mail is stored (intake/after_store.py runs them in its order).
    hooks: list[Callable[[Database, Outcome, ParsedMessage], None]] = field(default_factory=list)
    # The Config: when set, [[rules]] and [sla] targets apply to each stored mail (after_store).
    config: Config | None = None
    # With a config, new tickets are acknowledged (outgoing/acknowledge.py, the last step of after_store).
    acknowledge: bool = True
    # The size limits of the large-message path (bigmessage.parse_file); from the config.
    limits: Any = None
    # Fencing (several daemons, tickets/leases.py): called inside the batch's write transaction
    # just before it commits; raises leases.LeaseLost when this daemon no longer holds the
    # account, and the whole batch rolls back. None: no lease (one daemon, or a command).
    fence: Callable[[Database], None] | None = None

    def thread_settings(self, account: str | None):
        """threader.settings_for of ``account``, worked out once per import (not per message)."""
        cache = self.__dict__.setdefault("_thread_settings", {})
        if account not in cache:
            cache[account] = settings_for(self.config, account)
        return cache[account]

    def monitoring_for(self, account: str | None):
        """The [monitoring] settings when monitoring mail of ``account`` is recognised, else None."""
        cache = self.__dict__.setdefault("_monitoring", {})
        if account not in cache:
            settings = getattr(self.config, "monitoring", None)
            found = next((a for a in getattr(self.config, "accounts", []) if a.name == account), None)
            cache[account] = settings if settings is not None and settings.enabled_for(found) else None
        return cache[account]

    def __post_init__(self) -> None:
        self.after_store = after_store.steps(self.config, self.hooks, acknowledge=self.acknowledge)
        self.acknowledges = self.config is not None and self.acknowledge  # the ack step is among them
        # The custom formats, for the prepare step to recognise monitoring mail (in the parser
        # workers); None when no account recognises it (docs/monitoring.md).
        settings = getattr(self.config, "monitoring", None)
        self.monitoring_formats = None
        if settings is not None and (settings.enabled or any(a.monitoring for a in self.config.accounts)):
            self.monitoring_formats = tuple(settings.formats)
        if self.parse is None:
            # Looked up now, not at import time, so a parser replaced at run time (a fixed
            # version, or a test's parser with a bug) is the one used.

            self.parse = parse_module.parse_message
            if self.config is not None:  # the size limits of [limits] apply to the parse too

                limits = parse_module.ParseLimits(
                    max_message_bytes=self.config.max_message_size,
                    max_attachment_bytes=self.config.max_attachment_size,
                )
                self.parse = functools.partial(parse_module.parse_message, limits=limits)
        if self.limits is None:
            self.limits = DEFAULT_LIMITS
            if self.config is not None:
                self.limits = ParseLimits(max_message_bytes=self.config.max_message_size,
                                          max_attachment_bytes=self.config.max_attachment_size)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class PreparedItem:
    """One incoming item after the prepare step: its raw SHA-256, the parsed message (attachments
    in the store) or the error that sends it to the quarantine; both None when it is known."""

    incoming: Incoming
    sha256: str | None
    parsed: ParsedMessage | None
    error: str | None
    stored_attachments: list[tuple[int, str, str]]  # (index, sha256, relpath)
    # rules.evaluate_rules for this mail, run before the write transaction (time-limited).
    rules: Any = None


def prepare_item(ctx: ImportContext, item: Incoming) -> PreparedItem:
    """The work done before the transaction: hash, and unless the message is known, the prepare
    step (parse/prepare.py: parse, write the attachment files). Raises TempFailError."""
    if item.raw is None and item.fetch_error:
        return PreparedItem(item, None, None, item.fetch_error, [])
    if item.spool is not None:
        digest = item.spool.sha256
    elif item.raw is None:
        limit = item.too_large_limit
        return PreparedItem(item, None, None, f"message of {item.size} bytes is over the size limit of {limit} bytes", [])
    else:
        digest = sha256_hex(item.raw)
    if _known(ctx.db, item, digest):
        return PreparedItem(item, digest, None, None, [])  # nothing to parse: already imported
    return _prepared(ctx, item, digest)


def _prepared(ctx: ImportContext, item: Incoming, digest: str | None) -> PreparedItem:
    path = item.spool.path if item.spool is not None else None
    done = prepare(ctx.parse, ctx.attachments, item.raw, path=path, limits=ctx.limits,
                   monitoring=ctx.monitoring_formats)
    if done.error and done.error.startswith("internal parser error"):
        log.error("account %s: %s", item.account, done.error)
    return PreparedItem(item, digest, done.parsed, done.error, done.stored)


def _known(db: Database, item: Incoming, digest: str) -> bool:
    """Already imported, by source or by content: parsing it again would be wasted work."""
    return bool(known_items(db, [item], [digest]))


def known_items(db: Database, items: Sequence[Incoming], digests: Sequence[str | None]) -> set[int]:
    """Indexes of ``items`` already imported, by source or by content (``digests``: their raw
    SHA-256, None when unknown): one query for the sources and one for the hashes, per batch."""
    known: set[int] = set()
    sources = [(i, it.source) for i, it in enumerate(items) if it.source is not None]
    if sources:
        first = sources[0][1]
        if all((s.account, s.folder, s.uidvalidity) == (first.account, first.folder, first.uidvalidity)
               for _, s in sources):
            found = known_uids(db, first.account, first.folder, first.uidvalidity, [s.uid for _, s in sources])
            known |= {i for i, s in sources if s.uid in found}
        else:
            known |= {i for i, s in sources if _existing_source(db, s) is not None}
    seen = known_contents(db, sorted({d for d in digests if d is not None}))
    known |= {i for i, d in enumerate(digests) if d in seen}
    return known


def import_batch(
    ctx: ImportContext,
    items: Sequence[Incoming],
    *,
    before_commit: Callable[[Database], None] | None = None,
    prepared: Sequence[PreparedItem] | None = None,
) -> list[Outcome]:
    """Import ``items`` in one durable transaction; each message isolated by a savepoint.

    ``prepared``: the items already hashed, parsed and their attachments written (by the worker
    processes of mail2ticket.intake.pipeline), one per item in order; by default they are prepared here.
    Returns one Outcome per item. Raises TempFailError (nothing committed) when the
    database or disk cannot take the batch right now.
    """
    if prepared is None:
        prepared = [prepare_item(ctx, item) for item in items]
    for prep in prepared:  # an account with monitoring = false treats monitoring mail as any other
        if prep.parsed is not None and prep.parsed.monitoring is not None and ctx.monitoring_for(prep.incoming.account) is None:
            prep.parsed.monitoring = None
    if ctx.config is not None and getattr(ctx.config, "rules", None):
        for prep in prepared:  # before the transaction: a slow rule never holds the write lock
            if prep.parsed is not None and prep.rules is None:
                prep.rules = evaluate_rules(ctx.config, prep.parsed, prep.incoming.account)
    db = ctx.db
    outcomes: list[Outcome] = []
    try:
        with transaction(db):
            lookups = BatchLookups(db, prepared)
            for prep in prepared:
                outcomes.append(_store_one(ctx, prep, lookups))
            if before_commit:
                before_commit(db)
            if ctx.fence is not None:  # last, under the write lock: a stale holder's batch is refused
                ctx.fence(db)
    except TRANSIENT_ERRORS as exc:
        raise TempFailError(f"database: {exc}", "free disk space or wait for the lock, then poll again") from None
    return outcomes


def _existing_source(db: Database, source: Source) -> dict | None:
    return existing_source(db, source.account, source.folder, source.uidvalidity, source.uid)


class BatchLookups:
    """The ledger look-ups of a batch's messages, asked once for the whole batch at the start of
    its transaction instead of once per message: which sources are in the ledger already
    (existing_source), and which raw hashes are an imported message or an open quarantine
    entry (imported_message, open_quarantine_entry).

    The answers hold while the batch is stored: the transaction holds the write lock, so only
    this batch's own messages change these tables, and each of them writes only its own source
    and its own hash. So a source or hash that occurs once in the batch is answered from here the
    first time it is asked; a later ask (the same message stored again after a failure) and any
    source or hash that occurs twice in the batch run the per-message query, as before."""

    def __init__(self, db: Database, prepared: Sequence[PreparedItem]):
        self.db = db
        keys: dict[tuple, int] = {}
        hashes: dict[str, int] = {}
        for prep in prepared:
            source = prep.incoming.source
            if source is not None:
                key = (source.account, source.folder, source.uidvalidity, source.uid)
                keys[key] = keys.get(key, 0) + 1
            if prep.sha256 is not None:
                hashes[prep.sha256] = hashes.get(prep.sha256, 0) + 1
        self._sources: dict[tuple, dict | None] = {key: None for key, n in keys.items() if n == 1}
        groups: dict[tuple, list[int]] = {}
        for account, folder, uidvalidity, uid in self._sources:
            groups.setdefault((account, folder, uidvalidity), []).append(uid)
        for (account, folder, uidvalidity), uids in groups.items():
            for uid, row in existing_sources(db, account, folder, uidvalidity, uids).items():
                self._sources[(account, folder, uidvalidity, uid)] = row
        self._hashes = {sha for sha, n in hashes.items() if n == 1}
        self._imported, self._quarantined = contents_in_use(db, sorted(self._hashes))

    def existing_source(self, source: Source) -> dict | None:
        """existing_source of ``source``."""
        key = (source.account, source.folder, source.uidvalidity, source.uid)
        if key in self._sources:
            return self._sources.pop(key)  # answered once from the batch's query
        return _existing_source(self.db, source)

    def content(self, sha: str) -> tuple[dict | None, int | None]:
        """(imported_message, open_quarantine_entry) of ``sha``, each only when the batch's
        queries say it can be found (else None without asking)."""
        if sha in self._hashes:
            self._hashes.discard(sha)  # answered once from the batch's queries
            same = imported_message(self.db, sha) if sha in self._imported else None
            if same is not None:
                return same, None
            return None, open_quarantine_entry(self.db, sha) if sha in self._quarantined else None
        same = imported_message(self.db, sha)
        if same is not None:
            return same, None
        return None, open_quarantine_entry(self.db, sha)


def _quarantine_reason(ctx: ImportContext, item: Incoming) -> str:
    """Why a message goes to the quarantine: never downloaded (over the size limit on the server,
    or its fetch kept failing), downloaded but over a local source's limit (maildir.limit_size),
    or downloaded and not readable as mail."""
    if not item.downloaded:
        return "unfetchable" if item.fetch_error else "too-large"
    limit = ctx.limits.max_message_bytes if ctx.limits is not None else None
    return "too-large" if limit and item.raw_size > limit else "unparseable"


def _store_one(ctx: ImportContext, prep: PreparedItem, lookups: BatchLookups | None = None) -> Outcome:
    db = ctx.db
    item = prep.incoming
    if item.source is not None:
        existing = lookups.existing_source(item.source) if lookups else _existing_source(db, item.source)
        if existing is not None:
            return Outcome(item, "already", message_row=existing["message"], quarantine_id=existing["quarantine"])
    try:
        with savepoint(db):  # one message's failure rolls back only that message
            return _store_one_inner(ctx, prep, lookups)
    except (*TRANSIENT_ERRORS, TempFailError):
        raise  # disk full, locked: the whole batch must fail, nothing is flagged, retried later
    except (*STORE_ERRORS, StoreError, ValueError, TypeError, KeyError) as exc:
        log.exception("storing a message failed; it goes to the quarantine")
        prep.parsed = None
        prep.error = f"could not be stored: {exc.__class__.__name__}: {exc}"
        with savepoint(db):
            return _store_one_inner(ctx, prep, lookups)


def _store_one_inner(ctx: ImportContext, prep: PreparedItem, lookups: BatchLookups | None = None) -> Outcome:
    db = ctx.db
    item = prep.incoming
    now = now_iso()
    seen = _same_gmail_message(db, item)
    if seen is not None:  # one Gmail message under another label (folder) or account: no new ticket
        _record_source(db, item, prep.sha256, message=seen["message"], quarantine=seen["quarantine"])
        return Outcome(item, "duplicate", ticket_id=seen["ticket_id"], message_row=seen["message"],
                       quarantine_id=seen["quarantine"],
                       detail=f"Gmail message {item.gm_msgid} already imported from {seen['folder']} "
                              f"of account {seen['account']}")
    if prep.sha256 is not None:
        _insert_raw(db, item, prep.sha256, now)
        if lookups is not None:
            same, open_q = lookups.content(prep.sha256)
        else:
            same = imported_message(db, prep.sha256)
            open_q = None if same else open_quarantine_entry(db, prep.sha256)
        if same:
            outcome = Outcome(item, "duplicate", ticket_id=same["ticket_id"], message_row=same["id"],
                              detail="same bytes already imported")
            _record_source(db, item, prep.sha256, message=same["id"], quarantine=None)
            return outcome
        if open_q is not None and prep.parsed is None:
            _record_source(db, item, prep.sha256, message=None, quarantine=open_q)
            return Outcome(item, "duplicate", quarantine_id=open_q, detail="already in quarantine")
    if prep.parsed is None and prep.error is None:
        # Known when prepared but gone inside the transaction: parse now (rare race).
        return _store_one_inner(ctx, _prepared(ctx, prep.incoming, prep.sha256), lookups)
    if prep.parsed is None:
        reason = _quarantine_reason(ctx, item)
        qid = insert_quarantine(
            db,
            {
                "account": item.account,
                "folder": item.source.folder if item.source else None,
                "uidvalidity": item.source.uidvalidity if item.source else None,
                "uid": item.source.uid if item.source else None,
                "raw_sha256": prep.sha256,
                "size": item.raw_size if item.downloaded else item.size,
                "reason": reason,
                "error": prep.error or "",
                "created_at": now,
            }
        )
        # The entry's number first: what 'quarantine show' needs (and a hook's reader, docs/hooks.md).
        log_event(db, "quarantined", f"#{qid} ({reason}): {prep.error or ''}", account=item.account)
        _record_source(db, item, prep.sha256, message=None, quarantine=qid)
        log.warning("account %s: message quarantined (#%s): %s", item.account, qid, prep.error)
        return Outcome(item, "quarantined", quarantine_id=qid, quarantine_reason=reason, detail=prep.error or "")
    return _store_parsed(ctx, prep, now)


def _store_parsed(ctx: ImportContext, prep: PreparedItem, now: str) -> Outcome:
    db = ctx.db
    item = prep.incoming
    parsed = prep.parsed
    assert parsed is not None
    thread = ctx.thread_settings(item.account)
    unverified = sender_unverified(parsed, thread.authserv_ids)  # RELIABILITY 40
    if unverified and unverified not in parsed.defects:
        parsed.defects.append(unverified)  # stored with the message, shown by 'tickets show'
    decision = find_ticket(db, parsed, allow_anyone_by_tag=thread.allow_anyone_by_tag,
                           tag_format=thread.tag_format, raw=item.raw,
                           gm_thrid=item.gm_thrid, account=item.account, own_addresses=thread.own_addresses,
                           unverified=unverified)
    if decision.kind == "own":  # our own mail fetched back: already in the ticket or the outbox
        _record_source(db, item, prep.sha256, message=decision.message_row, quarantine=None)
        log.info("account %s: %s", item.account, decision.reason)
        return Outcome(item, "duplicate", ticket_id=decision.ticket_id, message_row=decision.message_row,
                       detail=decision.reason)
    date = iso(parsed.date) or iso(item.received_at) or now
    # A monitoring mail whose From our own server says is forged (DMARC) closes nothing: it is
    # filed as any other such mail (its own ticket), never by the problem's key.
    mon = parsed.monitoring if not unverified else None
    plan = None
    if mon is not None and decision.kind not in ("copy", "report"):
        # One ticket per problem: the monitoring key wins over References and subject threading.
        settings = ctx.monitoring_for(item.account)
        when = min(date, iso(item.received_at) or now)  # the mail's date, never in the future
        ignored = any(rule.ignore for rule in (prep.rules[0] if prep.rules else ()))
        plan = monitoring.plan(db, item.account, mon, when, settings.flap_window, ignored=ignored)
        decision = ThreadDecision(plan.ticket_id, plan.reason, kind="monitoring")
    if plan is not None and plan.ticket_id is None:
        ticket_id = create_ticket(db, account=item.account, subject=parsed.subject or "(no subject)",
                                  requester=parsed.from_address, requester_name=parsed.from_name, now=now,
                                  closed=plan.action == "orphan")
        status = "imported"
        log_event(db, "created", f"from {parsed.from_address or 'unknown sender'}: {decision.reason}",
                  ticket_id=ticket_id, account=item.account)
    elif plan is not None:
        ticket_id = decision.ticket_id
        status = "followup"
        previous_status = ticket_status(db, ticket_id)
        touch(db, ticket_id, now)
        log_event(db, "followup", decision.reason, ticket_id=ticket_id, account=item.account)
    elif decision.kind == "copy":  # kept (never drop mail) in the same ticket, status unchanged
        ticket_id = decision.ticket_id
        status = "duplicate"
        log_event(db, "copy", decision.reason, ticket_id=ticket_id, account=item.account)
    elif decision.kind == "report":  # a delivery report: filed in the ticket, status unchanged
        ticket_id = decision.ticket_id
        status = "followup"
        previous_status = ticket_status(db, ticket_id)
        touch(db, ticket_id, now)
        log_event(db, "report", decision.reason, ticket_id=ticket_id, account=item.account)
    elif decision.ticket_id is None:
        # An out-of-office answer to nothing we know is kept, but closed on arrival (issue 14.11).
        auto_answer = is_auto_answer(parsed.auto_reply)
        ticket_id = create_ticket(db, account=item.account, subject=parsed.subject or "(no subject)",
                                  requester=parsed.from_address, requester_name=parsed.from_name, now=now,
                                  closed=auto_answer)
        status = "imported"
        log_event(db, "created", f"from {parsed.from_address or 'unknown sender'}: {decision.reason}",
                  ticket_id=ticket_id, account=item.account)
        if auto_answer:
            add_tags(db, ticket_id, ["auto-reply"], actor="import", event=False)
            log_event(db, "auto-reply", f"closed on arrival, tagged auto-reply: an automatic answer "
                      f"({parsed.auto_reply}) to no ticket of ours", ticket_id=ticket_id, account=item.account)
        if unverified:
            log_event(db, "sender-unverified", unverified, ticket_id=ticket_id, account=item.account)
    elif is_auto_answer(parsed.auto_reply):  # an out-of-office answer: joins, changes nothing
        ticket_id = decision.ticket_id
        status = "followup"
        previous_status = ticket_status(db, ticket_id)
        log_event(db, "auto-reply", f"{decision.reason}; an automatic answer ({parsed.auto_reply}): "
                  f"the ticket stays {previous_status}", ticket_id=ticket_id, account=item.account)
    else:
        ticket_id = decision.ticket_id
        status = "followup"
        reopen = bool(thread.reopen_on_reply)  # a closed ticket stays closed when false
        previous_status = follow_up(db, ticket_id, now, reopen=reopen)
        log_event(db, "followup", decision.reason, ticket_id=ticket_id, account=item.account)
        if previous_status == "closed" and reopen:
            log_event(db, "reopened", "by a follow-up from " + (parsed.from_address or "an unknown sender"),
                      ticket_id=ticket_id, account=item.account)
    to_addrs, cc_addrs = bounded_addresses(parsed, "To", parsed.to), bounded_addresses(parsed, "Cc", parsed.cc)
    # The acknowledgement step's reason, when it is known now, goes in with the row (the step
    # updates it only when its own reason differs): one UPDATE fewer per message.
    ack_reason = None
    if ctx.acknowledges:
        no_ack = f"monitoring mail ({mon.tool}): the sender is a machine" if plan is not None else None
        ack_reason = expected_reason(ctx.config, status, decision.reason, item.account, no_ack)
    message_row = insert_incoming(
        db,
        {
            "ticket_id": ticket_id,
            "direction": "in",
            "account": item.account,
            "raw_sha256": prep.sha256,
            "message_id": parsed.message_id,
            "in_reply_to": parsed.in_reply_to[0] if parsed.in_reply_to else None,
            "refs": json.dumps(parsed.references),
            "subject": parsed.subject,
            "from_address": parsed.from_address,
            "from_name": parsed.from_name,
            "to_addrs": json.dumps(to_addrs),
            "cc_addrs": json.dumps(cc_addrs),
            "date": date,
            "received_at": iso(item.received_at) or now,
            "body_text": parsed.body_text,
            "body_html": parsed.body_html,
            "auto_reply": parsed.auto_reply,
            "defects": json.dumps(parsed.defects),
            "thread_reason": decision.reason,
            **({"gm_thrid": item.gm_thrid} if item.gm_thrid else {}),
            **({"ack_reason": ack_reason} if ack_reason is not None else {}),
        }
    )
    rows = []
    for index, sha, rel in prep.stored_attachments:
        att = parsed.attachments[index]
        rows.append(
            {
                "message": message_row,
                "position": index,
                "filename": att.filename,
                "original_filename": getattr(att, "original_filename", None),
                "content_type": att.content_type,
                "size": att.size,
                "sha256": sha,
                "path": rel,
                "content_id": att.content_id,
                "disposition": att.disposition,
            }
        )
    if rows:
        for row in rows:
            insert_attachment(db, row)
    _record_source(db, item, prep.sha256, message=message_row, quarantine=None)
    outcome = Outcome(item, status, ticket_id=ticket_id, message_row=message_row, detail=decision.reason,
                      stored_ack_reason=ack_reason)
    if status == "followup":
        outcome.previous_status = previous_status
    if plan is not None:  # before the rules (after_store): a rule may still change the priority
        settings = ctx.monitoring_for(item.account)
        account = next((a for a in ctx.config.accounts if a.name == item.account), None)
        monitoring.record(db, plan, ticket_id, item.account, mon, when, now=now, ignored=ignored,
                          on_recovery=settings.on_recovery_for(account), priority=settings.priority_of(mon.severity))
        outcome.no_ack = f"monitoring mail ({mon.tool}): the sender is a machine"
    outcome.rules = prep.rules
    for step in ctx.after_store:  # rules and SLA, the caller's hooks, bounces and the acknowledgement
        step(db, outcome, parsed)
    return outcome


# The To or Cc addresses stored with one message (item 57): a mail Cc'd to thousands must not make
# thousands of participants ('tickets reply --all'). The raw bytes keep every address.
MAX_STORED_ADDRESSES = 100


def bounded_addresses(parsed: ParsedMessage, header: str, addresses: list[str]) -> list[str]:
    """The first MAX_STORED_ADDRESSES of ``addresses``; a defect on the message says when cut."""
    if len(addresses) <= MAX_STORED_ADDRESSES:
        return addresses
    parsed.defects.append(
        f"{header}: {len(addresses)} addresses read; the first {MAX_STORED_ADDRESSES} are stored "
        "(the raw mail keeps them all)"
    )
    return addresses[:MAX_STORED_ADDRESSES]


def _record_source(db: Database, item: Incoming, sha: str | None, *, message, quarantine) -> None:
    if item.source is None:
        return
    action = item.action if item.downloaded else None
    record_source(
        db,
        {
            "account": item.source.account,
            "folder": item.source.folder,
            "uidvalidity": item.source.uidvalidity,
            "uid": item.source.uid,
            "raw_sha256": sha,
            "message": message,
            "quarantine": quarantine,
            "imported_at": now_iso(),
            "action": action,
            "action_state": "pending" if action and action != "none" else "done",
            **({"gm_mailbox": item.gm_mailbox, "gm_msgid": item.gm_msgid} if item.gm_msgid else {}),
        }
    )


def _insert_raw(db: Database, item: Incoming, sha: str, now: str) -> None:
    """The raw bytes into raw_messages (once per content). A spooled message is written with
    incremental blob I/O, 1 MB at a time, inside the same transaction: never whole in memory."""
    if item.spool is None:
        store_raw(db, sha, item.raw or b"", now)
        return
    store_raw_spool(db, sha, item.spool, now)


def _same_gmail_message(db: Database, item: Incoming) -> dict | None:
    """The ledger row of the same Gmail message (X-GM-MSGID) of the same mailbox, if imported."""
    if not (item.gm_msgid and item.gm_mailbox):
        return None
    return same_gmail_message(db, item.gm_mailbox, item.gm_msgid)
