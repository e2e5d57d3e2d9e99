"""Output writers of one model run (IHE AI Results): BINARY SEG, PROBABILITY SEG, entropy map and TID 1500 SR.

- :func:`build_seg`: the BINARY DICOM-SEG of the label map (what viewers show as the segmentation);
- :func:`build_probability_seg`: a FRACTIONAL SEG of type PROBABILITY, the mean softmax of each structure;
- :func:`build_uncertainty_map`: a Parametric Map of the per-voxel predictive entropy in bits;
- :func:`build_sr`: the Comprehensive 3D SR (TID 1500) with one measurement group per segment: its size and,
  when a :class:`~quality.types.CaseQuality` is given, the quality estimates, the route and its reasons.

The quality items use the codes of :data:`QUALITY_CODES` (documented in ``dicom_node/QUALITY_CODES.md``).

All objects are built with highdicom in the study of the source images and name the algorithm where
IHE AI Results asks: in the SEG's AlgorithmIdentificationSequence (per segment) and in the SR's
Algorithm Identification content items (TID 4019), and in an item of ContributingEquipmentSequence
whose PurposeOfReferenceCodeSequence is ``(Newcode1, 99IHE, "Processing Algorithm")``.

Identifiers
-----------
Every UID is derived, not random: :func:`output_uid` hashes ``(source SeriesInstanceUID, model name,
model version, run, role, ...)`` under :attr:`OutputSettings.uid_root`. Building the outputs of the same
run twice gives the same SeriesInstanceUID and SOPInstanceUID, so a retried delivery replaces, never
duplicates, what PACS already holds; a new ``run`` gives new objects. The segment tracking UIDs of the
SEG are reused by the PROBABILITY SEG (the same finding) and by the SR's tracking identifiers, so a viewer
links each measurement to its segment and its probabilities.

Dates and times
---------------
highdicom stamps the wall clock (InstanceCreationDate/Time, ContentDate/Time, its own
ContributionDateTime). Pass ``created`` to the builders to set all of them, and the outputs become
byte-identical for identical inputs (do so when a delivery may be retried).

Size
----
The probability SEG and the entropy map are written in :attr:`OutputSettings.map_transfer_syntax` (RLE
Lossless by default; measured on 90 CT slices of 512 x 512 with 5 structures, see QUALITY_CODES.md), and the
probability SEG leaves out the frames of a structure where its probability rounds to 0 everywhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from types import MappingProxyType
from typing import Final

import highdicom as hd
import numpy as np
import pydicom
from highdicom._standard_utils import get_anatomic_region_map
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import DA, DT, TM

from inference.model_card import LabelSpec, ModelCard
from quality.types import CaseQuality, Route, SamplingMethod, StructureQuality

logger = logging.getLogger(__name__)

#: Placeholder UID root (a Medical Connections sub-root). Each site must replace it by its own root.
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.10.1234."

#: Purpose of reference of the algorithm's ContributingEquipmentSequence item (IHE AI Results).
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")

#: UCUM milliliter (pydicom's code dictionary has no plain ``ml``).
MILLILITER = Code("ml", "UCUM", "milliliter")

#: Procedure reported when the source study names none (ProcedureCodeSequence).
DEFAULT_PROCEDURE = codes.SCT.ImagingProcedure

#: Designator of fairnode's private coding scheme (PS3.16 section 8.2: local designators begin with "99").
FAIRNODE_SCHEME: Final = "99FAIRNODE"


def _fairnode_code(value: str, meaning: str) -> Code:
    return Code(value, FAIRNODE_SCHEME, meaning)


#: Every code the quality items of the outputs use, by role: DCM, SCT, UMLS and UCUM where such a code exists,
#: the private scheme :data:`FAIRNODE_SCHEME` otherwise. Each is documented (meaning, unit, how it is
#: computed) in ``dicom_node/QUALITY_CODES.md``; change one only together with that table.
QUALITY_CODES: Final[Mapping[str, Code]] = MappingProxyType(
    {
        # concept names of numeric items (NUM)
        "dice": _fairnode_code("DSC", "Dice similarity coefficient"),
        "hd95": _fairnode_code("HD95", "95th percentile Hausdorff distance"),
        "entropy": _fairnode_code("PREDENT", "Predictive entropy"),
        "mutual_information": _fairnode_code("PREDMI", "Mutual information of samples and prediction"),
        "sample_agreement": _fairnode_code("SAMPLEDSC", "Mean pairwise Dice similarity coefficient of samples"),
        "size_cv": _fairnode_code("SIZECV", "Coefficient of variation of segmented size over samples"),
        "interval_coverage": _fairnode_code("PICOVERAGE", "Prediction interval coverage"),
        # TID 310 Measurement Properties of the predicted Dice (the items highdicom writes)
        "upper_uncertainty": Code("371886008", "SCT", "+, range of upper measurement uncertainty"),
        "lower_uncertainty": Code("371885007", "SCT", "-, range of lower measurement uncertainty"),
        # values of (370129005, SCT, "Measurement Method")
        "rca": _fairnode_code("RCA", "Reverse classification accuracy"),
        "dice_predictor": _fairnode_code("DSCPREDICTOR", "Two-stage Dice predictor, split-conformal interval"),
        "mc_dropout": _fairnode_code("MCDROPOUT", "Monte Carlo dropout sampling"),
        "tta_flip": _fairnode_code("TTAFLIP", "Test-time augmentation by flipping"),
        # values of (121401, DCM, "Derivation")
        "maximum": codes.SCT.Maximum,
        "mean": codes.SCT.Mean,
        # qualitative evaluations (CODE and TEXT) of each structure and of the whole report
        "quality": _fairnode_code("SEGQUALITY", "Segmentation quality"),
        "acceptable": _fairnode_code("ACCEPTABLE", "Acceptable"),
        "needs_review": _fairnode_code("NEEDSREVIEW", "Needs review"),
        "reason": _fairnode_code("REVIEWREASON", "Reason for review"),
        "qualitative_evaluations": Code("C0034375", "UMLS", "Qualitative Evaluations"),
        # the entropy map's Real World Value Mapping: (246205007, SCT, "Quantity") = "entropy"
        "quantity": Code("246205007", "SCT", "Quantity"),
        # units (UCUM)
        "unit_one": codes.UCUM.NoUnits,
        "unit_bit": Code("bit", "UCUM", "bit"),
        "unit_mm": codes.UCUM.Millimeter,
        "unit_percent": codes.UCUM.Percent,
    }
)

#: Measurement Method of the uncertainty scores, by how the samples were drawn.
_SAMPLING_METHODS: Final[Mapping[SamplingMethod, str]] = MappingProxyType(
    {SamplingMethod.MC_DROPOUT: "mc_dropout", SamplingMethod.TTA_FLIP: "tta_flip"}
)

#: Algorithm Name (TID 4019) of the quality estimates; its version is the node's software version.
QUALITY_ALGORITHM_NAME: Final = "fairnode-quality"

#: Transfer syntaxes the probability SEG and the entropy map may be written in (all lossless).
MAP_TRANSFER_SYNTAXES: Final = (RLELossless, JPEGLSLossless, JPEG2000Lossless, ExplicitVRLittleEndian)

_FALLBACK_VERSION = "0.1.0"
#: Longest root that leaves room for a 20-digit suffix within the 64 characters of a UID.
_MAX_ROOT_LENGTH = 44


def _fairnode_version() -> str:
    try:
        return metadata.version("fairnode")
    except metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


@dataclass(frozen=True)
class OutputSettings:
    """Identity of this node in the objects it writes.

    Attributes
    ----------
    uid_root
        root of every UID written, ending with ``"."``; at most 44 characters. The default is a
        placeholder to be replaced by the site's (or vendor's) own registered root.
    manufacturer, manufacturer_model_name, software_version, device_serial_number, institution_name
        General Equipment of the SEG and SR (and the algorithm's ContributingEquipmentSequence item).
        An empty ``institution_name`` is left out.
    seg_series_number, sr_series_number, probability_series_number, uncertainty_series_number
        SeriesNumber of the BINARY SEG, SR, PROBABILITY SEG and entropy map series.
    seg_series_description, sr_series_description, probability_series_description, uncertainty_series_description
        SeriesDescription templates; ``{model}`` is replaced by the model name.
    map_transfer_syntax
        transfer syntax of the PROBABILITY SEG and the entropy map, one of :data:`MAP_TRANSFER_SYNTAXES`:
        RLE Lossless (default: decoded by every toolkit, pydicom without plugins), JPEG-LS Lossless (about
        4 times smaller and faster to write, needs a JPEG-LS codec on the reading side), JPEG 2000 Lossless,
        or uncompressed Explicit VR Little Endian (about 50 times larger).
    """

    uid_root: str = DEFAULT_UID_ROOT
    manufacturer: str = "fairnode"
    manufacturer_model_name: str = "fairnode"
    software_version: str = _fairnode_version()
    device_serial_number: str = "1"
    institution_name: str = ""
    seg_series_number: int = 9100
    seg_series_description: str = "AI segmentation ({model})"
    sr_series_number: int = 9101
    sr_series_description: str = "AI measurements ({model})"
    probability_series_number: int = 9102
    probability_series_description: str = "AI probabilities ({model})"
    uncertainty_series_number: int = 9103
    uncertainty_series_description: str = "AI uncertainty ({model})"
    map_transfer_syntax: str = RLELossless

    def __post_init__(self) -> None:
        root = self.uid_root
        parts = root[:-1].split(".") if root.endswith(".") else []
        if not parts or any(not p.isdigit() or (len(p) > 1 and p[0] == "0") for p in parts):
            raise ValueError(
                f"uid_root must be dot-separated numbers without leading zeros ending with '.', got {root!r}"
            )
        if len(root) > _MAX_ROOT_LENGTH:
            raise ValueError(f"uid_root must be at most {_MAX_ROOT_LENGTH} characters, got {len(root)}")
        for name in (
            "seg_series_description",
            "sr_series_description",
            "probability_series_description",
            "uncertainty_series_description",
        ):
            template: str = getattr(self, name)
            try:
                template.format(model="m")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name} may use only the field {{model}}, got {template!r} ({exc!r})") from exc
        for name in ("seg_series_number", "sr_series_number", "probability_series_number", "uncertainty_series_number"):
            value: int = getattr(self, name)
            if not 0 < value < 2**31:
                raise ValueError(f"{name} must be a positive 32-bit integer, got {value}")
        if self.map_transfer_syntax not in MAP_TRANSFER_SYNTAXES:
            allowed = ", ".join(f"{UID(t).name} ({t})" for t in MAP_TRANSFER_SYNTAXES)
            raise ValueError(f"map_transfer_syntax must be one of {allowed}, got {self.map_transfer_syntax!r}")


@dataclass(frozen=True)
class SegmentMeasurement:
    """Size of one segment: volume for a 3D label map, area for a 2D image.

    Attributes
    ----------
    segment_number
        segment number in the SEG (= the label value in the card).
    label_name
        the card's label name.
    volume_ml
        volume in millilitres; ``None`` for 2D images (then ``area_mm2`` is set).
    area_mm2
        area in square millimetres (2D images only).
    """

    segment_number: int
    label_name: str
    volume_ml: float | None
    area_mm2: float | None = None


def output_uid(settings: OutputSettings, *parts: str) -> str:
    """A UID under ``settings.uid_root`` derived from ``parts`` (same parts, same UID).

    Raises
    ------
    TypeError
        If no part is given (the UID would not depend on anything).
    """
    if not parts:
        raise TypeError("output_uid needs at least one part to derive the UID from")
    return str(generate_uid(prefix=settings.uid_root, entropy_srcs=[str(p) for p in parts]))


# --- measurements ------------------------------------------------------------------------------------


def segment_measurements(labels: np.ndarray, spacing: tuple[float, ...], card: ModelCard) -> list[SegmentMeasurement]:
    """Volume (3D) or area (2D) of every label of the card, absent labels included (0).

    Parameters
    ----------
    labels
        integer label map, values ``0`` (background) to ``len(card.labels)``: ``(slices, rows,
        columns)`` for a volume, ``(rows, columns)`` or ``(1, rows, columns)`` for a 2D image.
    spacing
        voxel size in mm in the same axis order: ``(slice, row, column)`` for a volume (the slice
        spacing is the distance between slice centres, not the slice thickness), ``(row, column)``
        for a 2D image (for a radiograph without PixelSpacing: ImagerPixelSpacing, i.e. at the detector).

    Returns
    -------
    list[SegmentMeasurement]
        one per card label, in label order; ``volume_ml`` set for 3D, ``area_mm2`` for 2D.

    Raises
    ------
    ValueError
        If the spacing has neither 2 nor 3 values, a value is not positive and finite, the label map's
        dimensions do not fit the spacing, or it holds values outside ``0..len(card.labels)``.
    """
    sizes = tuple(float(s) for s in spacing)
    if len(sizes) not in (2, 3):
        raise ValueError(f"spacing must have 3 values (slice, row, column) or 2 (row, column), got {spacing}")
    if not all(np.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"spacing values must be positive and finite (mm), got {spacing}")
    if len(sizes) == 2 and labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != len(sizes):
        raise ValueError(
            f"labels of shape {labels.shape} do not fit a spacing of {len(sizes)} values {spacing}: "
            "expected (slices, rows, columns) with 3 values or (rows, columns) with 2"
        )
    _check_label_values(labels, card)
    counts = np.bincount(labels.ravel().astype(np.intp), minlength=len(card.labels) + 1)
    cell = float(np.prod(sizes))
    result = []
    for label in card.labels:
        n = int(counts[label.value])
        if len(sizes) == 3:
            result.append(SegmentMeasurement(label.value, label.name, volume_ml=n * cell / 1000.0))
        else:
            result.append(SegmentMeasurement(label.value, label.name, volume_ml=None, area_mm2=n * cell))
    return result


def _check_label_values(labels: np.ndarray, card: ModelCard) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array (uint8), got dtype {labels.dtype}")
    if labels.size == 0:
        raise ValueError(f"labels must not be empty, got shape {labels.shape}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > len(card.labels):
        raise ValueError(
            f"label values must lie in 0..{len(card.labels)} (the labels of model {card.name!r}), got {lo}..{hi}"
        )


# --- SEG -----------------------------------------------------------------------------------------------


def _algorithm_sequence(card: ModelCard) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=card.name, family=codes.cid7162.ArtificialIntelligence, version=card.version
    )


def _algorithm_equipment(card: ModelCard, settings: OutputSettings, created: datetime) -> hd.ContributingEquipment:
    """The ContributingEquipmentSequence item naming the algorithm (IHE AI Results).

    highdicom admits only DICOM's CID 7005 purposes; the item is built with Processing Equipment and
    its purpose then replaced by IHE's ``(Newcode1, 99IHE, "Processing Algorithm")``.
    """
    item = hd.ContributingEquipment(
        manufacturer=settings.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=card.name,
        software_versions=card.version,
        device_serial_number=settings.device_serial_number,
        institution_name=settings.institution_name or None,
        contribution_datetime=created,
        contribution_description=f"AI model {card.name} {card.version}: {card.description}"[:1024],
    )
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(PROCESSING_ALGORITHM)]
    return item


def _segment_description(label: LabelSpec, card: ModelCard, tracking_uid: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=label.value,
        segment_label=label.name,
        segmented_property_category=Code(label.category_code, "SCT", label.category_meaning),
        segmented_property_type=Code(label.code, label.scheme, label.meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_sequence(card),
        tracking_uid=tracking_uid,
        tracking_id=label.name,
        display_color=hd.color.CIELabColor.from_rgb(*label.color),
    )


def _frames(labels: np.ndarray, sources: Sequence[Dataset], what: str = "labels") -> np.ndarray:
    """``labels`` as ``(frames, rows, columns)``, checked against the source images (named ``what`` in errors)."""
    if not sources:
        raise ValueError("source_images is empty: a derived object needs the images it was derived from")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    n_frames = int(sources[0].get("NumberOfFrames", 1)) if len(sources) == 1 else len(sources)
    expected = (n_frames, rows, cols)
    frames = labels[np.newaxis] if labels.ndim == 2 else labels
    sizes = {(int(s.Rows), int(s.Columns)) for s in sources}
    if frames.shape != expected or len(sizes) != 1:
        raise ValueError(
            f"{what} of shape {labels.shape} do not match the source images: {len(sources)} image(s) of "
            f"{sorted(sizes)} (rows, columns), expected {what} of shape {expected}"
            + (" or (rows, columns)" if n_frames == 1 else "")
        )
    return frames


def _series_key(sources: Sequence[Dataset], card: ModelCard, run: int) -> tuple[str, ...]:
    return (str(sources[0].SeriesInstanceUID), card.name, card.version, str(run))


def _check_run(run: int) -> None:
    if run < 1:
        raise ValueError(f"run must be 1 or more, got {run}")


def _has_frame_of_reference(sources: Sequence[Dataset]) -> bool:
    return "FrameOfReferenceUID" in sources[0]


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
    _check_run(run)
    frames = _frames(labels, sources)
    _check_label_values(frames, card)
    created = created or datetime.now()
    key = _series_key(sources, card, run)
    descriptions = [
        _segment_description(label, card, output_uid(settings, *key, "seg", "tracking", str(label.value)))
        for label in card.labels
    ]
    single_image = frames.shape[0] == 1
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames.astype(np.min_scalar_type(len(card.labels)), copy=False),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=output_uid(settings, *key, "seg", "series"),
        series_number=settings.seg_series_number,
        sop_instance_uid=output_uid(settings, *key, "seg", "instance"),
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=settings.manufacturer_model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        institution_name=settings.institution_name or None,
        content_label=_content_label(card),
        content_description=f"{card.name} {card.version}"[:64],
        series_description=settings.seg_series_description.format(model=card.name)[:64],
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
        # One frame per segment on a single image: the SR's planar groups reference a frame each.
        omit_empty_frames=not single_image,
        contributing_equipment=[_algorithm_equipment(card, settings, created)],
    )
    _make_reproducible(seg, created, output_uid(settings, *key, "seg", "dimension-organization"))
    if not _has_frame_of_reference(sources):
        _fix_projection_seg(seg, sources[0])
    logger.info(
        "built SEG %s (series %s, %d frames, %d segments) of series %s with %s %s run %d",
        seg.SOPInstanceUID,
        seg.SeriesInstanceUID,
        int(seg.NumberOfFrames),
        len(descriptions),
        key[0],
        card.name,
        card.version,
        run,
    )
    return seg


def _fix_projection_seg(seg: Dataset, source: Dataset) -> None:
    """Fix-ups of a SEG on an image without a frame of reference (DX).

    General Image 2C: such an image says how its rows and columns lie (PatientOrientation, copied
    from the source). And when the source has PixelSpacing, highdicom 0.28.2 writes a Pixel Measures
    item without SliceThickness (right for a projection, and dciodvfy accepts it) that its own
    ``segread`` then refuses; without a frame of reference Pixel Measures is optional, so it is left out
    (the spacing stays in the source image).
    """
    if "PatientOrientation" in source:
        seg.PatientOrientation = source.PatientOrientation
    for group in seg.get("SharedFunctionalGroupsSequence", []):
        measures = group.get("PixelMeasuresSequence")
        if measures is not None and "SliceThickness" not in measures[0]:
            del group.PixelMeasuresSequence


def _content_label(card: ModelCard) -> str:
    """ContentLabel (CS, 16 characters of ``A-Z 0-9 _``) from the model name."""
    return card.name.upper().replace("-", "_")[:16]


def _make_reproducible(dataset: Dataset, created: datetime, organization_uid: str | None = None) -> None:
    """Replace highdicom's wall-clock stamps (and random dimension organisation UID) by derived values."""
    dataset.InstanceCreationDate = DA(created.date())
    dataset.InstanceCreationTime = TM(created.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == "highdicom" and "ContributionDateTime" in item:
            item.ContributionDateTime = DT(created)
    if organization_uid is not None:
        for item in [
            *dataset.get("DimensionOrganizationSequence", []),
            *dataset.get("DimensionIndexSequence", []),
        ]:
            item.DimensionOrganizationUID = organization_uid


# --- PROBABILITY SEG and entropy map ---------------------------------------------------------------

#: Largest stored value of the PROBABILITY SEG: probability p is stored as round(255 p).
MAX_FRACTIONAL_VALUE: Final = 255
#: Largest stored value of the entropy map: entropy h is stored as round(65535 h / log2(classes)).
MAX_ENTROPY_VALUE: Final = 65535
#: Entropy under this (bits) is written as 0: the network is certain there, and the noise of near-zero
#: values would otherwise keep the lossless compression from working.
ENTROPY_FLOOR_BITS: Final = 0.01
#: How far out of range (rounding of float32 sums) a probability or entropy may be before it is refused.
_RANGE_TOLERANCE = 1e-4


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
    _check_run(run)
    frames = _probability_frames(mean_probabilities, sources, card)
    created = created or datetime.now()
    key = _series_key(sources, card, run)
    descriptions = [
        _segment_description(label, card, output_uid(settings, *key, "seg", "tracking", str(label.value)))
        for label in card.labels
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        segment_descriptions=descriptions,
        series_instance_uid=output_uid(settings, *key, "probability-seg", "series"),
        series_number=settings.probability_series_number,
        sop_instance_uid=output_uid(settings, *key, "probability-seg", "instance"),
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=settings.manufacturer_model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        institution_name=settings.institution_name or None,
        content_label=f"{_content_label(card)[:11]}_PROB",
        content_description=f"{card.name} {card.version} mean softmax probability"[:64],
        series_description=settings.probability_series_description.format(model=card.name)[:64],
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
        omit_empty_frames=True,
        transfer_syntax_uid=settings.map_transfer_syntax,
        contributing_equipment=[_algorithm_equipment(card, settings, created)],
    )
    _make_reproducible(seg, created, output_uid(settings, *key, "probability-seg", "dimension-organization"))
    if not _has_frame_of_reference(sources):
        _fix_projection_seg(seg, sources[0])
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
    """Foreground probabilities as float32 ``(frames, rows, columns, segments)``, 0 where they round to 0."""
    classes = len(card.labels) + 1
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(f"mean_probabilities must be a float array, got dtype {probabilities.dtype}")
    if probabilities.ndim not in (3, 4) or probabilities.shape[0] != classes:
        raise ValueError(
            f"mean_probabilities of shape {probabilities.shape} must be (classes, *image shape) with "
            f"{classes} classes (background and the {len(card.labels)} labels of model {card.name!r})"
        )
    _frames(probabilities[0], sources, "mean_probabilities[0]")
    foreground = probabilities[1:]
    lo, hi = float(foreground.min()), float(foreground.max())
    if not (lo >= -_RANGE_TOLERANCE and hi <= 1 + _RANGE_TOLERANCE):
        raise ValueError(f"mean_probabilities must lie in [0, 1], got values from {lo} to {hi}")
    frames = np.moveaxis(foreground, 0, -1).astype(np.float32, order="C")
    if frames.ndim == 3:
        frames = frames[np.newaxis]
    if hi > 1.0:
        np.minimum(frames, 1.0, out=frames)
    # exact zeros where the stored value would be 0 (negative rounding errors included), so that highdicom
    # leaves the empty frames out
    np.putmask(frames, frames < 0.5 / MAX_FRACTIONAL_VALUE, 0.0)
    return frames


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
    _check_run(run)
    if not np.issubdtype(entropy.dtype, np.floating):
        raise ValueError(f"entropy must be a float array (bits), got dtype {entropy.dtype}")
    frames = _frames(entropy, sources, "entropy")
    max_bits = math.log2(len(card.labels) + 1)
    lo, hi = float(frames.min()), float(frames.max())
    if not (lo >= -_RANGE_TOLERANCE and hi <= max_bits + _RANGE_TOLERANCE):
        raise ValueError(
            f"entropy must lie in [0, {max_bits:.4f}] bits (log2 of {len(card.labels) + 1} classes), "
            f"got values from {lo} to {hi}"
        )
    step = max_bits / MAX_ENTROPY_VALUE
    clipped = np.clip(frames, 0.0, max_bits)
    clipped[clipped < ENTROPY_FLOOR_BITS] = 0.0  # certain voxels: runs of zeros compress (38 MB -> a few MB)
    stored = np.rint(clipped / step).astype(np.uint16)
    created = created or datetime.now()
    key = _series_key(sources, card, run)
    projection = not _has_frame_of_reference(sources)
    geometry = (
        [_projection_geometry(sources[0], output_uid(settings, *key, "uncertainty-map", "frame-of-reference"))]
        if projection
        else sources
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
    pm = hd.pm.ParametricMap(
        source_images=geometry,
        pixel_array=stored,
        series_instance_uid=output_uid(settings, *key, "uncertainty-map", "series"),
        series_number=settings.uncertainty_series_number,
        sop_instance_uid=output_uid(settings, *key, "uncertainty-map", "instance"),
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=settings.manufacturer_model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        institution_name=settings.institution_name or None,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=MAX_ENTROPY_VALUE / 2,
                window_width=MAX_ENTROPY_VALUE + 1,
                window_explanation="0 to log2(classes) bits",
            )
        ],
        transfer_syntax_uid=settings.map_transfer_syntax,
        content_label="ENTROPY",
        content_description=f"{card.name} {card.version} predictive entropy (bits)"[:64],
        image_flavor=hd.pm.ImageFlavorValues.STATIC if projection else hd.pm.ImageFlavorValues.VOLUME,
        series_description=settings.uncertainty_series_description.format(model=card.name)[:64],
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
        contributing_equipment=[_algorithm_equipment(card, settings, created)],
    )
    _make_reproducible(pm, created, output_uid(settings, *key, "uncertainty-map", "dimension-organization"))
    if projection:
        for group in pm.SharedFunctionalGroupsSequence:
            measures = group.get("PixelMeasuresSequence")
            if measures is not None and "SliceThickness" in measures[0]:
                del measures[0].SliceThickness
    _set_laterality(pm, sources[0])
    pm.CodingSchemeIdentificationSequence = [_fairnode_scheme()]
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
        region = _coded(regions[0])
        pairs = [paired for code, paired in known.values() if code == region]
        return region, (pairs[0] if pairs else None)
    found = known.get(str(source.get("BodyPartExamined", "")).upper())
    if found is None:
        return None, None
    return found


def _fairnode_scheme() -> Dataset:
    """The CodingSchemeIdentificationSequence item that declares :data:`FAIRNODE_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = FAIRNODE_SCHEME
    item.CodingSchemeName = "fairnode segmentation quality codes"
    item.CodingSchemeResponsibleOrganization = "fairnode project (dicom_node/QUALITY_CODES.md)"
    return item


# --- SR ------------------------------------------------------------------------------------------------


def build_sr(
    source_images: Sequence[Dataset],
    seg: hd.seg.Segmentation,
    measurements: Sequence[SegmentMeasurement],
    card: ModelCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
    quality: CaseQuality | None = None,
    probabilities: Dataset | None = None,
    uncertainty_map: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of one prediction: one ROI group per measured segment.

    Each group references its segment of ``seg`` (volumetric TID 1411 with a Referenced Segment for
    a volume, planar TID 1410 with a Referenced Segmentation Frame for a 2D image), carries the segment's
    tracking identifier and UID, its property type as finding type and category as finding category,
    the algorithm (TID 4019), and one Measurement: Volume in ml or Area in mm2.

    With ``quality``, each group of a structure it scores also holds (codes: :data:`QUALITY_CODES`, all
    with the Algorithm Identification ``fairnode-quality`` whose parameters name the sampling and the number
    of samples):

    - the predicted Dice (Measurement Method "Two-stage Dice predictor") with its split-conformal interval
      ``[low, high]`` as TID 310 measurement uncertainty: "+, range of upper measurement uncertainty"
      ``high - dice`` and "-, range of lower measurement uncertainty" ``dice - low``, and the interval's
      stated coverage (percent) as a further property;
    - the RCA estimate (Measurement Method "Reverse classification accuracy"): Dice with Derivation
      Maximum and Mean over the references, and the HD95 (mm) against the reference of the maximum;
    - the uncertainty scores (Measurement Method: the sampling): mean predictive entropy inside the
      structure (bits; Derivation Mean; Source of Measurement the ``uncertainty_map`` when given), mean
      mutual information (bits, Derivation Mean), mean pairwise Dice of the samples and the coefficient of
      variation of the size over the samples;
    - the qualitative evaluation "Segmentation quality" = "Acceptable" (route PASS) or "Needs review"
      (REVIEW), and one TEXT "Reason for review" per reason of the structure.

    A value that is not finite (an HD95 with an empty mask is NaN) is left out. At document level, a
    "Qualitative Evaluations" container (TID 1500) holds the case's "Segmentation quality" and all its
    reasons (input checks included). The private scheme is declared in CodingSchemeIdentificationSequence.

    Parameters
    ----------
    source_images
        the images segmented (as given to :func:`build_seg`); evidence of the SR with ``seg``.
    seg
        the SEG built by :func:`build_seg` from these images (or one read back from its file).
    measurements
        one per segment to report, usually :func:`segment_measurements` of the same labels; a
        segment absent from the prediction is reported with volume (or area) 0.
    card, settings, run
        as for :func:`build_seg`; the SR's UIDs are derived from the same key with role ``sr``.
    created
        date and time stamped on the object; the current local time when ``None``.
    quality
        the quality estimators' result for this prediction; structures are matched to measurements by
        label value (= segment number). A measured segment without a structure gets no quality items.
    probabilities, uncertainty_map
        the PROBABILITY SEG (:func:`build_probability_seg`) and entropy map (:func:`build_uncertainty_map`)
        of the same prediction, when written: added to the evidence; the entropy measurements reference the
        map.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        complete (CompletionFlag COMPLETE), preliminary and unverified: no person has checked it.

    Raises
    ------
    ValueError
        If ``seg`` (or ``probabilities``, ``uncertainty_map``) is not in the study of the source images, a
        measurement names a segment that ``seg`` does not declare, has neither volume nor area (or both),
        ``measurements`` is empty, ``quality`` scores a structure that is not measured (or one twice) or
        gives a predicted Dice outside its interval, or ``run`` is below 1.
    """
    sources = list(source_images)
    _check_run(run)
    if not sources:
        raise ValueError("source_images is empty: an SR needs the images it reports on")
    if not measurements:
        raise ValueError("measurements is empty: a measurement report needs at least one measurement")
    study_uid = str(sources[0].StudyInstanceUID)
    derived = {"seg": seg, "probabilities": probabilities, "uncertainty_map": uncertainty_map}
    for name, item in derived.items():
        if item is not None and str(item.StudyInstanceUID) != study_uid:
            raise ValueError(f"{name} belongs to study {item.StudyInstanceUID}, the source images to study {study_uid}")
    segments: dict[int, Dataset] = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    structures = _structures_by_label(quality, measurements)
    created = created or datetime.now()
    key = _series_key(sources, card, run)
    algorithm = hd.sr.AlgorithmIdentification(name=card.name, version=card.version)
    groups = []
    for m in measurements:
        scored = structures.get(m.segment_number)
        extra = (
            _QualityItems.of(scored, quality, settings, uncertainty_map)
            if scored is not None and quality is not None
            else _QualityItems()
        )
        groups.append(_roi_group(m, seg, segments, sources, algorithm, extra))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(settings, "device", settings.manufacturer, card.name, card.version),
            name=card.name,
            manufacturer_name=settings.manufacturer,
            model_name=card.name,
            serial_number=settings.device_serial_number,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure_reported(sources[0]),
        imaging_measurements=groups,
    )
    if quality is not None:
        report[0].ContentSequence.append(_case_evaluations(quality))
    sr = hd.sr.Comprehensive3DSR(
        # sources first: highdicom copies patient/study and the acquisition equipment from evidence[0]
        evidence=[*sources, *(item for item in derived.values() if item is not None)],
        content=report[0],
        series_instance_uid=output_uid(settings, *key, "sr", "series"),
        series_number=settings.sr_series_number,
        sop_instance_uid=output_uid(settings, *key, "sr", "instance"),
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=settings.manufacturer_model_name,
        software_versions=settings.software_version,
        device_serial_number=settings.device_serial_number,
        institution_name=settings.institution_name or None,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=settings.sr_series_description.format(model=card.name)[:64],
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
        contributing_equipment=[_algorithm_equipment(card, settings, created)],
    )
    _make_reproducible(sr, created)
    if quality is not None:
        sr.CodingSchemeIdentificationSequence = [_fairnode_scheme()]
    logger.info(
        "built SR %s (series %s, %d groups%s) referencing SEG %s",
        sr.SOPInstanceUID,
        sr.SeriesInstanceUID,
        len(groups),
        f", quality {quality.route}" if quality is not None else "",
        seg.SOPInstanceUID,
    )
    return sr


