"""The fast paths of the quality outputs give what highdicom's own paths give.

- the PROBABILITY SEG built from stored values is byte for byte the object highdicom builds from the floats;
- RLE frames encoded segment by segment are pydicom's RLE encoder's bytes; frames are handed to an encoder only
  where the transfer syntax compresses;
- the node's ``map_transfer_syntax`` setting reaches the writers, and a syntax they cannot write is refused;
- the maps go to the source grid (separably, in one pass) with the values of ``probabilities_to_source``, and
  block by block of slices to the stored values of the whole float maps; the objects built from stored values
  are those built from the floats.
"""

from __future__ import annotations

import io
import math
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders import RLELosslessDecoder
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from dicom_node.writers import (
    MAX_FRACTIONAL_VALUE,
    OutputSettings,
    build_probability_seg,
    build_probability_seg_from_stored,
    build_uncertainty_map,
    build_uncertainty_map_from_stored,
)
from dicom_node.writers.common import FrameEncoder, frame_encoders, make_reproducible
from dicom_node.writers.rle import encode_frame
from dicom_node.writers.seg import _probability_frames, _segment_description, _StoredFractionalSegmentation
from dicom_node.writers.stored import ENTROPY_FLOOR_BITS, MAX_ENTROPY_VALUE, store_entropy, store_probabilities
from fairnode.settings import load_settings
from fairnode.source_maps import maps_to_source, stored_source_maps
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
    stored = np.moveaxis(_probability_frames(p, ct.sources, ct.card), 0, -1)
    with frame_encoders(RLELossless) as workers:
        got = _StoredFractionalSegmentation(pixel_array=stored, workers=workers, **kwargs)  # type: ignore[arg-type]
    assert int(got.NumberOfFrames) == int(expected.NumberOfFrames) < len(ct.card.labels) * len(ct.sources)
    assert got.SegmentsOverlap == expected.SegmentsOverlap == "UNDEFINED"
    for item in (got, expected):  # highdicom stamps the clock and a random organisation UID
        make_reproducible(item, CREATED, "1.2.3.9")
    assert _bytes(got) == _bytes(expected)


def test_stored_values_are_refused_in_another_shape_or_type(ct: Case) -> None:  # noqa: F811
    stored = np.moveaxis(_probability_frames(ct.probabilities, ct.sources, ct.card), 0, -1)
    numbers = np.arange(1, len(ct.card.labels) + 1)
    with pytest.raises(TypeError, match="must be uint8"):
        _StoredFractionalSegmentation._check_and_cast_pixel_array(
            stored.astype(np.float32), numbers, hd.seg.SegmentationTypeValues.FRACTIONAL, np.uint8
        )
    with pytest.raises(ValueError, match=r"\(frames, rows, columns, segments\) with 5 segments"):
        _StoredFractionalSegmentation._check_and_cast_pixel_array(
            stored[..., :2], numbers, hd.seg.SegmentationTypeValues.FRACTIONAL, np.uint8
        )


def _frames() -> list[np.ndarray]:
    """Frames an RLE encoder must get right: runs across the 128-byte limit, runs of 2 and of 1 at a run's end,
    literal stretches over 128 bytes, constant and all-zero rows, one column, odd segment lengths, 16-bit
    values (two segments) and signed ones."""
    rng = np.random.default_rng(7)
    sparse = np.zeros((40, 300), dtype=np.uint8)
    sparse[5:9, 20:270] = rng.integers(0, 256, (4, 250))
    sparse[20, :] = 9
    sparse[30, 128:131] = 4  # a run of 3 after 128 zeros, and a single zero run-end at column 257
    runs = np.repeat(rng.integers(0, 4, (1, 400)), rng.integers(1, 4, 400), axis=1)[:, :257].astype(np.uint8)
    return [
        sparse,
        np.zeros((3, 512), dtype=np.uint8),
        rng.integers(0, 256, (7, 1), dtype=np.uint8),
        np.tile(runs, (3, 1)),
        rng.integers(0, 3, (9, 131), dtype=np.uint8) * rng.integers(0, 2, (9, 131), dtype=np.uint8),
        (rng.integers(0, 65536, (6, 301)) * (rng.random((6, 301)) < 0.3)).astype(np.uint16),
        rng.integers(-2000, 2000, (5, 64), dtype=np.int16),
    ]


