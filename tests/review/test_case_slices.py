"""Server-rendered slices of a case: PNGs of the right size, overlay and heatmap where they should be, the
presets per modality, the cache, and clear errors for slices and presets a case does not have."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlmodel import Session

from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from review.case_files import CaseFilesError, locate_case_files
from review.slices import MIN_DISPLAY, CaseImages, SliceCache, SliceError, presets_for
from tests.review.case_samples import SampleCase, ct_case, dx_case


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, SampleCase, SampleCase]]:
    tmp = tmp_path_factory.mktemp("slices")
    url = sqlite_url(tmp / "registry.db")
    migrate(url)
    with Session(get_engine(url)) as session:
        ct = ct_case(tmp / "spool", session, tmp / "cohort")
        dx = dx_case(tmp / "spool", session, tmp / "cohort")
    yield tmp / "spool", ct, dx
    dispose_engines()


def _images(spool: Path, case: SampleCase) -> CaseImages:
    files = locate_case_files(spool, study_uid=case.study_uid, series_uid=case.series_uid, run=case.run)
    return CaseImages.load(files, case.card.labels)


def _rgb(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def test_ct_slices_render_with_and_without_overlay_and_heatmap(cases: tuple[Path, SampleCase, SampleCase]) -> None:
    spool, ct, _ = cases
    images = _images(spool, ct)
    assert images.n_slices == ct.labels.shape[0]
    liver = images.structure("liver")
    assert liver is not None and liver.largest_slice is not None
    k = liver.largest_slice
    assert k == int((ct.labels == 1).sum(axis=(1, 2)).argmax())
    assert liver.hex_color == "#dd8265"  # the card's liver colour (221, 130, 101)
    plain = _rgb(images.png(k, preset="abdomen", overlay=False, heatmap=False))
    seg = _rgb(images.png(k, preset="abdomen", overlay=True, heatmap=False))
    heat = _rgb(images.png(k, preset="abdomen", overlay=False, heatmap=True))
    assert plain.shape == seg.shape == heat.shape and max(plain.shape[:2]) >= MIN_DISPLAY
    # grey without overlays; the overlay tints the liver and leaves the corners alone
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()
    scale = plain.shape[0] // ct.labels.shape[1]
    liver_px = np.kron(ct.labels[k] == 1, np.ones((scale, scale), dtype=bool))
    changed = (seg != plain).any(axis=2)
    assert (
        changed[liver_px].mean() > 0.95 and not changed[~np.kron(ct.labels[k] > 0, np.ones((scale, scale), bool))].any()
    )
    red_minus_blue = seg[..., 0].astype(int) - seg[..., 2].astype(int)
    assert red_minus_blue[liver_px].mean() > 20  # liver colour is warm
    # the heatmap colours the boundaries, where the entropy is
    assert (heat != plain).any(axis=2).mean() > 0.02


def test_ct_presets_change_the_window(cases: tuple[Path, SampleCase, SampleCase]) -> None:
    spool, ct, _ = cases
    images = _images(spool, ct)
    assert [p.name for p in images.presets] == ["abdomen", "bone", "lung", "full"]
    k = images.n_slices // 2
    abdomen = _rgb(images.png(k, preset="abdomen", overlay=False, heatmap=False)).astype(int)
    lung = _rgb(images.png(k, preset="lung", overlay=False, heatmap=False)).astype(int)
    assert abs(abdomen.mean() - lung.mean()) > 5
    with pytest.raises(SliceError, match=r"preset 'brain' is not offered for CT; use one of abdomen, bone, lung, full"):
        images.png(k, preset="brain", overlay=False, heatmap=False)
    with pytest.raises(SliceError, match=rf"slice {images.n_slices} does not exist: this case has slices 0 to"):
        images.png(images.n_slices, preset="abdomen", overlay=False, heatmap=False)


def test_radiograph_is_one_frame_with_full_range(cases: tuple[Path, SampleCase, SampleCase]) -> None:
    spool, _, dx = cases
    images = _images(spool, dx)
    assert images.n_slices == 1 and images.modality == "DX"
    assert [p.name for p in images.presets] == ["full"] == [p.name for p in presets_for("CR")]
    assert all(s.largest_slice == 0 for s in images.structures)
    plain = _rgb(images.png(0, preset="full", overlay=False, heatmap=False))
    seg = _rgb(images.png(0, preset="full", overlay=True, heatmap=True))
    assert plain.shape[:2] == (images.size[1], images.size[0])
    assert plain.std() > 10  # the window spreads the image over the grey range
    assert (seg != plain).any(axis=2).mean() > 0.05


def test_cache_renders_once_and_forgets(cases: tuple[Path, SampleCase, SampleCase]) -> None:
    spool, ct, _ = cases
    loads: list[int] = []

    def load() -> CaseImages:
        loads.append(1)
        return _images(spool, ct)

    cache = SliceCache(max_cases=1, max_pngs=4)
    first = cache.png(ct.case_id, load, 3, preset="abdomen", overlay=True, heatmap=True)
    again = cache.png(ct.case_id, load, 3, preset="abdomen", overlay=True, heatmap=True)
    assert first is again and len(loads) == 1
    for k in range(6):
        cache.png(ct.case_id, load, k, preset="bone", overlay=False, heatmap=False)
    assert len(loads) == 1
    cache.forget(ct.case_id)
    cache.png(ct.case_id, load, 3, preset="abdomen", overlay=True, heatmap=True)
    assert len(loads) == 2


def test_missing_outputs_are_named(cases: tuple[Path, SampleCase, SampleCase]) -> None:
    spool, ct, _ = cases
    with pytest.raises(CaseFilesError, match=r"no SEG of series .* run 7 at .*run-7"):
        locate_case_files(spool, study_uid=ct.study_uid, series_uid=ct.series_uid, run=7)
    with pytest.raises(CaseFilesError, match=r"no source images of series 1\.2\.3"):
        locate_case_files(spool, study_uid=ct.study_uid, series_uid="1.2.3", run=1)
    with pytest.raises(ValueError, match="is not a DICOM UID"):
        locate_case_files(spool, study_uid="../etc", series_uid="1.2.3", run=1)
