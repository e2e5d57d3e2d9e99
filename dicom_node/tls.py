"""DICOM TLS (PS3.15 Annex B, BCP 195 TLS secure transport connection profile) for the SCP and the SCU.

TLS 1.2 or newer only, the BCP 195 (RFC 9325) cipher suites for TLS 1.2 (ECDHE/DHE with AES-GCM or
ChaCha20-Poly1305; OpenSSL's TLS 1.3 suites are all allowed by it), certificates verified against the
configured CAs. The SCP asks for a client certificate (``required``: a client without a trusted one is
refused; ``optional``: verified when sent; ``none``). A handshake that fails (a plain DICOM connection to
the TLS port, an untrusted or missing certificate, an old protocol) is logged with its reason and recorded
on the audit trail as a Security Alert, and the connection is closed; no association is made.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from dicom_node import audit_messages, audit_trail

__all__ = [
    "BCP195_CIPHERS",
    "DestinationTls",
    "TlsSettings",
    "client_context",
    "handshake",
    "server_context",
    "wrap_accepted",
]

logger = logging.getLogger(__name__)

#: TLS 1.2 cipher suites BCP 195 (RFC 9325 section 4.2) recommends, in OpenSSL names.
BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)

TlsVersion = Literal["1.2", "1.3"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsSettings(BaseModel):
    """TLS of the node's DICOM port (when ``enabled``, the port speaks TLS only)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    certificate: Path | None = Field(None, description="the node's certificate chain (PEM)")
    private_key: Path | None = Field(None, description="its private key (PEM)")
    private_key_password: SecretStr | None = None
    ca_file: Path | None = Field(None, description="CAs whose client certificates are trusted (PEM)")
    client_certificates: Literal["required", "optional", "none"] = "required"
    min_version: TlsVersion = "1.2"
    ciphers: str = BCP195_CIPHERS
    handshake_timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if not self.enabled:
            return self
        missing = [n for n in ("certificate", "private_key") if getattr(self, n) is None]
        if self.client_certificates != "none" and self.ca_file is None:
            missing.append("ca_file (needed to verify client certificates; or client_certificates: none)")
        if missing:
            raise ValueError(f"tls.enabled needs {', '.join(missing)}")
        return self


class DestinationTls(BaseModel):
    """TLS towards one destination: whom to trust and which certificate to show."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path = Field(description="CAs that sign the destination's certificate (PEM)")
    certificate: Path | None = Field(None, description="client certificate; default: the node's tls.certificate")
    private_key: Path | None = None
    server_name: str | None = Field(None, description="name expected in its certificate; default: host")
    min_version: TlsVersion = "1.2"
    ciphers: str = BCP195_CIPHERS

    @model_validator(mode="after")
    def _pair(self) -> DestinationTls:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both certificate and private_key for a destination, or neither")
        return self


def _base(purpose: ssl.Purpose, min_version: TlsVersion, ciphers: str, cafile: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[min_version]
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise ValueError(f"no usable cipher suite in {ciphers!r}: {exc}") from exc
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if cafile is not None:
        try:
            ctx.load_verify_locations(cafile=str(cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot read trusted CA certificates from {cafile} (PEM expected): {exc}") from exc
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path | None, password: str | None) -> None:
    try:
        ctx.load_cert_chain(str(cert), str(key) if key else None, password=password)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot load the certificate {cert} with the key {key} (PEM, key matching the certificate, "
            f"password if the key is encrypted): {exc}"
        ) from exc


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The SCP's context from ``settings`` (files are read now: a bad path or key fails here, at start)."""
    if settings.certificate is None or settings.private_key is None:
        raise ValueError("the SCP's TLS needs certificate and private_key")
    ctx = _base(ssl.Purpose.CLIENT_AUTH, settings.min_version, settings.ciphers, settings.ca_file)
    password = settings.private_key_password.get_secret_value() if settings.private_key_password else None
    _load_chain(ctx, settings.certificate, settings.private_key, password)
    ctx.verify_mode = {
        "required": ssl.CERT_REQUIRED,
        "optional": ssl.CERT_OPTIONAL,
        "none": ssl.CERT_NONE,
    }[settings.client_certificates]
    return ctx


def client_context(dest: DestinationTls, own: TlsSettings | None = None) -> ssl.SSLContext:
    """The SCU's context for one destination: verify its certificate (and name), show ours if we have one."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, dest.min_version, dest.ciphers, dest.ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    cert, key, password = dest.certificate, dest.private_key, None
    if cert is None and own is not None and own.certificate is not None:
        cert, key = own.certificate, own.private_key
        password = own.private_key_password.get_secret_value() if own.private_key_password else None
    if cert is not None:
        _load_chain(ctx, cert, key, password)
    return ctx


def wrap_accepted(ctx: ssl.SSLContext, sock: socket.socket) -> ssl.SSLSocket:
    """Wrap an accepted socket without handshaking yet (the handshake runs in the connection's thread)."""
    return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def _reason(exc: BaseException) -> str:
    verify = getattr(exc, "verify_message", None)
    text = str(getattr(exc, "reason", None) or exc)
    lowered = f"{text} {exc}".lower().replace("_", " ")
    if verify:
        return f"client certificate not trusted ({verify})"
    if "wrong version number" in lowered or "http request" in lowered or "unknown protocol" in lowered:
        return f"not a TLS connection or an old protocol version ({text})"
    if "peer did not return a certificate" in lowered:
        return "the client sent no certificate and one is required"
    if "unsupported protocol" in lowered or "version too low" in lowered:
        return f"protocol version below TLS 1.2 ({text})"
    if "no shared cipher" in lowered:
        return f"no BCP 195 cipher suite in common ({text})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the timeout"
    return text


def handshake(sock: ssl.SSLSocket, address: object, node: str, timeout: float) -> bool:
    """Complete the server side TLS handshake; on failure log, audit, close and return False."""
    peer = address[0] if isinstance(address, tuple) else str(address)
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
        sock.settimeout(None)
    except (OSError, ValueError) as exc:
        reason = _reason(exc)
        logger.warning("TLS connection from %s refused: %s", peer, reason)
        audit_trail.record(audit_messages.node_authentication_failure(address=str(peer), node=node, reason=reason))
        try:
            sock.close()
        except OSError as close_exc:
            logger.debug("closing the refused connection from %s: %s", peer, close_exc)
        return False
    names = [
        str(pair[1]) for rdn in (sock.getpeercert() or {}).get("subject", ()) for pair in rdn if pair[0] == "commonName"
    ]
    logger.info(
        "TLS %s with %s (%s)%s",
        sock.version(),
        peer,
        (sock.cipher() or ("?",))[0],
        f", client certificate {names[0]!r}" if names else "",
    )
    return True
