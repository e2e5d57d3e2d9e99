from pathlib import Path

import pytest

from cohorts.shift import BALANCED, ImagingShift, ShiftFileError, ShiftSpec, load_shift, shipped_scenarios
from cohorts.subjects import draw_subject


def test_shipped_scenarios_are_valid() -> None:
    scenarios = shipped_scenarios()
    assert {"balanced", "under-represented-women", "obese-noisy", "site-low-contrast"} <= set(scenarios)
    for path in scenarios.values():
        spec = load_shift(path)
        assert abs(sum(g.share for g in spec.groups) - 1) < 1e-6


def test_shares_are_reproduced() -> None:
    spec = load_shift(shipped_scenarios()["under-represented-women"])
    subjects = [draw_subject("ct-abdomen", i, 3, spec) for i in range(400)]
    women = sum(s.sex == "F" for s in subjects) / len(subjects)
    assert 0.10 <= women <= 0.20
    assert all(s.group == ("sex=F" if s.sex == "F" else "sex=M") for s in subjects)


def test_group_shift_is_attached_to_matching_subjects() -> None:
    spec = load_shift(shipped_scenarios()["obese-noisy"])
    subjects = [draw_subject("ct-abdomen", i, 5, spec) for i in range(100)]
    obese = [s for s in subjects if s.bmi_band == "obese"]
    assert obese and all(s.shift.noise == 2.0 for s in obese)
    assert all(s.shift.noise == 1.0 for s in subjects if s.bmi_band != "obese")


def test_balanced_population_is_mixed() -> None:
    subjects = [draw_subject("xr-knee", i, 0, BALANCED) for i in range(300)]
    assert 0.4 < sum(s.sex == "F" for s in subjects) / 300 < 0.6
    assert {s.age_band for s in subjects} == {"18-39", "40-59", "60-74", "75+"}
    assert len({s.ethnic_group for s in subjects}) == 5
    assert {"normal", "overweight", "obese"} <= {s.bmi_band for s in subjects}


def test_subject_is_independent_of_cohort_size_and_deterministic() -> None:
    a = draw_subject("ct-abdomen", 7, 11)
    b = draw_subject("ct-abdomen", 7, 11)
    c = draw_subject("ct-abdomen", 8, 11)
    assert a == b
    assert a.patient_id != c.patient_id


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\ngroups:\n  - share: 0.5\n", "sum to 1"),
        ("name: x\ngroups:\n  - share: 1.0\n    shift: {noise: -1}\n", "groups.0.shift.noise"),
        ("name: x\ngroups:\n  - share: 1.0\n    match: {sex: X}\n", "groups.0.match.sex"),
        ("[unclosed", "not valid YAML"),
        ("- a list\n", "must hold a mapping"),
    ],
)
def test_bad_shift_files_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "shift.yaml"
    path.write_text(content)
    with pytest.raises(ShiftFileError, match=message):
        load_shift(path)


def test_missing_shift_file(tmp_path: Path) -> None:
    with pytest.raises(ShiftFileError, match="cannot read"):
        load_shift(tmp_path / "nope.yaml")


def test_unmatchable_group_is_reported() -> None:
    spec = ShiftSpec.model_validate(
        {"name": "impossible", "groups": [{"match": {"sex": "F", "manufacturer": "Nobody"}, "share": 1.0}]}
    )
    with pytest.raises(ValueError, match="no plausible subject"):
        draw_subject("ct-abdomen", 0, 0, spec)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lesion_mm", -1),
        ("lesion_mm", 61),
        ("lesion_count", 0),
        ("lesion_count", 7),
        ("fov_fraction", 0.2),
        ("fov_fraction", 1.2),
        ("z_coverage", 0.1),
        ("z_coverage", 1.5),
        ("metal_mm", -5),
        ("metal_mm", 300),
        ("lesion_size", 10),  # not a field: rejected, not ignored
    ],
)
def test_new_shift_fields_are_bounded(tmp_path: Path, field: str, value: float) -> None:
    path = tmp_path / "shift.yaml"
    path.write_text(f"name: x\ngroups:\n  - share: 1.0\n    shift: {{{field}: {value}}}\n")
    with pytest.raises(ShiftFileError, match=f"groups.0.shift.{field}"):
        load_shift(path)


def test_new_shift_fields_default_to_no_change() -> None:
    shift = ImagingShift()
    assert (shift.lesion_mm, shift.lesion_count, shift.fov_fraction, shift.z_coverage, shift.metal_mm) == (
        0.0,
        1,
        1.0,
        1.0,
        0.0,
    )
    edge = ImagingShift(lesion_mm=60, lesion_count=6, fov_fraction=0.3, z_coverage=0.3, metal_mm=250)
    assert edge.fov_fraction == 0.3


@pytest.mark.parametrize("kind", ["ct-abdomen", "xr-knee"])
def test_stress_scenarios_mix_failure_modes_with_unshifted_subjects(kind: str) -> None:
    spec = load_shift(shipped_scenarios()[f"stress-{kind}"])
    assert spec.name == f"stress-{kind}"
    assert abs(sum(g.share for g in spec.groups) - 1) < 1e-6
    unshifted = sum(g.share for g in spec.groups if g.shift == ImagingShift())
    assert 0.3 <= unshifted <= 0.4
    shifts = [g.shift for g in spec.groups]
    assert any(s.lesion_mm > 0 for s in shifts)
    assert any(s.fov_fraction < 1 for s in shifts)
    assert any(s.artefact_probability > 0 or s.metal_mm > 0 for s in shifts)
    assert any(s.noise >= 2 for s in shifts)
    assert any(0 in s.organ_scale.values() for s in shifts)
    # groups are matched on demographics, so that failures concentrate in some of them
    assert all(g.match.describe() != "everyone" for g in spec.groups)
    subjects = [draw_subject(kind, i, 8, spec) for i in range(60)]
    assert 8 <= sum(s.shift == ImagingShift() for s in subjects) <= 36
