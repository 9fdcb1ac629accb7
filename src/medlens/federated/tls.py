"""Certificates for trying federation out: a self-signed CA and a server certificate it signs.

For real hospitals use certificates from your organisation's CA (docs/guide/federated.md, Security): pass them
with ``medlens fl server --certfile/--keyfile/--ca-certfile`` and give sites the CA with ``--root-certificates``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from medlens._files import write_bytes_atomic


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA sites trust, the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def local_certificates(folder: Path, hosts: list[str]) -> Certificates:
    """Reuse or write ``ca.pem``, ``server.pem`` and ``server.key`` in ``folder`` for ``hosts``.

    Args:
        folder: where the files live (kept, so sites keep trusting the same CA across server restarts).
        hosts: names and IP addresses the server is reached at (the certificate's subject alternative names).

    Returns:
        The three paths.
    """
    folder = Path(folder)
    files = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    if all(path.exists() for path in (files.ca, files.cert, files.key)):
        return files
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medlens federation local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [_san(host) for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"])]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_bytes_atomic(files.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    files.key.chmod(0o600)
    write_bytes_atomic(files.cert, cert.public_bytes(pem))
    write_bytes_atomic(files.ca, ca.public_bytes(pem))
    return files


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
