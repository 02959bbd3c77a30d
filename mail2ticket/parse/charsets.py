"""Decode bytes from mail into text, tolerating mislabelled, legacy, unknown and missing charsets."""

from __future__ import annotations

import codecs
import re
from functools import lru_cache
from typing import NamedTuple

from mail2ticket.parse import charguess

# How much of a text charset detection looks at: detection is for broken mail only, and bounded.
DETECT_PREFIX_BYTES = 64 * 1024
# Undeclared text with fewer 8-bit bytes than this is short: statistical detection is no evidence
# there, and charguess weighs the candidates instead.
SHORT_TEXT_BYTES = 300


class Hints(NamedTuple):
    """What the rest of a message says about the charset of a text that does not declare one."""

    declared: str | None = None  # a charset another part of the message declares
    likely: tuple[str, ...] = ()  # codecs its Content-Language, sender domain, parts point to


def _hints(hint: str | Hints | None) -> Hints:
    if isinstance(hint, Hints):
        return hint
    return Hints(hint, ())


def likely_only(hint: str | Hints | None) -> Hints:
    """``hint`` without its declared charset: for text whose own part declares none."""
    return Hints(None, _hints(hint).likely)

# Labels mail programs write, mapped to the codecs that decode what the sender meant, best first.
# The supersets follow the WHATWG Encoding Standard (what browsers and mail readers do): a
# gb2312 label is really GBK/GB18030 text, iso-8859-1 is really windows-1252, big5 has the
# Microsoft and HKSCS extensions, ks_c_5601 is Microsoft's cp949, Shift_JIS is cp932.
_ISO2022JP_VENDOR = "iso-2022-jp-vendor"  # handled by _decode_iso2022jp_vendor below
_SUPERSETS: dict[str, tuple[str, ...]] = {
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "x-gbk": ("gb18030",),
    "gb18030": ("gb18030",),
    "euc-cn": ("gb18030",),
    "cp936": ("gb18030",),
    "chinese": ("gb18030",),
    "csgb2312": ("gb18030",),
    "gb_2312-80": ("gb18030",),
    "big5": ("cp950", "big5hkscs"),
    "big5-hkscs": ("big5hkscs", "cp950"),
    "x-x-big5": ("cp950", "big5hkscs"),
    "cn-big5": ("cp950", "big5hkscs"),
    "iso-2022-jp": ("iso2022_jp", _ISO2022JP_VENDOR, "iso2022_jp_2"),
    "csiso2022jp": ("iso2022_jp", _ISO2022JP_VENDOR, "iso2022_jp_2"),
    "iso-2022-jp-2": ("iso2022_jp_2", _ISO2022JP_VENDOR),
    "shift_jis": ("cp932", "shift_jis_2004"),
    "shift-jis": ("cp932", "shift_jis_2004"),
    "sjis": ("cp932", "shift_jis_2004"),
    "x-sjis": ("cp932", "shift_jis_2004"),
    "ms_kanji": ("cp932", "shift_jis_2004"),
    "windows-31j": ("cp932",),
    "euc-jp": ("euc_jp", "euc_jis_2004"),
    "x-euc-jp": ("euc_jp", "euc_jis_2004"),
    "ks_c_5601-1987": ("cp949",),
    "ks_c_5601": ("cp949",),
    "euc-kr": ("cp949",),
    "korean": ("cp949",),
    "iso-8859-1": ("cp1252", "latin-1"),
    "iso8859-1": ("cp1252", "latin-1"),
    "iso_8859-1": ("cp1252", "latin-1"),
    "latin1": ("cp1252", "latin-1"),
    "latin-1": ("cp1252", "latin-1"),
    "l1": ("cp1252", "latin-1"),
    "us-ascii": ("cp1252", "latin-1"),
    "ascii": ("cp1252", "latin-1"),
    "ansi_x3.4-1968": ("cp1252", "latin-1"),
    "windows-1252": ("cp1252", "latin-1"),
    "iso-8859-9": ("cp1254", "iso-8859-9"),
    "latin5": ("cp1254", "iso-8859-9"),
    "iso-8859-11": ("cp874",),
    "tis-620": ("cp874",),
    "windows-874": ("cp874",),
    "iso-8859-8-i": ("iso-8859-8",),
    "iso-8859-8-e": ("iso-8859-8",),
    "iso-8859-6-i": ("iso-8859-6",),
    "iso-8859-6-e": ("iso-8859-6",),
    "utf8": ("utf-8",),
    "unicode-1-1-utf-8": ("utf-8",),
}
# Labels that say "we do not know": treated as no label at all.
_UNKNOWN_LABELS = frozenset(
    {"unknown-8bit", "x-unknown", "unknown", "x-user-defined", "8bit", "default", "charset", "none"}
)
# Single-byte charsets any byte string decodes in: valid multi-byte UTF-8 under such a label is
# almost always mislabelled UTF-8, which is what the sender's program really wrote.
_SINGLE_BYTE = frozenset({"cp1252", "latin-1", "cp1254", "iso-8859-9", "iso8859-15", "iso-8859-15"})
# Codecs that are not ASCII-compatible, so pure ASCII bytes still need them.
_NOT_ASCII_SAFE = ("iso2022", "utf_7", "utf-7", "hz", "utf_16", "utf_32", "utf-16", "utf-32")
# What detection may answer: the charsets mail is really written in (exotic code pages guessed
# from a few bytes do more harm than a replacement character).
_DETECTABLE = tuple(
    "utf_8 cp1252 cp1250 cp1251 cp1253 cp1254 cp1255 cp1256 cp1257 cp1258 koi8_r koi8_u "
    "iso8859_2 iso8859_5 iso8859_7 iso8859_15 gb18030 big5 cp932 euc_jp cp949 cp874".split()
)
_NOT_FOR_TEXT = frozenset({"undefined", "idna", "punycode"})
_JIS_ESCAPE = re.compile(rb"\x1b(?:\$[@B]|\$\(B|\([BJ])")
_ISO2022JP = ("iso2022_jp", _ISO2022JP_VENDOR, "iso2022_jp_2", "iso2022_jp_ext")
_JAPANESE = frozenset(
    {*_ISO2022JP, "cp932", "shift_jis", "shift_jis_2004", "shift_jisx0213", "euc_jp",
     "euc_jis_2004", "euc_jisx0213"}
)
_JAPANESE_RETRY = ("cp932", "euc_jp", "shift_jis_2004", "euc_jis_2004")
_HIGH = bytes(range(0x80, 0x100))
_LABEL_SPLIT = re.compile(r"[\s;,\"'()]+")
_WINDOWS_LABEL = re.compile(r"^(?:cp|ibm|windows|win|x-cp)[-_ ]?(\d{3,5})$")


