"""Guess the charset of short undeclared 8-bit text, where statistics on a dozen bytes mislead.

Every candidate charset decodes the bytes; each decoding is scored by how much it looks like text
a person wrote in the languages that charset is for: letters of those languages (the common ones
count most), words in one script, capitals only at a word's start or in all-capital words, no
stray symbols or control characters. Multi-byte (East Asian) charsets score by their share of
common characters (kana, the first level of kanji or hanzi, the Hangul of KS X 1001). A
single-byte charset wins unless a multi-byte one decodes with a high share of common characters
and scores higher; what the rest of the message says (other parts' charsets, Content-Language,
the sender's country domain) adds a bonus. Bounded: only the first GUESS_PREFIX_BYTES are read.
"""

from __future__ import annotations

import contextvars
import re
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

GUESS_PREFIX_BYTES = 4096
# Guesses one message may make: beyond this (a message of 20,000 8-bit headers) text falls back
# to windows-1252, so a hostile message cannot make parsing slow.
GUESSES_PER_MESSAGE = 300
_budget: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("guesses", default=None)
MULTI_BYTE_SHARE = 0.8  # a multi-byte charset needs at least this score to be believed
CONTEXT_BONUS = 0.2

_RU_COMMON = "оеаинтсрвлкмдпуяы"
_RU = "бгжзйхцчшщъьэюё"
_UK = "іїєґў"
_LATIN1_COMMON = "éèàçäöüßáíóúñâêôûëïîœ"
_LATIN1_RARE = "ìòùåæøãõýÿšžð"
_CE_COMMON = "áäčďéěíňóôöőřšťúůüűýžąćęłńśźż"
_CE_RARE = "ĺľŕăâîșşțţßëç"
_TR = "çğıöşüâîû"
_GREEK_COMMON = "αεοιτνσςρκπμυληάέήίόύώ"
_GREEK = "βγδζθξφχψωϊϋΐΰ"
_HEBREW = "".join(chr(c) for c in range(0x5D0, 0x5EB))

# codec -> (common letters, other letters, rare letters of its languages), lower case
_LETTERS: dict[str, tuple[str, str, str]] = {
    "cp1252": (_LATIN1_COMMON, "", _LATIN1_RARE),
    "cp1250": (_CE_COMMON, "", _CE_RARE),
    "iso8859_2": (_CE_COMMON, "", _CE_RARE),
    "cp1251": (_RU_COMMON, _RU, _UK + "ђѓљњќћџ"),
    "koi8_r": (_RU_COMMON, _RU, ""),
    "koi8_u": (_RU_COMMON, _RU, _UK),
    "cp1253": (_GREEK_COMMON, _GREEK, ""),
    "iso8859_7": (_GREEK_COMMON, _GREEK, ""),
    "cp1254": (_TR + "i\u0307", "", "éàèäáíóúñ"),
    "cp1255": (_HEBREW, "", ""),
}
_LATIN_CODECS = frozenset({"cp1252", "cp1250", "iso8859_2", "cp1254"})
SINGLE_BYTE = tuple(_LETTERS)
MULTI_BYTE = ("gb18030", "cp950", "cp932", "euc_jp", "cp949")
_JAPANESE = frozenset({"cp932", "euc_jp", "shift_jis_2004", "euc_jis_2004"})
SCORED = frozenset({*SINGLE_BYTE, *MULTI_BYTE, "shift_jis_2004", "euc_jis_2004"})
# Punctuation mail really has in legacy charsets: neither evidence for nor against.
_NEUTRAL = set("«»–—‘’‚“”„…€°§©®™·•\u00a0±×÷′″‹›¡¿")
# A short list of the most frequent Chinese characters (simplified and traditional forms).
_COMMON_HANZI = set(
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学"
    "对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头"
    "面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向"
    "情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信"
    "北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难"
    "神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物"
    "台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指"
    "思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步"
    "完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双"
    "历越史商千片容研像找友孩站广改议形委早房音火际则首单亚测试邮件问题谢您们请附客户服务系统账"
    "号码订单发票价格时间今天明天会议报告项目通知确认回复"
    "這來國個說們為時會對過學後麼發還動經頭見現種樣點話長開問題實體關東電車書從兩與將當處總師"
    "員報馬張難數應親務制邊風戰覺許統愛讓認論義術結連遠資隊帶條變聯權該領傳紅決達辦運區轉輕滿寫"
    "識極黃臉錢黨歷測試郵務系統帳號碼訂單價格間議報項確認覆謝請"
)


@dataclass(frozen=True)
class Guess:
    codec: str
    score: float


@contextmanager
def per_message():
    """Bound the guesses made inside (one message) to GUESSES_PER_MESSAGE."""
    token = _budget.set([GUESSES_PER_MESSAGE])
    try:
        yield
    finally:
        _budget.reset(token)


def _spend() -> bool:
    left = _budget.get()
    if left is None:
        return True
    left[0] -= 1
    return left[0] >= 0


