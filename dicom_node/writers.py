"""Output writers: the BINARY DICOM-SEG and the TID 1500 measurement SR of one model run (IHE AI Results).

Both objects are built with highdicom in the study of the source images and name the algorithm where
IHE AI Results asks: in the SEG's AlgorithmIdentificationSequence (per segment) and in the SR's
Algorithm Identification content items (TID 4019), and in an item of ContributingEquipmentSequence
whose PurposeOfReferenceCodeSequence is ``(Newcode1, 99IHE, "Processing Algorithm")``.

Identifiers
-----------
Every UID is derived, not random: :func:`output_uid` hashes ``(source SeriesInstanceUID, model name,
model version, run, role, ...)`` under :attr:`OutputSettings.uid_root`. Building the outputs of the same
run twice gives the same SeriesInstanceUID and SOPInstanceUID, so a retried delivery replaces, never
duplicates, what PACS already holds; a new ``run`` gives new objects. The segment tracking UIDs of the
SEG are reused by the SR's tracking identifiers, so a viewer links each measurement to its segment.

Dates and times
---------------
highdicom stamps the wall clock (InstanceCreationDate/Time, ContentDate/Time, its own
ContributionDateTime). Pass ``created`` to :func:`build_seg` / :func:`build_sr` to set all of them, and
the outputs become byte-identical for identical inputs (do so when a delivery may be retried).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM

from inference.model_card import LabelSpec, ModelCard

logger = logging.getLogger(__name__)

#: Placeholder UID root (a Medical Connections sub-root). Each site must replace it by its own root.
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.10.1234."

#: Purpose of reference of the algorithm's ContributingEquipmentSequence item (IHE AI Results).
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")

#: UCUM milliliter (pydicom's code dictionary has no plain ``ml``).
MILLILITER = Code("ml", "UCUM", "milliliter")

#: Procedure reported when the source study names none (ProcedureCodeSequence).
DEFAULT_PROCEDURE = codes.SCT.ImagingProcedure

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
    seg_series_number, sr_series_number
        SeriesNumber of the SEG and SR series.
    seg_series_description, sr_series_description
        SeriesDescription templates; ``{model}`` is replaced by the model name.
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

    def __post_init__(self) -> None:
        root = self.uid_root
        parts = root[:-1].split(".") if root.endswith(".") else []
        if not parts or any(not p.isdigit() or (len(p) > 1 and p[0] == "0") for p in parts):
            raise ValueError(
                f"uid_root must be dot-separated numbers without leading zeros ending with '.', got {root!r}"
            )
        if len(root) > _MAX_ROOT_LENGTH:
            raise ValueError(f"uid_root must be at most {_MAX_ROOT_LENGTH} characters, got {len(root)}")
        for name in ("seg_series_description", "sr_series_description"):
            template: str = getattr(self, name)
            try:
                template.format(model="m")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name} may use only the field {{model}}, got {template!r} ({exc!r})") from exc
        for name in ("seg_series_number", "sr_series_number"):
            value: int = getattr(self, name)
            if not 0 < value < 2**31:
                raise ValueError(f"{name} must be a positive 32-bit integer, got {value}")


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


def _frames(labels: np.ndarray, sources: Sequence[Dataset]) -> np.ndarray:
    """``labels`` as ``(frames, rows, columns)`` uint8, checked against the source images."""
    if not sources:
        raise ValueError("source_images is empty: a SEG needs the images it was derived from")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    n_frames = int(sources[0].get("NumberOfFrames", 1)) if len(sources) == 1 else len(sources)
    expected = (n_frames, rows, cols)
    frames = labels[np.newaxis] if labels.ndim == 2 else labels
    sizes = {(int(s.Rows), int(s.Columns)) for s in sources}
    if frames.shape != expected or len(sizes) != 1:
        raise ValueError(
            f"labels of shape {labels.shape} do not match the source images: {len(sources)} image(s) of "
            f"{sorted(sizes)} (rows, columns), expected labels of shape {expected}"
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
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of one prediction: one ROI group per measured segment.

    Each group references its segment of ``seg`` (volumetric TID 1411 with a Referenced Segment for
    a volume, planar TID 1410 with a Referenced Segmentation Frame for a 2D image), carries the segment's
    tracking identifier and UID, its property type as finding type and category as finding category,
    the algorithm (TID 4019), and one Measurement: Volume in ml or Area in mm2.

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

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        complete (CompletionFlag COMPLETE), preliminary and unverified: no person has checked it.

    Raises
    ------
    ValueError
        If ``seg`` is not in the study of the source images, a measurement names a segment that ``seg``
        does not declare, has neither volume nor area (or both), ``measurements`` is empty, or ``run``
        is below 1.
    """
    sources = list(source_images)
    _check_run(run)
    if not sources:
        raise ValueError("source_images is empty: an SR needs the images it reports on")
    if not measurements:
        raise ValueError("measurements is empty: a measurement report needs at least one measurement")
    study_uid = str(sources[0].StudyInstanceUID)
    if str(seg.StudyInstanceUID) != study_uid:
        raise ValueError(f"seg belongs to study {seg.StudyInstanceUID}, the source images to study {study_uid}")
    segments: dict[int, Dataset] = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    created = created or datetime.now()
    key = _series_key(sources, card, run)
    algorithm = hd.sr.AlgorithmIdentification(name=card.name, version=card.version)
    groups = [_roi_group(m, seg, segments, sources, algorithm) for m in measurements]

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
    sr = hd.sr.Comprehensive3DSR(
        # sources first: highdicom copies patient/study and the acquisition equipment from evidence[0]
        evidence=[*sources, seg],
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
    logger.info(
        "built SR %s (series %s, %d groups) referencing SEG %s",
        sr.SOPInstanceUID,
        sr.SeriesInstanceUID,
        len(groups),
        seg.SOPInstanceUID,
    )
    return sr


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
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=referenced,
            finding_type=finding_type,
            finding_category=finding_category,
            algorithm_id=algorithm,
            measurements=[value],
        )
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
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=_segmentation_frame(seg, frames[0], number, sources[0]),
        finding_type=finding_type,
        finding_category=finding_category,
        algorithm_id=algorithm,
        measurements=[value],
    )


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
