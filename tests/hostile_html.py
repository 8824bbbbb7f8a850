"""A corpus of hostile mail for webmail's tests: each message tries to run
script or fetch something when it is opened.

Every payload, if it worked, would make the browser ask the test's beacon
(an HTTPS server on loopback, see tests/integration/test_webmail_hostile.py)
for /hit/NAME, or set the page's title to "pwned": script payloads do both
(BEACON_JS), fetch payloads ask directly. The beacon is HTTPS because the
box's pages are: a browser upgrades or blocks plain-http subresources of an
HTTPS page, so an http:// beacon could stay silent for the wrong reason.

The last message is the tracking pixel: it must reach the beacon only after
the reader clicks "load remote content". Messages marked `remote` ask for
remote content in a way that is legitimate once allowed (a background
image); before that they must stay silent like every other.

Kinds: script tags, event handlers, javascript:
and data: URLs, SVG with script, CSS expressions and @import, meta
refresh, base href, forms posting elsewhere, nested iframes, malformed tags
that trick parsers, payloads encoded in quoted-printable and base64 (and
UTF-7), and the tracking pixel; then XSS in Subject, From display names and
attachment names, which the page must show as text.
"""

from __future__ import annotations

import base64
import quopri
from dataclasses import dataclass

SENDER = "mallory@hostile.test"
# What a payload's script sets the title to; the page's own title never is.
PWNED = "pwned"
PIXEL = "pixel"


@dataclass(frozen=True, slots=True)
class Hostile:
    name: str
    message: bytes
    remote: bool = False  # asks for remote content that "load remote content" may fetch


def hit(beacon: str, name: str) -> str:
    return f"{beacon}/hit/{name}"


def script(beacon: str, name: str) -> str:
    """JavaScript that, if it ever ran, would leave both marks."""
    return f"document.title='{PWNED}';new Image().src='{hit(beacon, name)}'"


