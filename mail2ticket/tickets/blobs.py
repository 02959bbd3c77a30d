"""Attachments in the PostgreSQL database: the table ``attachment_blobs`` (its owner module).

With ``[storage] database`` a PostgreSQL URL and no ``attachments`` location, attachments go into
the database, so a second host needs nothing shared but the database (docs/storage.md). The store
has the interface of the bucket store (files/objectstore.py) and reuses its staging: the parser
workers stage a batch's files in the local directory ``root``; ``make_durable`` writes them on the
store's own connection and commits before the batch commits (a failure raises TempFailError: the
batch does not commit and the next poll fetches the mail again). Rows are content-addressed: a
row already there (same size) is not written again. Bytes go in with COPY, 1 MiB at a time, and
come out with ``substring`` 1 MiB at a time (the column is stored uncompressed), never whole in
memory; every read checks the SHA-256 before a byte is handed out.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from mail2ticket.accounts.storage import attachment_store as file_or_bucket_store
from mail2ticket.config.model import Config
from mail2ticket.errors import StoreError, TempFailError
from mail2ticket.files.attachments import AttachmentStore, damaged_error, file_sha256, missing_error
from mail2ticket.files.objectstore import RETRY_HINT, ObjectStore
from mail2ticket.files.perms import makedirs
from mail2ticket.tickets.db import open_store
from mail2ticket.tickets.pg import redact

MiB = 1 << 20
TABLE = "attachment_blobs"  # its schema: tickets/pg_schema.py BLOBS

_lock = threading.Lock()


def attachment_store(cfg: Config) -> AttachmentStore | ObjectStore:
    """The attachment store of ``cfg``: the database's table when ``cfg.attachments_in_database``
    (one per loaded config, its connection opened on first use), else the local directory or
    the bucket (accounts/storage.py)."""
    if not cfg.attachments_in_database:
        return file_or_bucket_store(cfg)
    with _lock:
        store = cfg.__dict__.get("blob_store")
        if store is None:
            store = cfg.__dict__["blob_store"] = BlobStore(cfg)
    return store


@dataclass
class BlobCopy:
    """What copy_directory did: rows written, rows found there already, and the files it could
    not copy (missing from the directory, or not matching their SHA-256 there or in the table)."""

    copied: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    damaged_in_database: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not (self.missing or self.damaged or self.damaged_in_database)

    def as_dict(self) -> dict:
        return {"copied": self.copied, "present": self.present, "missing": self.missing,
                "damaged": self.damaged, "damaged_in_database": self.damaged_in_database,
                "verified": self.verified}


class BlobStore(ObjectStore):
    """Content-addressed rows of ``attachment_blobs`` in the config's PostgreSQL database;
    ``root`` (cfg.attachments) is the local directory for temp, spool and staged files."""

    def __init__(self, cfg: Config):  # noqa: D107  (not ObjectStore's: no bucket)
        self.cfg = cfg
        self.root = Path(cfg.attachments)
        self.local = AttachmentStore(self.root)
        self._db: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    @property
    def url(self) -> str:
        return f"{redact(self.cfg.database_url or '')} table {TABLE}"

    def key(self, sha256: str) -> str:
        return sha256

    def location(self, rel: str) -> str:
        return f"{self.url}: {rel.rsplit('/', 1)[-1]}"

    # --- the connection (its own, never the batch's) ---------------------------------------------
    def _conn(self) -> Any:
        """The psycopg connection (autocommit; each write its own transaction)."""
        if self._db is None:
            self._db = open_store(self.cfg)
        return self._db.conn.raw

    def _s3(self) -> Any:  # ObjectStore's hook for "reach the store": here the database
        return self._conn()

    def _failure(self, exc: Exception, doing: str) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        import psycopg  # loaded already: the engine of a postgresql:// database
        if isinstance(exc, psycopg.Error | OSError):
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            with self._lock:
                if self._db is not None:
                    with contextlib.suppress(Exception):
                        self._db.close()
                    self._db = None  # connect again next time
            return TempFailError(f"attachment store {self.url}: {text} while {doing}", RETRY_HINT)
        raise exc

    def _head(self, sha256: str) -> dict | None:
        try:
            with self._lock:
                row = self._conn().execute(f"select size from {TABLE} where sha256 = %s", [sha256]).fetchone()
        except Exception as exc:
            raise self._failure(exc, f"looking for attachment {sha256}") from None
        return None if row is None else {"ContentLength": row[0]}

    def _upload(self, sha256: str, path: Path, size: int) -> None:
        """One row from the file at ``path``, written with COPY a MiB at a time and committed;
        under a transaction lock on the hash, so two hosts writing the same file write one row.
        ObjectStore.make_durable calls it from its threads: ``_lock`` keeps one statement or
        transaction at a time on the connection."""
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        try:
            with self._lock, open(path, "rb") as f:
                conn = self._conn()
                with conn.transaction():
                    conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", [sha256])
                    if conn.execute(f"select 1 from {TABLE} where sha256 = %s", [sha256]).fetchone():
                        return
                    with conn.cursor().copy(f"copy {TABLE} (sha256, size, stored_at, data) from stdin") as copy:
                        copy.write(f"{sha256}\t{int(size)}\t{now}\t\\\\x".encode())
                        for chunk in iter(lambda: f.read(MiB), b""):
                            copy.write(chunk.hex().encode())
                        copy.write(b"\n")
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._failure(exc, f"storing attachment {sha256}") from None

    # --- reading ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_verified(self, sha256: str) -> Iterator[BinaryIO]:
        """The row's bytes in a local temp file, once their SHA-256 is checked (StoreError, one
        line, when the row is missing or does not match)."""
        where = self.location(sha256)
        makedirs(self.root / "tmp")
        with tempfile.TemporaryFile(dir=self.root / "tmp") as f:
            try:
                with self._lock:
                    conn = self._conn()
                    if not conn.execute(f"select 1 from {TABLE} where sha256 = %s", [sha256]).fetchone():
                        raise missing_error(sha256, where)
                    offset = 1
                    while True:
                        row = conn.execute(f"select substring(data from %s for %s) from {TABLE} where sha256 = %s",
                                           [offset, MiB, sha256]).fetchone()
                        if not row or not row[0]:
                            break
                        f.write(row[0])
                        offset += MiB
            except StoreError:
                raise
            except Exception as exc:
                raise self._failure(exc, f"reading attachment {sha256}") from None
            f.seek(0)
            if file_sha256(f) != sha256:
                raise damaged_error(sha256, where)
            f.seek(0)
            yield f

    # --- moving a directory in (db copy --attachments into-database) -----------------------------
    def copy_directory(self, directory: Path, files: Iterable[tuple[str, int]]) -> BlobCopy:
        """Put the files of the local store ``directory`` named by ``files`` ((sha256, size) of
        the attachments' rows) into the table: each file's SHA-256 checked before it is sent,
        written as make_durable writes (a row already there is kept), then the row's SHA-256
        computed by PostgreSQL checked against its key. The directory is not changed."""
        local = AttachmentStore(directory)
        result = BlobCopy()
        for sha256, _size in files:
            path = local.path(sha256)
            try:
                with open(path, "rb") as f:
                    intact = file_sha256(f) == sha256
            except FileNotFoundError:
                result.missing.append(sha256)
                continue
            if not intact:
                result.damaged.append(sha256)
                continue
            there = self._head(sha256) is not None
            self._publish(sha256, [path])
            try:
                with self._lock:
                    row = self._conn().execute(f"select encode(sha256(data), 'hex') from {TABLE} where sha256 = %s",
                                               [sha256]).fetchone()
            except Exception as exc:
                raise self._failure(exc, f"checking attachment {sha256}") from None
            if row is None or row[0] != sha256:
                result.damaged_in_database.append(sha256)
            elif there:
                result.present += 1
            else:
                result.copied += 1
        return result

    def close(self) -> None:
        """Close the store's connection (db copy; a daemon's store lives as long as its config)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def check(self) -> None:
        """Reach the database's table once (config check --online)."""
        try:
            self._head("0" * 64)
        except StoreError:
            raise
