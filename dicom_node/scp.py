"""The DICOM SCP: C-ECHO and C-STORE into the durable spool.

The C-STORE handler is short on purpose: guard (disk, UIDs, truncated pixel data), write the encoded
bytes atomically to the spool, index them, return a status. No pixel decoding, no inference and no
network happen inside it. Dependencies are bound to the handlers (``evt_handlers``), never global.

Association policy: calling AE titles on an allow-list (empty list: any), the called AE title checked,
and the resource guards of :mod:`dicom_node.guards`: caps on concurrent associations (global and per
calling AE) and the disk watermark reject new associations (transient, local limit exceeded); on open
associations, the watermark, the instance size limit, the per-AE rate limit and the backlog bound answer
stores with the Out of Resources statuses named in :class:`~dicom_node.status.StoreStatus`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import cast

from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import tls
from dicom_node.guards import AssociationGuard, DiskGuard, StoreGuards
from dicom_node.native import NativeServer
from dicom_node.presentation import NATIVE_SYNTAXES, STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from dicom_node.scp_audit import association_handlers
from dicom_node.scp_settings import Receiver, ScpSettings
from dicom_node.spool import Spool
from dicom_node.status import EchoStatus
from dicom_node.store_handling import StoreRequest, store_instance

logger = logging.getLogger(__name__)

__all__ = [
    "NATIVE_SYNTAXES",
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "VERIFICATION",
    "DicomServer",
    "PynetdicomServer",
    "Receiver",
    "ScpSettings",
    "handle_echo",
    "handle_store",
]


def handle_echo(event: Event) -> int:
    logger.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
    return int(EchoStatus.SUCCESS)


def handle_store(event: Event, spool: Spool, guards: StoreGuards) -> int:
    """C-STORE: :func:`dicom_node.store_handling.store_instance` on the encoded dataset (its statuses)."""
    request = event.request
    if not isinstance(request, C_STORE):
        raise TypeError(f"handle_store got a {type(request).__name__} request")
    raw = request.DataSet.getvalue() if request.DataSet is not None else b""
    received = StoreRequest(
        sop_class_uid=str(request.AffectedSOPClassUID or ""),
        sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
        transfer_syntax=str(event.context.transfer_syntax),
        dataset=raw,
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
    )
    return int(store_instance(received, spool, guards, event.encoded_dataset))


class _NoDelayServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket (small PDUs otherwise wait ~40 ms).

    With TLS, the handshake runs in the connection's own thread (:func:`dicom_node.tls.handshake`), so a
    slow or hostile client cannot hold up the accepting thread; a failed handshake is logged and closed.
    """

    handshake_timeout: float = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = cast(socket.socket, self.socket).accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            sock = tls.wrap_accepted(self.ssl_context, sock)
        return sock, address

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int] | str
    ) -> None:
        if isinstance(request, ssl.SSLSocket) and not tls.handshake(
            request, client_address, self.ae.ae_title, self.handshake_timeout
        ):
            return
        super().process_request_thread(request, client_address)


class PynetdicomServer:
    """The SCP on pynetdicom. ``start()`` binds and serves in a background thread; ``stop()`` shuts it down."""

    def __init__(self, settings: ScpSettings, spool: Spool, tls_settings: tls.TlsSettings | None = None):
        self.settings = settings
        self.spool = spool
        self.tls = tls_settings if tls_settings is not None and tls_settings.enabled else None
        self.ssl_context = tls.server_context(self.tls) if self.tls is not None else None
        self.disk = DiskGuard(spool.root, settings.min_free_disk_mb)
        self.association_guard = AssociationGuard(
            self.disk, settings.max_associations, settings.guards.max_associations_per_ae
        )
        self.store_guards = StoreGuards(self.disk, settings.guards, spool.pending_count, spool.has_study)
        ae = AE(ae_title=settings.ae_title)
        # the guard rejects first, with its reason logged; pynetdicom's own cap stays as a backstop above it
        ae.maximum_associations = settings.max_associations + 4
        ae.require_calling_aet = list(settings.allowed_calling_aes)
        ae.require_called_aet = settings.require_called_ae
        ae.maximum_pdu_size = settings.max_pdu_bytes
        ae.add_supported_context(VERIFICATION)
        for sop in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop, list(TRANSFER_SYNTAXES))
        self.ae = ae
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the DICOM server is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[
            tuple[evt.EventType, Callable[..., object]] | tuple[evt.EventType, Callable[..., object], list[object]]
        ]
        handlers = [
            (evt.EVT_REQUESTED, self.association_guard.on_requested),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.spool, self.store_guards]),
            *association_handlers(),  # audit trail: associations accepted and rejected
        ]
        server = self.ae.make_server(
            (self.settings.bind, self.settings.port),
            evt_handlers=handlers,
            server_class=_NoDelayServer,
            ssl_context=self.ssl_context,
        )
        if isinstance(server, _NoDelayServer) and self.tls is not None:
            server.handshake_timeout = self.tls.handshake_timeout_seconds
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        self._thread.start()
        self.ae._servers.append(server)  # as AE.start_server does, so that AE.shutdown() stops it
        logger.info(
            "DICOM SCP %s listening on %s:%d (pynetdicom receiver)",
            self.settings.ae_title,
            self.settings.bind,
            self.port,
        )

    def stop(self) -> None:
        self.ae.shutdown()  # stops the server, closes its socket and aborts open associations
        self._server = None

    def admitted(self) -> int:
        """Associations admitted by the guard and not yet ended."""
        return sum(1 for a in self.ae.active_associations if getattr(a, AssociationGuard.MARK, False))


class DicomServer:
    """The node's SCP, served by the receiver ``settings.receiver`` names (:class:`NativeServer` or
    :class:`PynetdicomServer`); both apply the same policy, guards, TLS, audit trail and store handling."""

    def __init__(self, settings: ScpSettings, spool: Spool, tls_settings: tls.TlsSettings | None = None):
        self.settings = settings
        self.spool = spool
        self.receiver: NativeServer | PynetdicomServer = (
            NativeServer(settings, spool, tls_settings)
            if settings.receiver == "native"
            else PynetdicomServer(settings, spool, tls_settings)
        )
        self.disk = self.receiver.disk

    @property
    def port(self) -> int:
        return self.receiver.port

    def admitted(self) -> int:
        """Associations admitted and not yet ended."""
        return self.receiver.admitted()

    def start(self) -> None:
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()
