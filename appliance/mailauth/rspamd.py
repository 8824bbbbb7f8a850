"""The optional spam filter: rspamd asked about each message over its HTTP protocol.

`RspamdClient(url, timeout, hostname).check(message, envelope)` POSTs the
message to rspamd's /checkv2 with the envelope in the request headers rspamd
reads (IP, Helo, Hostname, From, one Rcpt per recipient, MTA-Name) and
returns a FilterResult: rspamd's action, its score, its text for the SMTP
reply. The actions (rspamd's "actions" setting) are:

  reject           the message is spam: refuse it
  soft reject      refuse it for now (rate limits and the like): 4xx
  greylist         likewise, for greylisting
  rewrite subject  likely spam: to Junk (we do not rewrite the subject)
  add header       likewise
  no action        not spam

rspamd down, refusing the connection, answering with an error or something
that is not its JSON, or slower than the timeout: FilterResult.checked is
False and the message goes on as if there were no filter, marked unchecked
(`head_fields`). The filter never costs a message.

Each check opens its own connection: rspamd runs on the box or next to it,
where a connection costs less than keeping a pool that the service would
have to close on every reload.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import aiohttp

log = logging.getLogger(__name__)

REJECT = "reject"
SOFT_REJECT = "soft reject"
GREYLIST = "greylist"
REWRITE_SUBJECT = "rewrite subject"
ADD_HEADER = "add header"
NO_ACTION = "no action"
ACTIONS = (REJECT, SOFT_REJECT, GREYLIST, REWRITE_SUBJECT, ADD_HEADER, NO_ACTION)
SPAM_ACTIONS = (REWRITE_SUBJECT, ADD_HEADER)  # delivered, to Junk

CHECK_PATH = "/checkv2"
# rspamd's own text for the SMTP reply is cut to this (one reply line, RFC 5321 4.5.3.1.5).
MAX_REPLY_TEXT = 200


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP transaction of one message, as rspamd wants to know it."""

    client_ip: str
    helo: str
    sender: str  # MAIL FROM, "" for the null reverse-path
    recipients: tuple[str, ...]
    client_name: str = ""  # the client's FCrDNS-verified name, "" if it has none


@dataclass(frozen=True, slots=True)
class FilterResult:
    """rspamd's answer, or why there is none."""

    action: str = ""  # one of ACTIONS; "" when unchecked
    score: float = 0.0
    required_score: float = 0.0  # rspamd's score for reject
    text: str = ""  # rspamd's smtp_message, for the reply
    error: str = ""  # why the message is unchecked; "" when checked

    @property
    def checked(self) -> bool:
        return not self.error


class RspamdClient:
    """rspamd's normal worker at url (http://host:port), asked with a bounded wait."""

    def __init__(self, url: str, timeout: float, hostname: str) -> None:
        self._url = url.rstrip("/") + CHECK_PATH
        self._timeout = timeout
        self._hostname = hostname

    async def check(self, message: bytes | bytearray, envelope: Envelope) -> FilterResult:
        """rspamd's verdict on message; a FilterResult with error set when it has none."""
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._post(message, envelope)
        except TimeoutError:
            return self._unchecked(envelope, f"no answer in {self._timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as error:
            return self._unchecked(envelope, f"{type(error).__name__}: {error}")
        result = _result(answer)
        if not result.checked:
            return self._unchecked(envelope, result.error)
        log.info(
            "rspamd client=%s action=%s score=%.2f required=%.2f",
            envelope.client_ip,
            result.action.replace(" ", "-"),
            result.score,
            result.required_score,
        )
        return result

    async def _post(self, message: bytes | bytearray, envelope: Envelope) -> object:
        async with (
            aiohttp.ClientSession() as session,
            session.post(self._url, data=message, headers=self._headers(envelope)) as response,
        ):
            if response.status != 200:
                raise ValueError(f"HTTP status {response.status}")
            return await response.json(content_type=None)

    def _headers(self, envelope: Envelope) -> list[tuple[str, str]]:
        """rspamd's request headers (its protocol documentation); repeated Rcpt."""
        headers = [("IP", envelope.client_ip), ("From", envelope.sender or "<>")]
        if envelope.helo:
            headers.append(("Helo", envelope.helo))
        if envelope.client_name:
            headers.append(("Hostname", envelope.client_name))
        headers += [("Rcpt", recipient) for recipient in envelope.recipients]
        headers.append(("MTA-Name", self._hostname))
        return headers

    def _unchecked(self, envelope: Envelope, error: str) -> FilterResult:
        log.warning(
            "rspamd unavailable client=%s url=%s error=%s", envelope.client_ip, self._url, error
        )
        return FilterResult(error=error)


def _result(answer: object) -> FilterResult:
    """The FilterResult of rspamd's JSON answer; error set for one we cannot read."""
    if not isinstance(answer, dict):
        return FilterResult(error="the answer is not a JSON object")
    action = answer.get("action")
    if action not in ACTIONS:
        return FilterResult(error=f"unknown action {str(action)[:40]!r}")
    messages = answer.get("messages")
    text = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    return FilterResult(
        action=action,
        score=_number(answer.get("score")),
        required_score=_number(answer.get("required_score")),
        text=re.sub(r"[^\x20-\x7e]", " ", str(text))[:MAX_REPLY_TEXT].strip(),
    )


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def head_fields(result: FilterResult) -> bytes:
    """The fields that tell the reader what the filter said, to go in front of
    the message: X-Spam-Checked always, and X-Spam: Yes (rspamd's own field,
    which mail clients' filters know) for spam that is delivered."""
    if not result.checked:
        return b"X-Spam-Checked: no (filter unavailable)\r\n"
    score = f"score {result.score:.2f} of {result.required_score:.2f}"
    fields = f"X-Spam-Checked: yes (rspamd: {result.action}, {score})\r\n"
    if result.action in SPAM_ACTIONS:
        fields += "X-Spam: Yes\r\n"
    return fields.encode("ascii")