def _message(
    subject: str,
    body: bytes,
    content_type: str = "text/html; charset=utf-8",
    encoding: str = "8bit",
    sender: str = f"Mallory <{SENDER}>",
) -> bytes:
    head = (
        f"From: {sender}\r\n"
        "To: ann@example.test\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return head.encode() + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"


def _html(name: str, markup: str) -> Hostile:
    return Hostile(name, _message(f"hostile {name}", markup.encode()))


def _html_bodies(beacon: str) -> list[Hostile]:
    js, url = (lambda n: script(beacon, n)), (lambda n: hit(beacon, n))
    svg_doc = f'<svg xmlns="http://www.w3.org/2000/svg"><script>{js("svg-data")}</script></svg>'
    svg_data = base64.b64encode(svg_doc.encode()).decode()
    html_data = base64.b64encode(f"<script>{js('data-html')}</script>".encode()).decode()
    return [
        _html("script-tag", f"<p>hello</p><script>{js('script-tag')}</script>"),
        _html("script-src", f'<SCRIPT SRC="{url("script-src")}"></SCRIPT>'),
        _html("img-onerror", f'<img src="x" onerror="{js("img-onerror")}">'),
        _html("body-onload", f'<body onload="{js("body-onload")}"><p>hi</p></body>'),
        _html("autofocus-onfocus", f'<input autofocus onfocus="{js("onfocus")}">'),
        _html("svg-onload", f'<svg onload="{js("svg-onload")}"><circle r="5"/></svg>'),
        _html("svg-script", f"<svg><script>{js('svg-script')}</script></svg>"),
        _html("javascript-link", f'<a href="javascript:{js("js-link")}">open</a>'),
        _html("javascript-obfuscated", f'<a href="jav&#x09;ascript:{js("js-tab")}">open</a>'),
        _html("data-html-link", f'<a href="data:text/html;base64,{html_data}">open</a>'),
        _html("data-svg-image", f'<img src="data:image/svg+xml;base64,{svg_data}">'),
        _html("iframe-src", f'<iframe src="{url("iframe-src")}"></iframe>'),
        _html("iframe-srcdoc", f'<iframe srcdoc="&lt;script&gt;{js("srcdoc")}&lt;/script&gt;">'),
        _html("iframe-nested", f'<iframe src="data:text/html,<iframe src={url("nested")}>">'),
        _html(
            "object-embed", f'<object data="{url("object")}"></object><embed src="{url("embed")}">'
        ),
        _html("meta-refresh", f'<meta http-equiv="refresh" content="0;url={url("meta-refresh")}">'),
        _html(
            "base-href",
            f'<base href="{beacon}/hit/base/"><img src="relative.gif"><a href="x">x</a>',
        ),
        _html(
            "form-elsewhere",
            f'<form action="{url("form")}" method="post"><input name="a" value="b">'
            f"<button>Claim your prize</button></form><script>document.forms[0].submit()</script>",
        ),
        _html("css-import", f'<style>@import url("{url("css-import")}");</style><p>x</p>'),
        _html(
            "css-font-face", f"<style>@font-face{{font-family:x;src:url({url('font')})}}</style>"
        ),
        _html("css-expression", f'<div style="width: expression({js("expression")})">x</div>'),
        _html("link-stylesheet", f'<link rel="stylesheet" href="{url("link-css")}"><p>x</p>'),
        _html("srcset", f'<img srcset="{url("srcset")} 1x, {url("srcset2")} 2x">'),
        _html(
            "video-poster", f'<video poster="{url("poster")}"><source src="{url("video")}"></video>'
        ),
        _html("input-image", f'<input type="image" src="{url("input-image")}">'),
        _html(
            "table-background", f'<table background="{url("table-bg")}"><tr><td>x</td></tr></table>'
        ),
        _html(
            "malformed-nesting",
            f"<<script>script>{js('malformed')}<</script>/script><scr<script>ipt>{js('split')}</script>",
        ),
        _html("quote-breakout", f'<img """><script>{js("quote-breakout")}</script>">'),
        _html("comment-confusion", f'<!--<img src="--><img src=x onerror="{js("comment")}">-->'),
        _html("title-breakout", f'<title><img src=x onerror="{js("title")}"></title>'),
        _html(
            "noscript-mxss",
            f'<noscript><p title="</noscript><img src=x onerror="{js("noscript")}">">',
        ),
        _html(
            "math-mxss",
            f'<math><mtext><table><mglyph><style><img src=x onerror="{js("mathml")}">',
        ),
        _html("link-ping", f'<a href="https://example.com/" ping="{url("ping")}">example</a>'),
        Hostile(
            "css-background-url",
            _message(
                "hostile css-background-url",
                f'<div style="background-image: url({url("css-bg")})">x</div>'.encode(),
            ),
            remote=True,
        ),
    ]


def _encoded(beacon: str) -> list[Hostile]:
    payload = (
        f"<p>encoded</p><script>{script(beacon, 'qp')}</script>"
        f'<img src=x onerror="{script(beacon, "qp-img")}">'
    )
    quoted = quopri.encodestring(payload.encode(), quotetabs=True)
    b64_payload = (
        f'<img src=x onerror="{script(beacon, "base64")}">'
        f"<script>{script(beacon, 'base64-script')}</script>"
    )
    b64 = base64.encodebytes(b64_payload.encode())
    utf7 = f"+ADw-script+AD4-{script(beacon, 'utf7')}+ADw-/script+AD4-".encode()
    alternative = (
        "--b1\r\nContent-Type: text/plain\r\n\r\nplain version\r\n"
        "--b1\r\nContent-Type: text/html\r\n\r\n"
        f"<script>{script(beacon, 'alternative')}</script><p>rich</p>\r\n--b1--\r\n"
    ).encode()
    return [
        Hostile("quoted-printable", _message("hostile qp", quoted, encoding="quoted-printable")),
        Hostile("base64", _message("hostile base64", b64, encoding="base64")),
        Hostile("utf-7", _message("hostile utf7", utf7, content_type="text/html; charset=utf-7")),
        Hostile(
            "alternative",
            _message(
                "hostile alternative",
                alternative,
                content_type='multipart/alternative; boundary="b1"',
            ),
        ),
    ]


def attachment_message(beacon: str) -> bytes:
    """HTML and SVG attachments, and a file name that is markup (RFC 2231)."""
    html_part = f"<script>{script(beacon, 'html-attachment')}</script>".encode()
    svg_part = (
        '<svg xmlns="http://www.w3.org/2000/svg" onload="'
        + script(beacon, "svg-attachment")
        + '"><circle r="5"/></svg>'
    ).encode()
    name = "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E.txt"
    body = (
        b"--mix\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p>See the attachments.</p><img src="cid:drawing@hostile.test">\r\n'
        b'--mix\r\nContent-Type: text/html; name="page.html"\r\n'
        b'Content-Disposition: attachment; filename="page.html"\r\n\r\n' + html_part + b"\r\n"
        b"--mix\r\nContent-Type: image/svg+xml\r\nContent-ID: <drawing@hostile.test>\r\n"
        b'Content-Disposition: attachment; filename="drawing.svg"\r\n\r\n' + svg_part + b"\r\n"
        b"--mix\r\nContent-Type: text/plain\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''" + name.encode() + b"\r\n\r\n"
        b"harmless\r\n--mix--\r\n"
    )
    return _message("hostile attachments", body, content_type='multipart/mixed; boundary="mix"')


def header_message(beacon: str) -> bytes:
    """XSS in the Subject (plain and RFC 2047 encoded) and the From display name."""
    subject_markup = f'<img src=x onerror="{script(beacon, "subject")}">'
    encoded = base64.b64encode(f"<script>{script(beacon, 'subject-2047')}</script>".encode())
    subject = f"{subject_markup} =?utf-8?b?{encoded.decode()}?="
    sender = f'"<script>{script(beacon, "from")}</script>" <{SENDER}>'
    return _message(subject, b"<p>headers</p>", sender=sender)


HEADER_SUBJECT_MARKER = "<img src=x onerror="
HEADER_FROM_MARKER = "<script>document.title"
ATTACHMENT_NAME = "<img src=x onerror=alert(1)>.txt"


def tracking_pixel(beacon: str) -> Hostile:
    markup = f'<p>Our newsletter</p><img src="{beacon}/{PIXEL}.gif" width="1" height="1" alt="">'
    return Hostile(PIXEL, _message("newsletter with a pixel", markup.encode()), remote=True)


def corpus(beacon: str) -> list[Hostile]:
    """Every hostile message, the tracking pixel last."""
    return [
        *_html_bodies(beacon),
        *_encoded(beacon),
        Hostile("attachments", attachment_message(beacon)),
        Hostile("headers", header_message(beacon)),
        tracking_pixel(beacon),
    ]
