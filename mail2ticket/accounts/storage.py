"""The attachment store a config names: the local directory, or the S3-compatible bucket with its
secret key from the secret chain (docs/storage.md). Every part that writes or reads attachments
gets its store here and never asks which kind it is."""

from __future__ import annotations

import importlib.util
import threading
from typing import TYPE_CHECKING

from mail2ticket.accounts.secrets import find_named_secret, get_named_secret, named_secret_source
from mail2ticket.config.model import Config
from mail2ticket.config.storage import DATABASE_SECRET_NAME, SECRET_NAME, S3Location
from mail2ticket.errors import ConfigError

if TYPE_CHECKING:  # imported by attachment_store: every command on PostgreSQL imports this module for its password
    from mail2ticket.files.attachments import AttachmentStore
    from mail2ticket.files.objectstore import ObjectStore

_lock = threading.Lock()


def attachment_store(cfg: Config) -> AttachmentStore | ObjectStore:
    """The store of ``cfg``: the local AttachmentStore, or one ObjectStore per loaded config (its
    connections are shared by the daemon's polls). ConfigError when boto3 is missing."""
    from mail2ticket.files.attachments import AttachmentStore
    from mail2ticket.files.objectstore import ObjectStore

    location: S3Location | None = cfg.object_store
    if location is None:
        return AttachmentStore(cfg.attachments)
    if not have_boto3():
        raise ConfigError(f"{cfg.path}: [storage] attachments = {location.url!r} needs boto3, which is not installed",
                          "pip install 'mail2ticket[s3]'")
    with _lock:
        store = cfg.__dict__.get("object_store_client")
        if store is None:
            store = ObjectStore(
                location.bucket, location.prefix, cfg.attachments, endpoint=location.endpoint,
                region=location.region, addressing_style=location.addressing_style, ca_file=location.ca_file,
                credentials=(lambda: s3_credentials(location)) if location.access_key_id else None,
            )
            cfg.__dict__["object_store_client"] = store
    return store


def have_boto3() -> bool:
    try:
        return importlib.util.find_spec("boto3") is not None
    except (ImportError, ValueError):  # ValueError: hidden by sys.modules["boto3"] = None
        return False


def s3_credentials(location: S3Location) -> tuple[str, str]:
    """(access key id, secret key): the secret from the keyring entry or systemd credential
    "s3-attachments", or what ``secret_command`` prints. SecretError names every source tried."""
    assert location.access_key_id
    secret = get_named_secret(SECRET_NAME, location.secret_command,
                              f"the attachment store {location.url}", "storage.s3.secret_command")
    return location.access_key_id, secret


def storage_problems(cfg: Config) -> list[str]:
    """What would stop the bucket store from working, found without contacting it (config check)."""
    location: S3Location | None = cfg.object_store
    if location is None:
        return []
    found = []
    where = f"{cfg.path}: [storage] attachments = {location.url}"
    if not have_boto3():
        found.append(f"{where} needs boto3, which is not installed (pip install 'mail2ticket[s3]')")
    if location.ca_file:
        try:
            with open(location.ca_file, "rb"):
                pass
        except OSError as exc:
            found.append(f"{where}: ca_file {location.ca_file} cannot be read ({exc.strerror or exc})")
    if location.access_key_id and named_secret_source(SECRET_NAME, location.secret_command) is None:
        found.append(f"{where}: no secret key for access key {location.access_key_id} (run 'keyring set "
                     f"mail2ticket {SECRET_NAME}', give the systemd credential {SECRET_NAME}, or set "
                     "storage.s3.secret_command)")
    return found


def database_password(cfg: Config) -> str | None:
    """The PostgreSQL database's password: the keyring entry or systemd credential "database",
    or what ``[storage] password_command`` prints; None when none of them is set up (libpq then
    looks itself: PGPASSWORD, PGPASSFILE or ~/.pgpass, PGSERVICE). Asked at each connection."""
    return find_named_secret(DATABASE_SECRET_NAME, cfg.database_password_command,
                             f"the PostgreSQL database {cfg.database_url}", "storage.password_command")
