"""dicom_node.selection: rules against headers of cohort series and of hand-made series facts."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from dicom_node.selection import DEFAULT_RULES, Selection, SeriesInfo, SeriesRule, select

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(scope="module")
def ct_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    subject = draw_subject("ct-abdomen", 1, 1)
    image = ct_abdomen.generate(subject, matrix=64, slice_thickness=10.0)
    return write_study(image, subject, tmp_path_factory.mktemp("ct")).image_paths


@pytest.fixture
def ct_headers(ct_paths: tuple[Path, ...]) -> list[Dataset]:
    """Headers of the CT series as the spool reads them: no pixel data."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths]


def _info(**changes: object) -> SeriesInfo:
    values: dict[str, object] = {
        "series_uid": "1.2.3.4",
        "modality": "CT",
        "body_part": "ABDOMEN",
        "description": "Abdomen 5.0 mm",
        "n_instances": 120,
        "orientation": AXIAL,
        "sop_class_uid": CTImageStorage,
    }
    values.update(changes)
    return SeriesInfo(**values)  # type: ignore[arg-type]


def test_series_info_from_cohort_headers(ct_headers: list[Dataset]) -> None:
    info = SeriesInfo.from_datasets(ct_headers)
    assert info.series_uid == ct_headers[0].SeriesInstanceUID
    assert (info.modality, info.body_part) == ("CT", "ABDOMEN")
    assert info.description == ct_headers[0].SeriesDescription
    assert info.n_instances == info.n_images == len(ct_headers)
    assert info.orientation == pytest.approx(AXIAL)
    assert info.plane == "axial"
    assert info.sop_class_uid == CTImageStorage


def test_cohort_ct_goes_to_ct_abdomen_with_a_reason(ct_headers: list[Dataset]) -> None:
    info = SeriesInfo.from_datasets(ct_headers)
    (selection,) = select([info], DEFAULT_RULES)
    assert selection.series_uid == info.series_uid
    assert selection.model == "ct-abdomen"
    assert selection.reason == f"rule 1 (ct-abdomen): CT, ABDOMEN, axial, {len(ct_headers)} instances"


def test_scout_is_skipped_with_the_reason(ct_headers: list[Dataset]) -> None:
    for ds in ct_headers:
        ds.SeriesDescription = "SCOUT"
    (selection,) = select([SeriesInfo.from_datasets(ct_headers)], DEFAULT_RULES)
    assert selection.model is None
    assert selection.reason.startswith("no rule matched: rule 1 (ct-abdomen): description 'SCOUT' matches")
    assert "exclude_regex" in selection.reason


def test_enhanced_ct_counts_frames(ct_headers: list[Dataset], ct_paths: tuple[Path, ...]) -> None:
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(p) for p in ct_paths],
        series_instance_uid=generate_uid(),
        series_number=20,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    info = SeriesInfo.from_datasets([converted])
    assert (info.n_instances, info.n_images) == (1, len(ct_paths))
    assert info.plane == "axial"  # from the shared functional groups
    (selection,) = select([info], DEFAULT_RULES)
    assert selection.model == "ct-abdomen"
    assert f"1 instances ({len(ct_paths)} frames)" in selection.reason


def test_mr_without_a_rule_names_each_rules_failing_condition() -> None:
    rules = [rule for rule in DEFAULT_RULES if rule.model != "mr-brain"]
    mr = _info(modality="MR", body_part="BRAIN", description="T1 3D")
    (selection,) = select([mr], rules)
    assert selection.model is None
    assert selection.reason == (
        "no rule matched: rule 1 (ct-abdomen): modality MR not in [CT]; "
        "rule 2 (xr-knee): modality MR not in [DX, CR]; "
        "rule 3 (xr-knee): modality MR not in [DX, CR]"
    )


def test_no_rules_skips_every_series() -> None:
    (selection,) = select([_info()], [])
    assert selection == Selection("1.2.3.4", None, "no rule matched: no rules are configured")


