"""[storage] attachments as an S3-compatible location: ``s3://bucket/prefix`` and its [storage.s3]
table (endpoint, region, addressing style, CA file, access key id and where its secret comes
from). docs/storage.md."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mail2ticket.config.checks import check_table, is_str
from mail2ticket.errors import ConfigError

S3_KEYS: dict[str, tuple[Any, Any, str]] = {
    "endpoint": (is_str, None, 'the URL of an S3-compatible server, such as "https://minio.example.net:9000"'),
    "region": (is_str, None, 'a region name, such as "eu-central-1"'),
    "addressing_style": (is_str, "auto", '"auto", "path" (most self-hosted servers) or "virtual"'),
    "ca_file": (is_str, None, "a CA bundle (PEM) to trust for a private endpoint"),
    "access_key_id": (is_str, None, "an access key id; its secret comes from the keyring, a systemd "
                                    "credential or secret_command, never from this file"),
    "secret_command": (is_str, None, "a command that prints the secret access key"),
    "staging": (is_str, None, "a local directory for files on their way to the bucket"),
}
SECRET_NAME = "s3-attachments"  # the keyring entry and systemd credential that hold the secret key
# The keyring entry and systemd credential that hold a PostgreSQL database's password.
DATABASE_SECRET_NAME = "database"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Location:
    """Where attachments go in a bucket and how to reach it; ``staging`` is local."""

    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    ca_file: str | None = None
    access_key_id: str | None = None
    secret_command: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def describe(self, staging: Path) -> str:
        """'s3://b/p (endpoint https://..., region r, path-style; staging DIR)' for config check."""
        parts = [f"endpoint {self.endpoint}" if self.endpoint else "AWS endpoint"]
        if self.region:
            parts.append(f"region {self.region}")
        if self.addressing_style != "auto":
            parts.append(f"{self.addressing_style}-style")
        if self.ca_file:
            parts.append(f"CA {self.ca_file}")
        parts.append(f"access key {self.access_key_id}" if self.access_key_id else "AWS credential chain")
        return f"{self.url} ({', '.join(parts)}; staging {staging})"


def is_s3(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def check_s3(cfg_path: Path, value: str, table: Any, resolve) -> tuple[S3Location, Path | None]:
    """The checked S3Location of ``[storage] attachments = value`` and its [storage.s3] ``table``,
    and the local staging directory it names (None: the default)."""
    where = f"'storage.attachments' = {value!r}"
    bucket, _, prefix = value[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"{cfg_path}: {where} does not name a valid bucket",
                          'expected s3://bucket/prefix, the bucket in lower-case letters, digits, "." and "-"')
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"{cfg_path}: {where} has an empty, '.' or '..' part in its prefix",
                          "expected s3://bucket/prefix such as s3://helpdesk/attachments")
    s3 = check_table(cfg_path, "storage.s3", table, S3_KEYS)
    if s3["addressing_style"] not in ("auto", "path", "virtual"):
        raise ConfigError(f"{cfg_path}: 'storage.s3.addressing_style' = {s3['addressing_style']!r} is not known",
                          'expected "auto", "path" or "virtual"')
    endpoint = s3["endpoint"]
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"{cfg_path}: 'storage.s3.endpoint' = {endpoint!r} is not a URL",
                              'expected e.g. "https://minio.example.net:9000"')
    if s3["secret_command"] and not s3["access_key_id"]:
        raise ConfigError(f"{cfg_path}: 'storage.s3.secret_command' needs 'storage.s3.access_key_id'",
                          "name the access key whose secret the command prints")
    ca_file = s3["ca_file"]
    if ca_file is not None:
        ca_file = str(resolve(ca_file))
    return S3Location(
        bucket=bucket, prefix=prefix,
        endpoint=endpoint, region=s3["region"], addressing_style=s3["addressing_style"], ca_file=ca_file,
        access_key_id=s3["access_key_id"], secret_command=s3["secret_command"],
    ), (resolve(s3["staging"]) if s3["staging"] else None)


def no_s3_table(cfg_path: Path, table: Any) -> None:
    if table:
        raise ConfigError(f"{cfg_path}: [storage.s3] is set but 'storage.attachments' is not an s3:// location",
                          'set attachments = "s3://bucket/prefix", or remove [storage.s3]')



def is_postgres(value: Any) -> bool:
    """True when ``[storage] database`` is a PostgreSQL URL (libpq syntax) rather than a file."""
    return isinstance(value, str) and value.lower().startswith(POSTGRES_SCHEMES)


def check_database_url(cfg_path: Path, value: str) -> str:
    """The checked PostgreSQL URL of ``[storage] database``: a password in it is refused (the
    config file is no place for a secret; the hint says where it goes)."""
    where = f"{cfg_path}: 'storage.database'"
    parts = urlsplit(value)
    query = parse_qs(parts.query)
    if parts.password is not None or "password" in query:
        raise ConfigError(
            f"{where} holds a password: the config file is no place for it",
            f"remove it from the URL and run 'keyring set mail2ticket {DATABASE_SECRET_NAME}' (or give the systemd "
            f"credential {DATABASE_SECRET_NAME}, set storage.password_command, or use libpq's PGPASSFILE)",
        )
    try:
        parts.port  # noqa: B018  # a port that is not a number raises ValueError
    except ValueError:
        raise ConfigError(f"{where} = {value!r} has a port that is not a number",
                          "expected postgresql://user@host:5432/dbname") from None
    if not parts.path.strip("/") and "dbname" not in query and "service" not in query:
        raise ConfigError(f"{where} = {value!r} names no database",
                          "expected postgresql://user@host:5432/dbname (or ?service=NAME of pg_service.conf)")
    return value
