"""appliance.toml: defaults, dev ports, and one clear error per mistake."""

from pathlib import Path

import pytest

from appliance.config import DEV_PORTS, ConfigError, load, parse_host_port


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "appliance.toml").write_text(text)
    return tmp_path


def test_no_file_means_device_defaults(tmp_path):
    settings = load(tmp_path)
    assert settings.listen["smtp"] == ("0.0.0.0", 25)
    assert settings.listen["pop3s"] == ("0.0.0.0", 995)
    assert settings.smtp.limits.max_message_size == 50 * 1024 * 1024
    assert settings.smtp.command_timeout >= 300  # RFC 5321 4.5.3.2.7


def test_dev_mode_is_loopback_on_dev_ports(tmp_path):
    settings = load(tmp_path, dev=True)
    assert settings.listen["smtp"] == ("127.0.0.1", 2525)
    assert {host for host, _ in settings.listen.values()} == {"127.0.0.1"}
    assert {name: port for name, (_, port) in settings.listen.items()} == DEV_PORTS


def test_settings_from_the_file(tmp_path):
    write(
        tmp_path,
        'hostname = "mx.example.org"\n[listen]\nsmtp = "[::1]:2500"\n'
        '[smtp]\nmax_recipients = 50\ndata_timeout = 60\n[tls]\ncertificate = "c.pem"\n'
        'key = "k.pem"\n',
    )
    settings = load(tmp_path)
    assert settings.hostname == "mx.example.org"
    assert settings.listen == {"smtp": ("::1", 2500)}
    assert settings.smtp.limits.max_recipients == 50 and settings.smtp.data_timeout == 60
    assert settings.tls_certificate == tmp_path / "c.pem"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[smtp]\nmax_recipient = 5\n", "unknown setting smtp.max_recipient"),
        ("colour = 1\n", "unknown setting colour"),
        ("[tls]\ncert = 'x'\n", "unknown setting tls.cert"),
        ('[listen]\nsmtp = "127.0.0.1"\n', "listen.smtp: expected host:port"),
        ('[listen]\nsmtp = "127.0.0.1:99999"\n', "listen.smtp: expected host:port"),
        ("this is not toml", "appliance.toml"),
    ],
)
def test_mistakes_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


def test_host_port_forms():
    assert parse_host_port("0.0.0.0:25", "smtp") == ("0.0.0.0", 25)
    assert parse_host_port("[::]:25", "smtp") == ("::", 25)
    assert parse_host_port(":25", "smtp") == ("0.0.0.0", 25)


def test_resolver_nameservers_are_read_and_checked(tmp_path):
    (tmp_path / "appliance.toml").write_text(
        '[resolver]\nnameservers = ["127.0.0.1:5300", "::1"]\n'
    )
    assert load(tmp_path).resolver.nameservers == ("127.0.0.1:5300", "::1")
    (tmp_path / "appliance.toml").write_text('[resolver]\nnameservers = ["dns.example"]\n')
    with pytest.raises(ConfigError, match="resolver"):
        load(tmp_path)
