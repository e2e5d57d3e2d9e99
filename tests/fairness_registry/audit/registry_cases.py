"""Record a synthetic audit frame in a real registry through the crud functions, headers full of identifiers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd
import pydicom
from sqlmodel import Session

from fairness_registry import crud
from fairness_registry.audit.settings import REGION_KEYS
from quality.types import (
    CaseQuality,
    DicePrediction,
    Route,
    SamplingMethod,
    StructureQuality,
    StructureRca,
    StructureUncertainty,
)
from tests.fairness_registry.conftest import TEST_SECRET

_ETHNIC_TEXT = {"White": "White British", "Black": "Black African", "Asian": "Asian", "Hispanic": "Hispanic"}
_ETHNIC_TEXT["Other"] = "Other mixed"


@dataclass
class Recorded:
    """What went into the registry: every identifier, and the case ids by frame case id."""

    identifiers: list[str] = field(default_factory=list)
    case_ids: dict[int, int] = field(default_factory=dict)


def _number(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    return float("nan") if not np.isfinite(number) else number


def _header(index: int, row: pd.Series, recorded: Recorded) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientID = f"MRN-{7_300_000 + index}"
    ds.PatientName = f"Nowak{index:04d}^Zofia"
    birth_year = row["received_at"].year - int(row["age_years"]) - 1
    ds.PatientBirthDate = f"{birth_year}0{1 + index % 9}1{index % 9}"
    ds.AccessionNumber = f"ACC-{91_000_000 + index}"
    ds.StudyDate = row["received_at"].strftime("%Y%m%d")
    ds.PatientSex = row["sex"]
    ds.PatientAge = f"{int(row['age_years']):03d}Y"
    if np.isfinite(_number(row["bmi"])):
        ds.PatientSize = "1.70"
        ds.PatientWeight = f"{row['bmi'] * 1.7 * 1.7:.1f}"
    if row["ethnic_group"] in _ETHNIC_TEXT:
        ds.EthnicGroup = _ETHNIC_TEXT[row["ethnic_group"]]
    ds.InstitutionName = row["site"]
    ds.Manufacturer = row["manufacturer"]
    ds.ManufacturerModelName = row["scanner_model"]
    ds.SliceThickness = str(row["slice_thickness_mm"])
    ds.KVP = str(row["kvp"])
    if row["contrast"]:
        ds.ContrastBolusAgent = "Iohexol"
    recorded.identifiers += [ds.PatientID, str(ds.PatientName), f"Nowak{index:04d}", ds.PatientBirthDate]
    recorded.identifiers.append(ds.AccessionNumber)
    return ds


def _quality(rows: pd.DataFrame) -> CaseQuality:
    structures = []
    for label, (_, s) in enumerate(rows.iterrows(), start=1):
        name = str(s["structure"])
        route = Route(s["route"])
        structures.append(
            StructureQuality(
                label=label,
                name=name,
                uncertainty=StructureUncertainty(label, name, float(s["volume"]), 0.1, 0.02, 0.95, 0.02),
                rca=StructureRca(label, name, float(s["rca_dice"]), float(s["rca_dice"]) - 0.05, 3.0),
                prediction=DicePrediction(
                    label, name, float(s["predicted_dice"]), float(s["predicted_low"]), float(s["predicted_high"]), 0.9
                ),
                route=route,
                reasons=(f"{name}: predicted Dice {s['predicted_dice']:.2f} below 0.80",)
                if route is Route.REVIEW
                else (),
                regions={key: float(s[f"region_{key}"]) for key in REGION_KEYS},
            )
        )
    case_route = Route.REVIEW if any(s.route is Route.REVIEW for s in structures) else Route.PASS
    reasons = tuple(r for s in structures for r in s.reasons)
    return CaseQuality(case_route, reasons, tuple(structures), SamplingMethod.MC_DROPOUT, 8)


def record_frame(session: Session, frame: pd.DataFrame, *, status: str = "done") -> Recorded:
    """Record every case of a synthetic frame (:func:`~fairness_registry.audit.synthetic.synthetic_frame`)."""
    recorded = Recorded()
    patients = {p: i for i, p in enumerate(sorted(frame["pseudonym"].unique()))}
    for case_number, rows in frame.groupby("case_id", sort=True):
        first = rows.iloc[0]
        header = _header(patients[first["pseudonym"]], first, recorded)
        uid = f"1.2.826.0.1.3680043.8.498.{int(case_number)}"
        study = crud.record_study(
            session, study_uid=uid, secret=TEST_SECRET, header=header, received_at=first["received_at"]
        )
        assert study.id is not None
        crud.record_acquisition(session, study_id=study.id, header=header)
        series = crud.record_series(session, study_id=study.id, series_uid=uid + ".1", modality="CT")
        assert series.id is not None
        case = crud.record_case(session, series_id=series.id, model=str(first["model"]), model_version="1.0.0")
        assert case.id is not None
        recorded.case_ids[int(case_number)] = case.id
        crud.update_case(session, case_id=case.id, status="running")
        if status == "failed":
            crud.update_case(session, case_id=case.id, status="failed", failure_reason="no series")
            continue
        quality = _quality(rows)
        crud.record_quality(
            session,
            case_id=case.id,
            quality=quality,
            review_state="forwarded" if quality.route is Route.REVIEW else None,
        )
        crud.update_case(session, case_id=case.id, status="done")
        for _, s in rows.iterrows():
            if np.isfinite(_number(s["true_dice"])):
                crud.record_truth(
                    session,
                    case_id=case.id,
                    structure=str(s["structure"]),
                    dice=float(s["true_dice"]),
                    nsd=float(s["true_nsd"]),
                    hd95_mm=float(s["true_hd95_mm"]),
                    source="upload",
                )
    return recorded


def shifted(frame: pd.DataFrame, days: int) -> pd.DataFrame:
    """The frame with every study received ``days`` later (and new case ids)."""
    out = frame.copy()
    out["received_at"] = out["received_at"] + timedelta(days=days)
    out["case_id"] = out["case_id"] + 100_000
    return out
