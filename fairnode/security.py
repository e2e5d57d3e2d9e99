"""The node's security parts built from settings: the audit trail, the patient pseudonym it uses, and the
de-identifiers of destinations that receive de-identified copies.

:func:`start_audit_trail` installs the process's trail (``dicom_node.audit_trail.record`` writes to it);
the review app and the CLI call it too, so their events land in the same log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dicom_node import audit_trail
from dicom_node.audit_messages import AuditSource
from dicom_node.audit_trail import AuditTrail
from dicom_node.deid import Deidentifier, UidMap
from dicom_node.scu import Destination
from fairness_registry.pseudonym import pseudonymise
from fairnode.settings import Settings

__all__ = ["deidentifier_factory", "patient_pseudonym", "start_audit_trail", "stop_audit_trail"]

logger = logging.getLogger(__name__)


def start_audit_trail(settings: Settings) -> AuditTrail | None:
    """Build the audit trail of ``settings`` and install it (None when ``audit_trail.enabled`` is false).

    Idempotent within a process: a trail already installed for the same log file is returned as is.
    """
    s = settings.audit_trail
    if not s.enabled:
        logger.warning("the security audit trail is disabled (audit_trail.enabled: false)")
        return None
    log_file = s.log_file or settings.data_dir / "audit" / "audit.log"
    current = audit_trail.configured()
    if current is not None and current.log_file == log_file:
        return current
    trail = AuditTrail(s, log_file, AuditSource(s.source_id or settings.ae_title, site_id=s.site_id))
    previous = audit_trail.configure(trail)
    if previous is not None:
        previous.close()
    logger.info("audit trail: %s%s", log_file, f", syslog {s.syslog_host}:{s.syslog_port}" if s.syslog_host else "")
    return trail


def stop_audit_trail() -> None:
    """Send what is queued, close and uninstall the process's audit trail."""
    trail = audit_trail.configure(None)
    if trail is not None:
        trail.flush()
        trail.close()


def patient_pseudonym(settings: Settings) -> Callable[[str], str]:
    """Patient ID -> the registry pseudonym (what the audit trail names patients by)."""
    secret = settings.secret()
    return lambda patient_id: pseudonymise(patient_id, secret)


def deidentifier_factory(settings: Settings) -> Callable[[Destination], Deidentifier]:
    """Makes each de-identifying destination's :class:`Deidentifier`, all sharing one UID map in
    ``<data_dir>/deid/uid-map.sqlite3`` (keep it: it is what re-identifies results)."""
    uid_map: list[UidMap] = []

    def make(dest: Destination) -> Deidentifier:
        if not uid_map:
            uid_map.append(UidMap(settings.data_dir / "deid" / "uid-map.sqlite3", settings.secret()))
        return Deidentifier(uid_map[0], dest.name, dest.deidentify_options)

    return make
