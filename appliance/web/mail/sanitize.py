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
import re
from collections.abc import Callable
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
URL_SCHEMES = frozenset({"http", "https", "mailto", "cid", "data"})
LINK_SCHEMES = ("http:", "https:", "mailto:")
REMOTE_SCHEMES = ("http:", "https:")
# Raster images only: an SVG in a data: URL is a document that could hold script.
DATA_IMAGE = re.compile(r"data:image/(?:png|gif|jpeg|webp);", re.IGNORECASE)
_INLINE_TYPES = frozenset({"png", "gif", "jpeg", "webp"})
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)
# Signs of something loaded from elsewhere, looked for in the raw HTML before
# it is sanitized: enough to offer "load remote content" when it may matter.
_REMOTE_REFERENCE = re.compile(
    rb"(?:src|background|srcset|poster)\s*=\s*[\"']?\s*(?:https?:)?//|url\(\s*[\"']?\s*(?:https?:)?//",
    re.IGNORECASE,
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
    return _REMOTE_REFERENCE.search(html.encode("utf-8", "replace")) is not None


class _Images:
    """What an HTML body's image and style URLs become, and what was held back."""

    def __init__(
        self,
        message: bytes | memoryview,
        structure: Structure,
        layout: Layout,
        remote_allowed: bool,
    ) -> None:
        self.message = message
        self.structure = structure
        self.related = layout.related
        self.numbers = {id(part): number for number, part in leaves(structure.root)}
        self.remote_allowed = remote_allowed
        self.blocked = False
        self.inlined = 0

    def source(self, url: str) -> str | None:
        lowered = url.strip().lower()
        if lowered.startswith("cid:"):
            return self._inline(url.strip()[4:])
        if DATA_IMAGE.match(lowered):
            return url
        if lowered.startswith(REMOTE_SCHEMES):
            if self.remote_allowed:
                return url
            self.blocked = True
        return None

    def style(self, value: str) -> str | None:
        if "expression" in value.lower():
            return None
        return _CSS_URL.sub(self._css_url, value)

    def _css_url(self, match: re.Match) -> str:
        target = self.source(match.group(2))
        return "none" if target is None else f'url("{target}")'

    def _inline(self, cid: str) -> str | None:
        """A cid: URL (RFC 2392) as a data: URL of the part it names."""
        part = self.related.get(unquote(cid).strip("<>"))
        if part is None or part.type.lower() != "image":
            return None
        if part.subtype.lower() not in _INLINE_TYPES:
            return None
        number = self.numbers.get(id(part))
        if number is None:
            return None
        octets = part_octets(self.message, self.structure, number)
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


def _filter(images: _Images) -> Callable[[str, str, str], str | None]:
    def keep(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "href":
            return value if value.strip().lower().startswith(LINK_SCHEMES) else None
        if attribute == "src":
            return images.source(value) if tag == "img" else None
        if attribute == "style":
            return images.style(value)
        return value

    return keep


def clean_html(html: str, images: _Images) -> str:
    return nh3.clean(
        html,
        tags=set(TAGS),
        clean_content_tags=set(CONTENT_REMOVED),
        attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
        attribute_filter=_filter(images),
        url_schemes=set(URL_SCHEMES),
        filter_style_properties=set(STYLE_PROPERTIES),
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_relative="deny",  # no base to resolve against: a relative URL goes nowhere
    )


def body_document(
    message: bytes | memoryview, structure: Structure, layout: Layout, remote_allowed: bool
) -> tuple[str, bool]:
    """The message's body parts as one HTML document for the sandboxed frame,
    and whether remote content was held back from it."""
    images = _Images(message, structure, layout, remote_allowed)
    pieces: list[str] = []
    for _, part in layout.bodies:
        text, more = part_text(message, part, MAX_BODY_TEXT)
        if part.subtype.lower() == "html":
            pieces.append(clean_html(text, images))
        else:
            pieces.append(Markup('<pre class="plain">{}</pre>').format(linkify(text)))
        if more:
            pieces.append(
                str(escape("[This part is longer than shown here: see the original message.]"))
            )
    body = '\n<hr class="part">\n'.join(pieces)
    return _DOCUMENT.format(body=body), images.blocked