def _structures_by_label(
    quality: CaseQuality | None, measurements: Sequence[SegmentMeasurement]
) -> dict[int, StructureQuality]:
    if quality is None:
        return {}
    measured = {m.segment_number for m in measurements}
    structures: dict[int, StructureQuality] = {}
    for structure in quality.structures:
        if structure.label not in measured:
            raise ValueError(
                f"quality scores structure {structure.label} ({structure.name!r}), the measurements are of "
                f"segments {sorted(measured)}"
            )
        if structure.label in structures:
            raise ValueError(f"quality scores structure {structure.label} ({structure.name!r}) twice")
        structures[structure.label] = structure
    return structures


@dataclass(frozen=True)
class _QualityItems:
    """The quality content of one ROI group: numeric items, coded evaluations and TEXT reasons."""

    measurements: tuple[hd.sr.Measurement, ...] = ()
    evaluations: tuple[hd.sr.QualitativeEvaluation, ...] = ()
    reasons: tuple[hd.sr.TextContentItem, ...] = ()

    @classmethod
    def of(
        cls,
        structure: StructureQuality,
        case: CaseQuality,
        settings: OutputSettings,
        uncertainty_map: Dataset | None,
    ) -> _QualityItems:
        algorithm = hd.sr.AlgorithmIdentification(
            name=QUALITY_ALGORITHM_NAME,
            version=settings.software_version,
            parameters=[f"sampling: {case.method.value}", f"samples: {case.samples}"],
        )
        items: list[hd.sr.Measurement | None] = []
        if structure.prediction is not None:
            items.append(_predicted_dice(structure, algorithm))
        if structure.rca is not None:
            rca = QUALITY_CODES["rca"]
            items += [
                _measurement("dice", structure.rca.max_dice, "unit_one", rca, algorithm, derivation="maximum"),
                _measurement("dice", structure.rca.mean_dice, "unit_one", rca, algorithm, derivation="mean"),
                _measurement("hd95", structure.rca.hd95_mm, "unit_mm", rca, algorithm),
            ]
        sampling = QUALITY_CODES[_SAMPLING_METHODS[case.method]]
        source = (
            [hd.sr.SourceImageForMeasurement.from_source_image(uncertainty_map)]
            if uncertainty_map is not None
            else None
        )
        u = structure.uncertainty
        items += [
            _measurement("entropy", u.mean_entropy, "unit_bit", sampling, algorithm, derivation="mean", images=source),
            _measurement(
                "mutual_information", u.mean_mutual_information, "unit_bit", sampling, algorithm, derivation="mean"
            ),
            _measurement("sample_agreement", u.sample_dice, "unit_one", sampling, algorithm),
            _measurement("size_cv", u.volume_cv, "unit_one", sampling, algorithm),
        ]
        verdict = "acceptable" if structure.route == Route.PASS else "needs_review"
        return cls(
            measurements=tuple(m for m in items if m is not None),
            evaluations=(hd.sr.QualitativeEvaluation(QUALITY_CODES["quality"], QUALITY_CODES[verdict]),),
            reasons=tuple(_reason(r) for r in structure.reasons),
        )


