"""Reverse classification accuracy (RCA): how good is a segmentation, judged against references with truth.

Method (Valindria et al., "Reverse classification accuracy: predicting segmentation performance in the
absence of ground truth", IEEE TMI 36(8), 2017)
------------------------------------------------------------------------------------------------------
The predicted label map of a new case is taken as pseudo ground truth and used as an atlas. The case image
is registered (moving) onto each of ``k`` reference images (fixed) that have real ground truth, the
predicted labels are propagated through the transform (nearest neighbour) onto the reference, and scored
against the reference's truth. A good segmentation propagates onto a good segmentation of at least one
similar reference, a bad one onto none; so, per structure, the maximum Dice over the ``k`` references
estimates the Dice of the prediction. We also report the mean Dice over the ``k`` references and the 95th
percentile Hausdorff distance (mm) against the reference that gave the maximum Dice.

Only the part of a reference that the case's field of view maps onto is scored: a structure the case does not
show (a liver cut by the last slice, a femoral shaft leaving the radiograph) cannot have been segmented
there, and counting it would bias RCA low for reasons that have nothing to do with the segmentation.

How it is made cheap (the original took ~660 s per case)
-------------------------------------------------------
1. Everything runs on the bank's grid (e.g. 3 mm isotropic for the CT abdomen model, the model's own grid;
   1 mm for knee radiographs; any spacing works, as every setting that depends on it is in mm); a case is
   resampled onto it once.
2. Only the ``k`` (default 5) most similar references are registered. Similarity is the normalised
   cross-correlation of thumbnails (block means of about 12 mm for CT) placed in a common box
   centred on each image's intensity centre of mass, so that where the patient lies in the field of view
   does not count, only body shape, size and anatomy. Milliseconds per reference.
3. Registration (SimpleITK) is affine (regular-step gradient descent, centres of mass aligned first) then
   cubic B-spline (L-BFGS-B), each over a pyramid of resolution levels (Gaussian smoothing, then shrinking),
   with a correlation metric evaluated on a fixed-seed random sample of voxels. The pyramids are built once per
   image (references: once per bank, cached), not by ITK once per level of every registration: ITK would
   smooth the full-resolution moving image again each time, which costs more than the optimisation.
   Defaults for CT: affine at 24 and 12 mm, B-spline with control points 120 mm apart at 12 mm.
4. The transform is resampled into a displacement field on the coarse grid before labels are propagated:
   evaluating the B-spline at every full-resolution voxel would again cost more than the registration.
5. Dice for all ``k`` references comes from one joint histogram each; HD95 only for the best reference of
   each structure, on surfaces within the structures' common bounding box (exact Euclidean distance
   transforms in mm).

Per CT case (``k = 5``, bank of 20 on the 3 mm grid) this takes ~6.5 s (6.2 CPU s) on two CPU cores shared
with other work, ~100x faster than the original; a knee radiograph ~2.5 s (1.8 CPU s); ``benchmarks/rca.py``
measures it. Nearly all of it is registration; choosing the references takes ~0.07 s.

Radiographs
-----------
Whole rows or columns at the border that are bright and flat (collimation shutters) are not anatomy: they
are set to 0 and masked out of the metric. :meth:`RcaSettings.radiograph` adds local contrast
normalisation (uncalibrated intensities: soft tissue ranges from dark to as bright as bone) and lets each
reference be matched by the case or its mirror image (left and right knees).

Conventions
-----------
Arrays are ``(slices, rows, columns)`` for volumes and ``(rows, columns)`` for radiographs; spacings are
millimetres in the same order. Images are float32 in [0, 1], normalised as the model's input; label maps
are uint8 with 0 as background and ``1..L`` the structures named by ``ReferenceBank.label_names``.

A structure absent from both the propagated mask and the reference truth has Dice 1.0, absent from only one
of them Dice 0.0. HD95 is ``float('nan')`` when either mask is empty (undefined, not infinite).
``json.dumps`` writes NaN as the non-standard token ``NaN``, which strict JSON parsers (and PostgreSQL's
``json``) refuse: consumers map it to ``null`` (``math.isnan``) before serialising.

If the bank holds fewer references than ``k``, ``k`` is clamped to the bank size with a warning in the log
(RCA against fewer references still says something, and ``RcaResult.references`` shows how many were used);
an empty bank is an error. A registration that fails is skipped with a warning (the reference is then missing
from ``RcaResult.references``). Results are deterministic run to run (fixed sampling seed); in our checks they
were also identical with 1, 2 and 4 threads.

A model card may name settings that differ from these defaults (``quality.rca.settings``): the shipped CT
bank on its 6 mm grid keeps the levels its calibration was computed with (48 and 24 mm affine, 24 mm
B-spline, 24 mm thumbnails), which reproduce the earlier shrink-factor settings exactly.

Modules
-------
:mod:`~quality.rca.settings` (:class:`RcaSettings`, :class:`RcaError`), :mod:`~quality.rca.bank` (the
reference bank and its file), :mod:`~quality.rca.similarity` (choosing references),
:mod:`~quality.rca.registration`, :mod:`~quality.rca.grids` (input checks, resampling) and
:mod:`~quality.rca.estimation` (:func:`estimate`); Dice and HD95 are :mod:`inference.metrics`'. The names
below are importable from ``quality.rca`` itself.
"""

from quality.rca.bank import DEMOGRAPHIC_KEYS, Reference, ReferenceBank
from quality.rca.estimation import estimate
from quality.rca.settings import Level, Metric, Pyramid, RcaError, RcaSettings
from quality.types import RcaResult, StructureRca

__all__ = [
    "DEMOGRAPHIC_KEYS",
    "Level",
    "Metric",
    "Pyramid",
    "RcaError",
    "RcaResult",
    "RcaSettings",
    "Reference",
    "ReferenceBank",
    "StructureRca",
    "estimate",
]
