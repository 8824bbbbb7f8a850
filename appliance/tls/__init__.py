"""TLS: the box's certificate and the server contexts built from it."""

from __future__ import annotations

import datetime
import logging
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.files import replace_file

log = logging.getLogger(__name__)


def self_signed_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"


def uploaded_paths(data_dir: Path) -> tuple[Path, Path]:
    """Where a certificate and key the owner uploaded are kept."""
    return data_dir / "tls" / "uploaded-cert.pem", data_dir / "tls" / "uploaded-key.pem"


def write_private(path: Path, data: bytes) -> None:
    """Write a key or certificate readable by the service alone, replacing any
    old one in one rename, so a crash leaves the old file or the new one."""
    replace_file(path, data, 0o600)


def ensure_self_signed(data_dir: Path, hostname: str) -> tuple[Path, Path]:
    """The self-signed certificate and key under data_dir/tls, made if absent
    or made for another host name (the owner named the box at setup)."""
    cert_path, key_path = self_signed_paths(data_dir)
    made_for = cert_path.with_name("self-signed-for")
    # A certificate from before the name was kept is taken as it is.
    same_name = not made_for.exists() or made_for.read_text().strip() == hostname
    if cert_path.exists() and key_path.exists() and same_name:
        return cert_path, key_path
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "appliance.tls.selfsigned", str(cert_path), str(key_path)]
    made = subprocess.run([*command, hostname], capture_output=True, text=True)
    if made.returncode != 0:
        raise OSError(f"making a self-signed certificate failed: {made.stderr.strip()}")
    made_for.write_text(hostname + "\n")
    log.info("tls self-signed certificate made hostname=%s path=%s", hostname, cert_path)
    return cert_path, key_path


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 deprecates TLS 1.0 and 1.1.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    subject: str  # the common name, or the whole name without one
    issuer: str
    self_signed: bool
    not_after: datetime.datetime

    def __str__(self) -> str:
        issued = "self-signed" if self.self_signed else f"issued by {self.issuer}"
        return f"certificate {self.subject}, {issued}, expires {self.not_after:%Y-%m-%d}"


def summarize(der: bytes) -> CertificateSummary:
    """Who a certificate names, who issued it, and until when (for people to read)."""
    # Loaded only here: the X.509 parser weighs 8 MB, and only the status
    # page and the self-test need it.
    from cryptography import x509

    certificate = x509.load_der_x509_certificate(der)
    return CertificateSummary(
        subject=_common_name(certificate.subject),
        issuer=_common_name(certificate.issuer),
        self_signed=certificate.issuer == certificate.subject,
        not_after=certificate.not_valid_after_utc,
    )


def summarize_file(path: Path) -> CertificateSummary:
    """The first certificate of a PEM file (the server's own, before its chain)."""
    return summarize(ssl.PEM_cert_to_DER_cert(path.read_text()))


def _common_name(name) -> str:
    from cryptography.x509.oid import NameOID

    names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else name.rfc4514_string()