@lru_cache(maxsize=256)
def candidates(label: str | None) -> tuple[str, ...]:
    """The codecs to try for a declared charset label, best first; () when unknown or missing."""
    if not label:
        return ()
    tokens = [t for t in _LABEL_SPLIT.split(label.strip().lower()) if t]
    if not tokens:
        return ()
    name = tokens[0].split("*", 1)[0]  # RFC 2231 language suffix: utf-8*en
    if name in _UNKNOWN_LABELS:
        return ()
    if name in _SUPERSETS:
        return _SUPERSETS[name]
    match = _WINDOWS_LABEL.match(name)
    if match:
        name = "cp" + match.group(1)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return ()
    # Python also registers bytes-to-bytes codecs (zlib, base64, rot13...): never for mail text.
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_FOR_TEXT:
        return ()
    return (info.name,)


def is_known(label: str | None) -> bool:
    """Whether ``label`` names a charset we can decode."""
    return bool(candidates(label))


def decode(
    data: bytes, label: str | None = None, *, hint: str | Hints | None = None, detect: bool = True
) -> tuple[str, str | None]:
    """Decode ``data`` declared as ``label``; return the text and a defect note (None if clean).

    Order: the declared charset and its supersets, strictly; UTF-8; ``hint`` (another charset
    of the same message); charset detection on a bounded prefix; windows-1252 with replacement.
    The result never holds surrogates.
    """
    declared_hint, likely = _hints(hint)
    tried = candidates(label)
    if b"\x1b" in data and not any(c in _ISO2022JP for c in tried) and _JIS_ESCAPE.search(data):
        # ISO-2022-JP is unmistakable by its escape sequences, whatever the label says; its
        # escape bytes must not reach the cleaning that drops control characters.
        for codec in _ISO2022JP:
            text = _strict(data, codec)
            if text is not None:
                return text, (
                    f"text labelled {_label(label)} is ISO-2022-JP (by its escape sequences)"
                    if label and label.strip()
                    else "undeclared ISO-2022-JP text, recognised by its escape sequences"
                )
    if data.isascii() and not any(c.startswith(_NOT_ASCII_SAFE) for c in tried):
        return data.decode("ascii"), None
    for codec in tried:
        if codec in _SINGLE_BYTE:
            text = _strict(data, "utf-8")
            if text is not None:
                return text, f"text labelled {_label(label)} is UTF-8; decoded as UTF-8"
        text = _strict(data, codec)
        if text is not None:
            if codec in _JAPANESE and codec not in _ISO2022JP:
                # EUC-JP labelled Shift_JIS (or the reverse) decodes, as half-width garbage
                other = _mislabelled_japanese(data, codec, likely)
                if other is not None:
                    return other[0], f"text labelled {_label(label)} is {other[1]}"
            return text, None
    note_prefix = (
        f"text does not decode as its charset {_label(label)}"
        if tried
        else (
            "unknown charset " + _label(label)
            if label and label.strip()
            else "undeclared 8-bit text"
        )
    )
    text = _strict(data, "utf-8")
    if text is not None:
        return text, f"{note_prefix}; decoded as UTF-8"
    if _JAPANESE.intersection(tried):  # a failed Japanese label: its neighbours, best first
        found = _japanese(data, tried, likely)
        if found is not None:
            return found[0], f"{note_prefix}; decoded as {found[1]}"
    for codec in (*tried[:1], "utf-8"):
        text = _mostly(data, codec)
        if text is not None:
            return text, f"{note_prefix}; a few bytes replaced"
    hinted = candidates(declared_hint)
    for codec in hinted:
        if codec not in tried:
            text = _strict(data, codec)
            if text is not None:
                return text, f"{note_prefix}; decoded as {codec}"
    if _JAPANESE.intersection(hinted):  # raw Shift_JIS in a mail whose body is ISO-2022-JP
        found = _japanese(data, tried, likely)
        if found is not None:
            return found[0], f"{note_prefix}; decoded as {found[1]}"
    prefix = data[:DETECT_PREFIX_BYTES]
    guess = charguess.guess(prefix, likely)
    if detect and len(prefix) - len(prefix.translate(None, _HIGH)) >= SHORT_TEXT_BYTES:
        detected = _detect(prefix)
        if detected and (
            guess is None
            or detected not in charguess.SCORED
            or charguess.score_text(_lenient(prefix, detected), detected) + 0.1 >= guess.score
        ):
            return _lenient(data, detected), f"{note_prefix}; detected {detected}"
    if guess is not None:
        return _lenient(data, guess.codec), f"{note_prefix}; guessed {guess.codec}"
    codec = tried[0] if tried and tried[0] not in _SINGLE_BYTE else "cp1252"
    return _lenient(data, codec), f"{note_prefix}; decoded as {codec} with replacement characters"


