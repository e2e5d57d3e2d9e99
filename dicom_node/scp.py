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

import errno
import logging
import re
import socket
import sqlite3
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    RLELossless,
    SegmentationStorage,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import tls
from dicom_node.guards import AssociationGuard, DiskGuard, GuardSettings, Refusal, StoreGuards
from dicom_node.scp_audit import association_handlers
from dicom_node.spool import Spool
from dicom_node.status import EchoStatus, StoreStatus

logger = logging.getLogger(__name__)

STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ComputedRadiographyImageStorage,
    SegmentationStorage,
)

TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

VERIFICATION = UID("1.2.840.10008.1.1")

#: a DICOM UID (PS3.5 9.1): numeric components separated by dots, at most 64 characters
_UID = re.compile(r"(?=.{1,64}\Z)[0-9]+(\.[0-9]+)*")

NATIVE_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}


@dataclass(frozen=True)
class ScpSettings:
    """How the SCP listens and whom it accepts."""

    ae_title: str = "FAIRNODE"
    bind: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = field(default_factory=tuple)
    require_called_ae: bool = True
    max_associations: int = 10
    min_free_disk_mb: int = 1024
    max_pdu_bytes: int = 4 * 1024 * 1024
    guards: GuardSettings = field(default_factory=GuardSettings)


def handle_echo(event: Event) -> int:
    logger.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
    return int(EchoStatus.SUCCESS)


def _truncated(ds: Dataset) -> str | None:
    """A reason when native (uncompressed) pixel data is shorter than its header says, else None."""
    pixel = getattr(ds, "PixelData", None)
    if pixel is None:
        return None
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(getattr(ds, "SamplesPerPixel", 1))
            * int(ds.BitsAllocated)
            * int(getattr(ds, "NumberOfFrames", 1) or 1)
            // 8
        )
    except (AttributeError, TypeError, ValueError) as exc:
        return f"image pixel module incomplete: {exc}"
    if len(pixel) < expected:
        return f"pixel data is {len(pixel)} bytes, Rows x Columns x Samples x Bits x Frames needs {expected}"
    return None


def _refuse(refused: tuple[StoreStatus, Refusal], request: C_STORE, calling: str) -> int:
    status, refusal = refused
    logger.warning(
        "store of SOP %s from %s refused (%s): %s", request.AffectedSOPInstanceUID, calling, status.name, refusal.reason
    )
    return int(status)


def handle_store(event: Event, spool: Spool, guards: StoreGuards) -> int:
    """C-STORE: guard, write atomically, index, return a named status (see :class:`StoreStatus`).

    Statuses: SUCCESS (stored, or a duplicate already stored); OUT_OF_RESOURCES (disk below watermark,
    or the disk filled up during the write); INSTANCE_TOO_LARGE, RATE_LIMITED, BACKLOG_FULL (the guards
    of :class:`~dicom_node.guards.StoreGuards`); CANNOT_UNDERSTAND (undecodable dataset, kept in
    quarantine); MISSING_UID (no SOP Instance / Study / Series UID, kept in quarantine); INVALID_UID
    (one of them is not a UID, kept in quarantine: UIDs name the spool's folders);
    DATASET_DOES_NOT_MATCH_SOP_CLASS (dataset UIDs differ from the request's); PIXEL_DATA_TRUNCATED
    (kept in quarantine); PROCESSING_FAILURE (the spool could not write).
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    request = event.request
    if not isinstance(request, C_STORE):
        raise TypeError(f"handle_store got a {type(request).__name__} request")
    raw = request.DataSet.getvalue() if request.DataSet is not None else b""
    refused = guards.check(calling_ae=calling, nbytes=len(raw))
    if refused is not None:
        return _refuse(refused, request, calling)
    try:
        ds = event.dataset
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        sop_class = str(ds.get("SOPClassUID", "") or "")
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        spool.quarantine(raw, f"undecodable dataset: {exc}", calling)
        logger.warning("store from %s: undecodable dataset (%s), quarantined", calling, type(exc).__name__)
        return int(StoreStatus.CANNOT_UNDERSTAND)
    missing = [
        n
        for n, v in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid))
        if not v
    ]
    if missing:
        spool.quarantine(raw, f"missing {', '.join(missing)}", calling)
        logger.warning("store from %s: missing %s, quarantined", calling, ", ".join(missing))
        return int(StoreStatus.MISSING_UID)
    # the UIDs name the spool's folders and files: only well-formed ones may reach the file system
    invalid = [
        n
        for n, v in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid))
        if not _UID.fullmatch(v)
    ]
    if invalid:
        why = f"{', '.join(invalid)} not a UID (digits and dots, at most 64 characters)"
        spool.quarantine(raw, why, calling)
        logger.warning("store from %s: %s, quarantined", calling, why)
        return int(StoreStatus.INVALID_UID)
    refused = guards.check_study(study_uid)
    if refused is not None:
        return _refuse(refused, request, calling)
    if sop_uid != request.AffectedSOPInstanceUID or sop_class != request.AffectedSOPClassUID:
        logger.warning("store from %s: dataset UIDs differ from the request (%s)", calling, sop_uid)
        return int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    if event.context.transfer_syntax in NATIVE_SYNTAXES:
        reason = _truncated(ds)
        if reason:
            spool.quarantine(raw, reason, calling)
            logger.warning("store from %s: %s (SOP %s), quarantined", calling, reason, sop_uid)
            return int(StoreStatus.PIXEL_DATA_TRUNCATED)
    try:
        stored = spool.store(
            event.encoded_dataset(),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            calling_ae=calling,
        )
    except sqlite3.OperationalError as exc:  # the index: "database or disk is full", or locked past its timeout
        status = StoreStatus.OUT_OF_RESOURCES if "full" in str(exc) else StoreStatus.PROCESSING_FAILURE
        logger.error("store from %s: spool index write failed for %s: %s (%s)", calling, sop_uid, exc, status.name)
        return int(status)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            logger.error("store from %s: disk full while writing %s (%s); nothing kept", calling, sop_uid, exc)
            return int(StoreStatus.OUT_OF_RESOURCES)
        logger.error("store from %s: spool write failed for %s: %s", calling, sop_uid, exc)
        return int(StoreStatus.PROCESSING_FAILURE)
    if not stored:
        logger.debug("duplicate SOP %s from %s ignored", sop_uid, calling)
    return int(StoreStatus.SUCCESS)


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


class DicomServer:
    """The running SCP. ``start()`` binds and serves in a background thread; ``stop()`` shuts it down."""

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
        logger.info("DICOM SCP %s listening on %s:%d", self.settings.ae_title, self.settings.bind, self.port)

    def stop(self) -> None:
        self.ae.shutdown()  # stops the server, closes its socket and aborts open associations
        self._server = None
