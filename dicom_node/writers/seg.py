"""The BINARY SEG of the label map and the FRACTIONAL SEG (type PROBABILITY) of the mean softmax.

The BINARY SEG is built by :func:`~dicom_node.writers.binary_seg.build_binary_seg`, the one path every
BINARY SEG of fairnode takes (the lesion model's and the cohorts' ground truth too); this module says what a
model run puts in it (segments from the card, UIDs derived from the run).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_node.writers.binary_seg import (
    SegmentSpec,
    SegSeries,
    build_binary_seg,
    fix_projection_seg,
    segment_description,
    series_arguments,
)
from dicom_node.writers.common import (
    OutputSettings,
    algorithm_equipment,
    algorithm_sequence,
    check_label_values,
    check_run,
    equipment,
    frame_encoders,
    has_frame_of_reference,
    make_reproducible,
    output_uid,
    series_key,
    source_frames,
)
from dicom_node.writers.stored import MAX_FRACTIONAL_VALUE, store_probabilities
from inference.model_card import LabelSpec, ModelCard

__all__ = ["MAX_FRACTIONAL_VALUE", "build_probability_seg", "build_probability_seg_from_stored", "build_seg"]

logger = logging.getLogger(__name__)


def _segment(label: LabelSpec, tracking_uid: str) -> SegmentSpec:
    """The segment of one card label: number = label value, codes and colour from the card."""
    return SegmentSpec(
        number=label.value,
        label=label.name,
        category=Code(label.category_code, "SCT", label.category_meaning),
        property_type=Code(label.code, label.scheme, label.meaning),
        color=label.color,
        tracking_uid=tracking_uid,
        tracking_id=label.name,
    )


def _segment_description(label: LabelSpec, card: ModelCard, tracking_uid: str) -> hd.seg.SegmentDescription:
    return segment_description(_segment(label, tracking_uid), algorithm_sequence(card))


def _card_segments(card: ModelCard, settings: OutputSettings, key: tuple[str, ...]) -> list[SegmentSpec]:
    """One segment per card label, tracking UIDs derived from the run ``key``."""
    return [_segment(label, output_uid(settings, *key, "seg", "tracking", str(label.value))) for label in card.labels]


def _card_series(
    card: ModelCard, settings: OutputSettings, key: tuple[str, ...], role: str, number: int, description: str
) -> SegSeries:
    """UIDs derived from the run ``key`` and ``role``, series number and SeriesDescription template."""
    return SegSeries(
        series_instance_uid=output_uid(settings, *key, role, "series"),
        sop_instance_uid=output_uid(settings, *key, role, "instance"),
        dimension_organization_uid=output_uid(settings, *key, role, "dimension-organization"),
        series_number=number,
        series_description=description.format(model=card.name)[:64],
        content_label=_content_label(card),
        content_description=f"{card.name} {card.version}"[:64],
    )


def build_seg(
    source_images: Sequence[pydicom.Dataset],
    labels: np.ndarray,
    card: ModelCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.seg.Segmentation:
    """The BINARY SEG of one prediction, in the study and frame of reference of the source images.

    Parameters
    ----------
    source_images
        the images segmented, all of one series: single-frame CT/MR slices in the order of
        ``labels``' first axis (sorted along the slice normal), or one DX image. Pixel data is not needed.
    labels
        integer label map (uint8), values ``0`` (background) to ``len(card.labels)``:
        ``(slices, rows, columns)`` with ``labels[k]`` on ``source_images[k]`` (rows and columns as
        stored in the images, no flip); for one 2D image ``(rows, columns)`` or ``(1, rows, columns)``.
    card
        the model: one segment per label, segment number = label value, SNOMED CT category and type
        and display colour from the card, algorithm name and version = card name and version.
    settings
        equipment, UID root, series number and description.
    run
        which run of this model on this series (a re-run after a correction gets new UIDs).
    created
        date and time stamped on the object; the current local time when ``None``.

    Returns
    -------
    highdicom.seg.Segmentation
        every card label declared as a segment, also one absent from ``labels`` (which then has no
        frame; on a single 2D image every segment keeps its one frame, empty or not).

    Raises
    ------
    ValueError
        If ``labels`` does not match the source images (the message names both shapes), is not an
        integer array, or holds a value that is not a label of the card; or if ``run`` is below 1.
    """
    sources = list(source_images)
    check_run(run)
    frames = source_frames(labels, sources)
    check_label_values(frames, card)
    created = created or datetime.now()
    key = series_key(sources, card, run)
    seg = build_binary_seg(
        sources,
        frames.astype(np.min_scalar_type(len(card.labels)), copy=False),
        _card_segments(card, settings, key),
        algorithm=algorithm_sequence(card),
        series=_card_series(card, settings, key, "seg", settings.seg_series_number, settings.seg_series_description),
        equipment=equipment(settings),
        created=created,
        contributing_equipment=[algorithm_equipment(card, settings, created)],
        # One frame per segment on a single image: the SR's planar groups reference a frame each.
        omit_empty_frames=frames.shape[0] != 1,
    )
    logger.info(
        "built SEG %s (series %s, %d frames, %d segments) of series %s with %s %s run %d",
        seg.SOPInstanceUID,
        seg.SeriesInstanceUID,
        int(seg.NumberOfFrames),
        len(card.labels),
        key[0],
        card.name,
        card.version,
        run,
    )
    return seg


def _content_label(card: ModelCard) -> str:
    """ContentLabel (CS, 16 characters of ``A-Z 0-9 _``) from the model name."""
    return card.name.upper().replace("-", "_")[:16]


def build_probability_seg(
    source_images: Sequence[Dataset],
    mean_probabilities: np.ndarray,
    card: ModelCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.seg.Segmentation:
    """The FRACTIONAL SEG of type PROBABILITY of one prediction: one segment per card label.

    Segments, tracking UIDs, algorithm identification and contributing equipment are those of
    :func:`build_seg` for the same run (the same findings); its own series, with UIDs derived from the role
    ``probability-seg``. A probability ``p`` is stored as ``round(255 p)`` (MaximumFractionalValue 255),
    so values read back lie within 1/510 of the input. The frames of a structure whose probability rounds
    to 0 on a slice are left out, and the pixel data is compressed losslessly
    (:attr:`OutputSettings.map_transfer_syntax`).

    The probabilities are checked (range, shape) and quantised here, once, and handed to highdicom as the
    stored values (see :class:`_StoredFractionalSegmentation`): highdicom's own check of a float array
    sorts all its values (``np.unique``) and its quantisation copies every frame, which cost more than half
    of writing the object for a 128-slice CT.

    Parameters
    ----------
    source_images
        the images segmented, as for :func:`build_seg`.
    mean_probabilities
        float ``(classes, slices, rows, columns)`` (``(classes, rows, columns)`` for one 2D image): the
        mean softmax over the samples on the grid of the source images, class 0 the background (not
        written), class ``k`` the card label of value ``k``; ``[:, k]`` lies on ``source_images[k]``.
    card, settings, run, created
        as for :func:`build_seg`.

    Returns
    -------
    highdicom.seg.Segmentation
        the PROBABILITY SEG; on an image without frame of reference (DX) fixed as by :func:`build_seg`.

    Raises
    ------
    ValueError
        If the array does not have ``len(card.labels) + 1`` classes, does not match the source images, is
        not floating point, holds a value outside [0, 1] (or NaN), or if ``run`` is below 1.
    """
    sources = list(source_images)
    check_run(run)
    stored = _probability_frames(mean_probabilities, sources, card)
    return build_probability_seg_from_stored(sources, stored, card, settings, run, created=created)


def build_probability_seg_from_stored(
    source_images: Sequence[pydicom.Dataset],
    stored: np.ndarray,
    card: ModelCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.seg.Segmentation:
    """:func:`build_probability_seg` of probabilities already stored as ``round(255 p)``.

    Parameters
    ----------
    stored
        uint8 ``(segments, frames, rows, columns)``: the stored values of the card's labels in label order
        (:func:`~dicom_node.writers.stored.store_probabilities`), ``frames`` 1 for one 2D image.
    source_images, card, settings, run, created
        as for :func:`build_probability_seg`.

    Raises
    ------
    ValueError
        If ``stored`` is not uint8, has not one segment per card label or does not match the source images,
        or if ``run`` is below 1.
    """
    sources = list(source_images)
    check_run(run)
    if stored.dtype != np.uint8 or stored.ndim != 4 or stored.shape[0] != len(card.labels):
        raise ValueError(
            f"stored probabilities must be uint8 (segments, frames, rows, columns) with the {len(card.labels)} "
            f"labels of model {card.name!r}, got shape {stored.shape} of {stored.dtype}"
        )
    source_frames(stored[0], sources, "stored probabilities")
    # a view (frames, rows, columns, segments) in which each frame of a segment stays contiguous in memory (what
    # the encoder takes) and nothing is reordered
    frames = np.moveaxis(stored, 0, -1)
    created = created or datetime.now()
    key = series_key(sources, card, run)
    series = _card_series(
        card,
        settings,
        key,
        "probability-seg",
        settings.probability_series_number,
        settings.probability_series_description,
    )
    series = dataclasses.replace(
        series,
        content_label=f"{_content_label(card)[:11]}_PROB",
        content_description=f"{card.name} {card.version} mean softmax probability"[:64],
    )
    algorithm = algorithm_sequence(card)
    with frame_encoders(settings.map_transfer_syntax) as workers:
        seg = _StoredFractionalSegmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=MAX_FRACTIONAL_VALUE,
            segment_descriptions=[segment_description(s, algorithm) for s in _card_segments(card, settings, key)],
            **equipment(settings),
            **series_arguments(series, created),
            omit_empty_frames=True,
            transfer_syntax_uid=settings.map_transfer_syntax,
            contributing_equipment=[algorithm_equipment(card, settings, created)],
            workers=workers,
        )
    make_reproducible(seg, created, series.dimension_organization_uid)
    if not has_frame_of_reference(sources):
        fix_projection_seg(seg, sources[0])
    logger.info(
        "built PROBABILITY SEG %s (series %s, %d frames) of series %s with %s %s run %d",
        seg.SOPInstanceUID,
        seg.SeriesInstanceUID,
        int(seg.NumberOfFrames),
        key[0],
        card.name,
        card.version,
        run,
    )
    return seg


def _probability_frames(probabilities: np.ndarray, sources: Sequence[Dataset], card: ModelCard) -> np.ndarray:
    """Stored values ``round(255 p)`` (uint8) of the foreground probabilities, ``(segments, frames, rows,
    columns)``."""
    classes = len(card.labels) + 1
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(f"mean_probabilities must be a float array, got dtype {probabilities.dtype}")
    if probabilities.ndim not in (3, 4) or probabilities.shape[0] != classes:
        raise ValueError(
            f"mean_probabilities of shape {probabilities.shape} must be (classes, *image shape) with "
            f"{classes} classes (background and the {len(card.labels)} labels of model {card.name!r})"
        )
    source_frames(probabilities[0], sources, "mean_probabilities[0]")
    foreground = probabilities[1:]
    if foreground.ndim == 3:
        foreground = foreground[:, np.newaxis]
    stored = np.empty(foreground.shape, dtype=np.uint8)
    store_probabilities(foreground, stored)
    return stored


class _StoredFractionalSegmentation(hd.seg.Segmentation):
    """A FRACTIONAL :class:`highdicom.seg.Segmentation` built from stored values (uint8, ``0..max``).

    highdicom 0.28 takes a FRACTIONAL segmentation as floats in [0, 1] only: it checks them with
    ``np.unique`` over the whole array (a sort of every voxel of every segment) and then quantises each
    frame to ``around(p * MaximumFractionalValue)``. :func:`build_probability_seg` has already checked the
    range and quantised the values exactly so, once; this class takes those stored values as they are and
    otherwise builds the object with highdicom's code (functional groups, empty frames left out, encoding).
    Its two overrides are highdicom's own code paths for FRACTIONAL floats with the check and the scaling
    done beforehand; the pinned highdicom version (pyproject) is what they were written against.
    """

    @classmethod
    def _check_and_cast_pixel_array(
        cls,
        pixel_array: np.ndarray,  # type: ignore[override]
        segment_numbers: np.ndarray,
        segmentation_type: hd.seg.SegmentationTypeValues,
        dtype: type,
    ) -> tuple[np.ndarray, hd.seg.SegmentsOverlapValues]:
        if segmentation_type != hd.seg.SegmentationTypeValues.FRACTIONAL or pixel_array.dtype != np.uint8:
            raise TypeError(
                f"stored FRACTIONAL values must be uint8, got a {segmentation_type} segmentation of {pixel_array.dtype}"
            )
        if pixel_array.ndim != 4 or pixel_array.shape[-1] != len(segment_numbers):
            raise ValueError(
                f"stored values of shape {pixel_array.shape} must be (frames, rows, columns, segments) with "
                f"{len(segment_numbers)} segments"
            )
        # highdicom's answer for floats: one segment does not overlap, several fractional ones are undefined
        single = pixel_array.shape[-1] == 1
        return pixel_array, hd.seg.SegmentsOverlapValues.NO if single else hd.seg.SegmentsOverlapValues.UNDEFINED

    @staticmethod
    def _get_segment_pixel_array(
        pixel_array: np.ndarray,
        segment_number: int,
        described_segment_numbers: np.ndarray,
        segmentation_type: hd.seg.SegmentationTypeValues,
        max_fractional_value: int,
        dtype: type,
    ) -> np.ndarray:
        return pixel_array[:, :, segment_number - 1]
