"""Forwarding results to PACS: C-STORE SCU with bounded exponential back-off and a dead-letter state.

A destination may be reached over DICOM TLS (:class:`~dicom_node.tls.DestinationTls`) and may receive
de-identified copies only (``deidentify``: the PS3.15 Annex E basic profile of :mod:`dicom_node.deid`,
applied to each object just before it is sent; the spool keeps the originals), or be a DICOMweb service
reached by STOW-RS (:mod:`dicom_node.stow`, ``Destination.web``) with the same retries and dead letters. Each
send to a destination is recorded on the security audit trail (DICOM Instances Transferred).

Results are written to the outbox and a delivery row is recorded for each destination *before* anything is
sent, so nothing is lost when a destination is down or the node restarts. :class:`Forwarder` sends due
deliveries; a failed attempt is retried after ``base * factor**attempts`` seconds (capped), and after
``max_attempts`` the delivery is ``dead`` until ``fairnode deliveries retry`` gives it a new budget.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import build_context

from dicom_node import audit_messages, audit_trail
from dicom_node.deid import DeidentificationError, Deidentifier
from dicom_node.spool import Delivery, Spool
from dicom_node.stow import DicomWebTarget, send_stow
from dicom_node.tls import DestinationTls, TlsSettings, client_context

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results go to."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: DestinationTls | None = None
    deidentify: bool = False  # send de-identified copies (research archive outside the hospital)
    deidentify_options: tuple[str, ...] = ()  # Annex E options, see dicom_node.deid.OPTIONS
    web: DicomWebTarget | None = None  # a DICOMweb destination: sent by STOW-RS (host, port from its URL)

    def describe(self) -> str:
        if self.web is not None:
            return f"STOW-RS {self.web.url}"
        return f"{self.ae_title}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 5.0
    factor: float = 2.0
    max_delay_seconds: float = 600.0

    def delay(self, attempts_done: int) -> float:
        """Seconds to wait after the ``attempts_done``-th failed attempt."""
        return float(min(self.max_delay_seconds, self.base_seconds * self.factor ** max(0, attempts_done - 1)))


@dataclass(frozen=True)
class ForwardSettings:
    calling_ae_title: str = "FAIRNODE"
    destinations: tuple[Destination, ...] = field(default_factory=tuple)
    review: Destination | None = None  # where cases needing review go when the node routes them apart
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_seconds: float = 30.0
    poll_seconds: float = 0.5
    tls: TlsSettings | None = None  # the node's own certificate, shown to TLS destinations that ask for one


def responses_only(assoc: Association) -> Association:
    """Keep pynetdicom's reactor from taking the response a ``send_*`` call waits for; returns ``assoc``.

    On a requested association pynetdicom's reactor thread polls for requests from the peer. A ``send_*``
    call pauses it first, but the pause can land just after the reactor passed its checkpoint: a peer that
    answers fast then has its response taken by the reactor ("Received unexpected C-STORE service message")
    while the call waits out its DIMSE timeout and reports no status. The node's requested associations
    carry no requests from the peer, so the reactor's poll is answered with nothing and each message goes to
    the call waiting for it.
    """
    wait_for_message = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> tuple[int | None, object]:
        return wait_for_message(block=True) if block else (None, None)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign, assignment]
    return assoc


def request_association(
    ae: AE, host: str, port: int, ae_title: str, tls_args: tuple[ssl.SSLContext, str] | None = None
) -> tuple[Association, A_ASSOCIATE_RJ | None]:
    """Request an association of ``ae`` with ``ae_title`` at ``host:port``; returns it (responses going only
    to the calls that wait for them: :func:`responses_only`) and the A-ASSOCIATE-RJ PDU the peer answered
    with, if any.

    The rejection is read off the wire: when the peer rejects faster than pynetdicom's requesting thread
    checks its socket, pynetdicom marks the association aborted although the RJ PDU arrived.
    """
    received: list[A_ASSOCIATE_RJ] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            received.append(event.pdu)

    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    return responses_only(assoc), (received[0] if received else None)


def send_files(
    ds_list: Sequence[pydicom.Dataset],
    dest: Destination,
    calling_ae: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """C-STORE ``ds_list`` to ``dest`` on one association (over TLS when ``ssl_context`` is given).

    Raises
    ------
    ConnectionError
        when the association fails or any store does not return Success; the message names the peer,
        the SOP Instance UID and the status.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in ds_list}
    for sop, ts in contexts:
        ae.requested_contexts.append(build_context(sop, [ts]))
    server_name = (dest.tls.server_name if dest.tls else None) or dest.host
    tls_args = (ssl_context, server_name) if ssl_context is not None else None
    assoc, rj = request_association(ae, dest.host, dest.port, dest.ae_title, tls_args)
    if not assoc.is_established:
        if rj is not None:
            why = f" (rejected, {'permanent' if rj.result == 1 else 'transient'}: {rj.reason_str})"
        elif tls_args:
            why = " (TLS handshake failed or refused: see the log)"
        else:
            why = ""
        raise ConnectionError(f"no association with {dest.describe()}{why}")
    try:
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for ds in ds_list:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1))
            if code != 0x0000:
                raise ConnectionError(
                    f"{dest.describe()} answered status 0x{code & 0xFFFF:04X} for SOP {ds.SOPInstanceUID}"
                    if code >= 0
                    else f"{dest.describe()} gave no response for SOP {ds.SOPInstanceUID}"
                )
    finally:
        assoc.release()


