"""The one prepare step: parse a message, recognise monitoring mail, and write its attachments to
the store, before any transaction. A message in memory is parsed there (or, with too many lines, from a temp file); a
large one is parsed from its spool file in bounded memory (parse/bigmessage.py). The parser
workers of intake/pipeline.py run it; so do the importer without workers, quarantine retries
and reparse."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mail2ticket.config.monitoring import MonitoringFormat
from mail2ticket.errors import ParseError
from mail2ticket.files.attachments import AttachmentStore
from mail2ticket.parse.bigmessage import parse_bytes, parse_file, too_many_lines
from mail2ticket.parse.monitoring import recognise
from mail2ticket.parse.parsed import ParseLimits, Prepared, StoredAttachment, attachment_fields


def prepare(parse: Callable[[bytes], Any], store: AttachmentStore, raw: bytes | None = None, *,
            path: str | None = None, limits: ParseLimits | None = None, owner: int | None = None,
            monitoring: Sequence[MonitoringFormat] | None = None) -> Prepared:
    """Parse ``raw`` (or the message in the file ``path``) and write each attachment to ``store``.

    ``monitoring``: the custom formats of [[monitoring.formats]] when monitoring mail is
    recognised (parsed.monitoring is then set, here in the worker: recognise is pure); None: not.

    The attachments' bytes are dropped as soon as they are written: what is returned is small
    whatever their sizes (each a StoredAttachment). With ``owner`` (the pid of the process that
    commits), attachment files are written as temp files without fsync, for that process to make
    durable once per batch (StoredAttachment.pending); without it each is durable at once.

    A message that cannot be parsed is a Prepared with ``error`` (it goes to the quarantine); a
    parser bug is one too, never an exception. Raises TempFailError when the disk cannot take the
    attachments now (nothing is lost: the next poll prepares it again)."""
    done = _prepare(parse, store, raw, path=path, limits=limits, owner=owner)
    if monitoring is not None and done.parsed is not None:
        done.parsed.monitoring = recognise(done.parsed, monitoring)
    return done


def _prepare(parse: Callable[[bytes], Any], store: AttachmentStore, raw: bytes | None, *,
             path: str | None, limits: ParseLimits | None, owner: int | None) -> Prepared:
    if path is not None:
        return parse_file(parse, store, path, limits)
    assert raw is not None
    if too_many_lines(raw):
        return parse_bytes(parse, store, raw, limits)
    try:
        parsed = parse(raw)
    except ParseError as exc:
        return Prepared(error=str(exc))
    except Exception as exc:  # a parser bug must never stop the queue
        return Prepared(error=f"internal parser error: {exc.__class__.__name__}: {exc}")
    stored = []
    kept = []
    for index, att in enumerate(parsed.attachments):
        data = att.data
        pending = None
        if owner is None:
            sha, rel = store.put(data)
        else:
            sha, rel, pending = store.put_pending(data, owner)
        stored.append((index, sha, rel))
        kept.append(StoredAttachment(attachment_fields(att), len(data), sha, store.root / rel, pending, store))
        del data
    parsed.attachments = kept
    return Prepared(parsed, stored)

