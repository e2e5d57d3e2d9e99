"""What the DICOM side puts on the audit trail: the SCP's associations, accepted (User Authentication) and
rejected (Security Alert with the reason), bound as pynetdicom notification handlers that only record,
never decide; and each study received, when the assembler finds it complete (:class:`AuditedAssembler`)."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import evt
from pynetdicom.events import Event

from dicom_node import audit_messages, audit_trail
from dicom_node.assembly import Assembler, AssemblySettings
from dicom_node.spool import Spool

__all__ = ["REJECT_REASONS", "AuditedAssembler", "association_handlers", "record_accepted", "record_rejected"]

logger = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ (result, source, diagnostic) -> the reason in words (PS3.8 9.3.4).
REJECT_REASONS: dict[tuple[int, int, int], str] = {
    (0x01, 0x01, 0x01): "no reason given",
    (0x01, 0x01, 0x02): "application context name not supported",
    (0x01, 0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x01, 0x07): "called AE title not recognised",
    (0x02, 0x02, 0x01): "user identity not verified",
    (0x02, 0x02, 0x02): "protocol version not supported",
    (0x02, 0x03, 0x01): "temporary congestion",
    (0x02, 0x03, 0x02): "local limit exceeded (too many associations, or free disk below the watermark)",
}


def _titles(event: Event) -> tuple[str, str, str | None]:
    assoc = event.assoc
    rq = assoc.requestor.primitive
    calling = str(getattr(rq, "calling_ae_title", "") or assoc.requestor.ae_title).strip()
    called = str(getattr(rq, "called_ae_title", "") or assoc.acceptor.ae_title).strip()
    address = getattr(assoc.requestor, "address", None)
    return calling or "unknown", called or "unknown", str(address) if address else None


def record_accepted(calling: str, called: str, address: str | None) -> None:
    """An association accepted: User Authentication on the audit trail."""
    audit_trail.record(audit_messages.association(accepted=True, calling_ae=calling, called_ae=called, address=address))


def record_rejected(
    calling: str, called: str, address: str | None, key: tuple[int, int, int], detail: str | None = None
) -> None:
    """An association rejected with the A-ASSOCIATE-RJ (result, source, diagnostic) ``key``: logged, and a
    Security Alert with the reason on the audit trail."""
    reason = REJECT_REASONS.get(key, f"result {key[0]}, source {key[1]}, diagnostic {key[2]}")
    if detail:
        reason = f"{reason}: {detail}"
    logger.warning("association from %s (%s) to %s rejected: %s", calling, address, called, reason)
    audit_trail.record(
        audit_messages.association(accepted=False, calling_ae=calling, called_ae=called, address=address, reason=reason)
    )


def on_accepted(event: Event) -> None:
    record_accepted(*_titles(event))


def on_rejected(event: Event) -> None:
    calling, called, address = _titles(event)
    rj = event.assoc.acceptor.primitive
    key = (
        int(getattr(rj, "result", 0) or 0),
        int(getattr(rj, "result_source", 0) or 0),
        int(getattr(rj, "diagnostic", 0) or 0),
    )
    detail = getattr(event.assoc, "refusal_reason", None)  # set by the resource guards when they reject
    record_rejected(calling, called, address, key, detail)


def association_handlers() -> list[tuple[evt.EventType, Callable[[Event], None]]]:
    """The (event, handler) pairs to bind on the SCP."""
    return [(evt.EVT_ACCEPTED, on_accepted), (evt.EVT_REJECTED, on_rejected)]


class AuditedAssembler(Assembler):
    """The assembler, recording DICOM Instances Transferred (received) for each study it marks ready.

    One message per study when it is complete (not per instance, to keep the C-STORE path short): the
    study UID, its SOP classes with counts, the calling AE titles that sent it, and the patient by
    ``pseudonym`` (a function of the Patient ID read from one stored header; the ID itself is never written).
    """

    def __init__(
        self,
        spool: Spool,
        settings: AssemblySettings,
        *,
        node_ae: str,
        pseudonym: Callable[[str], str],
        on_ready: Callable[[], None] | None = None,
    ):
        super().__init__(spool, settings, on_ready=on_ready)
        self.node_ae = node_ae
        self.pseudonym = pseudonym

    def check(self, now: float | None = None) -> list[str]:
        marked = super().check(now)
        for study_uid in marked:
            self.record_received(study_uid)
        return marked

    def record_received(self, study_uid: str) -> None:
        records = self.spool.instances(study_uid)
        if not records:
            return
        try:
            header = pydicom.dcmread(records[0].path, stop_before_pixels=True, specific_tags=["PatientID"])
            patient_id = str(header.get("PatientID", "") or "")
        except (OSError, InvalidDicomError) as exc:
            logger.warning("study %s: cannot read a stored header for the audit trail: %s", study_uid, exc)
            patient_id = ""
        audit_trail.record(
            audit_messages.instances_received(
                study_uid=study_uid,
                patient=self.pseudonym(patient_id) if patient_id else "unknown",
                sop_classes=Counter(r.sop_class_uid for r in records),
                source_aes=_calling_aes(self.spool, study_uid),
                node_ae=self.node_ae,
            )
        )


def _calling_aes(spool: Spool, study_uid: str) -> list[str]:
    """The calling AE titles that sent the study's instances (from the spool's index)."""
    try:
        return spool.calling_aes(study_uid)
    except sqlite3.Error as exc:
        logger.warning("study %s: calling AE titles not found in the spool index (%s)", study_uid, exc)
        return ["unknown"]
