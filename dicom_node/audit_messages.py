"""DICOM audit messages (PS3.15 A.5, as used by IHE ATNA): the events the node records and their XML.

An :class:`AuditEvent` is what happened (event, outcome, who took part, which objects); :func:`to_xml`
writes it as an ``AuditMessage`` that validates against the DICOM audit message schema (PS3.15 A.5.1,
shipped as ``dicom_node/data/audit_message.rng``). The builder functions below make the events the node
reports, with the codes PS3.15 A.5.3 and PS3.16 (DCM) give them.

Patients are named by their registry pseudonym, never by Patient ID or name: the pseudonym is what the
caller passes as ``patient``.
"""

from __future__ import annotations

import base64
import enum
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

__all__ = [
    "AuditEvent",
    "AuditSource",
    "Code",
    "Outcome",
    "Participant",
    "ParticipantObject",
    "application_activity",
    "association",
    "audit_export",
    "instances_received",
    "instances_sent",
    "node_authentication_failure",
    "registry_query",
    "review_action",
    "to_xml",
    "user_authentication",
]


@dataclass(frozen=True)
class Code:
    """A coded value (``csd-code``, ``codeSystemName``, ``originalText``)."""

    code: str
    system: str
    meaning: str


class Outcome(enum.IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


# Event IDs and event types (PS3.16 CID 400, 401, DCM)
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
EXPORT = Code("110106", "DCM", "Export")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
# Role IDs (CID 402)
ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_LAUNCHER = Code("110151", "DCM", "Application Launcher")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")
ROLE_DESTINATION_MEDIA = Code("110154", "DCM", "Destination Media")
# Participant object ID types (RFC 3881 and CID 404)
ID_PATIENT = Code("2", "RFC-3881", "Patient Number")
ID_REPORT_NAME = Code("8", "RFC-3881", "Report Name")
ID_SEARCH_CRITERIA = Code("10", "RFC-3881", "Search Criteria")
ID_URI = Code("12", "RFC-3881", "URI")
ID_STUDY = Code("110180", "DCM", "Study Instance UID")
ID_NODE = Code("110182", "DCM", "Node ID")
ID_CASE = Code("case", "fairnode", "Registry case")


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a user, an application or a DICOM node (AE title) taking part."""

    user_id: str
    is_requestor: bool
    role: Code | None = None
    address: str | None = None  # NetworkAccessPointID: an IP address or a host name
    alternative_user_id: str | None = None
    user_name: str | None = None


@dataclass(frozen=True)
class ParticipantObject:
    """A ParticipantObjectIdentification: a study, a patient (by pseudonym), a query, a report.

    ``type_code``: 1 person, 2 system object, 3 organisation, 4 other; ``role``: PS3.15 A.5.1.2.2
    (1 patient, 3 report, 4 resource, 6 user, 13 security resource, 24 query ...); ``lifecycle``: data
    life cycle stage (7 de-identification, 10 export ...). ``sop_classes``: SOP Class UID -> number of
    instances, written as a ParticipantObjectDescription.
    """

    object_id: str
    id_type: Code
    type_code: int | None = None
    role: int | None = None
    name: str | None = None
    query: bytes | None = None
    details: tuple[tuple[str, bytes], ...] = ()
    sop_classes: Mapping[str, int] = field(default_factory=dict)
    anonymized: bool | None = None
    encrypted: bool | None = None
    lifecycle: int | None = None


@dataclass(frozen=True)
class AuditEvent:
    """One audited event (EventIdentification plus its participants and objects)."""

    event_id: Code
    outcome: Outcome
    participants: tuple[Participant, ...]
    objects: tuple[ParticipantObject, ...] = ()
    event_types: tuple[Code, ...] = ()
    action: str | None = None  # C, R, U, D or E
    description: str | None = None  # EventOutcomeDescription: what went wrong, in words
    when: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.action is not None and self.action not in ("C", "R", "U", "D", "E"):
            raise ValueError(f"action must be one of C, R, U, D, E or None; got {self.action!r}")
        if not self.participants:
            raise ValueError("an audit event needs at least one participant")
        if self.when.tzinfo is None:
            raise ValueError("when must be timezone-aware")


@dataclass(frozen=True)
class AuditSource:
    """AuditSourceIdentification: who reports (``source_id``, e.g. the AE title) and where."""

    source_id: str
    site_id: str | None = None
    type_code: str = "4"  # application server process


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning}
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def to_xml(event: AuditEvent, source: AuditSource) -> bytes:
    """The event as one DICOM ``AuditMessage`` (UTF-8, no line breaks inside)."""
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification")
    if event.action is not None:
        ident.set("EventActionCode", event.action)
    ident.set("EventDateTime", event.when.astimezone(UTC).isoformat(timespec="milliseconds"))
    ident.set("EventOutcomeIndicator", str(int(event.outcome)))
    _code(ident, "EventID", event.event_id)
    for t in event.event_types:
        _code(ident, "EventTypeCode", t)
    if event.description:
        ET.SubElement(ident, "EventOutcomeDescription").text = _one_line(event.description)
    for p in event.participants:
        el = ET.SubElement(root, "ActiveParticipant", {"UserID": p.user_id})
        if p.alternative_user_id:
            el.set("AlternativeUserID", p.alternative_user_id)
        if p.user_name:
            el.set("UserName", p.user_name)
        el.set("UserIsRequestor", "true" if p.is_requestor else "false")
        if p.address:
            el.set("NetworkAccessPointID", p.address)
            el.set("NetworkAccessPointTypeCode", "2" if _is_ip(p.address) else "1")
        if p.role is not None:
            _code(el, "RoleIDCode", p.role)
    src = ET.SubElement(root, "AuditSourceIdentification")
    if source.site_id:
        src.set("AuditEnterpriseSiteID", source.site_id)
    src.set("AuditSourceID", source.source_id)
    ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": source.type_code})
    for o in event.objects:
        el = ET.SubElement(root, "ParticipantObjectIdentification", {"ParticipantObjectID": o.object_id})
        if o.type_code is not None:
            el.set("ParticipantObjectTypeCode", str(o.type_code))
        if o.role is not None:
            el.set("ParticipantObjectTypeCodeRole", str(o.role))
        if o.lifecycle is not None:
            el.set("ParticipantObjectDataLifeCycle", str(o.lifecycle))
        _code(el, "ParticipantObjectIDTypeCode", o.id_type)
        if o.query is not None:
            ET.SubElement(el, "ParticipantObjectQuery").text = base64.b64encode(o.query).decode("ascii")
        else:
            ET.SubElement(el, "ParticipantObjectName").text = _one_line(o.name or o.object_id)
        for kind, value in o.details:
            ET.SubElement(
                el, "ParticipantObjectDetail", {"type": kind, "value": base64.b64encode(value).decode("ascii")}
            )
        if o.sop_classes or o.anonymized is not None or o.encrypted is not None:
            desc = ET.SubElement(el, "ParticipantObjectDescription")
            for uid, count in sorted(o.sop_classes.items()):
                ET.SubElement(desc, "SOPClass", {"UID": uid, "NumberOfInstances": str(int(count))})
            if o.encrypted is not None:
                ET.SubElement(desc, "Encrypted").text = "true" if o.encrypted else "false"
            if o.anonymized is not None:
                ET.SubElement(desc, "Anonymized").text = "true" if o.anonymized else "false"
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _is_ip(address: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, address)
        except OSError:
            continue
        return True
    return False


def _outcome(ok: bool) -> Outcome:
    return Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE


def _node(ae_title: str, address: str | None, requestor: bool, role: Code | None = None) -> Participant:
    return Participant(user_id=ae_title, alternative_user_id=None, is_requestor=requestor, role=role, address=address)


def _study(study_uid: str, sop_classes: Mapping[str, int], anonymized: bool | None = None) -> ParticipantObject:
    return ParticipantObject(
        object_id=study_uid, id_type=ID_STUDY, type_code=2, role=3, sop_classes=dict(sop_classes), anonymized=anonymized
    )


def _patient(pseudonym: str) -> ParticipantObject:
    return ParticipantObject(object_id=pseudonym, id_type=ID_PATIENT, type_code=1, role=1)


# -- the node's events ----------------------------------------------------------------------------------------


def application_activity(*, started: bool, application: str, user: str | None = None) -> AuditEvent:
    """Application start or stop (PS3.15 A.5.3.1): ``application`` is the node's AE title or name."""
    people = [Participant(user_id=application, is_requestor=False, role=ROLE_APPLICATION)]
    if user:
        people.append(Participant(user_id=user, is_requestor=True, role=ROLE_LAUNCHER))
    return AuditEvent(
        event_id=APPLICATION_ACTIVITY,
        event_types=(APPLICATION_START if started else APPLICATION_STOP,),
        action="E",
        outcome=Outcome.SUCCESS,
        participants=tuple(people),
    )


def association(
    *, accepted: bool, calling_ae: str, called_ae: str, address: str | None, reason: str | None = None
) -> AuditEvent:
    """An association accepted (User Authentication, Login) or rejected (Security Alert with the reason)."""
    people = (
        _node(calling_ae, address, True, ROLE_SOURCE),
        _node(called_ae, None, False, ROLE_DESTINATION),
    )
    if accepted:
        return AuditEvent(
            event_id=USER_AUTHENTICATION, event_types=(LOGIN,), action="E", outcome=Outcome.SUCCESS, participants=people
        )
    return AuditEvent(
        event_id=SECURITY_ALERT,
        event_types=(NODE_AUTHENTICATION,),
        action="E",
        outcome=Outcome.MINOR_FAILURE,
        participants=people,
        description=f"association rejected: {reason or 'no reason given'}",
        objects=(ParticipantObject(object_id=calling_ae, id_type=ID_NODE, type_code=2, role=13),),
    )


def node_authentication_failure(*, address: str, node: str, reason: str) -> AuditEvent:
    """A connection refused before any association (TLS handshake failed, untrusted or missing certificate)."""
    return AuditEvent(
        event_id=SECURITY_ALERT,
        event_types=(NODE_AUTHENTICATION,),
        action="E",
        outcome=Outcome.MINOR_FAILURE,
        participants=(
            Participant(user_id=address, is_requestor=True, address=address),
            Participant(user_id=node, is_requestor=False),
        ),
        description=reason,
        objects=(ParticipantObject(object_id=address, id_type=ID_NODE, type_code=2, role=13),),
    )


def instances_received(
    *,
    study_uid: str,
    patient: str,
    sop_classes: Mapping[str, int],
    source_aes: Sequence[str],
    node_ae: str,
    source_address: str | None = None,
) -> AuditEvent:
    """DICOM Instances Transferred into the node (PS3.15 A.5.3.4, action C): the study as received."""
    sources = tuple(_node(ae, source_address, True, ROLE_SOURCE) for ae in sorted(set(source_aes)) or ["unknown"])
    return AuditEvent(
        event_id=INSTANCES_TRANSFERRED,
        action="C",
        outcome=Outcome.SUCCESS,
        participants=(*sources, _node(node_ae, None, False, ROLE_DESTINATION)),
        objects=(_study(study_uid, sop_classes), _patient(patient)),
    )


def instances_sent(
    *,
    study_uid: str,
    patient: str,
    sop_classes: Mapping[str, int],
    node_ae: str,
    destination_ae: str,
    destination_address: str,
    ok: bool,
    error: str | None = None,
    deidentified: bool = False,
    tls: bool = False,
) -> AuditEvent:
    """DICOM Instances Transferred out of the node (action R): results sent to a destination, or the failure.

    ``deidentified``: the destination received de-identified copies (its study UID is then a remapped one,
    ``study_uid`` here is the hospital's). ``tls``: sent over DICOM TLS.
    """
    study = replace(_study(study_uid, sop_classes, anonymized=deidentified), encrypted=tls)
    return AuditEvent(
        event_id=INSTANCES_TRANSFERRED,
        action="R",
        outcome=_outcome(ok),
        description=None if ok else error,
        participants=(
            _node(node_ae, None, True, ROLE_SOURCE),
            _node(destination_ae, destination_address, False, ROLE_DESTINATION),
        ),
        objects=(study, _patient(patient)),
    )


def registry_query(*, user: str, query: str, address: str | None = None, ok: bool = True) -> AuditEvent:
    """A query of the registry (PS3.15 A.5.3.10): ``query`` says what was asked, in words or as the filter."""
    return AuditEvent(
        event_id=QUERY,
        action="E",
        outcome=_outcome(ok),
        participants=(Participant(user_id=user, is_requestor=True, address=address),),
        objects=(
            ParticipantObject(
                object_id="registry", id_type=ID_SEARCH_CRITERIA, type_code=2, role=24, query=query.encode("utf-8")
            ),
        ),
    )


def review_action(
    *,
    user: str,
    action: str,
    case_id: int | str,
    study_uid: str | None = None,
    address: str | None = None,
    ok: bool = True,
) -> AuditEvent:
    """A review action on a case (DICOM Instances Accessed, action U): ``action`` e.g. accept, reject, correct."""
    objects = [
        ParticipantObject(
            object_id=str(case_id),
            id_type=ID_CASE,
            type_code=2,
            role=3,
            name=f"case {case_id}",
            details=(("ReviewAction", action.encode("utf-8")),),
        )
    ]
    if study_uid:
        objects.append(_study(study_uid, {}))
    return AuditEvent(
        event_id=INSTANCES_ACCESSED,
        action="U",
        outcome=_outcome(ok),
        participants=(Participant(user_id=user, is_requestor=True, address=address),),
        objects=tuple(objects),
    )


def user_authentication(
    *, user: str, ok: bool, address: str | None = None, logout: bool = False, reason: str | None = None
) -> AuditEvent:
    """A user's sign-in (or sign-out, ``logout``) and its failure (PS3.15 A.5.3.12)."""
    return AuditEvent(
        event_id=USER_AUTHENTICATION,
        event_types=(LOGOUT if logout else LOGIN,),
        action="E",
        outcome=_outcome(ok),
        description=reason if not ok else None,
        participants=(Participant(user_id=user, is_requestor=True, address=address),),
    )


def audit_export(*, user: str, report: str, destination: str, address: str | None = None) -> AuditEvent:
    """A fairness audit report exported (Export, PS3.15 A.5.3.5): ``destination`` is the folder or URI."""
    return AuditEvent(
        event_id=EXPORT,
        action="R",
        outcome=Outcome.SUCCESS,
        participants=(
            Participant(user_id=user, is_requestor=True, address=address),
            Participant(user_id=destination, is_requestor=False, role=ROLE_DESTINATION_MEDIA),
        ),
        objects=(ParticipantObject(object_id=report, id_type=ID_REPORT_NAME, type_code=2, role=3, lifecycle=10),),
    )
