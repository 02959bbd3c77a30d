"""Find and decode uuencoded files, both whole parts and blocks inside a text body."""

from __future__ import annotations

import binascii
import re

# "begin 644 name" ... "end"; the mode is octal, the name runs to the end of the line.
_BEGIN = re.compile(r"^begin(?:-base64)? +([0-7]{1,4}) +(.+?)\s*$", re.MULTILINE)
_END = re.compile(r"^end\s*$", re.MULTILINE)


def decode_lines(lines: list[str]) -> bytes:
    """Decode uuencoded lines (without begin/end); tolerant of trailing garbage and padding."""
    out = bytearray()
    for line in lines:
        line = line.rstrip("\r\n")
        if not line or line == "`":
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Some encoders write too many characters per line; decode what the length says.
            count = (((ord(line[0]) - 32) & 63) * 4 + 5) // 3
            try:
                out += binascii.a2b_uu(line[:count])
            except binascii.Error:
                continue
    return bytes(out)


def extract(text: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Split ``text`` into the text outside uuencoded blocks and the (name, data) of each block."""
    if "begin " not in text:
        return text, []
    files: list[tuple[str, bytes]] = []
    kept: list[str] = []
    pos = 0
    for begin in _BEGIN.finditer(text):
        if begin.start() < pos:
            continue
        end = _END.search(text, begin.end())
        if end is None:
            break
        body = text[begin.end() : end.start()].strip("\r\n").splitlines()
        if not body or not all(_looks_uuencoded(line) for line in body[: min(len(body), 5)]):
            continue
        kept.append(text[pos : begin.start()])
        files.append((begin.group(2), decode_lines(body)))
        pos = end.end()
    kept.append(text[pos:])
    return "".join(kept), files


def decode_part(payload: bytes) -> tuple[str | None, bytes]:
    """Decode a part sent with Content-Transfer-Encoding x-uuencode: (name in it, data)."""
    text = payload.decode("latin-1")
    begin = _BEGIN.search(text)
    if begin is None:
        return None, decode_lines(text.splitlines())
    end = _END.search(text, begin.end())
    body = text[begin.end() : end.start() if end else len(text)].strip("\r\n").splitlines()
    return begin.group(2), decode_lines(body)


def _looks_uuencoded(line: str) -> bool:
    line = line.rstrip("\r\n")
    return bool(line) and len(line) <= 90 and all(32 <= ord(c) <= 96 for c in line)
