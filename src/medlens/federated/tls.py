"""Certificates for trying federation out (a self-signed CA and a server certificate it signs), and site keys.

For real hospitals use certificates from your organisation's CA (docs/guide/federated.md, Security): pass them
with ``medlens fl server --certfile/--keyfile/--ca-certfile`` and give sites the CA with ``--root-certificates``.
A site proves who it is with its own key pair (:func:`site_key`, ``medlens fl key``): the server admits only
the sites whose public keys it was given (``--site-keys``; Flower's SuperNode authentication).
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


def site_key(folder: Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair for site ``name``: ``NAME.key`` (private, mode 600: it stays at the site) and
    ``NAME.pub`` (public: give it to the federation's coordinator).

    An elliptic-curve key (NIST P-384) in OpenSSH format, as Flower's SuperNode authentication takes it.

    Raises:
        ConfigError: either file exists already (a site's key is never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from medlens.errors import ConfigError

    folder = Path(folder)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise ConfigError(f"{path} exists already: a site key is never overwritten (the server may know it); "
                                  "choose another --name or --out, or delete the old pair first")
    key = ec.generate_private_key(ec.SECP384R1())
    write_bytes_atomic(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
    private.chmod(0o600)
    write_bytes_atomic(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                             serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def check_site_key(path: Path, *, private: bool) -> None:
    """Refuse a file that is not a site key Flower takes (OpenSSH elliptic-curve key on a NIST curve).

    Raises:
        ConfigError: missing, unreadable, or another kind of key; saying how to make one.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from medlens.errors import ConfigError

    kind = "private" if private else "public"
    how = "make a site's pair with `medlens fl key --name SITE`"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"site {kind} key {path} not found; {how}")
    try:
        data = path.read_bytes()
        key = serialization.load_ssh_private_key(data, None) if private else serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path} is not an OpenSSH {kind} key ({exc}); {how}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or key.curve.name not in (
            "secp256r1", "secp384r1", "secp521r1"):
        raise ConfigError(f"{path} is a {type(key).__name__}, not an elliptic-curve key on a NIST curve, which "
                          f"Flower's site authentication needs; {how}")
