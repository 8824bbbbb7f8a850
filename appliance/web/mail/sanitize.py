"""A message's body as a document safe to show: every message is a stranger's HTML.

Three walls, each enough alone against script:

1. nh3 (Ammonia) rebuilds the HTML from an allow-list: tags, attributes,
   style properties and URL schemes. Script, style and title elements go
   with their content; forms, frames, objects, base, meta and event
   handlers go; links may be http, https or mailto only, and open in a new
   tab with rel="noopener noreferrer"; an image may be data: (a raster
   type), cid: (replaced by the data of the part it names) or, once the
   reader allows it, http(s).
2. The document is shown in an <iframe sandbox> without allow-scripts or
   allow-same-origin: nothing in it runs, and it is of no origin, so it can
   neither read the page around it nor send the reader's cookies.
3. It is served with its own Content-Security-Policy (see policy()): no
   script, no frame, no form, no font, and images only from data: until
   remote content is allowed, so a tracking pixel that slipped past the
   sanitizer is still not fetched.
"""

from __future__ import annotations

import base64
import html
import re
from urllib.parse import unquote

import nh3
from markupsafe import Markup, escape

from appliance.message.structure import Structure, binary_section
from appliance.message.text import part_text
from appliance.web.mail.reading import Layout, leaves, linkify

# Decoded octets of one body part that are shown; the rest is offered as
# "show original". A newsletter is some 100 KB; this bounds the sanitizer's
# work and the page's size on a hostile 50 MB part.
MAX_BODY_TEXT = 4 << 20
CUT_SHORT = "\n[This part is longer than shown here: see the original message.]"
# Octets of one cid: image inlined as a data: URL (base64 makes it a third
# bigger), and of all of a message's together.
MAX_INLINE_IMAGE = 2 << 20
MAX_INLINE_TOTAL = 8 << 20