def test_default_rules_route_knee_radiographs_and_brain_mr() -> None:
    series = [
        _info(series_uid="1", modality="DX", body_part="KNEE", orientation=None, n_instances=1),
        _info(series_uid="2", modality="CR", body_part="LEG", description="Knee AP", orientation=None),
        _info(series_uid="3", modality="DX", body_part="CHEST", description="PA", orientation=None),
        _info(series_uid="4", modality="MR", body_part="head", description="T1 MPRAGE"),
        _info(series_uid="5", modality="MR", body_part="HEAD", description="3-plane localizer"),
    ]
    models = [s.model for s in select(series, DEFAULT_RULES)]
    assert models == ["xr-knee", "xr-knee", None, "mr-brain", None]


def test_min_instances() -> None:
    (few, enough) = select(
        [_info(series_uid="a", n_instances=19), _info(series_uid="b", n_instances=20)], DEFAULT_RULES
    )
    assert few.model is None
    assert "rule 1 (ct-abdomen): 19 images, fewer than min_instances 20" in few.reason
    assert enough.model == "ct-abdomen"


@pytest.mark.parametrize(("orientation", "plane"), [(CORONAL, "coronal"), (SAGITTAL, "sagittal"), (None, None)])
def test_orientation_condition(orientation: tuple[float, ...] | None, plane: str | None) -> None:
    (selection,) = select([_info(orientation=orientation)], DEFAULT_RULES)
    assert selection.model is None
    found = plane or "unknown (no ImageOrientationPatient)"
    assert f"rule 1 (ct-abdomen): orientation {found} is not axial" in selection.reason


def test_first_matching_rule_wins_and_conditions_are_case_insensitive() -> None:
    rules = [
        SeriesRule(model="ct-liver", modalities=["ct"], body_parts=["abdomen"], description_regex=r"LIVER"),
        SeriesRule(model="ct-abdomen", modalities=["CT"], sop_classes=[CTImageStorage]),
        SeriesRule(model="ct-other", modalities=["CT"]),
    ]
    liver, plain, other = select(
        [
            _info(series_uid="1", description="portal venous liver"),
            _info(series_uid="2"),
            _info(series_uid="3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2.1"),
        ],
        rules,
    )
    assert (liver.model, plain.model, other.model) == ("ct-liver", "ct-abdomen", "ct-other")
    assert plain.reason.startswith("rule 2 (ct-abdomen): ")
    assert other.reason.startswith("rule 3 (ct-other): ")


@pytest.mark.parametrize("field", ["description_regex", "exclude_regex"])
def test_bad_regex_is_a_validation_error_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError) as info:
        SeriesRule.model_validate({"model": "ct-abdomen", "modalities": ["CT"], field: "scout|(localizer"})
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert "'scout|(localizer' is not a valid regular expression" in error["msg"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_instances": 0}, "min_instances"),
        ({"modalities": []}, "modalities"),
        ({"orientation": "oblique"}, "orientation"),
        ({"sop_classes": ["CT Image Storage"]}, "sop_classes"),
        ({"body_part": ["KNEE"]}, "body_part"),  # misspelt key: extra fields are forbidden
    ],
)
def test_invalid_rules_are_refused(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        SeriesRule.model_validate({"model": "m", "modalities": ["CT"], **changes})
    assert [error["loc"][0] for error in info.value.errors()] == [field]


def test_rules_load_from_yaml() -> None:
    text = """
    - model: ct-abdomen
      modalities: [CT]
      orientation: axial
      min_instances: 20
      exclude_regex: scout|localizer|topogram
    - model: xr-knee
      modalities: [DX, CR]
      body_parts: [knee]
    """
    rules = TypeAdapter(list[SeriesRule]).validate_python(yaml.safe_load(text))
    assert rules[0] == DEFAULT_RULES[0].model_copy(update={"exclude_regex": "scout|localizer|topogram"})
    assert rules[1].body_parts == ["KNEE"]
