"""Documents that let mail clients configure themselves from an address.

Pure functions, bytes out (and, for autodiscover, bytes in): the web server
routes requests to them. Every document carries the ports the box really
listens on (Settings.listen), so a dev box on 2993 is described as such.

- Thunderbird: Mozilla's autoconfig file, config-v1.1.xml, served at
  autoconfig.DOMAIN/mail/config-v1.1.xml and /.well-known/autoconfig/mail/.
- Outlook (and Thunderbird's fallback): the POX autodiscover exchange,
  [MS-OXDSCLI], a POST of a small XML request answered with the settings.
- Apple devices: an unsigned configuration profile (.mobileconfig) holding an
  IMAP account, without its password.
- The settings page: one row per way in, to be typed into any other client.

Names and addresses come from the owner or from a request, so every document
is built with a serializer (ElementTree, plistlib) that escapes them: a name
holding <, & or " stays text and cannot add markup.
"""

from __future__ import annotations

import dataclasses
import plistlib
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from appliance.addresses import AddressError, normalize_address

# Security of a way in: TLS from the first byte (implicit TLS, RFC 8314), or
# a clear-text connection that the client upgrades with STARTTLS / STLS.
TLS = "TLS"
STARTTLS = "STARTTLS"

# Media types the routes serve the documents with. Apple devices open a
# profile only when it comes as application/x-apple-aspen-config.
XML_CONTENT_TYPE = "application/xml; charset=utf-8"
MOBILECONFIG_CONTENT_TYPE = "application/x-apple-aspen-config"

# A real autodiscover request is an address and a schema name, about 350
# bytes; anything much bigger is not one, and is refused before parsing.
MAX_AUTODISCOVER_REQUEST = 4096

# [MS-OXDSCLI]: the request and response schemas of the
# Outlook ("POX") autodiscover protocol. Microsoft's current documentation
# spells them with https://, which some clients copy, so both spellings of
# the request are accepted; answers use the http:// names clients match on.
_REQUEST_SCHEMAS = tuple(
    f"{scheme}://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
    for scheme in ("http", "https")
)
_OUTLOOK_RESPONSE_SCHEMAS = tuple(
    f"{scheme}://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
    for scheme in ("http", "https")
)
_AUTODISCOVER_RESPONSE_SCHEMA = (
    "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
)

# Mozilla's socketType for each security (wiki.mozilla.org/Thunderbird:Autoconfiguration).
_THUNDERBIRD_SOCKET_TYPES = {TLS: "SSL", STARTTLS: "STARTTLS"}
# What %EMAILADDRESS% stands for: the user logs in with their whole address.
_THUNDERBIRD_USERNAME = "%EMAILADDRESS%"
# [MS-OXDSCLI] Protocol/Encryption: "SSL" is implicit TLS, "TLS" is STARTTLS.
_AUTODISCOVER_ENCRYPTION = {TLS: "SSL", STARTTLS: "TLS"}


class BadAutodiscoverRequest(ValueError):
    """The body is not an Outlook autodiscover request for an address (HTTP 400)."""


class NoClientListener(ValueError):
    """The box serves no listener the document needs (no way to read or to send mail)."""


@dataclass(frozen=True, slots=True)
class ClientPorts:
    """The port of each listener a mail client uses; None where it is not served."""

    imaps: int | None = None
    imap: int | None = None
    pop3s: int | None = None
    pop3: int | None = None
    submissions: int | None = None
    submission: int | None = None


@dataclass(frozen=True, slots=True)
class ClientSetting:
    """One way into the box, as a settings page shows it."""

    protocol: str  # "IMAP" | "POP3" | "SMTP"
    server: str
    port: int
    security: str  # TLS | STARTTLS
    username: str


def client_ports(listen: dict[str, tuple[str, int]]) -> ClientPorts:
    """The client listeners of Settings.listen, by name ("imaps" = (host, port))."""
    names = [field.name for field in dataclasses.fields(ClientPorts)]
    return ClientPorts(**{name: listen[name][1] for name in names if name in listen})


def client_settings(address: str, hostname: str, ports: ClientPorts) -> list[ClientSetting]:
    """Every way in that is served, implicit TLS before STARTTLS (RFC 8314 3 prefers it)."""
    offered = (
        ("IMAP", ports.imaps, TLS),
        ("IMAP", ports.imap, STARTTLS),
        ("POP3", ports.pop3s, TLS),
        ("POP3", ports.pop3, STARTTLS),
        ("SMTP", ports.submissions, TLS),
        ("SMTP", ports.submission, STARTTLS),
    )
    return [
        ClientSetting(protocol, hostname, port, security, address)
        for protocol, port, security in offered
        if port is not None
    ]


def thunderbird_config(hostname: str, domain: str, ports: ClientPorts) -> bytes:
    """Mozilla's config-v1.1.xml for addresses at domain, served by hostname."""
    settings = client_settings(_THUNDERBIRD_USERNAME, hostname, ports)
    _require_reading_and_sending(settings)
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = domain
    ET.SubElement(provider, "displayShortName").text = domain
    for setting in settings:
        if setting.protocol == "SMTP":
            server = ET.SubElement(provider, "outgoingServer", type="smtp")
        else:
            server = ET.SubElement(provider, "incomingServer", type=setting.protocol.lower())
        ET.SubElement(server, "hostname").text = setting.server
        ET.SubElement(server, "port").text = str(setting.port)
        ET.SubElement(server, "socketType").text = _THUNDERBIRD_SOCKET_TYPES[setting.security]
        ET.SubElement(server, "username").text = setting.username
        # The password goes to the server as typed, inside TLS.
        ET.SubElement(server, "authentication").text = "password-cleartext"
    return _xml_document(root)


