"""Series -> volume: sort, check and decode the images of one series into a float32 array with geometry.

Array convention (as everywhere in fairnode, see :mod:`cohorts.image`): a cross-sectional volume is
``(slices, rows, columns)``, a projection radiograph ``(rows, columns)``. Patient coordinates are DICOM
LPS in millimetres.

Slice order
-----------
Slices are sorted along the slice normal ``n = row cosines x column cosines`` of ImageOrientationPatient,
by *decreasing* ``dot(ImagePositionPatient, n)``: the slice index runs against the normal, so
:attr:`Volume.slice_direction` is ``-n``. For the usual axial orientation (rows towards the patient's
left, columns towards posterior, ``n`` = superior) slices run from head to feet, the order of the
cohorts' arrays on which the bundled models are trained. The order never depends on InstanceNumber or
on the order of the input.

Checks (each failure is a :class:`VolumeError` naming the values found and what is accepted)
---------------------------------------------------------------------------------------------
* every slice shares ImageOrientationPatient (within :data:`ORIENTATION_TOLERANCE`), Rows, Columns and
  PixelSpacing (within :data:`PIXEL_SPACING_TOLERANCE_MM`), SeriesInstanceUID and FrameOfReferenceUID;
* no gantry tilt: GantryDetectorTilt is 0 and successive positions move along the normal only (an
  in-plane offset above :data:`IN_PLANE_TOLERANCE_MM` plus ``tan(TILT_TOLERANCE_DEGREES)`` times the
  distance along the normal is a tilt);
* duplicate positions (closer than :data:`DUPLICATE_TOLERANCE_MM` along the normal): the slice with the
  highest AcquisitionNumber, then InstanceNumber, is kept, the others are listed in
  :attr:`Volume.dropped`;
* even spacing: every gap between neighbouring slices is within 1 % (:data:`GAP_RELATIVE_TOLERANCE`) or
  0.01 mm (:data:`GAP_ABSOLUTE_TOLERANCE_MM`), whichever is larger, of the median gap; a larger gap
  usually means missing slices.

Pixels are decoded by pydicom's pixel decoders (native, RLE, JPEG baseline/extended/lossless, JPEG-LS and
JPEG 2000 through pylibjpeg and pyjpegls) and the Modality LUT (RescaleSlope/RescaleIntercept, per slice
or per frame) is applied: CT values are Hounsfield units. No VOI LUT or presentation transform is
applied: a MONOCHROME1 radiograph keeps its inverted grey scale.

Modules
-------
:mod:`~dicom_node.volume.model` (:class:`Volume`, :class:`VolumeError`, the tolerances),
:mod:`~dicom_node.volume.loading` (:func:`read_series`, :func:`load_volume`: single-frame, multi-frame and
projection series), :mod:`~dicom_node.volume.stacking` (order and checks of the slices),
:mod:`~dicom_node.volume.pixels` (decoding, Modality LUT) and :mod:`~dicom_node.volume.values` (attribute
values). The names below are importable from ``dicom_node.volume`` itself.
"""

from dicom_node.volume.loading import load_volume, read_series
from dicom_node.volume.model import (
    DUPLICATE_TOLERANCE_MM,
    ENHANCED_SOP_CLASSES,
    GANTRY_TILT_TAG_TOLERANCE_DEGREES,
    GAP_ABSOLUTE_TOLERANCE_MM,
    GAP_RELATIVE_TOLERANCE,
    IN_PLANE_TOLERANCE_MM,
    ORIENTATION_TOLERANCE,
    PIXEL_SPACING_TOLERANCE_MM,
    PROJECTION_MODALITIES,
    TILT_TOLERANCE_DEGREES,
    FloatArray,
    Volume,
    VolumeError,
)

__all__ = [
    "DUPLICATE_TOLERANCE_MM",
    "ENHANCED_SOP_CLASSES",
    "GANTRY_TILT_TAG_TOLERANCE_DEGREES",
    "GAP_ABSOLUTE_TOLERANCE_MM",
    "GAP_RELATIVE_TOLERANCE",
    "IN_PLANE_TOLERANCE_MM",
    "ORIENTATION_TOLERANCE",
    "PIXEL_SPACING_TOLERANCE_MM",
    "PROJECTION_MODALITIES",
    "TILT_TOLERANCE_DEGREES",
    "FloatArray",
    "Volume",
    "VolumeError",
    "load_volume",
    "read_series",
]
