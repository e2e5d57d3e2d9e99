"""Development and test certificates for DICOM TLS: a test CA, a server and a client certificate.

For trying TLS out and for tests only: a hospital installs certificates from its own CA (see
docs/security.md). Keys are EC P-256 (allowed by BCP 195), certificates valid for ``days`` days.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCertificates", "make_dev_certificates"]


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the PEM files written by :func:`make_dev_certificates`."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool,
    usage: tuple[x509.ObjectIdentifier, ...] = (),
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_dev_certificates(
    out: Path,
    *,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    client_name: str = "fairnode-dev-client",
    days: int = 365,
    organisation: str = "fairnode development (not for clinical use)",
) -> DevCertificates:
    """Write a test CA, a node (server) certificate for ``hosts`` and a client certificate into ``out``.

    The node certificate serves both ways (TLS server and client usage), as one node certificate does.

    Files: ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``, ``client.pem``, ``client.key`` (keys
    unencrypted, mode 0600). Existing files of those names are overwritten.
    """
    if not hosts:
        raise ValueError("hosts must name at least one DNS name or IP address for the server certificate")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    out.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca_name = _name("fairnode development CA", organisation)
    ca = _issue(ca_name, ca_key, ca_name, ca_key, days, ca=True)
    server = _issue(
        _name(hosts[0], organisation),
        server_key,
        ca_name,
        ca_key,
        days,
        ca=False,
        usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),  # the node also calls out
        hosts=hosts,
    )
    client = _issue(
        _name(client_name, organisation),
        client_key,
        ca_name,
        ca_key,
        days,
        ca=False,
        usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    paths = DevCertificates(
        ca_certificate=out / "ca.pem",
        ca_key=out / "ca.key",
        server_certificate=out / "server.pem",
        server_key=out / "server.key",
        client_certificate=out / "client.pem",
        client_key=out / "client.key",
    )
    for cert, path in (
        (ca, paths.ca_certificate),
        (server, paths.server_certificate),
        (client, paths.client_certificate),
    ):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for key, path in ((ca_key, paths.ca_key), (server_key, paths.server_key), (client_key, paths.client_key)):
        _write_key(path, key)
    return paths
