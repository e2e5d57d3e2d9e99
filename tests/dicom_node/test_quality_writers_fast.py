"""The fast paths of the quality outputs give what highdicom's own paths give.

- the PROBABILITY SEG built from stored values is byte for byte the object highdicom builds from the floats;
- frames are compressed by a thread pool only where the transfer syntax compresses;
- the node's ``map_transfer_syntax`` setting reaches the writers, and a syntax they cannot write is refused;
- the maps go to the source grid (separably, in one pass) with the values of ``probabilities_to_source``.
"""

from __future__ import annotations

import io
from concurrent.futures import Executor

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from dicom_node.writers import MAX_FRACTIONAL_VALUE
from dicom_node.writers.common import ENCODE_THREADS, frame_encoders, make_reproducible
from dicom_node.writers.seg import _probability_frames, _segment_description, _StoredFractionalSegmentation
from fairnode.pipeline import _maps_to_source
from fairnode.settings import load_settings
from inference.preprocess import probabilities_to_source
from quality.types import UncertaintyMaps
from tests.dicom_node.test_quality_writers import Case, ct  # noqa: F401  (the module's CT case, a fixture)
from tests.dicom_node.test_writers import CREATED


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_stored_values_build_what_highdicom_builds_from_floats(ct: Case) -> None:  # noqa: F811
    p = ct.probabilities.copy()
    p[2, :3] = 0.4 / MAX_FRACTIONAL_VALUE  # spleen rounds to 0 on 3 slices: frames left out
    p[1, 0, 0, 0] = 1.0 + 5e-5  # within the tolerance: stored as the maximum
    kwargs = {
        "source_images": ct.sources,
        "segmentation_type": hd.seg.SegmentationTypeValues.FRACTIONAL,
        "segment_descriptions": [
            _segment_description(label, ct.card, f"1.2.3.{label.value}") for label in ct.card.labels
        ],
        "series_instance_uid": "1.2.3.1",
        "series_number": 1,
        "sop_instance_uid": "1.2.3.2",
        "instance_number": 1,
        "manufacturer": "m",
        "manufacturer_model_name": "m",
        "software_versions": "1",
        "device_serial_number": "1",
        "transfer_syntax_uid": RLELossless,
        "omit_empty_frames": True,
        "content_date": CREATED.date(),
        "content_time": CREATED.time(),
    }
    floats = np.clip(np.moveaxis(p[1:], 0, -1), 0.0, 1.0).astype(np.float32)
    expected = hd.seg.Segmentation(pixel_array=floats, **kwargs)  # type: ignore[arg-type]
    stored = _probability_frames(p, ct.sources, ct.card)
    with frame_encoders(RLELossless) as workers:
        got = _StoredFractionalSegmentation(pixel_array=stored, workers=workers, **kwargs)  # type: ignore[arg-type]
    assert int(got.NumberOfFrames) == int(expected.NumberOfFrames) < len(ct.card.labels) * len(ct.sources)
    assert got.SegmentsOverlap == expected.SegmentsOverlap == "UNDEFINED"
    for item in (got, expected):  # highdicom stamps the clock and a random organisation UID
        make_reproducible(item, CREATED, "1.2.3.9")
    assert _bytes(got) == _bytes(expected)


def test_stored_values_are_refused_in_another_shape_or_type(ct: Case) -> None:  # noqa: F811
    stored = _probability_frames(ct.probabilities, ct.sources, ct.card)
    numbers = np.arange(1, len(ct.card.labels) + 1)
    with pytest.raises(TypeError, match="must be uint8"):
        _StoredFractionalSegmentation._check_and_cast_pixel_array(
            stored.astype(np.float32), numbers, hd.seg.SegmentationTypeValues.FRACTIONAL, np.uint8
        )
    with pytest.raises(ValueError, match=r"\(frames, rows, columns, segments\) with 5 segments"):
        _StoredFractionalSegmentation._check_and_cast_pixel_array(
            stored[..., :2], numbers, hd.seg.SegmentationTypeValues.FRACTIONAL, np.uint8
        )


def test_frames_are_compressed_in_threads_only_where_the_syntax_compresses() -> None:
    with frame_encoders(ExplicitVRLittleEndian) as workers:
        assert workers == 0
    with frame_encoders(RLELossless) as workers:
        assert isinstance(workers, Executor) if ENCODE_THREADS > 1 else workers == 0


def test_node_setting_reaches_the_writers() -> None:
    assert load_settings(None).outputs().map_transfer_syntax == RLELossless
    assert load_settings(None, map_transfer_syntax=JPEGLSLossless).outputs().map_transfer_syntax == JPEGLSLossless
    with pytest.raises(ValidationError, match="map_transfer_syntax must be one of RLE Lossless"):
        load_settings(None, map_transfer_syntax="1.2.840.10008.1.2.4.50")  # JPEG Baseline: lossy


@pytest.mark.parametrize(
    ("grid", "source"), [((6, 9, 20, 24), (23, 61, 70)), ((6, 30, 30), (97, 90)), ((6, 9, 20, 24), (4, 20, 24))]
)
def test_maps_reach_the_source_grid_with_the_values_of_probabilities_to_source(
    grid: tuple[int, ...], source: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(3)
    mean = rng.random(grid, dtype=np.float32)
    mean /= mean.sum(axis=0)
    entropy = 2.5 * rng.random(grid[1:], dtype=np.float32)
    maps = UncertaintyMaps(mean_probabilities=mean, entropy=entropy, mutual_information=entropy)
    got_mean, got_entropy = _maps_to_source(maps, source)
    assert got_mean.shape == (grid[0], *source) and got_entropy.shape == source
    assert got_mean.dtype == got_entropy.dtype == np.float32
    np.testing.assert_allclose(got_mean, probabilities_to_source(mean, source), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_entropy, probabilities_to_source(entropy[None], source)[0], rtol=0, atol=3e-6)