def _mislabelled_japanese(
    data: bytes, codec: str, likely: tuple[str, ...]
) -> tuple[str, str] | None:
    """The other Japanese charset ``data`` really is in, when it reads far better than ``codec``."""
    prefix = data[: charguess.GUESS_PREFIX_BYTES]
    own = _strict(prefix, codec)
    if own is None or charguess.score_text(own, codec) >= 0.5:
        return None
    sjis = ("cp932", "shift_jis", "shift_jis_2004", "shift_jisx0213")
    euc = ("euc_jp", "euc_jis_2004", "euc_jisx0213")
    found = _japanese(data, sjis if codec in sjis else euc, likely)  # the other family only
    if found is None:
        return None
    if charguess.score_text(found[0][: len(own)], found[1]) < charguess.score_text(own, codec) + 0.3:
        return None
    return found


def _japanese(data: bytes, tried: tuple[str, ...], likely: tuple[str, ...]) -> tuple[str, str] | None:
    """``data`` decoded strictly as the Japanese charset that reads best, and that charset."""
    retry = tuple(c for c in _JAPANESE_RETRY if c not in tried)
    best = charguess.best_of(data, retry, likely)
    if best is None:
        return None
    text = _strict(data, best.codec)
    return (text, best.codec) if text is not None else None


