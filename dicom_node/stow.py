"""Forwarding results to a DICOMweb archive by STOW-RS (PS3.18 10.5): one multipart/related POST per study.

A DICOMweb destination is the service's base URL (e.g. ``https://pacs.example.org/dicom-web``); the node
POSTs ``{url}/studies`` with one ``application/dicom`` part per object, authenticating with HTTP basic
credentials or a bearer token, over TLS verified against ``ca_file`` (or the system's CAs) for ``https``
URLs. Any answer other than 200 (every instance stored), and any instance listed in the response's Failed
SOP Sequence, is a failed attempt: :class:`dicom_node.scu.Forwarder` retries it with the same back-off and
dead letters as a C-STORE destination.
"""

from __future__ import annotations

import base64
import logging
import ssl
import uuid
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pydicom
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dicom_node.tls import TlsVersion

__all__ = ["DicomWebTarget", "WebAuth", "check_url", "send_stow", "stow_body"]

logger = logging.getLogger(__name__)

_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: HTTP statuses that say the credentials were refused, with what to check.
_AUTH_HINTS = {
    401: "the credentials were refused (HTTP 401 Unauthorized): check auth (username/password or token)",
    403: "the request was forbidden (HTTP 403 Forbidden): the credentials lack the right to store",
}


def check_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL with a host; else :class:`ValueError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a DICOMweb url must be http:// or https:// with a host; got {url!r}")
    return url.rstrip("/")


class WebAuth(BaseModel):
    """How the node authenticates to a DICOMweb destination."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(None, description="bearer token (e.g. an OAuth 2 access token)")

    @model_validator(mode="after")
    def _complete(self) -> WebAuth:
        if self.kind == "basic" and (not self.username or self.password is None):
            raise ValueError("auth kind 'basic' needs username and password")
        if self.kind == "bearer" and self.token is None:
            raise ValueError("auth kind 'bearer' needs token")
        return self

    def header(self) -> dict[str, str]:
        """The Authorization header (none for ``kind: none``)."""
        if self.kind == "basic" and self.username and self.password is not None:
            pair = f"{self.username}:{self.password.get_secret_value()}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if self.kind == "bearer" and self.token is not None:
            return {"Authorization": f"Bearer {self.token.get_secret_value()}"}
        return {}


class DicomWebTarget(BaseModel):
    """A DICOMweb (STOW-RS) destination: base URL, authentication and TLS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="DICOMweb base URL; results are POSTed to {url}/studies")
    auth: WebAuth = Field(default_factory=WebAuth)
    ca_file: Path | None = Field(None, description="CAs that sign the server's certificate (PEM); default: system")
    certificate: Path | None = Field(None, description="client certificate for mutual TLS (PEM)")
    private_key: Path | None = None
    min_version: TlsVersion = "1.2"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_url(v)

    @model_validator(mode="after")
    def _pair(self) -> DicomWebTarget:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both certificate and private_key for a DICOMweb destination, or neither")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def ssl_context(self) -> ssl.SSLContext:
        """The client context: the server's certificate and name verified, TLS ``min_version`` or newer."""
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot read trusted CA certificates from {self.ca_file} (PEM expected): {exc}") from exc
        ctx.minimum_version = _VERSIONS[self.min_version]
        if self.certificate is not None:
            try:
                ctx.load_cert_chain(str(self.certificate), str(self.private_key))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load the client certificate {self.certificate}: {exc}") from exc
        return ctx


def stow_body(datasets: Sequence[pydicom.Dataset], boundary: str) -> bytes:
    """The multipart/related body: one ``application/dicom`` part per dataset (Part 10 file bytes)."""
    out = BytesIO()
    for ds in datasets:
        part = BytesIO()
        ds.save_as(part, enforce_file_format=True)
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        out.write(part.getvalue())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode("ascii"))
    return out.getvalue()


def _failed_instances(answer: Any) -> list[str]:
    """``uid (reason 0xNNNN)`` for each entry of the response's Failed SOP Sequence."""
    if not isinstance(answer, dict):
        return []
    failed = answer.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
    out = []
    for item in failed if isinstance(failed, list) else []:
        uid = (item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value") or ["?"])[0]
        reason = (item.get(_FAILURE_REASON, {}).get("Value") or [None])[0]
        out.append(f"{uid} (reason 0x{int(reason):04X})" if isinstance(reason, int) else str(uid))
    return out


def send_stow(
    datasets: Sequence[pydicom.Dataset],
    target: DicomWebTarget,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """STOW-RS ``datasets`` (one study) to ``target`` in one request.

    ``ssl_context``: for an https URL (default: :meth:`DicomWebTarget.ssl_context`, made now).

    Raises
    ------
    ConnectionError
        When the server cannot be reached, TLS fails, the credentials are refused, the answer is not 200,
        or any instance is reported failed; the message names the URL and the reason.
    """
    url = f"{target.url}/studies"
    boundary = uuid.uuid4().hex
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        **target.auth.header(),
    }
    body = stow_body(datasets, boundary)
    verify: ssl.SSLContext | bool = (ssl_context or target.ssl_context()) if target.tls else True
    try:
        with httpx.Client(timeout=timeout, verify=verify) as http:
            response = http.post(url, content=body, headers=headers)
    except httpx.ConnectError as exc:
        text = str(exc).lower()
        reason = "TLS handshake failed" if "ssl" in text or "certificate" in text else "cannot connect"
        raise ConnectionError(f"STOW-RS to {url}: {reason} ({exc})") from exc
    except httpx.HTTPError as exc:
        raise ConnectionError(f"STOW-RS to {url} failed: {exc}") from exc
    if response.status_code in _AUTH_HINTS:
        raise ConnectionError(f"STOW-RS to {url}: {_AUTH_HINTS[response.status_code]}")
    try:
        answer = response.json() if response.content else None
    except ValueError:
        answer = None
    failed = _failed_instances(answer)
    if response.status_code != 200 or failed:
        detail = f"; failed instances: {', '.join(failed[:5])}" if failed else f": {response.text[:200]!r}"
        raise ConnectionError(f"STOW-RS to {url} answered HTTP {response.status_code}{detail}")
    logger.debug("STOW-RS stored %d instances at %s", len(datasets), url)
