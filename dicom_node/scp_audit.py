"""Audit-trail handlers for the SCP's associations: accepted (User Authentication) and rejected (Security
Alert with the reason). Bound as pynetdicom notification handlers; they only record, never decide."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pynetdicom import evt
from pynetdicom.events import Event

from dicom_node import audit_messages, audit_trail

__all__ = ["REJECT_REASONS", "association_handlers"]

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


def on_accepted(event: Event) -> None:
    calling, called, address = _titles(event)
    audit_trail.record(audit_messages.association(accepted=True, calling_ae=calling, called_ae=called, address=address))


def on_rejected(event: Event) -> None:
    calling, called, address = _titles(event)
    rj = event.assoc.acceptor.primitive
    key = (
        int(getattr(rj, "result", 0) or 0),
        int(getattr(rj, "result_source", 0) or 0),
        int(getattr(rj, "diagnostic", 0) or 0),
    )
    reason = REJECT_REASONS.get(key, f"result {key[0]}, source {key[1]}, diagnostic {key[2]}")
    detail = getattr(event.assoc, "refusal_reason", None)  # set by the resource guards when they reject
    if detail:
        reason = f"{reason}: {detail}"
    logger.warning("association from %s (%s) to %s rejected: %s", calling, address, called, reason)
    audit_trail.record(
        audit_messages.association(accepted=False, calling_ae=calling, called_ae=called, address=address, reason=reason)
    )


def association_handlers() -> list[tuple[evt.EventType, Callable[[Event], None]]]:
    """The (event, handler) pairs to bind on the SCP."""
    return [(evt.EVT_ACCEPTED, on_accepted), (evt.EVT_REJECTED, on_rejected)]
