"""Parametric Maps: the per-voxel predictive entropy (bits) of one prediction, and the one builder every map of
the node goes through (:func:`build_parametric_map`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Final

import highdicom as hd
import numpy as np
from highdicom._standard_utils import get_anatomic_region_map
from pydicom.dataset import Dataset

from dicom_node.writers.codes import QUALITY_CODES, coded, fairnode_scheme
from dicom_node.writers.common import (
    OutputSettings,
    algorithm_equipment,
    check_run,
    equipment,
    frame_encoders,
    has_frame_of_reference,
    make_reproducible,
    output_uid,
    run_identity,
    series_key,
    source_frames,
)
from dicom_node.writers.stored import ENTROPY_FLOOR_BITS, MAX_ENTROPY_VALUE, store_entropy
from inference.model_card import ModelCard

__all__ = [
    "ENTROPY_FLOOR_BITS",
    "MAX_ENTROPY_VALUE",
    "build_parametric_map",
    "build_uncertainty_map",
    "build_uncertainty_map_from_stored",
]

logger = logging.getLogger(__name__)


def build_uncertainty_map(
    source_images: Sequence[Dataset],
    entropy: np.ndarray,
    card: ModelCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.pm.ParametricMap:
    """The per-voxel predictive entropy (bits) of one prediction as a Parametric Map.

    A Parametric Map rather than a second FRACTIONAL SEG: entropy is neither a probability nor an occupancy
    of a segment (a FRACTIONAL SEG says "this fraction of the voxel belongs to segment k", in [0, 1] without
    unit), it is one real-world quantity per voxel with a unit and a range of ``[0, log2(classes)]`` bits. A
    Parametric Map carries exactly that: stored values, a Real World Value Mapping (slope, unit UCUM
    ``bit``, quantity :data:`QUALITY_CODES` ``["entropy"]``) and a window for display, and viewers overlay
    it as a colour map on the source images with the real value under the cursor.

    Entropy ``h`` is stored as uint16 ``round(65535 h / log2(classes))`` and mapped back with
    RealWorldValueSlope ``log2(classes) / 65535`` (about 4e-5 bit for 6 classes, half of it the largest
    error); uint16 because the standard defines no compression of floating-point pixel data, and the map is
    compressed losslessly (:attr:`OutputSettings.map_transfer_syntax`). Entropy under
    :data:`ENTROPY_FLOOR_BITS` is written as 0.

    A Parametric Map requires a frame of reference and plane geometry. An image without one (DX) gets a
    frame of reference of its own (UID derived from the run, used by this object only) in which the image
    plane lies at the origin, oriented as the source's PatientOrientation says, with the source's
    PixelSpacing (else ImagerPixelSpacing) and no slice thickness; its pixels correspond one to one to the
    source image's (Derivation Image Sequence, Spatial Locations Preserved YES). Laterality comes from the
    source (Laterality, else ImageLaterality), else the anatomic region of BodyPartExamined goes into a
    Frame Anatomy item (unpaired regions with Frame Laterality ``U``).

    Parameters
    ----------
    source_images
        the images segmented, as for :func:`build_seg`.
    entropy
        float ``(slices, rows, columns)`` (``(rows, columns)`` for one 2D image): predictive entropy of the
        mean softmax in bits, in ``[0, log2(len(card.labels) + 1)]``, on the grid of the source images.
    card, settings, run, created
        as for :func:`build_seg`; the UIDs are derived from the role ``uncertainty-map``.

    Returns
    -------
    highdicom.pm.ParametricMap
        one frame per source slice, MONOCHROME2, stored values ``0..65535``.

    Raises
    ------
    ValueError
        If ``entropy`` does not match the source images, is not floating point or holds a value outside
        ``[0, log2(classes)]`` (or NaN), if an image without frame of reference has no PatientOrientation or
        no pixel spacing, or if ``run`` is below 1.
    """
    sources = list(source_images)
    check_run(run)
    if not np.issubdtype(entropy.dtype, np.floating):
        raise ValueError(f"entropy must be a float array (bits), got dtype {entropy.dtype}")
    frames = source_frames(entropy, sources, "entropy")
    stored = np.empty(frames.shape, dtype=np.uint16)
    store_entropy(frames, len(card.labels) + 1, stored)
    return build_uncertainty_map_from_stored(sources, stored, card, settings, run, created=created)


def build_uncertainty_map_from_stored(
    source_images: Sequence[Dataset],
    stored: np.ndarray,
    card: ModelCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.pm.ParametricMap:
    """:func:`build_uncertainty_map` of an entropy already stored as ``round(65535 h / log2(classes))``.

    Parameters
    ----------
    stored
        uint16 ``(frames, rows, columns)`` (``(rows, columns)`` for one 2D image): the stored values
        (:func:`~dicom_node.writers.stored.store_entropy`) on the grid of the source images.
    source_images, card, settings, run, created
        as for :func:`build_uncertainty_map`.

    Raises
    ------
    ValueError
        If ``stored`` is not uint16 or does not match the source images, if an image without frame of
        reference has no PatientOrientation or no pixel spacing, or if ``run`` is below 1.
    """
    sources = list(source_images)
    check_run(run)
    if stored.dtype != np.uint16:
        raise ValueError(f"the stored entropy must be uint16, got {stored.dtype}")
    stored = source_frames(stored, sources, "stored entropy")
    step = math.log2(len(card.labels) + 1) / MAX_ENTROPY_VALUE
    created = created or datetime.now()
    key = series_key(sources, card, run)
    projection = not has_frame_of_reference(sources)
    geometry = (
        [_projection_geometry(sources[0], output_uid(settings, *key, "uncertainty-map", "frame-of-reference"))]
        if projection
        else None
    )
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ENTROPY",
        lut_explanation="Predictive entropy of the mean softmax (bits)",
        unit=QUALITY_CODES["unit_bit"],
        value_range=(0, MAX_ENTROPY_VALUE),
        slope=step,
        intercept=0.0,
        quantity_definition=QUALITY_CODES["entropy"],
    )
    window = hd.VOILUTTransformation(
        window_center=MAX_ENTROPY_VALUE / 2,
        window_width=MAX_ENTROPY_VALUE + 1,
        window_explanation="0 to log2(classes) bits",
    )
    pm = build_parametric_map(
        sources,
        stored,
        geometry=geometry,
        key=key,
        role="uncertainty-map",
        series_number=settings.uncertainty_series_number,
        series_description=settings.uncertainty_series_description.format(model=card.name),
        mapping=mapping,
        window=window,
        content_label="ENTROPY",
        content_description=f"{card.name} {card.version} predictive entropy (bits)",
        contributing=algorithm_equipment(card, settings, created),
        settings=settings,
        created=created,
    )
    logger.info(
        "built entropy map %s (series %s, %d frames) of series %s with %s %s run %d",
        pm.SOPInstanceUID,
        pm.SeriesInstanceUID,
        int(pm.NumberOfFrames),
        key[0],
        card.name,
        card.version,
        run,
    )
    return pm


def build_parametric_map(
    sources: Sequence[Dataset],
    stored: np.ndarray,
    *,
    geometry: Sequence[Dataset] | None = None,
    key: tuple[str, ...],
    role: str,
    series_number: int,
    series_description: str,
    mapping: hd.pm.RealWorldValueMapping,
    window: hd.VOILUTTransformation,
    content_label: str,
    content_description: str,
    contributing: hd.ContributingEquipment,
    settings: OutputSettings,
    created: datetime,
) -> hd.pm.ParametricMap:
    """One Parametric Map of unsigned stored values on the grid of ``sources`` (one frame per source slice):
    the real values through ``mapping``, shown through ``window``, compressed by the frame encoders with
    :attr:`OutputSettings.map_transfer_syntax`, reproducible: its UIDs derived from the run's ``key``
    (:func:`~dicom_node.writers.common.series_key`) and the object's ``role``, its dates from ``created``.

    ``geometry``: for an image without frame of reference, the carrier from :func:`_projection_geometry`
    that highdicom takes the plane from (a STATIC map; its SliceThickness placeholder is removed here);
    ``None`` for images with a frame of reference (a VOLUME map on the sources' own planes).
    """
    projection = geometry is not None
    planes = list(geometry) if geometry is not None else list(sources)
    with frame_encoders(settings.map_transfer_syntax) as workers:
        pm = hd.pm.ParametricMap(
            source_images=planes,
            pixel_array=stored,
            **run_identity(settings, key, role, series_number, series_description, created),
            **equipment(settings),
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[window],
            transfer_syntax_uid=settings.map_transfer_syntax,
            content_label=content_label,
            content_description=content_description[:64],
            image_flavor=hd.pm.ImageFlavorValues.STATIC if projection else hd.pm.ImageFlavorValues.VOLUME,
            contributing_equipment=[contributing],
            workers=workers,
        )
    make_reproducible(pm, created, output_uid(settings, *key, role, "dimension-organization"))
    if projection:
        for group in pm.SharedFunctionalGroupsSequence:
            measures = group.get("PixelMeasuresSequence")
            if measures is not None and "SliceThickness" in measures[0]:
                del measures[0].SliceThickness
    _set_laterality(pm, sources[0])
    pm.CodingSchemeIdentificationSequence = [fairnode_scheme()]
    return pm


#: Patient direction letters of PatientOrientation as unit vectors of the patient coordinate system.
_DIRECTIONS: Final[Mapping[str, tuple[float, float, float]]] = MappingProxyType(
    {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}
)


def _direction(letters: str, source: Dataset) -> list[float]:
    """Unit vector of one value of PatientOrientation (``"L"``, or ``"LF"`` for an oblique direction)."""
    if not letters or any(c not in _DIRECTIONS for c in letters):
        raise ValueError(
            f"PatientOrientation {list(source.PatientOrientation)} of image {source.SOPInstanceUID} names a "
            f"direction {letters!r}; expected letters of {''.join(_DIRECTIONS)}"
        )
    vector = np.sum([_DIRECTIONS[c] for c in letters], axis=0, dtype=float)
    return [float(v) for v in vector / np.linalg.norm(vector)]


def _projection_geometry(source: Dataset, frame_of_reference_uid: str) -> Dataset:
    """A copy of an image without frame of reference that has one: the plane the Parametric Map needs.

    The copy (the original is not touched) keeps the source's identity, so the map still references the
    real image; only highdicom reads its geometry. SliceThickness is a placeholder, removed after the build.
    """
    if "FrameOfReferenceUID" in source:
        return source
    orientation = source.get("PatientOrientation")
    if orientation is None or len(orientation) != 2:
        raise ValueError(
            f"image {source.SOPInstanceUID} has no frame of reference and no PatientOrientation (row, column "
            f"directions), got {orientation!r}: the entropy map cannot be oriented"
        )
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    if spacing is None:
        raise ValueError(
            f"image {source.SOPInstanceUID} has no frame of reference and neither PixelSpacing nor "
            "ImagerPixelSpacing: the entropy map's Pixel Measures cannot be filled"
        )
    carrier = Dataset()
    for element in source:
        carrier.add(element)
    carrier.FrameOfReferenceUID = frame_of_reference_uid
    carrier.PositionReferenceIndicator = ""
    carrier.ImageOrientationPatient = _direction(str(orientation[0]), source) + _direction(str(orientation[1]), source)
    carrier.ImagePositionPatient = [0.0, 0.0, 0.0]
    carrier.PixelSpacing = list(spacing)
    carrier.SliceThickness = 1.0
    return carrier


def _set_laterality(image: Dataset, source: Dataset) -> None:
    """Laterality of the Parametric Map: the source's, else a Frame Anatomy item of its anatomic region.

    The Parametric Map IOD needs Laterality (General Series, ``L`` or ``R``) unless a Frame Laterality is
    given; an empty one means "unknown", which is not true of most sources. A source of laterality
    ``B``/``U``, or without laterality but of an unpaired region (its AnatomicRegionSequence, else
    BodyPartExamined through the table of PS3.16 Annex L), gets a Frame Anatomy item with that region and
    Frame Laterality ``B``/``U``. Only when neither is known is Laterality left empty (unknown).
    """
    laterality = source.get("Laterality") or source.get("ImageLaterality")
    if laterality in ("L", "R"):
        image.Laterality = laterality
        return
    region, paired = _anatomic_region(source)
    if laterality in ("B", "U") and region is not None:
        frame_laterality = str(laterality)
    elif region is not None and paired is False:
        frame_laterality = "U"
    else:
        logger.info(
            "image %s: laterality %r of region %s unknown, the entropy map's Laterality is empty",
            source.SOPInstanceUID,
            laterality,
            region.meaning if region is not None else None,
        )
        image.Laterality = ""
        return
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [region]
    anatomy.FrameLaterality = frame_laterality
    image.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]


def _anatomic_region(source: Dataset) -> tuple[hd.sr.CodedConcept | None, bool | None]:
    """The source's anatomic region and whether it is paired (``None`` where unknown)."""
    known = get_anatomic_region_map()
    regions = source.get("AnatomicRegionSequence")
    if regions:
        region = coded(regions[0])
        pairs = [paired for code, paired in known.values() if code == region]
        return region, (pairs[0] if pairs else None)
    found = known.get(str(source.get("BodyPartExamined", "")).upper())
    if found is None:
        return None, None
    return found
