"""What the pipeline hands the registry: the study header with the configured table and site, the processed
series' acquisition, and the quality with its per-structure rows (both backends, no model run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pydicom
from sqlmodel import Session, select

from dicom_node.selection import SeriesInfo
from dicom_node.writers import OutputSettings
from fairness_registry.db import get_engine
from fairness_registry.models import Case, CaseStructure, Study
from fairness_registry.pseudonym import UNLINKED
from fairness_registry.settings import RegistrySettings
from fairnode.node import registry_sessions
from fairnode.pipeline import PipelineContext, SeriesOutcome, _Registry
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import LIVER_REGIONS, review_quality

STUDY_UID = "1.2.826.0.1.3680043.8.498.971"
LOCALISER_UID = "1.2.826.0.1.3680043.8.498.972"
CT_UID = "1.2.826.0.1.3680043.8.498.973"


def _header(series_uid: str, **values: object) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientID = "PID-PIPE"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.PatientSex = "M"
    ds.PatientAge = "070Y"
    ds.EthnicGroup = "Maori"
    ds.InstitutionName = "Radiology Dept 2"
    ds.Manufacturer = "GE"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


class _Models:
    """Stands in for :class:`fairnode.pipeline.Models`: the registry only asks a model's card version."""

    def __init__(self) -> None:
        self.folders = {"test-model": Path("test-model")}

    def get(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(card=SimpleNamespace(version="1.0"))


def _info(uid: str) -> SeriesInfo:
    return SeriesInfo(uid, "CT", "ABDOMEN", "", 3, None, "1.2.840.10008.5.1.4.1.1.2")


def test_registry_gets_table_site_acquisition_and_structures(registry_url: str, tmp_path: Path) -> None:
    table = tmp_path / "groups.yaml"
    table.write_text("groups:\n  Pacific: [maori, samoan]\n", encoding="utf-8")
    ctx = PipelineContext(
        rules=[],
        models=_Models(),  # type: ignore[arg-type]
        outputs=OutputSettings(),
        registry_session=registry_sessions(registry_url),
        secret=TEST_SECRET.encode(),
        registry_options=RegistrySettings(ethnic_groups=table, site="Harbour Hospital"),
    )
    localiser = _header(LOCALISER_UID, SliceThickness="10", KVP="80", ManufacturerModelName="Scout")
    ct = _header(CT_UID, SliceThickness="1.25", KVP="120", ManufacturerModelName="Revolution", PixelSpacing=[0.8, 0.8])
    ct.ContrastBolusAgent = "Visipaque"
    registry = _Registry(ctx, localiser, STUDY_UID)
    assert registry.series(_info(LOCALISER_UID), None, "localiser", 1, header=localiser) is None
    case_id = registry.series(_info(CT_UID), "test-model", "CT of the abdomen", 1, header=ct)
    assert case_id is not None
    outcome = SeriesOutcome(CT_UID, "CT", "test-model", "CT of the abdomen", "done", review_state="held")
    outcome.providers = ["torch-cuda"]
    registry.case_finished(case_id, outcome, review_quality())

    with Session(get_engine(registry_url)) as session:
        study = session.exec(select(Study)).one()
        assert (study.sex, study.age_years, study.ethnic_group, study.ethnic_group_text) == (
            "M",
            70,
            "Pacific",
            "Maori",
        )
        assert (study.site, study.institution) == ("Harbour Hospital", "Radiology Dept 2")
        assert (study.scanner_model, study.slice_thickness_mm, study.kvp, study.pixel_spacing_mm, study.contrast) == (
            "Revolution",
            1.25,
            120.0,
            0.8,
            True,
        )
        case = session.get(Case, case_id)
        assert case is not None and case.review_state == "held"
        assert case.sampling is not None and case.sampling["providers"] == ["torch-cuda"]
        rows = session.exec(select(CaseStructure).where(CaseStructure.case_id == case_id)).all()
        assert {r.name: r.regions for r in rows} == {"liver": LIVER_REGIONS, "spleen": {}}


def test_study_without_patient_id_gets_its_case_under_the_unlinked_subject(registry_url: str) -> None:
    ctx = PipelineContext(
        rules=[],
        models=_Models(),  # type: ignore[arg-type]
        outputs=OutputSettings(),
        registry_session=registry_sessions(registry_url),
        secret=TEST_SECRET.encode(),
    )
    ct = _header(CT_UID, SliceThickness="1.25")
    del ct.PatientID
    registry = _Registry(ctx, ct, STUDY_UID)
    case_id = registry.series(_info(CT_UID), "test-model", "CT of the abdomen", 1, header=ct)
    assert case_id is not None
    registry.case_finished(case_id, SeriesOutcome(CT_UID, "CT", "test-model", "CT", "done"), None)
    with Session(get_engine(registry_url)) as session:
        study = session.exec(select(Study)).one()
        assert study.pseudonym == UNLINKED and study.sex is None and study.age_years is None
        assert study.slice_thickness_mm == 1.25  # the acquisition is still recorded
        case = session.get(Case, case_id)
        assert case is not None and case.status == "done"