TAGS = frozenset(
    {
        "a", "abbr", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption",
        "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn", "div",
        "dl", "dt", "em", "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6",
        "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp",
        "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td",
        "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
    }
)  # fmt: skip
# Removed with everything inside them, not just their tags.
CONTENT_REMOVED = frozenset({"script", "style", "title", "template", "noscript"})
_LAYOUT = {"align", "valign", "width", "height", "bgcolor"}
ATTRIBUTES = {
    "*": {"style", "dir", "lang", "title"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height", "border", "align"},
    "font": {"color", "face", "size"},
    "table": _LAYOUT | {"border", "cellpadding", "cellspacing"},
    "td": _LAYOUT | {"colspan", "rowspan", "nowrap"},
    "th": _LAYOUT | {"colspan", "rowspan", "nowrap", "scope"},
    "tr": _LAYOUT,
    "tbody": _LAYOUT,
    "thead": _LAYOUT,
    "tfoot": _LAYOUT,
    "col": _LAYOUT | {"span"},
    "colgroup": _LAYOUT | {"span"},
    "div": _LAYOUT,
    "p": {"align"},
    "hr": {"align", "width", "size"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "time": {"datetime"},
}
# Style properties kept: how text and boxes look. Not position, z-index or
# anything else that could lay the message over the page's own controls.
STYLE_PROPERTIES = frozenset(
    {
        "background", "background-color", "background-image", "background-position",
        "background-repeat", "background-size", "border", "border-bottom",
        "border-bottom-color", "border-bottom-style", "border-bottom-width", "border-collapse",
        "border-color", "border-left", "border-left-color", "border-left-style",
        "border-left-width", "border-radius", "border-right", "border-right-color",
        "border-right-style", "border-right-width", "border-spacing", "border-style",
        "border-top", "border-top-color", "border-top-style", "border-top-width",
        "border-width", "color", "direction", "display", "float", "font", "font-family",
        "font-size", "font-style", "font-variant", "font-weight", "height", "letter-spacing",
        "line-height", "list-style", "list-style-type", "margin", "margin-bottom",
        "margin-left", "margin-right", "margin-top", "max-height", "max-width", "min-height",
        "min-width", "padding", "padding-bottom", "padding-left", "padding-right",
        "padding-top", "table-layout", "text-align", "text-decoration", "text-indent",
        "text-transform", "vertical-align", "white-space", "width", "word-break",
        "word-spacing", "overflow-wrap",
    }
)  # fmt: skip
# What nh3 lets through; the URL rules below then narrow it per attribute.
URL_SCHEMES = frozenset({"http", "https", "mailto", "cid", "data"})
_INLINE_TYPES = frozenset({"png", "gif", "jpeg", "webp"})

# nh3 (html5ever) writes its output in one canonical form: every attribute
# after one space, its name in lower case, its value in double quotes (one
# inside it as &quot;), and no "<" outside a tag. So these patterns read
# its tags exactly, and they run in C: a Python callback per attribute
# (nh3's attribute_filter) doubles the time a 1 MB newsletter takes. They
# keep what is allowed and drop the rest. Only <a> may have href and only
# <img> src (ATTRIBUTES), so the attribute alone names the tag; the same
# characters in a text node (where html5ever leaves '"' as it is) lose
# that text, and never gain markup.
# A link goes to http, https or mailto, or nowhere (no data:, no cid:).
_LINK_ELSEWHERE = re.compile(r' href="(?!(?i:https?|mailto):)[^"]*"')
# Raster images only: an SVG is a document that could hold script.
_RASTER = r"data:image/(?:png|gif|jpeg|webp)[;,]"
_IMAGE_HELD = re.compile(rf' src="(?!(?i:{_RASTER}|cid:))[^"]*"')
_IMAGE_ELSEWHERE = re.compile(rf' src="(?!(?i:{_RASTER}|cid:|https?://))[^"]*"')
_IMAGE_CID = re.compile(r' src="(?i:cid:)([^"]*)"')
_STYLE_URL = re.compile(r'(\sstyle=")([^"]*?url\([^"]*)"', re.I)
_STYLE_EXPRESSION = re.compile(r'\sstyle="[^"]*expression[^"]*"', re.I)
_CSS_URL = re.compile(r"url\(\s*(?:&quot;|')?(.*?)(?:&quot;|')?\s*\)", re.I | re.DOTALL)
_CSS_KEPT = re.compile(rf"{_RASTER}", re.I)
_CSS_REMOTE = re.compile(r"https?://", re.I)
# Signs of something loaded from elsewhere, looked for in the raw HTML before
# it is sanitized: enough to offer "load remote content" when it may matter.
_REMOTE_REFERENCE = re.compile(
    r"(?:src|background|srcset|poster)\s*=\s*[\"']?\s*(?:https?:)?//|url\(\s*[\"']?\s*(?:https?:)?//",
    re.IGNORECASE,
)
_CLEANER = nh3.Cleaner(
    tags=set(TAGS),
    clean_content_tags=set(CONTENT_REMOVED),
    attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
    url_schemes=set(URL_SCHEMES),
    filter_style_properties=set(STYLE_PROPERTIES),
    set_tag_attribute_values={"a": {"target": "_blank"}},
    url_relative="deny",  # no base to resolve against: a relative URL goes nowhere
)

_DOCUMENT = """<!doctype html>
<html><head><meta charset="utf-8"><title>Message</title>
<style>
body {{ margin: 0; padding: 0.75rem; font: 16px/1.5 system-ui, sans-serif; color: #1a1a1a;
  background: #fff; overflow-wrap: anywhere; }}
img {{ max-width: 100%; height: auto; }}
pre.plain {{ white-space: pre-wrap; font: inherit; margin: 0; }}
hr.part {{ border: 0; border-top: 1px solid #c8c8c8; margin: 1rem 0; }}
</style></head>
<body>
{body}
</body></html>
"""


def policy(remote_allowed: bool) -> str:
    """The body document's Content-Security-Policy.

    Inline style is allowed only because every style attribute has been
    through the sanitizer; frame-ancestors 'self' lets the message page
    frame it; sandbox holds even if someone opens the body's URL by itself.
    """
    images = "data: https: http:" if remote_allowed else "data:"
    return (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )


def may_load_remote(html: str) -> bool:
    """Whether an HTML body seems to ask for something from elsewhere."""
    return _REMOTE_REFERENCE.search(html) is not None


class _Inliner:
    """cid: URLs (RFC 2392) made data: URLs of the raster image parts they name."""

    def __init__(self, message: bytes | memoryview, structure: Structure, layout: Layout) -> None:
        self.message = message
        self.structure = structure
        self.related = layout.related
        self.numbers = {id(part): number for number, part in leaves(structure.root)}
        self.inlined = 0

    def __call__(self, match: re.Match) -> str:
        found = self.data_url(match.group(1))
        return f' src="{found}"' if found else ""

    def data_url(self, cid: str) -> str | None:
        part = self.related.get(unquote(html.unescape(cid)).strip().strip("<>"))
        if part is None or part.type.lower() != "image":
            return None
        if part.subtype.lower() not in _INLINE_TYPES or id(part) not in self.numbers:
            return None
        octets = part_octets(self.message, self.structure, self.numbers[id(part)])
        if len(octets) > MAX_INLINE_IMAGE or self.inlined + len(octets) > MAX_INLINE_TOTAL:
            return None
        self.inlined += len(octets)
        encoded = base64.b64encode(octets).decode("ascii")
        return f"data:image/{part.subtype.lower()};base64,{encoded}"


def part_octets(message: bytes | memoryview, structure: Structure, number: str) -> bytes:
    """A part's content with its transfer encoding undone (IMAP BINARY[number])."""
    numbers = tuple(int(n) for n in number.split("."))
    content = binary_section(structure, message, numbers)
    if isinstance(content, bytes):
        return content
    view = memoryview(message)
    return b"".join(bytes(view[start:end]) for start, end in content)


def _style_urls(remote_allowed: bool):
    """A style attribute's url()s: kept when allowed, else none."""

    def target(match: re.Match) -> str:
        url = html.unescape(match.group(1)).strip()
        if _CSS_KEPT.match(url) or (remote_allowed and _CSS_REMOTE.match(url)):
            return match.group(0)
        return "none"

    def attribute(match: re.Match) -> str:
        return match.group(1) + _CSS_URL.sub(target, match.group(2)) + '"'

    return attribute


def clean_html(html_text: str, inliner: _Inliner, remote_allowed: bool) -> str:
    """nh3's allow-list, then the URL rules on its canonical output. The
    rules that only rare mail needs run only when a quick scan finds it."""
    cleaned = _CLEANER.clean(html_text)
    cleaned = _LINK_ELSEWHERE.sub("", cleaned)
    cleaned = (_IMAGE_ELSEWHERE if remote_allowed else _IMAGE_HELD).sub("", cleaned)
    lowered = cleaned.lower()  # "in" is a fast scan; a regex with re.I is not
    if 'src="cid:' in lowered:
        cleaned = _IMAGE_CID.sub(inliner, cleaned)
    if "expression" in lowered:
        cleaned = _STYLE_EXPRESSION.sub("", cleaned)
    if "url(" in lowered:
        cleaned = _STYLE_URL.sub(_style_urls(remote_allowed), cleaned)
    return cleaned


def body_document(
    message: bytes | memoryview, structure: Structure, layout: Layout, remote_allowed: bool
) -> str:
    """The message's body parts as one HTML document for the sandboxed frame."""
    inliner = _Inliner(message, structure, layout)
    pieces: list[str] = []
    for _, part in layout.bodies:
        text, more = part_text(message, part, MAX_BODY_TEXT)
        if part.subtype.lower() == "html":
            pieces.append(clean_html(text, inliner, remote_allowed))
        else:
            pieces.append(Markup('<pre class="plain">{}</pre>').format(linkify(text)))
        if more:
            pieces.append(str(escape(CUT_SHORT)))
    body = '\n<hr class="part">\n'.join(pieces)
    return _DOCUMENT.format(body=body)
