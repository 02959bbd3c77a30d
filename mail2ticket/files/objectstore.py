"""The attachment store in an S3-compatible bucket (AWS S3, MinIO, Ceph, Garage, Wasabi, ...).

The same interface as files/attachments.AttachmentStore and the same content addresses: the
object ``PREFIX/ab/cd/abcd…`` holds the attachment whose SHA-256 is ``abcd…``, so a directory of
the local store copied into the bucket (``aws s3 sync``) is a valid bucket store.

Nothing reaches the database before its attachments are in the bucket: the parser workers stage
a batch's files in the local directory ``root`` (as for the local store), and ``make_durable``
uploads them before the batch's transaction commits; an upload that fails raises TempFailError,
the batch is not committed and its mail is fetched again at the next poll. An object already in
the bucket with the right size and hash is not uploaded again. Every read checks the SHA-256 of
what comes back.

boto3 is imported on the first request only (it costs a few hundred milliseconds): commands that
do not touch attachments never pay for it. The secret is resolved by whoever builds the store
(accounts/storage.py) and handed in as ``credentials``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from mail2ticket.errors import StoreError, TempFailError
from mail2ticket.files.attachments import AttachmentStore, damaged_error, file_sha256, missing_error
from mail2ticket.files.perms import makedirs

log = logging.getLogger(__name__)

UPLOADS = 8  # objects uploaded at once by make_durable
RETRY_HINT = "nothing was committed: the next poll fetches the mail again"


class ObjectStore:
    """Content-addressed objects under ``s3://bucket/prefix``; ``root`` is a local directory for
    temp and spool files and for files on their way to the bucket.

    ``credentials``: a function returning (access key id, secret key), or None for botocore's
    own chain (environment, shared credentials file, instance role); called on first use."""

    def __init__(self, bucket: str, prefix: str, root: Path, *, endpoint: str | None = None,
                 region: str | None = None, addressing_style: str | None = None, ca_file: str | None = None,
                 credentials: Callable[[], tuple[str, str] | None] | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.root = Path(root)
        self.local = AttachmentStore(self.root)  # staging, temp files, spool files
        self.endpoint = endpoint
        self.region = region
        self.addressing_style = addressing_style
        self.ca_file = ca_file
        self._credentials = credentials
        self._client: Any = None
        self._errors: Any = None
        self._lock = threading.Lock()

    # --- names -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def relpath(self, sha256: str) -> str:
        return self.local.relpath(sha256)

    def key(self, sha256: str) -> str:
        return self.prefix + self.relpath(sha256)

    def location(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{rel}"

    # --- the client ----------------------------------------------------------------------------
    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import boto3  # only with an s3:// location: slow to import (~0.3 s), an optional extra
                    import botocore.config  # with boto3
                    import botocore.exceptions  # with boto3
                except ImportError:
                    raise StoreError(f"attachments in {self.url} need boto3, which is not installed",
                                     "pip install 'mail2ticket[s3]'") from None
                creds = self._credentials() if self._credentials is not None else None
                keys = {"aws_access_key_id": creds[0], "aws_secret_access_key": creds[1]} if creds else {}
                config = botocore.config.Config(
                    s3={"addressing_style": self.addressing_style or "auto"},
                    # 3 attempts with backoff, unless AWS_MAX_ATTEMPTS or the AWS config file says otherwise
                    retries={"mode": "standard"},
                    connect_timeout=10, read_timeout=60, max_pool_connections=UPLOADS * 2,
                    # The checksums newer botocore adds by default are not understood by every
                    # S3-compatible server; the bytes are checked with Content-MD5 and SHA-256.
                    request_checksum_calculation="when_required", response_checksum_validation="when_required",
                )
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint, region_name=self.region,
                    verify=self.ca_file or True, config=config, **keys)
                self._errors = botocore.exceptions
            return self._client

    def _failure(self, exc: Exception, doing: str) -> StoreError:
        """One line for a failed request: TempFailError when it may pass (network, server, access)."""
        errors = self._errors
        if errors is not None and isinstance(exc, errors.SSLError):
            return TempFailError(f"attachment store {self.url}: TLS failed while {doing}: {exc}",
                                 "check the endpoint's certificate, or set [storage.s3] ca_file for a private CA")
        if errors is not None and isinstance(exc, errors.NoCredentialsError):
            return TempFailError(f"attachment store {self.url}: no credentials while {doing}",
                                 "set [storage.s3] access_key_id and its secret, or AWS credentials (docs/storage.md)")
        if errors is not None and isinstance(exc, errors.ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            return TempFailError(f"attachment store {self.url}: {code} while {doing}: {error.get('Message') or code}",
                                 "check the bucket, the credentials and their permissions; " + RETRY_HINT)
        if errors is not None and isinstance(exc, errors.BotoCoreError | OSError):
            return TempFailError(f"attachment store {self.url} cannot be reached while {doing}: {exc}", RETRY_HINT)
        raise exc

    def _head(self, sha256: str) -> dict | None:
        """The object's headers, or None when it is not there."""
        s3 = self._s3()
        try:
            return s3.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except self._errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._failure(exc, f"looking for attachment {sha256}") from None
        except Exception as exc:
            raise self._failure(exc, f"looking for attachment {sha256}") from None

    def _there(self, sha256: str, size: int) -> bool:
        """The object exists with this size and hash (the hash as its metadata, when it has it)."""
        head = self._head(sha256)
        if head is None or head.get("ContentLength") != size:
            return False
        return head.get("Metadata", {}).get("sha256", sha256) == sha256

    def _upload(self, sha256: str, path: Path, size: int) -> None:
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                md5.update(chunk)
            f.seek(0)
            try:
                self._s3().put_object(
                    Bucket=self.bucket, Key=self.key(sha256), Body=f, ContentLength=size,
                    ContentMD5=base64.b64encode(md5.digest()).decode(), Metadata={"sha256": sha256},
                    ContentType="application/octet-stream")
            except Exception as exc:
                raise self._failure(exc, f"uploading attachment {sha256}") from None

    def _publish(self, sha256: str, files: list[Path]) -> None:
        """Put one attachment in the bucket from the first of ``files`` that exists (all hold
        the same bytes), unless it is there already."""
        for path in files:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # another batch uploaded it and removed its staged file
            if self._there(sha256, size):
                return
            try:
                self._upload(sha256, path, size)
            except FileNotFoundError:
                continue
            return
        if self._head(sha256) is None:
            raise TempFailError(f"attachment {sha256} is neither staged in {self.root} nor in {self.url}",
                                RETRY_HINT)

    # --- writing ---------------------------------------------------------------------------------
    def put(self, data: bytes, sha256: str | None = None) -> tuple[str, str]:
        """Upload ``data`` now (unless it is there); returns (sha256, relative path)."""
        tmp, sha256, size = self.local.write_temp([data])
        try:
            self._publish(sha256, [tmp])
        finally:
            tmp.unlink(missing_ok=True)
        return sha256, self.relpath(sha256)

    def put_pending(self, data: bytes, owner: int, sha256: str | None = None) -> tuple[str, str, Path | None]:
        """Stage ``data`` as a temp file in ``root``, for ``make_durable`` to upload."""
        return self.local.put_pending(data, owner, sha256)

    def put_stream(self, chunks, max_bytes: int | None = None) -> tuple[str, str, int]:
        """Upload the bytes of ``chunks`` (spooled to a temp file while hashing); returns
        (sha256, relative path, size). More than ``max_bytes`` raises ValueError."""
        tmp, sha256, size = self.local.write_temp(chunks, max_bytes)
        try:
            self._publish(sha256, [tmp])
        finally:
            tmp.unlink(missing_ok=True)
        return sha256, self.relpath(sha256), size

    def make_durable(self, pending: list[tuple[Path, str]], stored: Iterable[tuple[Path, str]] = ()) -> None:
        """Upload a batch's files before it commits: the temp files of ``put_pending`` and the
        files ``stored`` (staged at their local address by a parser worker), several at once;
        each staged file is removed once its object is in the bucket. Raises TempFailError
        (the batch must not commit) when an upload fails."""
        by_sha: dict[str, list[Path]] = {}
        for path, sha256 in [*pending, *stored]:
            by_sha.setdefault(sha256, []).append(Path(path))
        if not by_sha:
            return
        self._s3()  # the import and the client, once, before the threads
        with ThreadPoolExecutor(min(UPLOADS, len(by_sha)), thread_name_prefix="mail2ticket-upload") as pool:
            futures = [pool.submit(self._publish, sha, files) for sha, files in by_sha.items()]
            for future in futures:
                future.result()  # the first failure is raised (the others have finished)
        for files in by_sha.values():
            for path in files:
                with contextlib.suppress(OSError):
                    path.unlink()

    def sweep_temp(self, max_age: float = 24 * 3600) -> int:
        """Remove the temp files of interrupted runs (as the local store does), and files staged
        at their address by a batch whose upload failed and whose mail never came back (older
        than ``max_age``: a batch in flight is minutes old). Returns how many."""
        count = self.local.sweep_temp(max_age)
        now = time.time()
        for staged in self.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
            with contextlib.suppress(OSError):
                if now - staged.stat().st_mtime > max_age:
                    staged.unlink()
                    count += 1
        return count

    # --- reading ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_verified(self, sha256: str) -> Iterator[BinaryIO]:
        """The object's bytes in a local temp file, once their SHA-256 is checked (StoreError,
        one line, when it is missing or does not match)."""
        where = self.location(self.relpath(sha256))
        s3 = self._s3()
        makedirs(self.root / "tmp")
        with tempfile.TemporaryFile(dir=self.root / "tmp") as f:
            try:
                body = s3.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    f.write(chunk)
            except self._errors.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    raise missing_error(sha256, where) from None
                raise self._failure(exc, f"reading attachment {sha256}") from None
            except Exception as exc:
                raise self._failure(exc, f"reading attachment {sha256}") from None
            f.seek(0)
            if file_sha256(f) != sha256:
                raise damaged_error(sha256, where)
            f.seek(0)
            yield f

    read = AttachmentStore.read

    verify = AttachmentStore.verify

    def check(self) -> None:
        """Reach the bucket once (config check --online): StoreError with the cause when not."""
        try:
            self._s3().head_bucket(Bucket=self.bucket)
        except StoreError:
            raise
        except Exception as exc:
            raise self._failure(exc, "checking the bucket") from None
