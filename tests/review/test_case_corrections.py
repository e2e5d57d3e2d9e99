"""Corrected SEGs scored against fairnode's SEG with MONAI: Dice 1.0 for fairnode's own SEG, the Dice a
perturbation must give, the case found by the referenced series, and errors that say what was wrong."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlmodel import Session

from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from inference.metrics import dice
from review.case_files import CaseFiles, locate_case_files
from review.corrections import (
    CorrectionError,
    case_for_series,
    evaluate_correction,
    read_seg,
    referenced_series,
    score_structures,
)
from tests.review.case_samples import SampleCase, ct_case, dx_case

PERTURB = 1  # voxels the liver of fairnode's SEG is shrunk by, in-plane


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, SampleCase, SampleCase]]:
    tmp = tmp_path_factory.mktemp("corrections")
    url = sqlite_url(tmp / "registry.db")
    migrate(url)
    with Session(get_engine(url)) as session:
        ct = ct_case(tmp / "spool", session, tmp / "cohort", perturb=PERTURB)
        dx = dx_case(tmp / "spool", session, tmp / "cohort")
    yield url, tmp / "spool", ct, dx
    dispose_engines()


def _files(spool: Path, case: SampleCase) -> CaseFiles:
    return locate_case_files(spool, study_uid=case.study_uid, series_uid=case.series_uid, run=case.run)


def test_fairnode_own_seg_scores_one(registry: tuple[str, Path, SampleCase, SampleCase]) -> None:
    _, spool, ct, dx = registry
    for case in (ct, dx):
        scores = evaluate_correction(read_seg(case.seg), _files(spool, case), case.card.labels)
        assert [s.structure for s in scores] == [lab.name for lab in case.card.labels]
        for s in scores:
            assert (s.dice, s.nsd, s.hd95_mm) == (1.0, 1.0, 0.0), s


def test_perturbed_seg_gives_the_expected_lower_dice(registry: tuple[str, Path, SampleCase, SampleCase]) -> None:
    _, spool, ct, _ = registry
    # the correction is the phantom's ground truth; fairnode's liver was shrunk by one voxel
    scores = {s.structure: s for s in evaluate_correction(read_seg(ct.truth_seg), _files(spool, ct), ct.card.labels)}
    expected = dice(ct.labels == 1, ct.truth == 1)
    assert 0.5 < expected < 0.98
    liver = scores["liver"]
    assert liver.dice == pytest.approx(expected, abs=1e-3)
    assert liver.nsd is not None and liver.nsd < 0.5  # the voxels are wider than the 2 mm tolerance
    assert liver.hd95_mm is not None and liver.hd95_mm == pytest.approx(min(ct.spacing[1:]), rel=0.3)
    assert all(scores[n].dice == 1.0 for n in ("spleen", "right_kidney", "left_kidney", "aorta"))


def test_score_structures_empty_and_missing() -> None:
    from tests.review.case_samples import card_of

    labels = card_of("ct-abdomen").labels
    a = np.zeros((4, 16, 16), dtype=np.uint8)
    b = a.copy()
    a[1:3, 4:8, 4:8] = 1  # liver only in fairnode's
    b[1:3, 4:8, 4:10] = 2  # spleen only in the correction
    scores = {s.structure: s for s in score_structures(a, b, labels, (2.0, 1.0, 1.0))}
    assert (scores["liver"].dice, scores["liver"].nsd, scores["liver"].hd95_mm) == (0.0, 0.0, None)
    assert scores["spleen"].dice == 0.0
    assert (scores["aorta"].dice, scores["aorta"].nsd, scores["aorta"].hd95_mm) == (1.0, None, None)
    with pytest.raises(CorrectionError, match=r"label maps of shapes \(4, 16, 16\) and \(4, 16, 8\)"):
        score_structures(a, b[..., :8], labels, (2.0, 1.0, 1.0))


def test_case_found_by_referenced_series(registry: tuple[str, Path, SampleCase, SampleCase]) -> None:
    url, _, ct, dx = registry
    with Session(get_engine(url)) as session:
        for case in (ct, dx):
            found = case_for_series(session, referenced_series(read_seg(case.truth_seg)))
            assert found is not None and found.id == case.case_id
        assert case_for_series(session, ["1.2.3.4"]) is None


def test_errors_name_what_was_wrong(registry: tuple[str, Path, SampleCase, SampleCase]) -> None:
    _, spool, ct, dx = registry
    files = _files(spool, ct)
    with pytest.raises(CorrectionError, match=r"not a DICOM-SEG: SOPClassUID 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2 "):
        read_seg(files.sources[0])
    with pytest.raises(CorrectionError, match="not readable as DICOM"):
        read_seg(b"not dicom at all")
    # a SEG of another series
    with pytest.raises(CorrectionError, match=rf"references series {dx.series_uid}, not this case's series"):
        evaluate_correction(read_seg(dx.truth_seg), files, ct.card.labels)
    # wrong geometry: frames of another size
    seg = read_seg(ct.truth_seg)
    bad = copy.deepcopy(seg)
    bad.Rows = 32
    with pytest.raises(CorrectionError, match=r"frames are 32x64 .* images are 64x64"):
        evaluate_correction(bad, files, ct.card.labels)
    # frames on images that are not the case's
    bad = copy.deepcopy(seg)
    for frame in bad.PerFrameFunctionalGroupsSequence:
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.999"
    for item in bad.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
        item.ReferencedSOPInstanceUID = "1.2.3.999"
    with pytest.raises(CorrectionError, match="do not lie on the case's"):
        evaluate_correction(bad, files, ct.card.labels)
    # an unknown segment
    bad = copy.deepcopy(seg)
    item = bad.SegmentSequence[0]
    item.SegmentLabel = "gallbladder"
    item.SegmentedPropertyTypeCodeSequence[0].CodeValue = "28231008"
    with pytest.raises(CorrectionError, match=r"'gallbladder' \(code 28231008\) match no structure.*accepted: liver"):
        evaluate_correction(bad, files, ct.card.labels)


def test_upload_bytes_round_trip(registry: tuple[str, Path, SampleCase, SampleCase], tmp_path: Path) -> None:
    _, spool, ct, _ = registry
    data = ct.truth_seg.read_bytes()
    seg = read_seg(data)
    assert isinstance(seg, pydicom.Dataset)
    scores = evaluate_correction(seg, _files(spool, ct), ct.card.labels)
    assert scores[0].structure == "liver" and scores[0].dice < 1.0


def test_fairnode_outputs_are_not_corrections(registry: tuple[str, Path, SampleCase, SampleCase]) -> None:
    from review.corrections import is_automatic_output

    _, _, ct, _ = registry
    ours = read_seg(ct.seg)
    assert is_automatic_output(ours, "fairnode")
    assert not is_automatic_output(ours, "another vendor")
    assert not is_automatic_output(read_seg(ct.truth_seg), "fairnode")  # MANUAL segments: a correction
    fractional = copy.deepcopy(ours)
    fractional.SegmentationType = "FRACTIONAL"
    with pytest.raises(CorrectionError, match=r"FRACTIONAL .* accepted: a BINARY or LABELMAP SEG"):
        read_seg(fractional)
