"""Series selection: declarative rules decide which series of a study goes to which bundled model.

A :class:`SeriesRule` is a pydantic model, so a list of rules loads from the node's settings (YAML or
environment). :func:`select` reads only header facts (:class:`SeriesInfo`, built without decoding pixels)
and gives one :class:`Selection` per series: the first matching rule wins, and every decision carries a
reason a person can read in the logs or the review app.

Conditions of a rule, checked in this order (the first that fails is the reason a rule did not match):
modality, SOP class, body part, description (``description_regex``), exclusion (``exclude_regex``),
orientation, number of images, and for group-specific models the patient's sex (PatientSex) and ethnic
group (EthnicGroup mapped to the registry's groups). A rule without demographic conditions after group
rules is their fallback: the reason of a series it takes names the group rules it fell back from.
Demographic values are never logged (they describe a patient); they appear only in the reason, which goes
into the study's own SR and registry row.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.dataset import Dataset

from fairness_registry.ethnic_groups import EthnicGroupMapping, default_mapping

logger = logging.getLogger(__name__)

Orientation = Literal["axial", "coronal", "sagittal", "any"]

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Slice normal's dominant LPS axis -> plane name.
_PLANES = ("sagittal", "coronal", "axial")


class SeriesRule(BaseModel):
    """One rule: which series a bundled model accepts.

    Attributes
    ----------
    model
        name of the bundled model the series goes to, e.g. ``ct-abdomen``.
    modalities
        accepted Modality values (upper-cased on load), e.g. ``["CT"]``; at least one.
    body_parts
        accepted BodyPartExamined values, compared case-insensitively; empty accepts any (also none).
    description_regex
        pattern that must be found (``re.search``, case-insensitive) in SeriesDescription; ``None``
        accepts any. Checked when the rule is loaded: a bad pattern is a validation error naming it.
    exclude_regex
        pattern that must *not* be found in SeriesDescription (case-insensitive), e.g.
        ``scout|localizer|topogram``.
    min_instances
        minimum number of images; a multi-frame instance counts each of its frames.
    orientation
        plane of the slices: the dominant LPS axis of the slice normal (row x column cosines of
        ImageOrientationPatient): x -> sagittal, y -> coronal, z -> axial. ``any`` accepts series without
        ImageOrientationPatient (radiographs); the others do not.
    sop_classes
        accepted SOP Class UIDs; empty accepts any.
    sexes
        accepted PatientSex values (``F``, ``M``, ``O``); empty accepts any (also none). For group-specific
        models.
    ethnic_groups
        accepted ethnic groups of the registry's mapping (``fairness_registry.ethnic_groups``: e.g. ``Black``;
        a header the mapping does not know is ``unknown``); empty accepts any. For group-specific models.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    modalities: list[str] = Field(min_length=1)
    body_parts: list[str] = []
    description_regex: str | None = None
    exclude_regex: str | None = None
    min_instances: int = Field(default=1, ge=1)
    orientation: Orientation = "any"
    sop_classes: list[str] = []
    sexes: list[str] = []
    ethnic_groups: list[str] = []

    @property
    def demographic(self) -> bool:
        """Whether the rule routes by patient group (a group-specific model)."""
        return bool(self.sexes or self.ethnic_groups)

    @field_validator("modalities", "body_parts", "sexes")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]

    @field_validator("description_regex", "exclude_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
        return pattern

    @field_validator("sop_classes")
    @classmethod
    def _uids(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if len(v) > 64 or not _UID_PATTERN.match(v)]
        if bad:
            raise ValueError(f"{bad} are not UIDs; a SOP Class UID is dotted digits of at most 64 characters")
        return values


@dataclass(frozen=True)
class SeriesInfo:
    """What the spool knows of a series without decoding pixels.

    Attributes
    ----------
    series_uid
        SeriesInstanceUID.
    modality
        Modality, upper case (``""`` if absent).
    body_part
        BodyPartExamined, upper case (``""`` if absent).
    description
        SeriesDescription (``""`` if absent).
    n_instances
        number of instances (files) in the series.
    orientation
        ImageOrientationPatient of the first instance (for an enhanced multi-frame instance from its
        Shared or first Per-Frame functional group), ``None`` when it has none (radiographs).
    sop_class_uid
        SOPClassUID of the first instance.
    n_frames
        number of images: the sum of NumberOfFrames (1 for a single-frame instance); ``None`` means
        ``n_instances``.
    patient_sex
        PatientSex, upper case (``""`` if absent).
    ethnic_group
        EthnicGroup mapped to the registry's groups (``unknown`` when absent or not in the mapping).
    """

    series_uid: str
    modality: str
    body_part: str
    description: str
    n_instances: int
    orientation: tuple[float, ...] | None
    sop_class_uid: str
    n_frames: int | None = None
    patient_sex: str = ""
    ethnic_group: str = "unknown"

    @property
    def n_images(self) -> int:
        """Images in the series: :attr:`n_frames`, or :attr:`n_instances` when unknown."""
        return self.n_instances if self.n_frames is None else self.n_frames

    @property
    def plane(self) -> str | None:
        """``axial``, ``coronal`` or ``sagittal`` from :attr:`orientation`; ``None`` when unknown."""
        if self.orientation is None or len(self.orientation) != 6:
            return None
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        if not np.any(normal):
            return None
        return _PLANES[int(np.argmax(np.abs(normal)))]

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset], mapping: EthnicGroupMapping | None = None) -> SeriesInfo:
        """Summarise the instances of one series (headers only; pixel data may be absent).

        ``mapping`` maps EthnicGroup to the audit's groups (default: the shipped table).

        Raises
        ------
        ValueError
            If ``datasets`` is empty or holds more than one SeriesInstanceUID.
        """
        if not datasets:
            raise ValueError("datasets is empty; a series has at least one instance")
        uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
        if len(uids) != 1:
            raise ValueError(f"datasets hold {len(uids)} series {uids}; pass the instances of one series")
        first = datasets[0]
        return cls(
            series_uid=uids[0],
            modality=str(first.get("Modality", "")).strip().upper(),
            body_part=str(first.get("BodyPartExamined", "")).strip().upper(),
            description=str(first.get("SeriesDescription", "")),
            n_instances=len(datasets),
            orientation=_orientation(first),
            sop_class_uid=str(first.get("SOPClassUID", "")),
            n_frames=sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in datasets),
            patient_sex=str(first.get("PatientSex", "") or "").strip().upper(),
            ethnic_group=(mapping or default_mapping()).group(first.get("EthnicGroup")),
        )


