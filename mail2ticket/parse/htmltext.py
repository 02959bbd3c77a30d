"""Turn an HTML mail body into readable text: links kept, scripts and styles dropped, nothing fetched."""

from __future__ import annotations

import html as htmllib
import re

MAX_HTML_CHARS = 2_000_000  # HTML beyond this is not converted (the raw HTML is still kept)
MAX_TEXT_CHARS = 1_000_000
MAX_LINKS = 2_000  # URLs shown after link text; beyond this only the link text is kept

_SKIP = frozenset(
    "script style head title template noscript svg object iframe frameset applet embed select "
    "xml".split()
)
_BLOCK = frozenset(
    "p div table tr ul ol dl dt dd section article header footer nav aside main form fieldset "
    "address figure figcaption center caption tbody thead tfoot blockquote details summary".split()
)
_HEADING = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_CELL = frozenset({"td", "th"})
_LINK_SCHEMES = ("http://", "https://", "ftp://", "mailto:", "tel:")
_SPACES = re.compile(r"[ \t\r\n\f\v\u200b]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# One tag: the attribute part stops at the next "<" or ">", so scanning every tag is linear.
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9:_-]*)([^<>]*)>")
_DECLARATION = re.compile(r"<[!?][^<>]*>")
_ATTR = re.compile(r"""([a-zA-Z_:][-\w:.]*)\s*(?:=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")


class _Converter:
    """Collects text from tag and text events; never resolves or loads anything."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.size = 0
        self.pre_depth = 0
        self.links: list[str | None] = []
        self.link_count = 0
        self.full = False

    def emit(self, text: str) -> None:
        if self.full or not text:
            return
        self.out.append(text)
        self.size += len(text)
        if self.size > MAX_TEXT_CHARS:
            self.full = True

    def newline(self, count: int = 1) -> None:
        self.emit("\n" * count)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.newline()
        elif tag == "hr":
            self.emit("\n----------\n")
        elif tag in _BLOCK or tag in _HEADING:
            self.newline(2 if tag in _HEADING or tag == "p" else 1)
        elif tag == "li":
            self.emit("\n- ")
        elif tag in _CELL:
            self.emit(" ")
        elif tag == "pre":
            self.pre_depth += 1
            self.newline()
        elif tag == "a":
            self.links.append(_link_target(attrs))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and alt.strip():
                self.emit(f" [{alt.strip()}] ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK or tag in _HEADING or tag == "p":
            self.newline(2 if tag in _HEADING or tag == "p" else 1)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self.newline()
        elif tag == "a" and self.links:
            target = self.links.pop()
            if target and self.link_count < MAX_LINKS and target not in self._recent_text():
                self.link_count += 1
                self.emit(f" <{target}>")

    def handle_data(self, data: str) -> None:
        if self.pre_depth:
            self.emit(data)
        else:
            self.emit(_SPACES.sub(" ", data))

    def _recent_text(self) -> str:
        return "".join(self.out[-3:])


def _link_target(attrs: list[tuple[str, str | None]]) -> str | None:
    href = (dict(attrs).get("href") or "").strip()
    if not href.lower().startswith(_LINK_SCHEMES):
        return None  # javascript:, data:, relative and in-page links say nothing to a reader
    if href.lower().startswith("mailto:"):
        href = href[7:].split("?", 1)[0]
    return href[:2048]


def _tokenize(html: str, converter: _Converter) -> None:
    """Feed ``html`` to ``converter`` as tags and text in one linear pass.

    Written here rather than with html.parser because the stdlib tokenizer of the Pythons we
    support goes quadratic on unclosed tags and comments (cpython gh-135462).
    """
    pos, n = 0, len(html)
    while pos < n and not converter.full:
        lt = html.find("<", pos)
        if lt < 0:
            converter.handle_data(htmllib.unescape(html[pos:]))
            return
        if lt > pos:
            converter.handle_data(htmllib.unescape(html[pos:lt]))
        if html.startswith("<!--", lt):
            end = html.find("-->", lt + 4)
            if end < 0:
                return  # an unclosed comment hides the rest, as in a browser
            pos = end + 3
            continue
        match = _TAG.match(html, lt) or _DECLARATION.match(html, lt)
        if match is None:
            converter.handle_data("<")
            pos = lt + 1
            continue
        pos = match.end()
        if match.re is _DECLARATION:
            continue
        tag = match.group(2).lower()
        if match.group(1):
            converter.handle_endtag(tag)
            continue
        attrs = [
            (name.lower(), htmllib.unescape(value.strip("\"'")) if value else None)
            for name, value in _ATTR.findall(match.group(3))
        ]
        if tag in _SKIP:
            close = re.compile(rf"</{re.escape(tag)}\s*>", re.IGNORECASE).search(html, pos)
            pos = close.end() if close else n
            continue
        converter.handle_starttag(tag, attrs)
        if match.group(3).rstrip().endswith("/") and tag == "a":
            converter.handle_endtag(tag)


def html_to_text(html: str) -> str:
    """Readable text of ``html`` (bounded in time and size); never raises."""
    converter = _Converter()
    try:
        _tokenize(html[:MAX_HTML_CHARS], converter)
    except Exception:  # defensive: a converter bug must not lose the message
        pass
    text = "\n".join(line.strip() for line in "".join(converter.out).split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