@pytest.mark.parametrize("index", range(7))
def test_rle_frames_are_pydicoms_bytes_and_decode_to_the_frame(index: int) -> None:
    frame = _frames()[index]
    bits = 8 * frame.dtype.itemsize
    options: dict[str, Any] = {
        "rows": frame.shape[0],
        "columns": frame.shape[1],
        "samples_per_pixel": 1,
        "number_of_frames": 1,
        "bits_allocated": bits,
        "bits_stored": bits,
        "photometric_interpretation": "MONOCHROME2",
        "pixel_representation": int(frame.dtype.kind == "i"),
    }
    expected = RLELosslessEncoder.encode(frame, encoding_plugin="pylibjpeg", **options)
    got = encode_frame(frame)
    assert got == expected
    assert got == encode_frame(frame.astype(frame.dtype.newbyteorder(">")))  # the same values in either byte order
    decoded, _ = RLELosslessDecoder.as_array(encapsulate([got]), **options)
    np.testing.assert_array_equal(decoded.reshape(frame.shape), frame)


def test_rle_frame_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match=r"2-D integer array .* got shape \(2, 3, 3\) of uint8"):
        encode_frame(np.zeros((2, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="got shape \\(4, 4\\) of float32"):
        encode_frame(np.zeros((4, 4), dtype=np.float32))


def test_frames_are_handed_to_an_encoder_only_where_the_syntax_compresses() -> None:
    with frame_encoders(ExplicitVRLittleEndian) as workers:
        assert workers == 0
    frame = _frames()[0]
    arguments: dict[str, Any] = {
        "array": frame,
        "transfer_syntax_uid": RLELossless,
        "bits_allocated": 8,
        "bits_stored": 8,
        "photometric_interpretation": "MONOCHROME2",
        "pixel_representation": 0,
    }
    with frame_encoders(RLELossless) as workers:
        assert isinstance(workers, FrameEncoder)
        assert workers.submit(hd.frame.encode_frame, **arguments).result() == hd.frame.encode_frame(**arguments)
        # what the segment encoder does not write (12 of 16 bits stored) goes to highdicom's encoder as submitted
        wide = {**arguments, "array": frame.astype(np.uint16), "bits_allocated": 16, "bits_stored": 12}
        assert workers.submit(hd.frame.encode_frame, **wide).result() == hd.frame.encode_frame(**wide)
        with pytest.raises(ValueError, match="must have an 8-bit dtype"):
            workers.submit(hd.frame.encode_frame, **{**arguments, "array": frame.astype(np.uint16)}).result()
    with frame_encoders(JPEGLSLossless) as workers:
        assert isinstance(workers, FrameEncoder)
        jpeg_ls = {**arguments, "transfer_syntax_uid": JPEGLSLossless}
        assert workers.submit(hd.frame.encode_frame, **jpeg_ls).result() == hd.frame.encode_frame(**jpeg_ls)


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
    got_mean, got_entropy = maps_to_source(maps, source)
    assert got_mean.shape == (grid[0], *source) and got_entropy.shape == source
    assert got_mean.dtype == got_entropy.dtype == np.float32
    np.testing.assert_allclose(got_mean, probabilities_to_source(mean, source), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_entropy, probabilities_to_source(entropy[None], source)[0], rtol=0, atol=3e-6)


@pytest.mark.parametrize(
    ("grid", "source"), [((6, 9, 20, 24), (23, 61, 70)), ((6, 30, 30), (97, 90)), ((6, 9, 20, 24), (4, 20, 24))]
)
def test_stored_maps_are_the_stored_values_of_the_whole_float_maps(
    grid: tuple[int, ...], source: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(4)
    mean = rng.random(grid, dtype=np.float32)
    mean[1, ..., :3] = 0.0  # certain background: probabilities and entropy at the floor
    mean /= mean.sum(axis=0)
    entropy = 2.5 * rng.random(grid[1:], dtype=np.float32)
    entropy[..., :3] = 0.001
    maps = UncertaintyMaps(mean_probabilities=mean, entropy=entropy, mutual_information=entropy)
    probabilities, stored_entropy = stored_source_maps(maps, source)
    frames = (1, *source) if len(source) == 2 else source
    floats, bits = maps_to_source(maps, source)
    expected = np.empty((grid[0] - 1, *frames), dtype=np.uint8)
    store_probabilities(floats[1:].reshape(expected.shape), expected)
    expected_entropy = np.empty(frames, dtype=np.uint16)
    store_entropy(bits.reshape(frames), grid[0], expected_entropy)
    assert probabilities.dtype == np.uint8 and stored_entropy.dtype == np.uint16
    np.testing.assert_array_equal(probabilities, expected)
    np.testing.assert_array_equal(stored_entropy, expected_entropy)
    assert (stored_entropy[..., :3] == 0).all() and 0 < expected.max() <= MAX_FRACTIONAL_VALUE


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stored_values_are_the_plain_formulas_at_the_edges(dtype: type[np.floating[Any]]) -> None:
    """round(255 p) clipped to 0..255, and round(h / step) of the entropy clipped to [0, log2(classes)] with
    entropy under the floor as 0, at the edges: rounding errors within the tolerance, ties, the floor."""
    p: np.ndarray = np.array(
        [-1e-4, -1e-5, -0.0, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.3, 254.5 / 255, 1.0, 1 + 5e-5, 1 + 9e-5],
        dtype=dtype,
    ).reshape(1, 2, 2, 3)
    stored = np.empty(p.shape, dtype=np.uint8)
    store_probabilities(p, stored)
    scaled = np.multiply(p, np.float32(MAX_FRACTIONAL_VALUE), dtype=np.float32)
    np.testing.assert_array_equal(stored, np.clip(np.around(scaled), 0, MAX_FRACTIONAL_VALUE).astype(np.uint8))
    assert stored.ravel()[[0, -1]].tolist() == [0, MAX_FRACTIONAL_VALUE]

    bits = math.log2(6)
    step = bits / MAX_ENTROPY_VALUE
    h: np.ndarray = np.array(
        [-1e-4, 0.0, 0.0099, ENTROPY_FLOOR_BITS, 0.5, 100.5 * step, bits - step / 2, bits, bits + 9e-5, 1.0, 2.0, 0.02],
        dtype=dtype,
    ).reshape(3, 2, 2)
    entropy = np.empty(h.shape, dtype=np.uint16)
    store_entropy(h, 6, entropy)
    clipped = np.clip(h, 0.0, bits)
    clipped[clipped < ENTROPY_FLOOR_BITS] = 0.0
    np.testing.assert_array_equal(entropy, np.rint(clipped / step).astype(np.uint16))
    assert entropy.ravel()[[0, 2, 8]].tolist() == [0, 0, MAX_ENTROPY_VALUE]


def test_stored_maps_refuse_values_out_of_range() -> None:
    mean = np.full((3, 4, 5, 5), 1 / 3, dtype=np.float32)
    entropy = np.ones((4, 5, 5), dtype=np.float32)
    mean[1] = 1.5
    with pytest.raises(ValueError, match=r"mean_probabilities must lie in \[0, 1\], got values from .* to 1\.5"):
        stored_source_maps(UncertaintyMaps(mean, entropy, entropy), (6, 5, 5))
    with pytest.raises(ValueError, match=r"entropy must lie in \[0, 1\.5850\] bits \(log2 of 3 classes\)"):
        stored_source_maps(UncertaintyMaps(np.full_like(mean, 1 / 3), entropy * 2, entropy), (6, 5, 5))


def test_objects_from_stored_values_are_the_objects_from_the_floats(ct: Case) -> None:  # noqa: F811
    stored = _probability_frames(ct.probabilities, ct.sources, ct.card)
    entropy = np.empty(ct.entropy.shape, dtype=np.uint16)
    store_entropy(ct.entropy, len(ct.card.labels) + 1, entropy)
    pairs = [
        (
            build_probability_seg(ct.sources, ct.probabilities, ct.card, OutputSettings(), created=CREATED),
            build_probability_seg_from_stored(ct.sources, stored, ct.card, OutputSettings(), created=CREATED),
        ),
        (
            build_uncertainty_map(ct.sources, ct.entropy, ct.card, OutputSettings(), created=CREATED),
            build_uncertainty_map_from_stored(ct.sources, entropy, ct.card, OutputSettings(), created=CREATED),
        ),
    ]
    for from_floats, from_stored in pairs:
        assert _bytes(from_stored) == _bytes(from_floats)
    with pytest.raises(ValueError, match=r"must be uint8 \(segments, frames, rows, columns\) with the 5 labels"):
        build_probability_seg_from_stored(ct.sources, stored[:2], ct.card, OutputSettings())
    with pytest.raises(ValueError, match="stored probabilities of shape"):
        build_probability_seg_from_stored(ct.sources, stored[:, :3], ct.card, OutputSettings())
    with pytest.raises(ValueError, match="the stored entropy must be uint16, got float32"):
        build_uncertainty_map_from_stored(ct.sources, ct.entropy, ct.card, OutputSettings())
