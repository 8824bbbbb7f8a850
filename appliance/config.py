"""Settings of one box, read from DATA/appliance.toml.

The file holds the machine's settings; domains, accounts and mail live in the
store. Every limit and timeout has a named default here that is safe for a
box on the internet; the file only needs what differs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from appliance.files import replace_file
from appliance.imap.protocol import Limits as ImapLimits
from appliance.login import LoginSettings
from appliance.pop3.protocol import Limits as Pop3Limits
from appliance.smtp.client import Timeouts as ClientTimeouts
from appliance.smtp.protocol import Limits
from appliance.store import StoreSettings
from appliance.update.settings import UpdateSettings

CONFIG_NAME = "appliance.toml"
# The settings may name secrets (a relay password): readable by the service
# and root alone.
CONFIG_MODE = 0o600
DEFAULT_DATA_DIR = "./var"

# Where a device listens when appliance.toml has no [listen] table.
DEVICE_LISTEN = {
    "smtp": "0.0.0.0:25",
    "submission": "0.0.0.0:587",
    "submissions": "0.0.0.0:465",
    "imap": "0.0.0.0:143",
    "imaps": "0.0.0.0:993",
    "pop3": "0.0.0.0:110",
    "pop3s": "0.0.0.0:995",
    "http": "0.0.0.0:80",  # the setup page, then a redirect to https
    "https": "0.0.0.0:443",  # admin pages, autoconfig, the MTA-STS policy
}

# `serve --dev`: loopback only, unprivileged ports (DESIGN.md).
DEV_PORTS = {
    "smtp": 2525,
    "submission": 2587,
    "submissions": 2465,
    "imap": 2143,
    "imaps": 2993,
    "pop3": 2110,
    "pop3s": 2995,
    "http": 8080,
    "https": 8443,
}


# SIGTERM lets sessions in the middle of a transaction finish this long:
# enough for a large message on a slow link to end, short enough for a reboot.
DEFAULT_SHUTDOWN_GRACE = 20.0


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    limits: Limits = field(default_factory=Limits)
    # RFC 5321 4.5.3.2.7: a server waits at least 5 minutes for a command.
    # It is also the time allowed to finish sending one command line, so a
    # client that trickles bytes cannot hold a session open forever.
    command_timeout: float = 300.0
    # RFC 5321 4.5.3.2.5-6 ask for 3 and 10 minutes around data blocks; a
    # message must arrive within this plus its size at min_data_rate.
    data_timeout: float = 300.0
    min_data_rate: float = 500.0  # bytes per second, as Postfix's smtpd_min_data_rate
    max_connections: int = 200
    # One address may not take every slot (Postfix's anvil default is 50).
    max_connections_per_client: int = 20
    # Plus-addressing: user+tag@domain reaches user@domain.
    recipient_delimiter: str = "+"
    # SPF, DKIM and DMARC on mail arriving on port 25, with their verdict in
    # an Authentication-Results field (DNS through [resolver]).
    checks: bool = True
    # ARC sealers (RFC 8617) whose word the owner takes, by the d= of their
    # ARC-Seal, e.g. ["lists.example.org"]: a message failing DMARC with an
    # intact ARC chain last sealed by one of them is delivered, not refused
    # (RFC 7489 7.2.1 trusted_forwarder). Empty: ARC is recorded, never trusted.
    arc_trusted_sealers: tuple[str, ...] = ()
    # -- abuse of port 25 (the smtp listener; submission has AUTH instead) --
    # Seconds of silence before the greeting; a client that talks first is a
    # bot that does not wait for it, refused with 521 (Postfix postscreen's
    # pregreet test). Senders wait 5 minutes for a greeting (RFC 5321
    # 4.5.3.2.1); most bots talk at once, so one second catches them and
    # costs each delivery only that second. 0: no delay, no pregreet test.
    greet_delay: float = 1.0
    # Loopback clients (local tools on the box) skip the greeting delay,
    # DNSBL, reverse DNS and the per-address limits below, as postscreen
    # exempts mynetworks; tests set it false to be treated as strangers.
    abuse_exempt_loopback: bool = True
    # MAIL commands per client address (an IPv6 one's /64) per minute; past
    # it 450 4.7.1 at MAIL and the session goes on, as Postfix's
    # smtpd_client_message_rate_limit (counted by anvil per 60 s). 0: no limit.
    max_messages_per_minute: int = 120
    # Unknown recipients (550 5.1.1) from one address within this window:
    # past unknown_recipient_delay_after, each 550 waits unknown_recipient_delay
    # seconds longer than the one before (up to max_unknown_recipient_delay);
    # past max_unknown_recipients (Postfix's smtpd_hard_error_limit is 20 per
    # session), 421 4.7.0, and the address gets 421 at connect for the cooldown.
    unknown_recipient_window: float = 600.0
    unknown_recipient_delay_after: int = 5
    unknown_recipient_delay: float = 1.0
    max_unknown_recipient_delay: float = 10.0
    max_unknown_recipients: int = 20
    unknown_recipient_cooldown: float = 600.0
    # Addresses remembered for those limits; past this the longest untouched
    # are forgotten, so a flood from many addresses cannot grow memory.
    max_tracked_clients: int = 10_000
    # DNS blocklist zones (RFC 5782), e.g. ["zen.spamhaus.org"]: a listed
    # client gets 554 5.7.1 in place of the greeting. Off by default: the
    # big lists refuse queries through public resolvers and charge busy users.
    dnsbl: tuple[str, ...] = ()
    # The client's reverse DNS name, checked forward (FCrDNS), in Received:.
    fcrdns: bool = True
    # One client's DNSBL and FCrDNS lookups take at most this (through
    # [resolver]); a DNSBL can hold the greeting back this long at most.
    client_lookup_timeout: float = 5.0

    def __post_init__(self) -> None:
        # A string would be taken for a list of one-letter domains.
        if isinstance(self.arc_trusted_sealers, str):
            raise ValueError("smtp.arc_trusted_sealers: expected a list of domains")
        sealers = tuple(str(d).strip().rstrip(".").lower() for d in self.arc_trusted_sealers)
        object.__setattr__(self, "arc_trusted_sealers", sealers)


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    limits: Pop3Limits = field(default_factory=Pop3Limits)
    # RFC 1939 3: an autologout timer of at least 10 minutes.
    idle_timeout: float = 600.0
    # From connect to a successful login, however busy the client keeps the
    # line: a client that never logs in does not hold a connection slot.
    login_timeout: float = 120.0
    # Passwords travel only over TLS, but a connection that cannot leave the
    # machine (a loopback listener) may log in in clear text, as Dovecot's
    # disable_plaintext_auth allows for local connections.
    plaintext_login_on_loopback: bool = True
    max_connections: int = 200
    max_connections_per_client: int = 20
    # RETR and TOP are read from the store in pieces of this size, each in its
    # own short read transaction, and written with the peer's flow control.
    read_chunk: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class ImapSettings:
    limits: ImapLimits = field(default_factory=ImapLimits)
    # RFC 9051 5.4: an inactivity autologout timer of at least 30 minutes.
    idle_timeout: float = 1800.0
    login_timeout: float = 120.0  # as for POP3
    # A literal longer than this is read from the store and written in pieces
    # of this size, each in a short read transaction (as POP3's read_chunk).
    read_chunk: int = 256 * 1024
    # As for POP3: clear-text logins only where the connection cannot leave the machine.
    plaintext_login_on_loopback: bool = True
    max_connections: int = 200
    max_connections_per_client: int = 20


DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    """The [resolver] table of appliance.toml."""

    # "host:port" of recursive resolvers, tried in order; "[::1]:53" for IPv6,
    # a bare address means port 53. Empty: the nameservers of /etc/resolv.conf.
    nameservers: tuple[str, ...] = ()
    # One try at one nameserver. RFC 1123 6.1.3.3 asks for 2-5 seconds between
    # retransmissions; a loopback resolver that is still recursing answers the
    # retry from its cache.
    query_timeout: float = 3.0
    # One lookup, all tries and nameservers together. A message whose lookup
    # takes longer is deferred and retried with the queue, not held up here.
    lookup_timeout: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.nameservers, str):
            raise ValueError("resolver.nameservers: expected a list of host:port")
        object.__setattr__(self, "nameservers", tuple(self.nameservers))
        for value in self.nameservers:
            parse_nameserver(value)
        if not (self.query_timeout > 0 and self.lookup_timeout > 0):
            raise ValueError("resolver: query_timeout and lookup_timeout must be positive")


def parse_nameserver(value: str) -> tuple[str, int]:
    """'127.0.0.1:5300', '[::1]:53', '::1' or '192.0.2.53' as (address, port)."""
    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text)), DNS_PORT  # bare IPv4 or IPv6
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        address = ""
    if not sep or not address or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"resolver.nameservers: expected an IP address:port, got {value!r}")
    return address, int(port)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The [queue] table: how outbound mail is tried and given up on."""

    # Seconds before the 1st, 2nd ... retry; the last repeats (hourly) until
    # max_age. Short at first, for greylisting (RFC 6647 suggests 1-5 minutes).
    retry_delays: tuple[float, ...] = (60, 300, 900, 1800, 3600)
    # RFC 5321 4.5.4.1: give up after at least 4-5 days.
    max_age: float = 5 * 24 * 3600
    # Deliveries under way at once (each an SMTP connection out).
    concurrency: int = 10
    # Due messages for one domain share a connection, up to this many
    # (RSET between them; Postfix's default destination limit is 50 too).
    messages_per_connection: int = 50
    # A message is read from the store in pieces of this size as it is sent.
    read_chunk: int = 256 * 1024
    # The port of MX hosts (RFC 5321: 25); tests point it at their own peer.
    mx_port: int = 25
    # With nothing due, the queue is looked at again after this anyway (an
    # entry the CLI retried from another process).
    idle_recheck: float = 30.0
    # Seconds the SMTP client waits for each reply (RFC 5321 4.5.3.2), and
    # for a connection; in [queue] as greeting = 300, rcpt = 300 and so on.
    timeouts: ClientTimeouts = field(default_factory=ClientTimeouts)
    connect_timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_delays", tuple(float(d) for d in self.retry_delays))
        if not self.retry_delays or min(self.retry_delays) <= 0:
            raise ValueError("queue.retry_delays: positive seconds, at least one")
        if self.concurrency < 1 or self.max_age <= 0 or not 0 < self.mx_port < 65536:
            raise ValueError("queue: concurrency, max_age and mx_port must be positive")

    def delay_after(self, attempts: int) -> float:
        """Seconds between the attempts-th try and the next."""
        return self.retry_delays[min(attempts, len(self.retry_delays)) - 1]


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """The [relay] table: all outbound mail goes to this host instead of by MX."""

    host: str
    port: int = 587
    tls: str = "starttls"  # "starttls" | "tls" | "none"
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        if self.tls not in ("starttls", "tls", "none"):
            raise ValueError('relay.tls: "starttls", "tls" or "none"')
        if not 0 < self.port < 65536 or not self.host:
            raise ValueError("relay: a host and a port are needed")


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The [web] table: the setup, admin and status pages."""

    # A session ends after this long without a request, and after max_age in
    # any case, so a browser left open on a shared computer does not stay in.
    session_idle_timeout: float = 1800.0
    session_max_age: float = 12 * 3600.0
    # Wrong setup codes before the code is replaced by a new one (printed on
    # the console again): with the per-address delay of [login], a guesser on
    # the LAN gets this many tries at 60 random bits, then starts over.
    setup_code_attempts: int = 20
    # The box's public addresses, for the A/AAAA and PTR records the DNS page
    # asks for; behind NAT the box cannot see them itself.
    public_addresses: tuple[str, ...] = ()
    # RFC 8461 5: "testing" until the box has a certificate other servers
    # trust; "enforce" then makes senders refuse to deliver without TLS.
    mta_sts_mode: str = "testing"
    # The self-test proves outbound port 25 open by reaching this domain's MX.
    selftest_probe_domain: str = "gmail.com"
    selftest_step_timeout: float = 15.0
    # A form larger than this is refused with 413 ...
    max_request_size: int = 1 << 20
    # ... but a message written in webmail may carry attachments up to this
    # (spooled to temporary files as they arrive, never held in memory).
    max_upload_size: int = 25 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_addresses", tuple(self.public_addresses))
        for address in self.public_addresses:
            ipaddress.ip_address(address)
        if self.mta_sts_mode not in ("testing", "enforce", "none"):
            raise ValueError('web.mta_sts_mode: "testing", "enforce" or "none"')
        if self.session_idle_timeout <= 0 or self.session_max_age <= 0:
            raise ValueError("web: session timeouts must be positive")


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """The [filter] table: a spam filter asked about each message arriving on port 25."""

    # rspamd's normal worker, e.g. "http://127.0.0.1:11333"; "": no filter.
    rspamd: str = ""
    # Seconds for rspamd's answer; past it the message is delivered marked
    # unchecked. Above rspamd's own task_timeout (8 s), so a scan slowed by
    # its DNS lookups still answers.
    timeout: float = 12.0

    def __post_init__(self) -> None:
        if self.rspamd and not re.fullmatch(r"https?://[^/\s]+/?", self.rspamd):
            raise ValueError(f"filter.rspamd: expected http://host:port, got {self.rspamd!r}")
        if not self.timeout > 0:
            raise ValueError("filter.timeout must be positive")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    hostname: str
    listen: dict[str, tuple[str, int]]
    dev: bool = False
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    pop3: Pop3Settings = field(default_factory=Pop3Settings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    login: LoginSettings = field(default_factory=LoginSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    resolver: ResolverSettings = field(default_factory=ResolverSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    relay: RelaySettings | None = None
    web: WebSettings = field(default_factory=WebSettings)
    update: UpdateSettings = field(default_factory=UpdateSettings)
    filter: FilterSettings = field(default_factory=FilterSettings)
    tls_certificate: Path | None = None  # None: a self-signed one under data_dir/tls
    tls_key: Path | None = None
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE


def data_dir_from(option: str | None) -> Path:
    return Path(option or os.environ.get("APPLIANCE_DATA") or DEFAULT_DATA_DIR)


def parse_host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen.{name}: expected host:port, got {value!r}")
    host = host.removeprefix("[").removesuffix("]")  # "[::1]:25"
    return host or "0.0.0.0", int(port)


def _section(cls, table: dict, name: str, **fixed):
    known = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"unknown setting {name}.{sorted(unknown)[0]}")
    try:
        return cls(**table, **fixed)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: {error}") from None


def _protocol_section(cls, limits_cls, document: dict, name: str, nested: str = "limits"):
    """A protocol's [name] table: its core's limits and its session's settings side by side."""
    table = dict(document.pop(name, {}))
    limit_names = {f.name for f in dataclasses.fields(limits_cls)}
    limits = _section(limits_cls, {k: table.pop(k) for k in list(table) if k in limit_names}, name)
    return _section(cls, table, name, **{nested: limits})