def guess(data: bytes, likely: tuple[str, ...] = ()) -> Guess | None:
    """The most plausible charset of ``data`` (not UTF-8, not ASCII), or None if none decodes
    (or the message has used up its guesses).

    ``likely`` are codecs the rest of the message points to (in Python codec names).
    """
    if not _spend():
        return None
    return _guess(data[:GUESS_PREFIX_BYTES], likely)


@lru_cache(maxsize=1024)
def _guess(data: bytes, likely: tuple[str, ...]) -> Guess | None:
    single = _best(data, SINGLE_BYTE, likely)
    multi = _best(data, MULTI_BYTE, likely)
    if multi is not None and multi.score >= MULTI_BYTE_SHARE:
        if single is None or multi.score > single.score:
            return multi
    return single or multi


def best_of(data: bytes, codecs: tuple[str, ...], likely: tuple[str, ...] = ()) -> Guess | None:
    """The best scoring of ``codecs`` that decodes ``data`` strictly, or None."""
    return _best(data[:GUESS_PREFIX_BYTES], codecs, likely)


def _best(data: bytes, codecs: tuple[str, ...], likely: tuple[str, ...]) -> Guess | None:
    best: Guess | None = None
    order = [c for c in likely if c in codecs] + [c for c in codecs if c not in likely]
    for codec in order:
        text = _strict(data, codec)
        if text is None:
            continue
        score = score_text(text, codec) + (CONTEXT_BONUS if codec in likely else 0.0)
        if best is None or score > best.score:
            best = Guess(codec, score)
    return best


def _strict(data: bytes, codec: str) -> str | None:
    # a multi-byte character cut at the end of the prefix is not the charset's fault
    trims = (0, 1, 2, 3) if len(data) == GUESS_PREFIX_BYTES and codec not in _LETTERS else (0,)
    for trim in trims:
        try:
            return data[: len(data) - trim].decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    return None


def score_text(text: str, codec: str) -> float:
    """About 1.0 for text that reads well in ``codec``'s languages; lower (even negative) else."""
    if codec in _LETTERS:
        return _score_single(text, *_LETTERS[codec], latin=codec in _LATIN_CODECS)
    return _score_multi(text, codec)


def _script(ch: str) -> str:
    code = ord(ch)
    if code < 0x250:
        return "latin"
    if 0x370 <= code < 0x400:
        return "greek"
    if 0x400 <= code < 0x530:
        return "cyrillic"
    if 0x590 <= code < 0x600:
        return "hebrew"
    return "other"


_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ASCII_LETTER = re.compile(r"[A-Za-z]")


@lru_cache(maxsize=8192)
def _facts(ch: str, common: str, other: str, rare: str) -> tuple[float, int, bool, bool, str]:
    """(points, kind, upper, lower, script) of a non-ASCII character; kind 1 letter, 2 neutral,
    3 symbol."""
    if ch.isalpha():
        low = ch.lower()
        points = 2 if low in common else 1.5 if low in other else 1 if low in rare else -1
        return points, 1, ch.isupper(), ch.islower(), _script(ch)
    if ch in _NEUTRAL or ch.isspace():
        return 1, 2, False, False, ""
    return (-4 if unicodedata.category(ch) in ("Cc", "Cn", "Co") else -2), 3, False, False, ""


def _score_single(text: str, common: str, other: str, rare: str, *, latin: bool) -> float:
    points, count, run, last = 0.0, 0, 0, -2
    for match in _NON_ASCII.finditer(text):
        i = match.start()
        ch = match.group()
        count += 1
        prev = text[i - 1] if i else " "
        run = run + 1 if i == last + 1 else 0
        last = i
        value, kind, upper, _lower, script = _facts(ch, common, other, rare)
        if kind == 1:
            points += value
            if latin and run >= 3:
                points -= 1  # Latin-script words are mostly ASCII letters: "ůěĺí" is no word
            if prev.isalpha():
                if _script(prev) != script:
                    points -= 3  # a word in two scripts: "Mьller"
                elif upper and prev.islower():
                    points -= 3  # a capital inside a word: "дцьЯ"
                elif upper:
                    points -= 0.5  # all-capital words are rarer than small letters: "ФЕУФ"
        else:
            if kind == 2:
                points += 0 if prev.isalpha() else value
            else:
                points += value - (1 if prev.isalpha() else 0)  # a symbol inside a word
            last = -2  # a run of letters ends here
    if not count:
        return 0.0
    score = points / (2 * count)
    if not latin:
        # Mostly ASCII words around a few 8-bit letters: more likely accents than another script.
        ascii_letters = len(_ASCII_LETTER.findall(text))
        letters = sum(1 for ch in _NON_ASCII.findall(text) if ch.isalpha())
        if ascii_letters > letters:
            score -= 0.5 * (ascii_letters - letters) / (ascii_letters + letters)
    return score