def _orientation(ds: Dataset) -> tuple[float, ...] | None:
    """ImageOrientationPatient at the top level, else in the Shared/first Per-Frame functional group."""
    value = ds.get("ImageOrientationPatient")
    if not value:
        for group_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            groups = ds.get(group_kw)
            items = groups[0].get("PlaneOrientationSequence") if groups else None
            if items and items[0].get("ImageOrientationPatient"):
                value = items[0].ImageOrientationPatient
                break
    if not value or len(value) != 6:
        return None
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Selection:
    """The decision for one series.

    Attributes
    ----------
    series_uid
        SeriesInstanceUID.
    model
        the bundled model the series goes to; ``None`` when it is skipped.
    reason
        why: the matching rule and the facts it matched, or, when skipped, each rule's first failing
        condition.
    """

    series_uid: str
    model: str | None
    reason: str


def _fmt_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _first_failure(info: SeriesInfo, rule: SeriesRule) -> str | None:
    """The first condition of ``rule`` that ``info`` fails, or ``None`` when the rule matches."""
    if info.modality not in rule.modalities:
        return f"modality {info.modality or '(none)'} not in {_fmt_list(rule.modalities)}"
    if rule.sop_classes and info.sop_class_uid not in rule.sop_classes:
        return f"SOP class {info.sop_class_uid or '(none)'} not in {_fmt_list(rule.sop_classes)}"
    if rule.body_parts and info.body_part.upper() not in rule.body_parts:
        return f"body part {info.body_part or '(none)'} not in {_fmt_list(rule.body_parts)}"
    if rule.description_regex is not None and not re.search(rule.description_regex, info.description, re.IGNORECASE):
        return f"description {info.description!r} does not match {rule.description_regex!r}"
    if rule.exclude_regex is not None and re.search(rule.exclude_regex, info.description, re.IGNORECASE):
        return f"description {info.description!r} matches exclude_regex {rule.exclude_regex!r}"
    if rule.orientation != "any":
        plane = info.plane
        if plane != rule.orientation:
            found = plane or "unknown (no ImageOrientationPatient)"
            return f"orientation {found} is not {rule.orientation}"
    if info.n_images < rule.min_instances:
        return f"{info.n_images} images, fewer than min_instances {rule.min_instances}"
    return _demographic_failure(info, rule)


def _demographic_failure(info: SeriesInfo, rule: SeriesRule) -> str | None:
    """The group condition of ``rule`` that ``info`` fails (PatientSex, then ethnic group), or ``None``."""
    if rule.sexes and info.patient_sex not in rule.sexes:
        return f"PatientSex {info.patient_sex or '(none)'} not in {_fmt_list(rule.sexes)}"
    if rule.ethnic_groups and info.ethnic_group not in rule.ethnic_groups:
        return f"ethnic group {info.ethnic_group} not in {_fmt_list(rule.ethnic_groups)}"
    return None


def _group_match(info: SeriesInfo, rule: SeriesRule) -> str:
    parts = []
    if rule.sexes:
        parts.append(f"PatientSex {info.patient_sex}")
    if rule.ethnic_groups:
        parts.append(f"ethnic group {info.ethnic_group}")
    return f"; group-specific model for {', '.join(parts)}" if parts else ""


