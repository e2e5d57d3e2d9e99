"""Registry tables (sqlmodel) and the public read models the API returns instead of them.

What is stored, and what is not
-------------------------------
The registry holds no patient name, patient ID, birth date or accession number. A patient appears only
as a pseudonym (:func:`fairness_registry.pseudonym.pseudonymise`); demographics are normalised categories
and plausible numbers (:mod:`fairness_registry.demographics`). ``tests/fairness_registry`` checks both the
column names and the stored values.

Tables
------
``subject`` (one row per pseudonym, latest demographics) <- ``study`` <- ``series`` <- ``case`` (one model
run on one series; re-runs get the next ``run`` number). Deleting a subject deletes its studies, series and
cases (``ON DELETE CASCADE``), which is how an erasure request is served.

A case also holds what the quality estimators said about it (revision 0002): the gate's ``route`` and
``review_reasons``, the per-structure scores in ``quality`` (:data:`QUALITY_KEYS`, non-finite numbers stored
as ``null``), the ``sampling`` behind them, and the radiologist ``review_state`` (:class:`ReviewState`).

Revision 0003 makes the registry audit-ready: the study row holds the demographics *at that study* and the
acquisition confounders (scanner model, site, slice thickness, pixel spacing, kVp, contrast), and
``case_structure`` holds one row per case and structure with the estimated Dice (RCA, predictor with its
interval), the spatial summary of the uncertainty and, once a corrected segmentation exists, the true Dice,
NSD and HD95.

Timestamps are timezone-aware UTC on every backend (:class:`UTCDateTime`). The schema is created by the
alembic migrations in ``fairness_registry/migrations`` (:func:`fairness_registry.db.migrate`), never by
``metadata.create_all``; keep this module and the migrations in step (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from fairness_registry.pseudonym import PSEUDONYM_LENGTH
from quality.types import Route

__all__ = [
    "QUALITY_KEYS",
    "REGISTRY_TABLES",
    "Case",
    "CaseBase",
    "CasePublic",
    "CaseStatus",
    "CaseStructure",
    "Job",
    "JobState",
    "JobWorker",
    "ReviewState",
    "Route",
    "Series",
    "Study",
    "StudyBase",
    "StudyPublic",
    "Subject",
    "UTCDateTime",
    "WorklistItem",
    "WorklistStructure",
    "checked_enum",
    "utcnow",
]

#: Longest DICOM UID (VR UI).
UID_LENGTH = 64
#: Longest DICOM LO value (institution, manufacturer, series description).
LO_LENGTH = 64
#: Longest audit group name (``ethnic_group`` columns; the mapping table's group names).
ETHNIC_GROUP_LENGTH = 16
#: Longest structure name of a model card (``case_structure.name``).
STRUCTURE_NAME_LENGTH = 64
#: Longest ground-truth source (``case_structure.truth_source``: ``upload``, ``c-store``, ``cohort``).
TRUTH_SOURCE_LENGTH = 32


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always gives back aware UTC datetimes, SQLite included.

    Naive datetimes are refused on the way in (their zone is unknown); SQLite, which has no time zone
    type, stores naive UTC and gets ``tzinfo=UTC`` back on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Check the value is aware and convert it to UTC (naive UTC for SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given to a timezone-aware column; "
                "pass an aware datetime such as datetime.now(UTC)"
            )
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to SQLite's naive values; convert aware ones to UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def checked_enum(enum: type[StrEnum], *, name: str, length: int) -> sa.Enum:
    """A column type for ``enum``: VARCHAR(``length``) holding the members' values, with a CHECK constraint
    ``name`` (no native PostgreSQL enum, so adding a member later is a plain migration)."""
    return sa.Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=length,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class CaseStatus(StrEnum):
    """Life cycle of a case: ``queued -> running -> done | failed`` (``queued -> failed`` too)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: The status column: VARCHAR(16) with a CHECK constraint ``ck_case_status`` (no native PostgreSQL enum,
#: so adding a status later is a plain migration).
CASE_STATUS_TYPE = checked_enum(CaseStatus, name="ck_case_status", length=16)


class ReviewState(StrEnum):
    """Where a case stands with the radiologists.

    ``not_needed`` for a case the gate passed; a REVIEW case starts ``held`` (outputs kept back from PACS
    until a radiologist acts), ``forwarded`` (sent to PACS at once, marked as needing review) or
    ``sent_for_review`` (sent to a separate review destination), and ends ``reviewed``. The legal changes
    are :data:`fairness_registry.crud.REVIEW_TRANSITIONS`.
    """

    NOT_NEEDED = "not_needed"
    HELD = "held"
    FORWARDED = "forwarded"
    SENT_FOR_REVIEW = "sent_for_review"
    REVIEWED = "reviewed"


#: The route column: VARCHAR(8) with CHECK ``ck_case_route``; NULL until the gate has decided.
ROUTE_TYPE = checked_enum(Route, name="ck_case_route", length=8)
#: ``case_structure.route``: VARCHAR(8) with CHECK ``ck_case_structure_route``.
STRUCTURE_ROUTE_TYPE = checked_enum(Route, name="ck_case_structure_route", length=8)
#: The review state column: VARCHAR(16) with CHECK ``ck_case_review_state``; NULL until the gate has decided.
REVIEW_STATE_TYPE = checked_enum(ReviewState, name="ck_case_review_state", length=16)

#: Keys of each structure's entry in ``Case.quality`` (numbers are ``None`` when not finite or not computed:
#: no RCA reference bank, no predictor). Dice values in [0, 1]; volume in ml (3D) or mm² (2D); entropies in
#: bits; ``rca_hd95_mm`` in mm; ``coverage`` is the stated coverage of [predicted_low, predicted_high];
#: ``rca_calibrated_dice`` is ``rca_max_dice`` mapped to true Dice by the model's RCA calibration (``None``
#: where the structure's RCA is not calibrated), the figure the gate compares with its threshold.
QUALITY_KEYS: tuple[str, ...] = (
    "label",
    "volume",
    "mean_entropy",
    "mean_mutual_information",
    "sample_dice",
    "volume_cv",
    "rca_max_dice",
    "rca_mean_dice",
    "rca_hd95_mm",
    "predicted_dice",
    "predicted_low",
    "predicted_high",
    "coverage",
    "route",
    "reasons",
    "rca_calibrated_dice",
)


class Subject(SQLModel, table=True):
    """Demographics of one pseudonymous patient, as normalised from their most recent study.

    Categories use the values of :mod:`fairness_registry.demographics` (``"unknown"`` when not recorded).
    """

    pseudonym: str = Field(primary_key=True, max_length=PSEUDONYM_LENGTH)
    sex: str = Field(default="unknown", max_length=8)
    age_years: int | None = Field(default=None, description="completed years at the latest study")
    age_band: str = Field(default="unknown", max_length=8)
    ethnic_group: str = Field(default="unknown", max_length=ETHNIC_GROUP_LENGTH)
    height_m: float | None = Field(default=None, description="metres")
    weight_kg: float | None = Field(default=None, description="kilograms")
    bmi: float | None = Field(default=None, description="kg/m²")
    bmi_band: str = Field(default="unknown", max_length=16)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    ehr_imported_at: datetime | None = Field(
        default=None,
        sa_type=UTCDateTime,
        description="last EHR import of this subject; from then on its sex and ethnic group win over headers",
    )


class StudyBase(SQLModel):
    """Study fields shared by the table and the public model."""

    study_uid: str = Field(max_length=UID_LENGTH)
    study_date: date | None = None
    institution: str = Field(default="", max_length=LO_LENGTH, description="site name, not a patient field")
    manufacturer: str = Field(default="", max_length=LO_LENGTH)


class Study(StudyBase, table=True):
    """One DICOM study received by the node, with the patient's demographics and the acquisition at that study.

    Demographics and confounders (revision 0003) are all nullable: ``NULL`` means the source held no value
    (missing stays missing, and the audit counts it). A category is ``"unknown"`` when a value was there but
    could not be normalised (PatientSex ``"X"``, an EthnicGroup the mapping table does not know).
    """

    __table_args__ = (sa.UniqueConstraint("study_uid", name="uq_study_study_uid"),)

    id: int | None = Field(default=None, primary_key=True)
    pseudonym: str = Field(foreign_key="subject.pseudonym", ondelete="CASCADE", index=True, max_length=PSEUDONYM_LENGTH)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # demographics at the study (revision 0003)
    sex: str | None = Field(default=None, max_length=8, description="M, F, O or unknown")
    age_years: int | None = Field(default=None, description="completed years at the study")
    age_band: str | None = Field(default=None, max_length=8)
    ethnic_group: str | None = Field(default=None, max_length=ETHNIC_GROUP_LENGTH, description="audit group")
    ethnic_group_text: str | None = Field(
        default=None, max_length=LO_LENGTH, description="the raw EthnicGroup text, for `registry unmapped`"
    )
    weight_kg: float | None = Field(default=None, description="kilograms")
    height_m: float | None = Field(default=None, description="metres")
    bmi: float | None = Field(default=None, description="kg/m²")
    bmi_band: str | None = Field(default=None, max_length=16, description="WHO class")
    # acquisition (confounders)
    scanner_model: str | None = Field(default=None, max_length=LO_LENGTH, description="ManufacturerModelName")
    site: str | None = Field(default=None, max_length=LO_LENGTH, description="configured site, else InstitutionName")
    slice_thickness_mm: float | None = Field(default=None, description="SliceThickness, mm")
    pixel_spacing_mm: float | None = Field(default=None, description="mean of the two PixelSpacing values, mm")
    kvp: float | None = Field(default=None, description="KVP, kV")
    contrast: bool | None = Field(default=None, description="ContrastBolusAgent present and non-empty")


class StudyPublic(StudyBase):
    """A study as the API returns it (without the pseudonym)."""

    id: int
    received_at: datetime


class Series(SQLModel, table=True):
    """One series of a study, with the model the selection rules chose for it (if any)."""

    __table_args__ = (sa.UniqueConstraint("series_uid", name="uq_series_series_uid"),)

    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", ondelete="CASCADE", index=True)
    series_uid: str = Field(max_length=UID_LENGTH)
    modality: str = Field(default="", max_length=16)
    body_part: str = Field(default="", max_length=LO_LENGTH)
    description: str = Field(default="", max_length=LO_LENGTH)
    n_instances: int = 0
    selected_model: str | None = Field(default=None, max_length=64)
    selection_reason: str | None = None


class CaseBase(SQLModel):
    """Case fields shared by the table and the public model."""

    model: str = Field(max_length=64)
    model_version: str = Field(max_length=32)
    run: int = Field(default=1, description="1 for the first run of this model on this series, then 2, ...")
    status: CaseStatus = Field(default=CaseStatus.QUEUED, sa_type=CASE_STATUS_TYPE, nullable=False, index=True)
    failure_reason: str | None = None
    seg_sop_uid: str | None = Field(default=None, max_length=UID_LENGTH)
    sr_sop_uid: str | None = Field(default=None, max_length=UID_LENGTH)
    route: Route | None = Field(default=None, sa_type=ROUTE_TYPE, index=True, description="NULL until known")
    review_state: ReviewState | None = Field(
        default=None, sa_type=REVIEW_STATE_TYPE, index=True, description="NULL until the route is known"
    )


class Case(CaseBase, table=True):
    """One run of one model on one series."""

    __table_args__ = (sa.UniqueConstraint("series_id", "model", "run", name="uq_case_series_model_run"),)

    id: int | None = Field(default=None, primary_key=True)
    # No separate index: uq_case_series_model_run starts with series_id.
    series_id: int = Field(foreign_key="series.id", ondelete="CASCADE")
    timings: dict[str, Any] = Field(
        default_factory=dict, sa_type=sa.JSON, nullable=False, description="stage -> seconds"
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    review_reasons: list[str] | None = Field(
        default=None, sa_type=sa.JSON, description="the gate's reasons, worded for a radiologist"
    )
    quality: dict[str, dict[str, Any]] | None = Field(
        default=None, sa_type=sa.JSON, description="structure name -> scores (QUALITY_KEYS)"
    )
    sampling: dict[str, Any] | None = Field(
        default=None, sa_type=sa.JSON, description='{"method": "mc-dropout" | "tta-flip", "samples": N}'
    )
    reviewed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class CaseStructure(SQLModel, table=True):
    """One structure of one case (revision 0003): the estimates of its Dice, and its true Dice once known.

    Written by :func:`fairness_registry.crud.record_quality` (estimates, ``regions``) and
    :func:`fairness_registry.crud.record_truth` (``true_*``, ``truth_source``, ``truth_at``). Numbers are
    ``None`` when not computed or not finite. Dice and NSD in [0, 1]; volume in ml (3D) or mm² (2D); entropy in
    bits; distances in mm. ``regions`` maps each spatial key of ``quality.spatial`` (``boundary``,
    ``superior``, ...) to the share in [0, 1] of the structure's entropy mass falling there.
    """

    __tablename__ = "case_structure"
    __table_args__ = (sa.UniqueConstraint("case_id", "name", name="uq_case_structure_case_name"),)

    id: int | None = Field(default=None, primary_key=True)
    # No separate index: uq_case_structure_case_name starts with case_id.
    case_id: int = Field(foreign_key="case.id", ondelete="CASCADE")
    name: str = Field(max_length=STRUCTURE_NAME_LENGTH)
    label: int
    volume: float | None = Field(default=None, description="ml (3D) or mm² (2D)")
    mean_entropy: float | None = Field(default=None, description="bits")
    sample_dice: float | None = None
    volume_cv: float | None = None
    rca_max_dice: float | None = None
    rca_mean_dice: float | None = None
    rca_hd95_mm: float | None = Field(default=None, description="mm")
    predicted_dice: float | None = None
    predicted_low: float | None = None
    predicted_high: float | None = None
    coverage: float | None = Field(default=None, description="stated coverage of [predicted_low, predicted_high]")
    route: Route | None = Field(default=None, sa_type=STRUCTURE_ROUTE_TYPE)
    reasons: list[str] = Field(default_factory=list, sa_type=sa.JSON, nullable=False)
    regions: dict[str, float | None] = Field(
        default_factory=dict, sa_type=sa.JSON, nullable=False, description="spatial key -> share of entropy"
    )
    true_dice: float | None = None
    true_nsd: float | None = Field(default=None, description="normalised surface Dice at the card's tolerance")
    true_hd95_mm: float | None = Field(default=None, description="mm")
    truth_source: str | None = Field(default=None, max_length=TRUTH_SOURCE_LENGTH)
    truth_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class CasePublic(CaseBase):
    """A case as the API returns it."""

    id: int
    series_id: int
    timings: dict[str, float]
    created_at: datetime
    finished_at: datetime | None
    review_reasons: list[str] | None = None
    quality: dict[str, dict[str, Any]] | None = None
    sampling: dict[str, Any] | None = None
    reviewed_at: datetime | None = None


class WorklistStructure(SQLModel):
    """What the worklist shows of one structure: the predicted Dice with its interval, and RCA.

    Numbers are ``None`` when not computed (or not finite).
    """

    name: str
    label: int | None = None
    route: Route | None = None
    predicted_dice: float | None = None
    predicted_low: float | None = None
    predicted_high: float | None = None
    coverage: float | None = Field(default=None, description="stated coverage of [predicted_low, predicted_high]")
    rca_max_dice: float | None = None
    rca_mean_dice: float | None = None
    rca_hd95_mm: float | None = Field(default=None, description="mm")
    rca_calibrated_dice: float | None = Field(default=None, description="None: this structure's RCA is raw")
    reasons: list[str] = Field(default_factory=list)


class WorklistItem(SQLModel):
    """One case on the radiologists' worklist. It names the study and series by UID and holds no patient
    identifier (not even the pseudonym)."""

    case_id: int
    study_uid: str
    series_uid: str
    modality: str
    model: str
    model_version: str
    run: int
    status: CaseStatus
    route: Route
    reasons: list[str]
    review_state: ReviewState
    structures: list[WorklistStructure]
    created_at: datetime
    reviewed_at: datetime | None = None


#: Names of the registry's tables (the shared ``SQLModel.metadata`` may hold other packages' tables too).
REGISTRY_TABLES: frozenset[str] = frozenset(
    {"subject", "study", "series", "case", "case_structure", "review_user", "review_api_token", "review_action"}
    | {"job", "job_worker"}  # revision 0005: scale-out jobs and worker heartbeats
)


class JobState(StrEnum):
    """Life cycle of a scale-out job (revision 0005): ``queued -> running -> done | failed``."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: ``job.state``: VARCHAR(16) with CHECK ``ck_job_state``.
JOB_STATE_TYPE = checked_enum(JobState, name="ck_job_state", length=16)


class Job(SQLModel, table=True):
    """One study run handed to the workers of one model (revision 0005, Celery mode only).

    Unique per (study, run, model): a task delivered twice finds its row and its result, so it is processed
    once. ``attempt`` counts the workers that took it up; only the attempt that holds the row may finish it.
    ``result`` is the study outcome (outputs as paths relative to the shared storage root). Holds UIDs only.
    """

    __tablename__ = "job"
    __table_args__ = (sa.UniqueConstraint("study_uid", "run", "model", name="uq_job_study_run_model"),)

    id: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(max_length=UID_LENGTH)
    run: int
    model: str = Field(max_length=64)
    queue: str = Field(max_length=64)
    receiver: str = Field(max_length=128, description="the receiver that enqueued it (and forwards its results)")
    state: JobState = Field(default=JobState.QUEUED, sa_type=JOB_STATE_TYPE, nullable=False, index=True)
    attempt: int = Field(default=0, description="how many times a worker took it up")
    worker: str | None = Field(default=None, max_length=128)
    error: str | None = None
    result: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    enqueued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class JobWorker(SQLModel, table=True):
    """A Celery worker's heartbeat (revision 0005): what the status page lists."""

    __tablename__ = "job_worker"

    name: str = Field(primary_key=True, max_length=128, description="Celery node name, worker@host")
    host: str = Field(max_length=128)
    pid: int
    queues: list[str] = Field(default_factory=list, sa_type=sa.JSON, nullable=False)
    concurrency: int = 1
    provider: str | None = Field(default=None, max_length=64, description="ONNX Runtime provider in use")
    jobs_done: int = 0
    jobs_failed: int = 0
    last_error: str | None = None
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
