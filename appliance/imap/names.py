"""Which mailbox names may exist (RFC 9051 5.1, RFC 6855 3, RFC 3501 5.1.3).

mailbox_name_error() judges a name as the parser hands it over: already
decoded to Unicode. The wire form was checked there (parser.decode_mailbox_name):
until the client enables UTF8=ACCEPT or IMAP4rev2, a name is modified UTF-7,
where "&" starts a shifted run and a literal "&" is sent as "&-", and 8-bit
octets are a syntax error (BAD); once enabled, a name is UTF-8 taken as it is,
"&" included, and never read as modified UTF-7 (RFC 6855 3). Either way the
store keeps, and this module sees, the same Unicode name.

Pure functions and constants only: no store, no connection.
"""

from __future__ import annotations

import re

# The hierarchy delimiter the session announces (LIST, NAMESPACE).
DELIMITER = "/"
# A whole name in UTF-8, as the store keeps it: room for a deep folder path
# with long names, while every command and response naming it, even in
# modified UTF-7 (at most twice as long), stays far below the 64 KiB line limit.
MAX_NAME_OCTETS = 1000
# One level of the hierarchy in UTF-8: what file systems and most clients
# allow for one folder name.
MAX_LEVEL_OCTETS = 255
# Levels in one name: CREATE makes every missing parent, so each level is a
# mailbox record; no folder tree a person builds is this deep.
MAX_LEVELS = 32

# RFC 9051 5.1 and RFC 6855 3: no control characters (U+0000-U+001F, U+007F,
# U+0080-U+009F), no line or paragraph separator (U+2028, U+2029). Surrogates
# have no UTF-8 form: the store could not keep such a name.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# LIST and LSUB read these as wildcards (RFC 9051 6.3.9): a name holding one
# could not be listed by itself.
_WILDCARDS = re.compile("[%*]")


def mailbox_name_error(name: str, delimiter: str = DELIMITER) -> str | None:
    """Why the server refuses a mailbox with this (decoded) name, or None if it may exist.

    The text suits a tagged NO [CANNOT] (RFC 5530 3) and never repeats the name.
    One trailing delimiter is allowed: CREATE "a/" declares that "a" will have
    children (RFC 9051 6.3.4); the caller drops it, as for any command.
    """
    if not name:
        return "Mailbox name is empty"
    if _FORBIDDEN.search(name):
        return "Mailbox name has a control character or is not valid Unicode"
    if len(name.encode()) > MAX_NAME_OCTETS:
        return f"Mailbox name is longer than {MAX_NAME_OCTETS} octets"
    if _WILDCARDS.search(name):
        return "Mailbox name has a LIST wildcard (% or *)"
    if name.startswith(delimiter):
        return f"Mailbox name starts with the hierarchy delimiter {delimiter}"
    levels = name.removesuffix(delimiter).split(delimiter)
    if len(levels) > MAX_LEVELS:
        return f"Mailbox name has more than {MAX_LEVELS} levels"
    for level in levels:
        if not level:
            return f"Mailbox name has an empty level ({delimiter}{delimiter})"
        if level in (".", ".."):
            return "Mailbox name has a . or .. level"
        if len(level.encode()) > MAX_LEVEL_OCTETS:
            return f"Mailbox name has a level longer than {MAX_LEVEL_OCTETS} octets"
    return None