def _measurement(
    name: str,
    value: float,
    unit: str,
    method: Code,
    algorithm: hd.sr.AlgorithmIdentification,
    *,
    derivation: str | None = None,
    images: Sequence[hd.sr.SourceImageForMeasurement] | None = None,
) -> hd.sr.Measurement | None:
    """A quality measurement (``name``, ``unit``, ``derivation``: keys of QUALITY_CODES); None if not finite."""
    if not math.isfinite(value):
        logger.debug("%s is %s: left out of the SR", QUALITY_CODES[name].meaning, value)
        return None
    return hd.sr.Measurement(
        name=QUALITY_CODES[name],
        value=float(value),
        unit=QUALITY_CODES[unit],
        method=method,
        derivation=QUALITY_CODES[derivation] if derivation is not None else None,
        referenced_images=images,
        algorithm_id=algorithm,
    )


def _predicted_dice(structure: StructureQuality, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement | None:
    """The predicted Dice with its interval as TID 310 measurement uncertainty and its coverage in percent."""
    p = structure.prediction
    if p is None or not all(math.isfinite(v) for v in (p.dice, p.low, p.high, p.coverage)):
        return None
    if not p.low - 1e-9 <= p.dice <= p.high + 1e-9:
        raise ValueError(f"predicted Dice {p.dice} of {structure.name!r} lies outside its interval [{p.low}, {p.high}]")
    if not 0 < p.coverage < 1:
        raise ValueError(f"interval coverage of {structure.name!r} must lie in (0, 1), got {p.coverage}")
    measurement = hd.sr.Measurement(
        name=QUALITY_CODES["dice"],
        value=float(p.dice),
        unit=QUALITY_CODES["unit_one"],
        method=QUALITY_CODES["dice_predictor"],
        properties=hd.sr.MeasurementProperties(
            upper_measurement_uncertainty=max(0.0, float(p.high - p.dice)),
            lower_measurement_uncertainty=max(0.0, float(p.dice - p.low)),
        ),
        algorithm_id=algorithm,
    )
    coverage = hd.sr.NumContentItem(
        name=QUALITY_CODES["interval_coverage"],
        value=round(100.0 * float(p.coverage), 6),
        unit=QUALITY_CODES["unit_percent"],
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
    )
    content = measurement[0].ContentSequence
    lower = QUALITY_CODES["lower_uncertainty"].value
    position = next(i for i, item in enumerate(content) if item.ConceptNameCodeSequence[0].CodeValue == lower)
    content.insert(position + 1, coverage)
    return measurement


def _reason(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=QUALITY_CODES["reason"], value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _case_evaluations(quality: CaseQuality) -> hd.sr.ContainerContentItem:
    """TID 1500's "Qualitative Evaluations" container: the case's route and all its reasons."""
    verdict = "acceptable" if quality.route == Route.PASS else "needs_review"
    container = hd.sr.ContainerContentItem(
        name=QUALITY_CODES["qualitative_evaluations"], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(
                name=QUALITY_CODES["quality"],
                value=QUALITY_CODES[verdict],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            *(_reason(r) for r in quality.reasons),
        ]
    )
    return container


def _procedure_reported(source: Dataset) -> hd.sr.CodedConcept | Code:
    """The study's first ProcedureCodeSequence item, else SCT 363679005 Imaging procedure."""
    items = source.get("ProcedureCodeSequence", [])
    if items and all(k in items[0] for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")):
        item = items[0]
        return hd.sr.CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
    return DEFAULT_PROCEDURE


def _coded(item: Dataset) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)


def _roi_group(
    measurement: SegmentMeasurement,
    seg: Dataset,
    segments: dict[int, Dataset],
    sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    extra: _QualityItems,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    number = measurement.segment_number
    if number not in segments:
        raise ValueError(
            f"measurement of {measurement.label_name!r} names segment {number}, "
            f"the SEG declares segments {sorted(segments)}"
        )
    if (measurement.volume_ml is None) == (measurement.area_mm2 is None):
        raise ValueError(
            f"measurement of segment {number} must have exactly one of volume_ml and area_mm2, got "
            f"volume_ml={measurement.volume_ml}, area_mm2={measurement.area_mm2}"
        )
    segment = segments[number]
    tracking = hd.sr.TrackingIdentifier(
        uid=segment.get("TrackingUID") or None,
        identifier=segment.get("TrackingID") or measurement.label_name,
    )
    finding_type = _coded(segment.SegmentedPropertyTypeCodeSequence[0])
    finding_category = _coded(segment.SegmentedPropertyCategoryCodeSequence[0])
    frames = [
        i + 1
        for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence)
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
    ]
    if measurement.volume_ml is not None:
        value = hd.sr.Measurement(
            name=codes.SCT.Volume, value=float(measurement.volume_ml), unit=MILLILITER, algorithm_id=algorithm
        )
        if frames:
            referenced = hd.sr.ReferencedSegment.from_segmentation(seg, number)
        else:
            # An empty segment has no frame to derive source images from: reference the source series.
            referenced = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)),
            )
        group: (
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
            | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        ) = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=referenced,
            finding_type=finding_type,
            finding_category=finding_category,
            algorithm_id=algorithm,
            measurements=[value, *extra.measurements],
            qualitative_evaluations=list(extra.evaluations) or None,
        )
        group[0].ContentSequence.extend(extra.reasons)
        return group
    if len(frames) != 1:
        raise ValueError(
            f"an area is reported on one frame, segment {number} of the SEG has {len(frames)} frames "
            "(build the SEG of a single 2D image with build_seg)"
        )
    value = hd.sr.Measurement(
        name=codes.SCT.Area,
        value=float(measurement.area_mm2 or 0.0),
        unit=codes.UCUM.SquareMillimeter,
        algorithm_id=algorithm,
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=_segmentation_frame(seg, frames[0], number, sources[0]),
        finding_type=finding_type,
        finding_category=finding_category,
        algorithm_id=algorithm,
        measurements=[value, *extra.measurements],
        qualitative_evaluations=list(extra.evaluations) or None,
    )
    group[0].ContentSequence.extend(extra.reasons)
    return group


def _segmentation_frame(
    seg: Dataset, frame_number: int, segment_number: int, source: Dataset
) -> hd.sr.ReferencedSegmentationFrame:
    """Referenced Segmentation Frame (TID 1410) of one frame of ``seg`` on the single image ``source``.

    Built directly rather than with ``ReferencedSegmentationFrame.from_segmentation``, which (highdicom
    0.28.2) copies the SEG's frame number onto the source image reference, and without the Referenced
    Segment Number that highdicom adds beside the frame number: the standard (and dciodvfy) allow only
    one of the two, and the frame already identifies its segment.
    """
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=frame_number,
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source),
    )
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return reference