def _score_multi(text: str, codec: str) -> float:
    points, count, kanji_points, kana = 0.0, 0, 0.0, False
    for ch in _NON_ASCII.findall(text):
        count += 1
        value, is_kanji, is_kana = _multi_facts(ch, codec)
        points += value
        if is_kanji:
            kanji_points += value
        kana = kana or is_kana
    if codec in _JAPANESE and not kana:
        points -= kanji_points / 4  # Japanese without any kana is rare; Korean read as kanji
    return points / (2 * count) if count else 0.0


@lru_cache(maxsize=16384)
def _multi_facts(ch: str, codec: str) -> tuple[float, bool, bool]:
    """(points, is an ideograph, is kana) of a non-ASCII character decoded by ``codec``."""
    code = ord(ch)
    if 0x3000 <= code < 0x3040 or 0xFF01 <= code < 0xFF5F:
        return 2, False, False  # CJK punctuation, full-width forms
    if 0x3040 <= code < 0x3100:  # kana
        return (2 if codec in _JAPANESE else 1), False, True
    if 0xAC00 <= code < 0xD7A4:  # Hangul syllables
        return (2 if codec == "cp949" and _encodes(ch, "euc_kr") else -1), False, False
    if 0x4E00 <= code < 0xA000:  # CJK ideographs
        return _hanzi_points(ch, codec), True, False
    return -1, False, False  # half-width kana, box drawing, Cyrillic or Greek from a CJK table...


def _hanzi_points(ch: str, codec: str) -> float:
    if codec == "cp949":
        return 0.0  # Hanja: rare in Korean mail today
    if codec in ("cp932", "euc_jp", "shift_jis_2004", "euc_jis_2004"):
        first = _encoded(ch, "euc_jp")
        return 2 if first and 0xB0 <= first[0] <= 0xCF else 0.5  # JIS level 1, else level 2
    if ch in _COMMON_HANZI:
        return 2
    if codec == "gb18030":
        first = _encoded(ch, "gb2312")
        return 1.5 if first and 0xB0 <= first[0] <= 0xD7 else 0  # GB2312 level 1
    first = _encoded(ch, "big5")
    return 1.5 if first and (first[0], first[1]) <= (0xC6, 0x7E) else 0  # Big5 frequent


def _encodes(ch: str, codec: str) -> bool:
    encoded = _encoded(ch, codec)
    return encoded is not None and len(encoded) == 2  # not a composed 8-byte Hangul sequence


def _encoded(ch: str, codec: str) -> bytes | None:
    try:
        return ch.encode(codec)
    except UnicodeEncodeError:
        return None


# What the rest of a message says about its language, as likely codecs.
_BY_LANGUAGE = {
    "ru": ("koi8_r", "cp1251"), "uk": ("koi8_u", "cp1251"), "be": ("cp1251",), "bg": ("cp1251",),
    "sr": ("cp1251",), "mk": ("cp1251",), "el": ("cp1253", "iso8859_7"), "tr": ("cp1254",),
    "he": ("cp1255",), "iw": ("cp1255",), "pl": ("cp1250", "iso8859_2"),
    "cs": ("cp1250", "iso8859_2"), "sk": ("cp1250", "iso8859_2"), "hu": ("cp1250", "iso8859_2"),
    "sl": ("cp1250", "iso8859_2"), "hr": ("cp1250", "iso8859_2"), "ro": ("cp1250", "iso8859_2"),
    "ja": ("cp932", "euc_jp"), "zh-tw": ("cp950",), "zh-hk": ("cp950",), "zh": ("gb18030",),
    "ko": ("cp949",),
    **{lang: ("cp1252",) for lang in "de fr es it nl pt da sv no nb nn fi is ca en ga".split()},
}
_BY_TLD = {
    "ru": "ru", "su": "ru", "by": "be", "ua": "uk", "bg": "bg", "rs": "sr", "gr": "el", "tr": "tr",
    "il": "he", "pl": "pl", "cz": "cs", "sk": "sk", "hu": "hu", "si": "sl", "hr": "hr", "ro": "ro",
    "jp": "ja", "cn": "zh", "tw": "zh-tw", "hk": "zh-hk", "kr": "ko", "de": "de", "at": "de",
    "ch": "de", "fr": "fr", "es": "es", "it": "it", "nl": "nl", "pt": "pt", "br": "pt", "dk": "da",
    "se": "sv", "no": "no", "fi": "fi", "is": "is",
}


def likely_codecs(languages: list[str], domains: list[str]) -> tuple[str, ...]:
    """Codecs a message's Content-Language values and sender domains point to, best first."""
    out: list[str] = []
    for tag in languages:
        tag = tag.strip().lower().replace("_", "-")
        for key in (tag[:5], tag[:2]):
            if key in _BY_LANGUAGE:
                out += _BY_LANGUAGE[key]
                break
    for domain in domains:
        tld = domain.rsplit(".", 1)[-1].strip().lower()
        if tld in _BY_TLD:
            out += _BY_LANGUAGE[_BY_TLD[tld]]
    return tuple(dict.fromkeys(out))
