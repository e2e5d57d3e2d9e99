"""Output writers of one model run (IHE AI Results): BINARY SEG, PROBABILITY SEG, entropy map and TID 1500 SR.

One module per kind of object, as highdicom is split: :mod:`~dicom_node.writers.seg` (BINARY and
PROBABILITY SEG of a model run), :mod:`~dicom_node.writers.binary_seg` (the one path that builds every BINARY
SEG, the cohorts' ground truth included), :mod:`~dicom_node.writers.maps` (entropy map),
:mod:`~dicom_node.writers.sr` (TID 1500; its measurement groups in :mod:`~dicom_node.writers.sr_groups`, its
quality content in :mod:`~dicom_node.writers.sr_quality`), :mod:`~dicom_node.writers.lesion` (the lesion
model's SEG and SR), :mod:`~dicom_node.writers.codes` (codes), :mod:`~dicom_node.writers.measurements`
(segment sizes), :mod:`~dicom_node.writers.common` (what they share: settings, UIDs, series, algorithm and
equipment items) and :mod:`~dicom_node.writers.encoding` (an object written to its file: the bytes of pydicom's
``save_as``, its sequences encoded in one pass).
The names below are importable from ``dicom_node.writers`` itself.

- :func:`build_seg`: the BINARY DICOM-SEG of the label map (what viewers show as the segmentation), built
  by :func:`build_binary_seg` from :class:`SegmentSpec` segments and a :class:`SegSeries` identity;
- :func:`build_probability_seg`: a FRACTIONAL SEG of type PROBABILITY, the mean softmax of each structure;
- :func:`build_uncertainty_map`: a Parametric Map of the per-voxel predictive entropy in bits;
- :func:`build_probability_seg_from_stored` and :func:`build_uncertainty_map_from_stored`: the same two objects
  from values already stored (:mod:`~dicom_node.writers.stored`), for a caller that quantises block by block;
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

from dicom_node.writers.binary_seg import SegmentSpec, SegSeries, build_binary_seg
from dicom_node.writers.codes import (
    DEFAULT_PROCEDURE,
    FAIRNODE_SCHEME,
    MILLILITER,
    PROCESSING_ALGORITHM,
    QUALITY_ALGORITHM_NAME,
    QUALITY_CODES,
)
from dicom_node.writers.common import DEFAULT_UID_ROOT, MAP_TRANSFER_SYNTAXES, OutputSettings, output_uid
from dicom_node.writers.maps import (
    ENTROPY_FLOOR_BITS,
    MAX_ENTROPY_VALUE,
    build_uncertainty_map,
    build_uncertainty_map_from_stored,
)
from dicom_node.writers.measurements import SegmentMeasurement, segment_measurements
from dicom_node.writers.seg import (
    MAX_FRACTIONAL_VALUE,
    build_probability_seg,
    build_probability_seg_from_stored,
    build_seg,
)
from dicom_node.writers.sr import build_sr

__all__ = [
    "DEFAULT_PROCEDURE",
    "DEFAULT_UID_ROOT",
    "ENTROPY_FLOOR_BITS",
    "FAIRNODE_SCHEME",
    "MAP_TRANSFER_SYNTAXES",
    "MAX_ENTROPY_VALUE",
    "MAX_FRACTIONAL_VALUE",
    "MILLILITER",
    "PROCESSING_ALGORITHM",
    "QUALITY_ALGORITHM_NAME",
    "QUALITY_CODES",
    "OutputSettings",
    "SegSeries",
    "SegmentMeasurement",
    "SegmentSpec",
    "build_binary_seg",
    "build_probability_seg",
    "build_probability_seg_from_stored",
    "build_seg",
    "build_sr",
    "build_uncertainty_map",
    "build_uncertainty_map_from_stored",
    "output_uid",
    "segment_measurements",
]