def autodiscover_response(request_body: bytes, hostname: str, ports: ClientPorts) -> bytes:
    """The POX autodiscover answer to request_body: IMAP and SMTP settings for its address.

    Raises BadAutodiscoverRequest for anything but a well-formed request for
    one valid address, and NoClientListener when IMAP or SMTP is not served.
    """
    address = autodiscover_address(request_body)
    settings = client_settings(address, hostname, ports)
    chosen = [_first(settings, "IMAP"), _first(settings, "SMTP")]
    if None in chosen:
        raise NoClientListener("autodiscover needs an IMAP and an SMTP submission listener")
    root = ET.Element("Autodiscover", xmlns=_AUTODISCOVER_RESPONSE_SCHEMA)
    response = ET.SubElement(root, "Response", xmlns=_OUTLOOK_RESPONSE_SCHEMAS[0])
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    for setting in chosen:
        protocol = ET.SubElement(account, "Protocol")
        ET.SubElement(protocol, "Type").text = setting.protocol
        ET.SubElement(protocol, "Server").text = setting.server
        ET.SubElement(protocol, "Port").text = str(setting.port)
        ET.SubElement(protocol, "LoginName").text = setting.username
        ET.SubElement(protocol, "DomainRequired").text = "off"
        ET.SubElement(protocol, "SPA").text = "off"  # no NTLM: a password inside TLS
        ET.SubElement(protocol, "SSL").text = "on"
        ET.SubElement(protocol, "Encryption").text = _AUTODISCOVER_ENCRYPTION[setting.security]
        ET.SubElement(protocol, "AuthRequired").text = "on"
    return _xml_document(root)


def apple_mobileconfig(
    address: str, hostname: str, ports: ClientPorts, display_name: str = ""
) -> bytes:
    """An unsigned configuration profile adding address as an IMAP account.

    The device asks for the password when the profile is installed. Only the
    implicit TLS listeners are used: the profile's UseSSL means TLS from the
    first byte, so a STARTTLS port cannot be described safely.
    """
    if ports.imaps is None or ports.submissions is None:
        raise NoClientListener("an Apple profile needs the imaps and submissions listeners")
    # The same identifier for the same account on the same box: installing a
    # newer profile replaces the older one, while two accounts stay apart.
    account_id = uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address.strip().lower()}")
    identifier = f"{_reverse_dns(hostname)}.mailaccount.{account_id}"
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.imap",
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": f"Mail account {address}",
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAccountDescription": address,
        "EmailAddress": address,
        "IncomingMailServerHostName": hostname,
        "IncomingMailServerPortNumber": ports.imaps,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": address,
        "OutgoingMailServerHostName": hostname,
        "OutgoingMailServerPortNumber": ports.submissions,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if display_name:
        account["EmailAccountName"] = display_name
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": f"Mail at {hostname}",
        "PayloadDescription": f"Reads and sends mail for {address} through {hostname}.",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def autodiscover_address(body: bytes) -> str:
    """The EMailAddress of an autodiscover request, or BadAutodiscoverRequest."""
    if len(body) > MAX_AUTODISCOVER_REQUEST:
        raise BadAutodiscoverRequest(f"request larger than {MAX_AUTODISCOVER_REQUEST} bytes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadAutodiscoverRequest("request is not UTF-8") from None
    # A request needs no document type. Refusing one before the parser sees
    # it rules out entity expansion (billion laughs) and external entities
    # without a dependency such as defusedxml. Parsing the decoded text, not
    # the bytes, makes expat read UTF-8 whatever encoding the XML declaration
    # names, so a UTF-16 body cannot hide a "<!DOCTYPE" from this check.
    upper = text.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise BadAutodiscoverRequest("document type declarations are refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise BadAutodiscoverRequest(f"not XML: {error}") from None
    namespace = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""
    if namespace not in _REQUEST_SCHEMAS or root.tag != f"{{{namespace}}}Autodiscover":
        raise BadAutodiscoverRequest("not an Outlook autodiscover request")
    if len(root) != 1 or root[0].tag != f"{{{namespace}}}Request":
        raise BadAutodiscoverRequest("expected one Request element")
    fields: dict[str, str] = {}
    for child in root[0]:
        name = child.tag.removeprefix(f"{{{namespace}}}")
        if name not in ("EMailAddress", "AcceptableResponseSchema") or name in fields:
            raise BadAutodiscoverRequest(f"unexpected element {child.tag!r} in Request")
        fields[name] = (child.text or "").strip()
    schema = fields.get("AcceptableResponseSchema")
    if schema is not None and schema not in _OUTLOOK_RESPONSE_SCHEMAS:
        # Mobile (ActiveSync) clients ask for another schema: there is no such service here.
        raise BadAutodiscoverRequest(f"unsupported response schema {schema!r}")
    address = fields.get("EMailAddress", "")
    try:
        normalize_address(address)
    except AddressError:
        raise BadAutodiscoverRequest("EMailAddress is missing or not an address") from None
    return address


def _first(settings: list[ClientSetting], protocol: str) -> ClientSetting | None:
    return next((setting for setting in settings if setting.protocol == protocol), None)


def _require_reading_and_sending(settings: list[ClientSetting]) -> None:
    protocols = {setting.protocol for setting in settings}
    if "SMTP" not in protocols or not protocols & {"IMAP", "POP3"}:
        raise NoClientListener("clients need an IMAP or POP3 listener and a submission one")


def _reverse_dns(hostname: str) -> str:
    """mail.example.com as com.example.mail, the form profile identifiers take."""
    return ".".join(reversed(hostname.strip().rstrip(".").lower().split(".")))


def _xml_document(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
