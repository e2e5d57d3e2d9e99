"""The security audit trail: DICOM audit messages to an append-only local log and, optionally, to syslog.

Every message goes first to the local log (one ``AuditMessage`` per line, appended, never rewritten;
rotated by size into ``audit.log.1`` ... ``audit.log.N``), then, when a collector is configured, to syslog
as RFC 5424 messages (MSGID ``IHE+RFC-3881``) over TLS (RFC 5425, octet-counted frames) or UDP (RFC 5426)
from a background thread, so a slow or absent collector never holds up the node.

Use from any package::

    from dicom_node import audit_messages as am, audit_trail
    audit_trail.record(am.user_authentication(user="alice", ok=False, address="10.0.0.9"))

:func:`record` writes to the trail :func:`configure` installed (the node installs one at start); with no
trail configured it only logs at DEBUG, so libraries and tests can call it freely.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

from pydantic import BaseModel, ConfigDict, Field

from dicom_node.audit_messages import AuditEvent, AuditSource, to_xml

__all__ = ["AuditTrail", "AuditTrailSettings", "configure", "configured", "read_log", "record"]

logger = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10  # RFC 5424 facility for security/authorization messages (IHE ITI-20)
SEVERITY_NOTICE = 5
SYSLOG_MSGID = "IHE+RFC-3881"


class AuditTrailSettings(BaseModel):
    """Where audit messages go."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    log_file: Path | None = Field(None, description="default: <data_dir>/audit/audit.log")
    max_bytes: int = Field(10 * 1024 * 1024, ge=4096, description="rotate the local log at this size")
    backup_count: int = Field(50, ge=1, description="rotated files kept")
    source_id: str | None = Field(None, description="AuditSourceID; default: the node's AE title")
    site_id: str | None = Field(None, description="AuditEnterpriseSiteID")
    syslog_host: str | None = Field(None, description="audit record repository; none: local log only")
    syslog_port: int = Field(6514, ge=1, le=65535)
    syslog_transport: Literal["tls", "udp"] = "tls"
    syslog_ca_file: Path | None = Field(None, description="CAs that sign the collector's certificate")
    syslog_certificate: Path | None = Field(None, description="this node's client certificate (PEM), if asked")
    syslog_private_key: Path | None = None
    queue_size: int = Field(10000, ge=1)


class _SyslogSender:
    """Sends RFC 5424 frames from a bounded queue in a daemon thread (reconnecting TLS as needed)."""

    def __init__(self, settings: AuditTrailSettings, app_name: str):
        if settings.syslog_host is None:
            raise ValueError("syslog_host is required to send audit messages to syslog")
        self.settings = settings
        self.app_name = app_name.replace(" ", "_")[:48] or "fairnode"
        self.hostname = socket.gethostname() or "-"
        self._queue: queue.Queue[bytes | None] = queue.Queue(settings.queue_size)
        self._sock: socket.socket | None = None
        self._context: ssl.SSLContext | None = None
        if settings.syslog_transport == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.syslog_ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.syslog_certificate is not None:
                ctx.load_cert_chain(settings.syslog_certificate, settings.syslog_private_key)
            self._context = ctx
        self._thread = threading.Thread(target=self._loop, name="audit-syslog", daemon=True)
        self._thread.start()

    def frame(self, xml: bytes, when: datetime) -> bytes:
        stamp = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        pri = FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE
        header = f"<{pri}>1 {stamp} {self.hostname} {self.app_name} {os.getpid()} {SYSLOG_MSGID} - "
        return header.encode("ascii") + b"\xef\xbb\xbf" + xml

    def put(self, message: bytes) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            logger.error("audit syslog queue full (%d): message kept in the local log only", self._queue.maxsize)

    def _connect(self) -> socket.socket:
        s = self.settings
        address = (str(s.syslog_host), s.syslog_port)
        if self._context is None:
            sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(address)
            return sock
        raw = socket.create_connection(address, timeout=10)
        return self._context.wrap_socket(raw, server_hostname=address[0])

    def _send(self, message: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self._context is None:
            self._sock.send(message)
        else:
            self._sock.sendall(str(len(message)).encode("ascii") + b" " + message)

    def _loop(self) -> None:
        while True:
            message = self._queue.get()
            try:
                if message is None:
                    return
                try:
                    self._send(message)
                except OSError as exc:
                    self._close_socket()
                    try:  # one reconnect, then the message stays in the local log only
                        self._send(message)
                    except OSError as again:
                        self._close_socket()
                        logger.warning(
                            "audit message not sent to syslog %s:%d (%s; then %s); it is in the local log",
                            self.settings.syslog_host,
                            self.settings.syslog_port,
                            exc,
                            again,
                        )
            finally:
                self._queue.task_done()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._close_socket()


class AuditTrail:
    """Writes audit events to the local log and, if configured, to syslog. Thread-safe."""

    def __init__(self, settings: AuditTrailSettings, log_file: Path, source: AuditSource):
        self.settings = settings
        self.log_file = log_file
        self.source = source
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._syslog = _SyslogSender(settings, source.source_id) if settings.syslog_host else None

    def record(self, event: AuditEvent) -> None:
        """Append the event's message to the local log (then queue it for syslog)."""
        xml = to_xml(event, self.source)
        self._append(xml + b"\n")
        if self._syslog is not None:
            self._syslog.put(self._syslog.frame(xml, event.when))

    def flush(self) -> None:
        """Wait until every queued syslog message has been sent (or given up on)."""
        if self._syslog is not None:
            self._syslog.flush()

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()

    def _append(self, data: bytes) -> None:
        """Append one line (fsynced); rotate first when it would pass ``max_bytes``."""
        with self._lock:
            try:
                size = self.log_file.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.settings.max_bytes:
                self._rotate()
            fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.N (the oldest beyond N is dropped)."""
        n = self.settings.backup_count
        for i in range(n - 1, 0, -1):
            older = self.log_file.with_name(f"{self.log_file.name}.{i}")
            if older.exists():
                older.replace(self.log_file.with_name(f"{self.log_file.name}.{i + 1}"))
        self.log_file.replace(self.log_file.with_name(f"{self.log_file.name}.1"))
        logger.info("audit log %s rotated", self.log_file)


_trail: AuditTrail | None = None


def configure(trail: AuditTrail | None) -> AuditTrail | None:
    """Install ``trail`` as the process's audit trail (None: none); returns the one it replaces."""
    global _trail
    previous, _trail = _trail, trail
    return previous


def configured() -> AuditTrail | None:
    """The installed audit trail, if any."""
    return _trail


def record(event: AuditEvent) -> None:
    """Record ``event`` on the installed audit trail; a failure to write is logged, never raised.

    The caller's work must not fail because the audit log's disk is full; the error is logged at ERROR
    level so monitoring sees it.
    """
    trail = _trail
    if trail is None:
        logger.debug("audit event %s not recorded: no audit trail configured", event.event_id.meaning)
        return
    try:
        trail.record(event)
    except OSError as exc:
        logger.error("audit event %s could not be written to %s: %s", event.event_id.meaning, trail.log_file, exc)


def read_log(log_file: Path) -> Iterator[ET.Element]:
    """The messages of the local log, oldest first (rotated files ``.N`` ... ``.1``, then the current one)."""
    rotated = sorted(
        (p for p in log_file.parent.glob(log_file.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
        reverse=True,
    )
    for path in [*rotated, log_file]:
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield ET.fromstring(line)
