"""Unpack the files inside a TNEF (winmail.dat) attachment, per Microsoft's MS-OXTNEF.

Written here because the only maintained Python TNEF parser (tnefparse) is LGPL; this reads
just what a ticket needs, the attached files and the plain-text body, with every read bounded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SIGNATURE = 0x223E9F78
MAX_FILES = 1000

_LVL_ATTACHMENT = 0x02
_ATT_ATTACH_REND_DATA = 0x00069002  # starts a new attachment
_ATT_ATTACH_TITLE = 0x00018010  # short file name
_ATT_ATTACH_DATA = 0x0006800F  # the file's bytes
_ATT_ATTACHMENT = 0x00069005  # MAPI properties of the attachment
_ATT_BODY = 0x0002800C  # plain-text body
_ATT_MSG_PROPS = 0x00069003  # MAPI properties of the message
_ATT_OEM_CODEPAGE = 0x00069007

_PR_ATTACH_DATA_OBJ = 0x3701
_PR_ATTACH_LONG_FILENAME = 0x3707
_PR_ATTACH_FILENAME = 0x3704
_PR_DISPLAY_NAME = 0x3001
_PR_ATTACH_MIME_TAG = 0x370E
_PR_BODY = 0x1000

_FIXED_SIZES = {
    0x0002: 2,
    0x0003: 4,
    0x0004: 4,
    0x0005: 8,
    0x0006: 8,
    0x0007: 8,
    0x000A: 4,
    0x000B: 2,
    0x0014: 8,
    0x0040: 8,
    0x0048: 16,
    0x0001: 0,
}
_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT = 0x001E, 0x001F, 0x0102, 0x000D
_MULTI = 0x1000


class TNEFError(ValueError):
    """The data is not TNEF, or is cut or corrupt where it matters."""


@dataclass
class TNEFFile:
    """One file packed inside a TNEF attachment."""

    name: str | None
    data: bytes
    content_type: str | None = None


@dataclass
class TNEFContent:
    """What a TNEF attachment holds: the files and any plain-text body."""

    files: list[TNEFFile] = field(default_factory=list)
    body: str | None = None


def is_tnef(data: bytes) -> bool:
    """Whether ``data`` starts with the TNEF signature."""
    return len(data) >= 6 and struct.unpack_from("<I", data)[0] == SIGNATURE


def unpack(data: bytes) -> TNEFContent:
    """The files and body inside ``data``; raises TNEFError when it is not readable TNEF."""
    if not is_tnef(data):
        raise TNEFError("not TNEF data (no signature)")
    content = TNEFContent()
    codepage = "cp1252"
    current: dict | None = None
    attachments: list[dict] = []
    pos = 6
    while pos + 9 <= len(data):
        level = data[pos]
        attr_id, length = struct.unpack_from("<II", data, pos + 1)
        start, end = pos + 9, pos + 9 + length
        if end > len(data):
            raise TNEFError("TNEF attribute runs past the end of the data")
        value = data[start:end]
        pos = end + 2  # skip the checksum
        if attr_id == _ATT_OEM_CODEPAGE and len(value) >= 4:
            codepage = f"cp{struct.unpack_from('<I', value)[0]}"
        elif attr_id == _ATT_ATTACH_REND_DATA:
            if len(attachments) >= MAX_FILES:
                break
            current = {}
            attachments.append(current)
        elif level == _LVL_ATTACHMENT and current is not None:
            if attr_id == _ATT_ATTACH_TITLE:
                current["title"] = _text8(value, codepage)
            elif attr_id == _ATT_ATTACH_DATA:
                current["data"] = value
            elif attr_id == _ATT_ATTACHMENT:
                current["props"] = _properties(value, codepage)
        elif attr_id == _ATT_BODY:
            content.body = _text8(value, codepage)
        elif attr_id == _ATT_MSG_PROPS and content.body is None:
            body = _properties(value, codepage).get(_PR_BODY)
            if isinstance(body, str):
                content.body = body
    if pos < len(data) and len(attachments) < MAX_FILES:
        raise TNEFError("TNEF data ends inside an attribute")
    for attachment in attachments:
        props = attachment.get("props", {})
        name = next(
            (
                props[p]
                for p in (_PR_ATTACH_LONG_FILENAME, _PR_DISPLAY_NAME, _PR_ATTACH_FILENAME)
                if isinstance(props.get(p), str) and props[p]
            ),
            attachment.get("title"),
        )
        payload = attachment.get("data")
        if payload is None and isinstance(props.get(_PR_ATTACH_DATA_OBJ), bytes):
            payload = props[_PR_ATTACH_DATA_OBJ]
        if payload is None:
            continue
        mime = props.get(_PR_ATTACH_MIME_TAG)
        content.files.append(TNEFFile(name, payload, mime if isinstance(mime, str) else None))
    return content


def _text8(value: bytes, codepage: str) -> str:
    value = value.split(b"\x00", 1)[0]
    try:
        return value.decode(codepage)
    except (LookupError, UnicodeDecodeError):
        return value.decode("cp1252", "replace")


def _properties(data: bytes, codepage: str) -> dict[int, object]:
    """A MAPI property list as {property id: value}; stops quietly at anything cut short."""
    props: dict[int, object] = {}
    try:
        (count,) = struct.unpack_from("<I", data)
        pos = 4
        for _ in range(min(count, 10_000)):
            prop_type, prop_id = struct.unpack_from("<HH", data, pos)
            pos += 4
            if prop_id >= 0x8000:  # named property: GUID, kind, then an id or a name
                (kind,) = struct.unpack_from("<I", data, pos + 16)
                pos += 20
                if kind == 0:
                    pos += 4
                else:
                    (name_len,) = struct.unpack_from("<I", data, pos)
                    pos += 4 + name_len + (-name_len % 4)
            values, pos = _values(data, pos, prop_type, codepage)
            props[prop_id] = values[0] if len(values) == 1 else values
    except struct.error:
        pass
    return props


def _values(data: bytes, pos: int, prop_type: int, codepage: str) -> tuple[list, int]:
    base = prop_type & ~_MULTI
    if base in _FIXED_SIZES and not prop_type & _MULTI:
        size = _FIXED_SIZES[base]
        return [data[pos : pos + size]], pos + max(4, size + (-size % 4))
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    values: list = []
    for _ in range(min(count, 10_000)):
        if base in _FIXED_SIZES:
            size = _FIXED_SIZES[base]
            values.append(data[pos : pos + size])
            pos += max(4, size + (-size % 4))
            continue
        if base not in (_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT):
            raise struct.error(f"unknown MAPI property type {base:#x}")
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + length > len(data):
            raise struct.error("MAPI value runs past the end")
        raw = data[pos : pos + length]
        pos += length + (-length % 4)
        if base == _PT_UNICODE:
            values.append(raw.decode("utf-16-le", "replace").split("\x00", 1)[0])
        elif base == _PT_STRING8:
            values.append(_text8(raw, codepage))
        elif base == _PT_OBJECT:
            values.append(raw[16:])  # after the interface id
        else:
            values.append(raw)
    return values, pos