def load(data_dir: Path, dev: bool = False) -> Settings:
    """Read DATA/appliance.toml (absent is fine: all defaults) into Settings."""
    path = data_dir / CONFIG_NAME
    try:
        document = tomllib.loads(path.read_text()) if path.exists() else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    smtp = _protocol_section(SmtpSettings, Limits, document, "smtp")
    pop3 = _protocol_section(Pop3Settings, Pop3Limits, document, "pop3")
    imap = _protocol_section(ImapSettings, ImapLimits, document, "imap")
    login = _section(LoginSettings, dict(document.pop("login", {})), "login")
    store = _section(StoreSettings, dict(document.pop("store", {})), "store")
    resolver = _section(ResolverSettings, dict(document.pop("resolver", {})), "resolver")
    queue = _protocol_section(QueueSettings, ClientTimeouts, document, "queue", "timeouts")
    web = _section(WebSettings, dict(document.pop("web", {})), "web")
    update = _section(UpdateSettings, dict(document.pop("update", {})), "update")
    filter_ = _section(FilterSettings, dict(document.pop("filter", {})), "filter")
    relay_table = document.pop("relay", None)
    relay = None if relay_table is None else _section(RelaySettings, dict(relay_table), "relay")
    tls = dict(document.pop("tls", {}))
    if set(tls) - {"certificate", "key"}:
        raise ConfigError(f"unknown setting tls.{sorted(set(tls) - {'certificate', 'key'})[0]}")
    listen_table = document.pop("listen", None)
    hostname = document.pop("hostname", None) or socket.getfqdn()
    shutdown_grace = float(document.pop("shutdown_grace", DEFAULT_SHUTDOWN_GRACE))
    if document:
        raise ConfigError(f"{path}: unknown setting {sorted(document)[0]}")
    if dev:
        listen = {name: ("127.0.0.1", port) for name, port in DEV_PORTS.items()}
        if listen_table:
            listen.update({n: parse_host_port(v, n) for n, v in listen_table.items()})
    else:
        table = DEVICE_LISTEN if listen_table is None else listen_table
        listen = {name: parse_host_port(value, name) for name, value in table.items()}
    return Settings(
        data_dir=data_dir,
        hostname=hostname,
        listen=listen,
        dev=dev,
        smtp=smtp,
        pop3=pop3,
        imap=imap,
        login=login,
        store=store,
        resolver=resolver,
        queue=queue,
        relay=relay,
        web=web,
        update=update,
        filter=filter_,
        tls_certificate=_data_path(data_dir, tls.pop("certificate", None)),
        tls_key=_data_path(data_dir, tls.pop("key", None)),
        shutdown_grace=shutdown_grace,
    )


def set_hostname(data_dir: Path, hostname: str) -> None:
    """Write `hostname = ...` into appliance.toml, keeping every other line.

    The file is the owner's: comments and settings stay as they were. The
    top-level key is replaced where it is, or put first; the new file is
    written beside the old one and renamed over it, so a crash leaves one or
    the other, never half of each.
    """
    path = data_dir / CONFIG_NAME
    lines = path.read_text().splitlines() if path.exists() else []
    entry = f"hostname = {_toml_string(hostname)}"
    for index, line in enumerate(lines):
        if line.lstrip().startswith("["):
            break  # past the top-level keys
        if line.split("=", 1)[0].strip() == "hostname":
            lines[index] = entry
            break
    else:
        lines.insert(0, entry)
    replace_file(path, ("\n".join(lines) + "\n").encode(), CONFIG_MODE)


def _toml_string(value: str) -> str:
    if any(c in value for c in '"\\\r\n') or not value.isprintable():
        raise ConfigError(f"not a host name: {value!r}")
    return f'"{value}"'


def _data_path(data_dir: Path, value: str | None) -> Path | None:
    return None if value is None else data_dir / value
