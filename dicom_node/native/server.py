"""The native receiver's listening socket: accepts connections and serves each in its own thread."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from dicom_node import tls
from dicom_node.guards import AssociationGuard, DiskGuard, StoreGuards
from dicom_node.native.association import NativeAssociation
from dicom_node.scp_settings import ScpSettings
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

__all__ = ["NativeServer"]

#: connections beyond ``max_associations`` that may wait for their negotiation (then closed at once)
_BACKLOG_SLACK = 16


class NativeServer:
    """``start()`` binds and accepts in a background thread; ``stop()`` closes the port and every connection."""

    def __init__(self, settings: ScpSettings, spool: Spool, tls_settings: tls.TlsSettings | None = None):
        self.settings = settings
        self.spool = spool
        self.tls = tls_settings if tls_settings is not None and tls_settings.enabled else None
        self.ssl_context = tls.server_context(self.tls) if self.tls is not None else None
        self.handshake_timeout = self.tls.handshake_timeout_seconds if self.tls is not None else 10.0
        self.disk = DiskGuard(spool.root, settings.min_free_disk_mb)
        self.association_guard = AssociationGuard(
            self.disk, settings.max_associations, settings.guards.max_associations_per_ae
        )
        self.store_guards = StoreGuards(self.disk, settings.guards, spool.pending_count, spool.has_study)
        mb = settings.guards.max_instance_mb
        self.max_instance_bytes = int(mb * 1e6) if mb else 1 << 62
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._live: set[NativeAssociation] = set()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the DICOM server is not started")
        return int(self._listener.getsockname()[1])

    def admitted(self) -> int:
        """Associations admitted and not yet ended."""
        return self.association_guard.held()

    def start(self) -> None:
        self._listener = socket.create_server((self.settings.bind, self.settings.port), backlog=128, reuse_port=False)
        self._thread = threading.Thread(target=self._accept_loop, args=(self._listener,), name="dicom-scp", daemon=True)
        self._thread.start()
        logger.info(
            "DICOM SCP %s listening on %s:%d (native receiver)", self.settings.ae_title, self.settings.bind, self.port
        )

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except OSError:  # the listener was closed by stop()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                crowded = len(self._live) >= self.settings.max_associations + _BACKLOG_SLACK
            if crowded:
                logger.warning("connection from %s closed: %d connections open", address[0], len(self._live))
                sock.close()
                continue
            if self.ssl_context is not None:
                sock = tls.wrap_accepted(self.ssl_context, sock)
            assoc = NativeAssociation(self, sock, address)
            with self._lock:
                self._live.add(assoc)
            threading.Thread(target=self._serve, args=(assoc,), name=f"dicom-assoc-{address[0]}", daemon=True).start()

    def _serve(self, assoc: NativeAssociation) -> None:
        try:
            assoc.run()
        finally:
            with self._lock:
                self._live.discard(assoc)

    def stop(self) -> None:
        """Close the port, then end every open association (their threads close their sockets)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            live = list(self._live)
        for assoc in live:
            assoc.shutdown()
        self.spool.settle(timeout=30)  # what was answered is written and indexed (else replayed at restart)