def _label(label: str | None) -> str:
    return repr(" ".join((label or "").split())[:40])


def _strict(data: bytes, codec: str) -> str | None:
    try:
        if codec == _ISO2022JP_VENDOR:
            return _decode_iso2022jp_vendor(data)
        return data.decode(codec)
    except Exception:  # UnicodeDecodeError, and odd errors some codecs raise on garbage
        return None


def _mostly(data: bytes, codec: str) -> str | None:
    """``data`` decoded with replacement when only a few bytes (at most 1 in 200) are bad."""
    if codec == _ISO2022JP_VENDOR or codec in _SINGLE_BYTE:
        return None
    try:
        text = data.decode(codec, "replace")
    except Exception:
        return None
    bad = text.count("\ufffd")
    return text if bad * 200 <= len(text) else None


def _lenient(data: bytes, codec: str) -> str:
    try:
        text = data.decode(codec, "replace")
    except Exception:
        text = data.decode("cp1252", "replace")
    return text.encode("utf-8", "replace").decode("utf-8")


def _detect(prefix: bytes) -> str | None:
    """Best guess of charset-normalizer for undeclared or mislabelled text, or None."""
    try:
        from charset_normalizer import (
            from_bytes,  # charset-normalizer loads only when a charset must be guessed (slow to import)
        )

        best = from_bytes(prefix, cp_isolation=list(_DETECTABLE)).best()
    except Exception:
        return None
    if best is None or not best.encoding:
        return None
    return candidates(best.encoding)[0] if candidates(best.encoding) else None


_ESC_SEQUENCES = {
    b"\x1b(B": "ascii",
    b"\x1b(J": "ascii",  # JIS X 0201 Roman: ASCII for our purposes
    b"\x1b(I": "kana",  # JIS X 0201 half-width katakana
    b"\x1b$@": "jis",
    b"\x1b$B": "jis",
    b"\x1b$(B": "jis",
}


def _decode_iso2022jp_vendor(data: bytes) -> str:
    """ISO-2022-JP with the NEC and IBM extensions (circled digits, ①...), as cp932 decodes them.

    JIS X 0208 byte pairs are mapped to Shift_JIS, so cp932's vendor rows apply; this is what the
    WHATWG decoder does with its jis0208 index. Raises UnicodeDecodeError on anything else.
    """
    out = bytearray()
    mode = "ascii"
    i, n = 0, len(data)
    while i < n:
        if data[i] == 0x1B:
            for seq, new_mode in _ESC_SEQUENCES.items():
                if data.startswith(seq, i):
                    mode = new_mode
                    i += len(seq)
                    break
            else:
                raise UnicodeDecodeError("iso-2022-jp", data, i, i + 1, "unknown escape sequence")
            continue
        byte = data[i]
        if byte in (0x0A, 0x0D) or mode == "ascii":
            if byte >= 0x80:
                raise UnicodeDecodeError("iso-2022-jp", data, i, i + 1, "8-bit byte")
            out.append(byte)
            i += 1
        elif mode == "kana":
            out.append(byte + 0x80)
            i += 1
        else:
            if i + 1 >= n:
                raise UnicodeDecodeError("iso-2022-jp", data, i, n, "truncated pair")
            j1, j2 = data[i], data[i + 1]
            if not (0x21 <= j1 <= 0x7E and 0x21 <= j2 <= 0x7E):
                raise UnicodeDecodeError("iso-2022-jp", data, i, i + 2, "not a JIS pair")
            s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
            s2 = j2 + (0x1F if j1 & 1 else 0x7E)
            if j1 & 1 and s2 >= 0x7F:
                s2 += 1
            out += bytes((s1, s2))
            i += 2
    return out.decode("cp932")