def _describe(info: SeriesInfo) -> str:
    images = f"{info.n_instances} instances"
    if info.n_images != info.n_instances:
        images += f" ({info.n_images} frames)"
    return ", ".join([info.modality, info.body_part or "no body part", info.plane or "no orientation", images])


def select(series: Sequence[SeriesInfo], rules: Sequence[SeriesRule]) -> list[Selection]:
    """Pick a model for each series: the first rule (in order) whose conditions all hold.

    Parameters
    ----------
    series
        the series of a study, header facts only.
    rules
        rules in priority order (e.g. :data:`DEFAULT_RULES` or the node's settings).

    Returns
    -------
    list of Selection
        one per series, in the order of ``series``; ``model`` is ``None`` for a skipped series, whose
        reason names each rule's first failing condition.
    """
    selections = []
    for info in series:
        failures = []
        fell_back: list[str] = []  # group rules this series met in everything but the group
        chosen: Selection | None = None
        logged = ""
        for number, rule in enumerate(rules, start=1):
            failure = _first_failure(info, rule)
            if failure is None:
                reason = f"rule {number} ({rule.model}): {_describe(info)}"
                logged = reason + ("; group-specific model" if rule.demographic else "")
                reason += _group_match(info, rule)
                if fell_back and not rule.demographic:
                    reason += f"; fallback model (group rules not met: {'; '.join(fell_back)})"
                    logged += "; fallback model"
                chosen = Selection(series_uid=info.series_uid, model=rule.model, reason=reason)
                break
            failures.append(f"rule {number} ({rule.model}): {failure}")
            if rule.demographic and failure == _demographic_failure(info, rule):
                fell_back.append(f"rule {number} ({rule.model}) {failure}")
        if chosen is None:
            detail = "; ".join(failures) if failures else "no rules are configured"
            chosen = Selection(series_uid=info.series_uid, model=None, reason=f"no rule matched: {detail}")
        # demographic values stay out of the log: it names the rule, not the patient's group
        logger.info("series %s -> %s: %s", info.series_uid, chosen.model or "skipped", logged or "no rule matched")
        selections.append(chosen)
    return selections


#: Localisers and scouts are never segmented.
_LOCALIZER_REGEX = r"scout|localizer|localiser|topogram|surview|survey"

#: Rules for the bundled models, in priority order. A knee radiograph is recognised by BodyPartExamined
#: (rule 2) or, when that is missing or different, by a SeriesDescription mentioning the knee (rule 3).
DEFAULT_RULES: list[SeriesRule] = [
    SeriesRule(
        model="ct-abdomen",
        modalities=["CT"],
        orientation="axial",
        min_instances=20,
        exclude_regex=_LOCALIZER_REGEX,
    ),
    SeriesRule(model="xr-knee", modalities=["DX", "CR"], body_parts=["KNEE"]),
    SeriesRule(model="xr-knee", modalities=["DX", "CR"], description_regex=r"knee"),
    SeriesRule(
        model="mr-brain",
        modalities=["MR"],
        body_parts=["BRAIN", "HEAD"],
        exclude_regex=_LOCALIZER_REGEX,
    ),
]


def group_specific_rules(
    base: SeriesRule, fallback: str, models: dict[str, str], attributes: Sequence[str]
) -> list[SeriesRule]:
    """Rules routing ``base``'s series to group-specific models by header, then to ``fallback``.

    Parameters
    ----------
    base
        the rule the task's series match (modality, body part, ...); its ``model`` is replaced.
    fallback
        the model for a series whose PatientSex / EthnicGroup is missing, unknown or has no model.
    models
        group -> model name; a group is one value per attribute joined by ``/`` (``F``, ``F/Black``).
    attributes
        the group attributes, ``sex`` and/or ``ethnic_group`` (the ones a DICOM header carries).

    Raises
    ------
    ValueError
        If an attribute is not in the header (``age_band`` and ``bmi_band`` are not routable) or a group does
        not have one value per attribute.
    """
    routable = {"sex": "sexes", "ethnic_group": "ethnic_groups"}
    bad = [a for a in attributes if a not in routable]
    if bad:
        raise ValueError(f"cannot route by {', '.join(bad)}: the header carries only {', '.join(routable)}")
    rules = []
    for group, model in models.items():
        values = group.split("/")
        if len(values) != len(attributes):
            raise ValueError(f"group {group!r} does not name one value for each of {', '.join(attributes)}")
        extra = {routable[a]: [v] for a, v in zip(attributes, values, strict=True)}
        rules.append(base.model_copy(update={"model": model, **extra}))
    rules.append(base.model_copy(update={"model": fallback, "sexes": [], "ethnic_groups": []}))
    return rules
