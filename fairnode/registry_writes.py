"""The registry rows of one study run: study, acquisition, series, case, its outcome and quality.

:class:`StudyRegistry` writes them; the pipeline collects what it needs as a :class:`StudyRecord` while it
segments and writes it once the results are on disk, so that the registry is never a reason to withhold
results from PACS (a refused write is kept and retried: :mod:`fairnode.registry_pending`).

Writing a record again is harmless: a study and a series are updated, a case is found again by its run
(unique per series and model), and a case that has already finished is left as it is, so a record
written twice (a retry after a write whose acknowledgement was lost) gives its rows once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pydicom
from sqlalchemy.exc import SQLAlchemyError

from fairness_registry import crud
from fairness_registry.settings import RegistrySettings
from quality import types as qt
from quality.types import CaseQuality

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_RESUME_LOOKUP",
    "REGISTRY_ERRORS",
    "CaseResult",
    "SeriesEntry",
    "StudyRecord",
    "StudyRegistry",
    "quality_from_dict",
    "write_record",
]

#: Errors that mean "the registry did not take the write now" (unreachable, refused, a concurrent writer's
#: row in the way): the write is kept and tried again later.
REGISTRY_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError,)

#: cases of one series and model looked at when a run is resumed (runs per series stay far below this)
MAX_RESUME_LOOKUP = 100


class SeriesFacts(Protocol):
    """What the registry stores of a series (a :class:`dicom_node.selection.SeriesInfo` has it)."""

    @property
    def series_uid(self) -> str: ...

    @property
    def modality(self) -> str: ...

    @property
    def body_part(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def n_instances(self) -> int: ...


class CaseOutcome(Protocol):
    """What the registry stores of a processed series (a :class:`fairnode.pipeline.SeriesOutcome` has it)."""

    status: str
    reason: str
    timings: dict[str, float]
    seg_uid: str | None
    sr_uid: str | None
    review_state: str | None
    providers: list[str]


@dataclass
class CaseResult:
    """A processed series as the registry stores it: status, reason, timings, output UIDs, review state."""

    status: str
    reason: str
    timings: dict[str, float] = field(default_factory=dict)
    seg_uid: str | None = None
    sr_uid: str | None = None
    review_state: str | None = None
    providers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, outcome: CaseOutcome) -> CaseResult:
        return cls(
            outcome.status,
            outcome.reason,
            dict(outcome.timings),
            outcome.seg_uid,
            outcome.sr_uid,
            outcome.review_state,
            list(outcome.providers),
        )


@dataclass(frozen=True)
class SeriesFactsRecord:
    """:class:`SeriesFacts` as plain values (what a kept record holds)."""

    series_uid: str
    modality: str
    body_part: str
    description: str
    n_instances: int

    @classmethod
    def of(cls, info: SeriesFacts) -> SeriesFactsRecord:
        return cls(info.series_uid, info.modality, info.body_part, info.description, info.n_instances)


@dataclass
class SeriesEntry:
    """One series of a study run: what was selected for it, with which header, and how it ended.

    ``header`` is the series' first header (the acquisition of a processed series comes from it);
    ``result`` is ``None`` for a series no model takes (it only gets its series row).
    """

    info: SeriesFactsRecord
    model: str | None
    reason: str
    model_version: str
    header: pydicom.Dataset | None = field(default=None, repr=False)
    result: CaseResult | None = None
    quality: CaseQuality | None = None


@dataclass
class StudyRecord:
    """Everything the registry is told of one study run, gathered by the pipeline while it processes it.

    ``header`` is a header of the study (its demographics and first acquisition come from it).
    """

    study_uid: str
    run: int
    header: pydicom.Dataset = field(repr=False)
    series: list[SeriesEntry] = field(default_factory=list)

    def to_dict(self, header_names: Callable[[pydicom.Dataset | None], str | None]) -> dict[str, Any]:
        """Plain JSON values; each header is named by ``header_names`` (which writes it where it belongs)."""
        return {
            "study_uid": self.study_uid,
            "run": self.run,
            "header": header_names(self.header),
            "series": [
                {
                    "info": asdict(s.info),
                    "model": s.model,
                    "reason": s.reason,
                    "model_version": s.model_version,
                    "header": header_names(s.header),
                    "result": asdict(s.result) if s.result is not None else None,
                    "quality": asdict(s.quality) if s.quality is not None else None,
                }
                for s in self.series
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], headers: Callable[[str | None], pydicom.Dataset | None]) -> StudyRecord:
        """The record :meth:`to_dict` gave; ``headers`` reads a header back by its name."""
        study_header = headers(data["header"])
        if study_header is None:
            raise ValueError(f"the kept registry record of study {data.get('study_uid')} has no study header")
        return cls(
            study_uid=str(data["study_uid"]),
            run=int(data["run"]),
            header=study_header,
            series=[
                SeriesEntry(
                    info=SeriesFactsRecord(**s["info"]),
                    model=s["model"],
                    reason=str(s["reason"]),
                    model_version=str(s["model_version"]),
                    header=headers(s["header"]),
                    result=CaseResult(**s["result"]) if s["result"] is not None else None,
                    quality=quality_from_dict(s["quality"]) if s["quality"] is not None else None,
                )
                for s in data["series"]
            ],
        )


def quality_from_dict(data: dict[str, Any]) -> CaseQuality:
    """The :class:`~quality.types.CaseQuality` of ``dataclasses.asdict(quality)`` (read back from JSON)."""

    def structure(s: dict[str, Any]) -> qt.StructureQuality:
        return qt.StructureQuality(
            label=int(s["label"]),
            name=str(s["name"]),
            uncertainty=qt.StructureUncertainty(**s["uncertainty"]),
            rca=qt.StructureRca(**s["rca"]) if s.get("rca") is not None else None,
            prediction=qt.DicePrediction(**s["prediction"]) if s.get("prediction") is not None else None,
            route=qt.Route(s["route"]),
            reasons=tuple(s.get("reasons", ())),
            regions=dict(s.get("regions", {})),
        )

    return CaseQuality(
        route=qt.Route(data["route"]),
        reasons=tuple(data["reasons"]),
        structures=tuple(structure(s) for s in data["structures"]),
        method=qt.SamplingMethod(data["method"]),
        samples=int(data["samples"]),
    )


class StudyRegistry:
    """Registry rows for one study (no-op when ``sessions`` is ``None``).

    The study row gets the demographics of ``header`` (mapped with the configured ethnic group table) and
    the acquisition of the first series a model processes (its slice thickness, spacing and kVp, not
    those of a localiser that happened to arrive first).

    Parameters
    ----------
    sessions
        opens a registry session (commits on success); ``None``: nothing is recorded.
    secret
        the pseudonymisation secret.
    options
        the ethnic group table and site name.
    header, study_uid
        a header of the study and its StudyInstanceUID.
    version_of
        a model's version by name (for a new case row).
    """

    def __init__(
        self,
        sessions: Callable[[], object] | None,
        *,
        secret: bytes,
        options: RegistrySettings,
        header: pydicom.Dataset,
        study_uid: str,
        version_of: Callable[[str], str],
    ):
        self.sessions = sessions
        self.options = options
        self.version_of = version_of
        self.study_id: int | None = None
        self._acquisition_recorded = False
        self._finished: set[int] = set()
        if sessions is None:
            return
        with sessions() as session:  # type: ignore[attr-defined]
            study = crud.record_study(
                session,
                study_uid=study_uid,
                header=header,
                secret=secret,
                ethnic_groups=options.mapping(),
                site=options.site,
            )
            self.study_id = study.id

    def series(
        self, info: SeriesFacts, model: str | None, reason: str, run: int, header: pydicom.Dataset | None = None
    ) -> int | None:
        """Record a series (and, when a model takes it, its case of ``run``); the case's id, or ``None``."""
        if self.sessions is None or self.study_id is None:
            return None
        with self.sessions() as session:  # type: ignore[attr-defined]
            if model is not None and header is not None and not self._acquisition_recorded:
                crud.record_acquisition(session, study_id=self.study_id, header=header, site=self.options.site)
                self._acquisition_recorded = True
            series = crud.record_series(
                session,
                study_id=self.study_id,
                series_uid=info.series_uid,
                modality=info.modality,
                body_part=info.body_part,
                description=info.description,
                n_instances=info.n_instances,
                selected_model=model,
                selection_reason=reason,
            )
            if model is None:
                return None
            if series.id is None:
                raise RuntimeError(f"series {info.series_uid} was not stored in the registry")
            # a run interrupted by a crash is resumed with the same run number: its case is taken up again
            resumed = crud.list_cases(session, model=model, series_id=series.id, limit=MAX_RESUME_LOOKUP)
            case = next((c for c in resumed if c.run == run), None)
            if case is None:
                case = crud.record_case(
                    session, series_id=series.id, model=model, model_version=self.version_of(model), run=run
                )
            if case.id is None:
                raise RuntimeError(f"case for series {info.series_uid} was not stored in the registry")
            if case.status == "queued":
                crud.update_case(session, case_id=case.id, status="running")
            elif case.status != "running":  # finished before (a crash, a record written twice): nothing twice
                self._finished.add(case.id)
            return case.id

    def case_finished(self, case_id: int | None, outcome: CaseOutcome, quality: CaseQuality | None) -> None:
        """Record how a case ended (status, timings, output UIDs) and its quality; once per case."""
        if self.sessions is None or case_id is None or case_id in self._finished:
            return
        with self.sessions() as session:  # type: ignore[attr-defined]
            crud.update_case(
                session,
                case_id=case_id,
                status=outcome.status,
                failure_reason=outcome.reason if outcome.status == "failed" else None,
                timings=outcome.timings,
                seg_sop_uid=outcome.seg_uid,
                sr_sop_uid=outcome.sr_uid,
            )
            if quality is not None and outcome.review_state is not None:
                crud.record_quality(
                    session,
                    case_id=case_id,
                    quality=quality,
                    review_state=outcome.review_state,
                    providers=outcome.providers,
                )
        self._finished.add(case_id)


def write_record(
    record: StudyRecord, sessions: Callable[[], object], *, secret: bytes, options: RegistrySettings
) -> None:
    """Write every row of ``record`` (raises what the registry raises; see :data:`REGISTRY_ERRORS`)."""
    versions = {s.model: s.model_version for s in record.series if s.model is not None}
    registry = StudyRegistry(
        sessions,
        secret=secret,
        options=options,
        header=record.header,
        study_uid=record.study_uid,
        version_of=lambda model: versions.get(model, ""),
    )
    for entry in record.series:
        case_id = registry.series(entry.info, entry.model, entry.reason, record.run, header=entry.header)
        if entry.result is not None:
            registry.case_finished(case_id, entry.result, entry.quality)
    logger.info("registry rows of study %s run %d written", record.study_uid, record.run)
