"""TLS: the box's certificate and the server contexts built from it."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def self_signed_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"


def ensure_self_signed(data_dir: Path, hostname: str) -> tuple[Path, Path]:
    """The self-signed certificate and key under data_dir/tls, made if absent."""
    cert_path, key_path = self_signed_paths(data_dir)
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "appliance.tls.selfsigned", str(cert_path), str(key_path)]
    made = subprocess.run([*command, hostname], capture_output=True, text=True)
    if made.returncode != 0:
        raise OSError(f"making a self-signed certificate failed: {made.stderr.strip()}")
    log.info("tls self-signed certificate made hostname=%s path=%s", hostname, cert_path)
    return cert_path, key_path


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 deprecates TLS 1.0 and 1.1.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context
