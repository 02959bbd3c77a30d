"""Safe display names for attachment file names taken from mail: never usable as a path."""

from __future__ import annotations

import mimetypes
import re
import unicodedata

MAX_NAME_CHARS = 200  # characters of a display name, extension included
MAX_NAME_BYTES = 240  # UTF-8 bytes, below the 255 most file systems allow
MAX_EXTENSION_CHARS = 16

# C0/C1 controls, DEL; bidirectional overrides and marks (the "gpj.exe" trick); separators and
# the other characters Windows refuses in names.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff"
    '\ud800-\udfff/\\\\:*?"<>|]'
)
_DOTS = re.compile(r"\.{2,}")
_SPACES = re.compile(r"\s+")
_WINDOWS_RESERVED = re.compile(
    r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)$", re.IGNORECASE
)
_EXTENSIONS = {  # what mimetypes gets wrong or does not know on every system
    "message/rfc822": ".eml",
    "text/plain": ".txt",
    "text/html": ".html",
    "image/jpeg": ".jpg",
    "application/octet-stream": ".bin",
    "application/ms-tnef": ".dat",
    "message/delivery-status": ".txt",
    "text/rfc822-headers": ".txt",
    "message/disposition-notification": ".txt",
}


def extension_for(content_type: str) -> str:
    """A file extension for a content type, such as ``.png``; ``.bin`` when unknown."""
    content_type = (content_type or "").lower()
    if content_type in _EXTENSIONS:
        return _EXTENSIONS[content_type]
    return mimetypes.guess_extension(content_type, strict=False) or ".bin"


def safe_filename(name: str | None, content_type: str, index: int) -> str:
    """A display name for attachment number ``index`` (from 1) with the mail's ``name``.

    The result has no path separators, no ``..``, no control or bidi-override characters, is not
    a Windows device name, does not start with a dot or dash, and is at most MAX_NAME_CHARS long
    with its extension kept. Without a usable name it is ``attachment-<index><ext>``.
    """
    text = unicodedata.normalize("NFC", name or "")
    text = _UNSAFE.sub("_", text)
    text = _SPACES.sub(" ", text)
    text = _DOTS.sub(".", text)
    text = text.strip(" ._-")
    if not text.strip("_ "):
        return f"attachment-{index}{extension_for(content_type)}"
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or len(ext) > MAX_EXTENSION_CHARS or " " in ext:
        stem, ext = text, ""
    if _WINDOWS_RESERVED.match(stem.split(".", 1)[0].strip()):
        stem = "_" + stem
    suffix = f".{ext}" if ext else ""
    stem = stem[: MAX_NAME_CHARS - len(suffix)]
    while len((stem + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    stem = stem.rstrip(" .")
    return (stem or f"attachment-{index}") + suffix