class Forwarder:
    """Sends due deliveries from the spool; runs in its own thread."""

    def __init__(
        self,
        spool: Spool,
        settings: ForwardSettings,
        *,
        deidentifier: Callable[[Destination], Deidentifier] | None = None,
        pseudonym: Callable[[str], str] | None = None,
    ):
        """``deidentifier``: makes the de-identifier of a destination with ``deidentify`` (required if any
        has it); ``pseudonym``: names patients on the audit trail (default: "unknown", never the ID)."""
        self.spool = spool
        self.settings = settings
        review = (settings.review,) if settings.review else ()
        self._by_name = {d.name: d for d in (*settings.destinations, *review)}
        self._tls = {d.name: client_context(d.tls, settings.tls) for d in self._by_name.values() if d.tls}
        self._web_tls = {d.name: d.web.ssl_context() for d in self._by_name.values() if d.web and d.web.tls}
        if any(d.deidentify for d in self._by_name.values()) and deidentifier is None:
            raise ValueError("a destination has deidentify set but the forwarder was given no deidentifier")
        self._deid = {d.name: deidentifier(d) for d in self._by_name.values() if d.deidentify and deidentifier}
        self._pseudonym = pseudonym or (lambda _patient_id: "unknown")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    def enqueue(self, study_uid: str, run: int, paths: Sequence[Path], review: bool = False) -> None:
        """Record a delivery of each file to each destination (before any sending).

        ``review``: to the review destination only, instead of the PACS destinations.
        """
        if review and self.settings.review is None:
            raise ValueError("no review destination is configured")
        targets = (self.settings.review,) if review and self.settings.review else self.settings.destinations
        for dest in targets:
            for p in paths:
                self.spool.add_delivery(study_uid, run, p, dest.name)
        self.wake()

    def send_due(self, now: float | None = None) -> int:
        """One pass over the due deliveries, grouped per destination; returns how many were sent."""
        now = time.time() if now is None else now
        due = self.spool.due_deliveries(now)
        sent = 0
        by_dest: dict[tuple[str, str], list[Delivery]] = {}
        for d in due:
            by_dest.setdefault((d.destination, d.study_uid), []).append(d)
        for (name, _study), items in by_dest.items():
            dest = self._by_name.get(name)
            if dest is None:
                for d in items:
                    self._failed(d, f"destination '{name}' is no longer configured", now)
                continue
            originals: list[pydicom.Dataset] = []
            try:
                originals = [pydicom.dcmread(d.path) for d in items]
                deid = self._deid.get(name)
                outgoing = [deid.apply(ds) for ds in originals] if deid is not None else originals
                if dest.web is not None:
                    send_stow(outgoing, dest.web, self.settings.timeout_seconds, ssl_context=self._web_tls.get(name))
                else:
                    send_files(
                        outgoing,
                        dest,
                        self.settings.calling_ae_title,
                        self.settings.timeout_seconds,
                        ssl_context=self._tls.get(name),
                    )
            except (ConnectionError, OSError, RuntimeError, DeidentificationError) as exc:
                for d in items:
                    self._failed(d, str(exc), now)
                self._audit(dest, items[0].study_uid, originals, ok=False, error=str(exc))
                continue
            self._audit(dest, items[0].study_uid, originals, ok=True)
            for d in items:
                self.spool.delivery_result(d.id, ok=True)
                sent += 1
            logger.info("delivered %d objects of study %s to %s", len(items), items[0].study_uid, dest.describe())
        return sent

    def _audit(
        self, dest: Destination, study_uid: str, datasets: Sequence[pydicom.Dataset], ok: bool, error: str | None = None
    ) -> None:
        patient = next((str(ds.PatientID) for ds in datasets if ds.get("PatientID")), "")
        audit_trail.record(
            audit_messages.instances_sent(
                study_uid=study_uid,
                patient=self._pseudonym(patient) if patient else "unknown",
                sop_classes=Counter(str(ds.SOPClassUID) for ds in datasets),
                node_ae=self.settings.calling_ae_title,
                destination_ae=dest.ae_title,
                destination_address=dest.host,
                ok=ok,
                error=error,
                deidentified=dest.deidentify,
                tls=dest.tls is not None or (dest.web is not None and dest.web.tls),
            )
        )

    def _failed(self, d: Delivery, error: str, now: float) -> None:
        attempts = d.attempts + 1
        dead = attempts >= self.settings.retry.max_attempts
        delay = self.settings.retry.delay(attempts)
        self.spool.delivery_result(d.id, ok=False, error=error, next_attempt_at=now + delay, dead=dead)
        if dead:
            logger.error(
                "delivery %d (study %s) to %s is dead after %d attempts: %s",
                d.id,
                d.study_uid,
                d.destination,
                attempts,
                error,
            )
        else:
            logger.warning(
                "delivery %d to %s failed (attempt %d/%d, next in %.0f s): %s",
                d.id,
                d.destination,
                attempts,
                self.settings.retry.max_attempts,
                delay,
                error,
            )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="forwarder", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()
            if not self._stop.is_set():
                self.send_due()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
