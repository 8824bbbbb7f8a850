"""Client autoconfiguration documents, read back as a client would read them."""

import contextlib
import plistlib
import uuid
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import load
from appliance.web.autoconfig import (
    MAX_AUTODISCOVER_REQUEST,
    STARTTLS,
    TLS,
    BadAutodiscoverRequest,
    ClientPorts,
    ClientSetting,
    NoClientListener,
    apple_mobileconfig,
    autodiscover_response,
    client_ports,
    client_settings,
    thunderbird_config,
)

HOST = "mail.example.com"
DEVICE = ClientPorts(imaps=993, imap=143, pop3s=995, pop3=110, submissions=465, submission=587)
DEV = ClientPorts(imaps=2993, imap=2143, pop3s=2995, pop3=2110, submissions=2465, submission=2587)
HOSTILE = "x<y>&\"z'.example"

REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def outlook_request(address: str = "ann@example.com", namespace: str = REQUEST_NS) -> bytes:
    """What Outlook POSTs to /autodiscover/autodiscover.xml."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        f'<Autodiscover xmlns="{namespace}">\r\n'
        "  <Request>\r\n"
        f"    <EMailAddress>{address}</EMailAddress>\r\n"
        f"    <AcceptableResponseSchema>{OUTLOOK_NS}</AcceptableResponseSchema>\r\n"
        "  </Request>\r\n"
        "</Autodiscover>\r\n"
    ).encode()


# -- ports and the settings page ------------------------------------------------


def test_dev_ports_come_from_the_dev_listeners(tmp_path):
    assert client_ports(load(tmp_path, dev=True).listen) == DEV


def test_device_ports_come_from_the_device_listeners(tmp_path):
    assert client_ports(load(tmp_path).listen) == DEVICE


def test_a_listener_not_served_has_no_port(tmp_path):
    (tmp_path / "appliance.toml").write_text(
        '[listen]\nsmtp = "0.0.0.0:25"\nimaps = "0.0.0.0:10993"\nsubmission = "[::]:1587"\n'
    )
    assert client_ports(load(tmp_path).listen) == ClientPorts(imaps=10993, submission=1587)


def test_settings_page_rows_put_tls_before_starttls():
    rows = client_settings("ann@example.com", HOST, DEV)
    assert [(r.protocol, r.port, r.security) for r in rows] == [
        ("IMAP", 2993, TLS),
        ("IMAP", 2143, STARTTLS),
        ("POP3", 2995, TLS),
        ("POP3", 2110, STARTTLS),
        ("SMTP", 2465, TLS),
        ("SMTP", 2587, STARTTLS),
    ]
    assert {(r.server, r.username) for r in rows} == {(HOST, "ann@example.com")}


def test_settings_page_shows_only_what_is_served():
    rows = client_settings("ann@example.com", HOST, ClientPorts(imap=143, submissions=465))
    assert rows == [
        ClientSetting("IMAP", HOST, 143, STARTTLS, "ann@example.com"),
        ClientSetting("SMTP", HOST, 465, TLS, "ann@example.com"),
    ]


# -- Thunderbird ----------------------------------------------------------------


def thunderbird_servers(document: bytes, kind: str) -> list[tuple[str, str, int, str, str, str]]:
    provider = ET.fromstring(document).find("emailProvider")
    return [
        (
            server.get("type"),
            server.findtext("hostname"),
            int(server.findtext("port")),
            server.findtext("socketType"),
            server.findtext("username"),
            server.findtext("authentication"),
        )
        for server in provider.findall(kind)
    ]


def test_thunderbird_config_lists_every_way_in_with_the_dev_ports():
    document = thunderbird_config(HOST, "example.com", DEV)
    root = ET.fromstring(document)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider.get("id") == "example.com"
    assert provider.findtext("domain") == "example.com"
    login = ("%EMAILADDRESS%", "password-cleartext")
    assert thunderbird_servers(document, "incomingServer") == [
        ("imap", HOST, 2993, "SSL", *login),
        ("imap", HOST, 2143, "STARTTLS", *login),
        ("pop3", HOST, 2995, "SSL", *login),
        ("pop3", HOST, 2110, "STARTTLS", *login),
    ]
    assert thunderbird_servers(document, "outgoingServer") == [
        ("smtp", HOST, 2465, "SSL", *login),
        ("smtp", HOST, 2587, "STARTTLS", *login),
    ]


def test_thunderbird_config_leaves_out_listeners_not_served():
    document = thunderbird_config(HOST, "example.com", ClientPorts(imaps=993, submission=587))
    assert [s[:4] for s in thunderbird_servers(document, "incomingServer")] == [
        ("imap", HOST, 993, "SSL")
    ]
    assert [s[:4] for s in thunderbird_servers(document, "outgoingServer")] == [
        ("smtp", HOST, 587, "STARTTLS")
    ]


def test_thunderbird_config_keeps_markup_in_names_as_text():
    document = thunderbird_config(HOST + HOSTILE, HOSTILE, DEV)
    assert b"<y>" not in document
    provider = ET.fromstring(document).find("emailProvider")
    assert provider.get("id") == HOSTILE and provider.findtext("domain") == HOSTILE
    assert {s[1] for s in thunderbird_servers(document, "incomingServer")} == {HOST + HOSTILE}


@pytest.mark.parametrize(
    "ports", [ClientPorts(imaps=993), ClientPorts(submissions=465), ClientPorts()]
)
def test_thunderbird_config_needs_a_way_to_read_and_to_send(ports):
    with pytest.raises(NoClientListener):
        thunderbird_config(HOST, "example.com", ports)


# -- Outlook autodiscover -------------------------------------------------------


def autodiscover_protocols(document: bytes) -> tuple[ET.Element, list[dict[str, str]]]:
    root = ET.fromstring(document)
    assert root.tag == f"{{{RESPONSE_NS}}}Autodiscover"
    account = root.find(f"{{{OUTLOOK_NS}}}Response/{{{OUTLOOK_NS}}}Account")
    protocols = [
        {child.tag.removeprefix(f"{{{OUTLOOK_NS}}}"): child.text for child in protocol}
        for protocol in account.findall(f"{{{OUTLOOK_NS}}}Protocol")
    ]
    return account, protocols


def test_autodiscover_answers_an_outlook_request_with_imap_and_smtp_over_tls():
    document = autodiscover_response(outlook_request("Ann@example.com"), HOST, DEV)
    account, protocols = autodiscover_protocols(document)
    assert account.findtext(f"{{{OUTLOOK_NS}}}AccountType") == "email"
    assert account.findtext(f"{{{OUTLOOK_NS}}}Action") == "settings"
    wanted = ("Type", "Server", "Port", "SSL", "Encryption", "LoginName")
    assert [tuple(p[name] for name in wanted) for p in protocols] == [
        ("IMAP", HOST, "2993", "on", "SSL", "Ann@example.com"),
        ("SMTP", HOST, "2465", "on", "SSL", "Ann@example.com"),
    ]


def test_autodiscover_falls_back_to_starttls_ports():
    ports = ClientPorts(imap=143, submission=587)
    _, protocols = autodiscover_protocols(autodiscover_response(outlook_request(), HOST, ports))
    assert [(p["Type"], p["Port"], p["Encryption"]) for p in protocols] == [
        ("IMAP", "143", "TLS"),
        ("SMTP", "587", "TLS"),
    ]


def test_autodiscover_accepts_the_https_spelling_and_no_schema_element():
    request = outlook_request(namespace=REQUEST_NS.replace("http:", "https:"))
    assert b"ann@example.com" in autodiscover_response(request, HOST, DEV)
    bare = (
        f'<Autodiscover xmlns="{REQUEST_NS}"><Request>'
        "<EMailAddress>ann@example.com</EMailAddress></Request></Autodiscover>"
    ).encode()
    assert b"ann@example.com" in autodiscover_response(bare, HOST, DEV)


def test_autodiscover_keeps_markup_in_the_host_name_as_text():
    document = autodiscover_response(outlook_request(), HOSTILE, DEV)
    assert b"<y>" not in document
    _, protocols = autodiscover_protocols(document)
    assert {p["Server"] for p in protocols} == {HOSTILE}


def test_autodiscover_needs_imap_and_smtp():
    with pytest.raises(NoClientListener):
        autodiscover_response(outlook_request(), HOST, ClientPorts(pop3s=995, submissions=465))


# lol9 expands to 10**9 "lol"s: each entity is ten of the one before.
_LOL_ENTITIES = "".join(f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10))
BILLION_LAUGHS = (
    f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{_LOL_ENTITIES}]>'
    f'<Autodiscover xmlns="{REQUEST_NS}"><Request>'
    "<EMailAddress>&lol9;@example.com</EMailAddress></Request></Autodiscover>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY who SYSTEM "file:///etc/passwd">]>'
    f'<Autodiscover xmlns="{REQUEST_NS}"><Request>'
    "<EMailAddress>&who;</EMailAddress></Request></Autodiscover>"
)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(EXTERNAL_ENTITY, id="external-entity"),
        pytest.param(EXTERNAL_ENTITY.replace("DOCTYPE", "doctype"), id="lower-case"),
        pytest.param(
            EXTERNAL_ENTITY.replace('"1.0"?>', '"1.0" encoding="UTF-16"?>'),
            id="declared-utf-16",
        ),
    ],
)
def test_autodiscover_refuses_a_document_type_before_parsing(body):
    with pytest.raises(BadAutodiscoverRequest, match="document type"):
        autodiscover_response(body.encode(), HOST, DEV)


@pytest.mark.parametrize(
    "body",
    [
        # A byte search for "<!DOCTYPE" would not see it in UTF-16.
        pytest.param(
            EXTERNAL_ENTITY.replace('"1.0"?>', '"1.0" encoding="UTF-16"?>').encode("utf-16"),
            id="utf-16-doctype",
        ),
        pytest.param(
            outlook_request("a" * 60 + "@example.com").ljust(MAX_AUTODISCOVER_REQUEST + 1, b" "),
            id="oversize",
        ),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf-8"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="not-xml"),
        pytest.param(b"<Autodiscover><Request>", id="unclosed"),
        pytest.param(outlook_request(namespace="urn:other"), id="other-namespace"),
        pytest.param(
            outlook_request().replace(b"<EMailAddress>ann@example.com</EMailAddress>", b""),
            id="no-address",
        ),
        pytest.param(outlook_request(""), id="empty-address"),
        pytest.param(outlook_request("not an address"), id="bad-address"),
        pytest.param(
            outlook_request().replace(b"<Request>", b"<Request><LegacyDN>/o=x</LegacyDN>"),
            id="unexpected-element",
        ),
        pytest.param(
            outlook_request().replace(
                b"<Request>", b"<Request><EMailAddress>eve@example.com</EMailAddress>"
            ),
            id="two-addresses",
        ),
        pytest.param(
            outlook_request().replace(b"</Request>", b"</Request><Request/>"), id="two-requests"
        ),
        pytest.param(
            outlook_request().replace(
                b"outlook/responseschema/2006a", b"mobilesync/responseschema/2006"
            ),
            id="activesync-schema",
        ),
    ],
)
def test_autodiscover_refuses_what_is_not_a_request_for_an_address(body):
    with pytest.raises(BadAutodiscoverRequest):
        autodiscover_response(body, HOST, DEV)


def test_bad_autodiscover_request_is_a_value_error():
    assert issubclass(BadAutodiscoverRequest, ValueError)


# Bytes of any kind, and requests whose address is any text (markup included).
_ANY_BODY = st.one_of(
    st.binary(max_size=MAX_AUTODISCOVER_REQUEST + 8),
    st.text(max_size=200).map(lambda text: outlook_request(text)),
)


@settings(max_examples=300, deadline=None)
@given(_ANY_BODY)
def test_autodiscover_raises_nothing_but_bad_request_on_any_body(body):
    with contextlib.suppress(BadAutodiscoverRequest):
        autodiscover_response(body, HOST, DEV)


# -- Apple configuration profile -----------------------------------------------


def test_apple_profile_adds_an_imap_account_over_tls_without_a_password():
    profile = plistlib.loads(apple_mobileconfig("ann@example.com", HOST, DEV, "Ann Example"))
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    assert profile["PayloadIdentifier"].startswith("com.example.mail.")
    (account,) = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert account["PayloadIdentifier"].startswith(profile["PayloadIdentifier"] + ".")
    assert account["EmailAccountType"] == "EmailTypeIMAP"
    assert account["EmailAddress"] == "ann@example.com"
    assert account["EmailAccountName"] == "Ann Example"
    for direction, port in (("Incoming", 2993), ("Outgoing", 2465)):
        assert account[f"{direction}MailServerHostName"] == HOST
        assert account[f"{direction}MailServerPortNumber"] == port
        assert account[f"{direction}MailServerUseSSL"] is True
        assert account[f"{direction}MailServerAuthentication"] == "EmailAuthPassword"
        assert account[f"{direction}MailServerUsername"] == "ann@example.com"
    assert not {"IncomingPassword", "OutgoingPassword"} & set(account)


def test_apple_profile_uuids_are_fresh_and_its_identifier_stable():
    first = plistlib.loads(apple_mobileconfig("ann@example.com", HOST, DEV))
    second = plistlib.loads(apple_mobileconfig("Ann@Example.com", HOST, DEV))
    uuids = [p["PayloadUUID"] for p in (first, second, *first["PayloadContent"])]
    assert len(set(uuids)) == 3
    assert {uuid.UUID(u).version for u in uuids} == {4}
    assert first["PayloadIdentifier"] == second["PayloadIdentifier"]
    other = plistlib.loads(apple_mobileconfig("bob@example.com", HOST, DEV))
    assert other["PayloadIdentifier"] != first["PayloadIdentifier"]
    assert "EmailAccountName" not in first["PayloadContent"][0]


def test_apple_profile_keeps_markup_in_names_as_text():
    address = 'ann<b>&"@example.com'
    document = apple_mobileconfig(address, HOST, DEV, display_name=HOSTILE)
    assert b"<b>" not in document and b"<y>" not in document
    (account,) = plistlib.loads(document)["PayloadContent"]
    assert account["EmailAddress"] == address and account["EmailAccountName"] == HOSTILE


@pytest.mark.parametrize(
    "ports", [ClientPorts(imap=143, submissions=465), ClientPorts(imaps=993, submission=587)]
)
def test_apple_profile_needs_the_implicit_tls_listeners(ports):
    with pytest.raises(NoClientListener):
        apple_mobileconfig("ann@example.com", HOST, ports)
