"""Synthetic 3D T1-weighted brain MR (MPRAGE) from the MNI152 2009 template, with tissue ground truth.

Source anatomy
--------------
nilearn's bundled MNI152 2009 (ICBM 152 nonlinear symmetric 09a, 1 mm, skull-stripped) T1, grey-matter
and white-matter probability maps and brain mask, as ``nilearn.datasets.load_mni152_template``,
``load_mni152_gm_template``, ``load_mni152_wm_template`` and ``load_mni152_brain_mask`` (``resolution=1``)
give them (no download; the files are read with nibabel, as importing nilearn takes seconds). They are
prepared once per process (about 3-5 s on two cores; ~165 MB kept in memory) and cached:

- the intracranial volume (ICV): the brain mask (T1 > 0.2), smoothed (2.5 mm) and closed, described by
  a signed distance to its surface (mm, negative inside; computed on a 2 mm grid and interpolated);
- tissue probabilities inside the ICV: ``gm`` and ``wm`` from the templates (times the ICV occupancy),
  ``csf = icv - gm - wm`` (everything intracranial that is neither grey nor white matter: sulcal and
  ventricular CSF), background ``1 - icv``;
- the T1 intensities (white matter = 1), with the skull-stripped margin inside the ICV filled with CSF
  signal; outside the ICV a synthetic skull and scalp are painted from the distance to the ICV surface
  (inner table, diploe, outer table, galea, subcutaneous fat, skin).

**Labels** are the argmax of (background, gm, wm, csf) per output voxel: grey matter 1, white matter 2,
CSF 3. Including background in the argmax is the threshold: a voxel is labelled only where the ICV
occupancy exceeds the background's.

Per subject
-----------
- head size: linear scale 0.89 (men) or 0.86 (women) of MNI space (MNI brains are larger than native
  ones), times ``(height / mean height of the sex) ** 0.25`` and 2% individual variation; head shape
  (cephalic index): width +3% and length -2% in the ``Asian`` group, width -2% and length +2% in the
  ``Black`` group, with 1.5% individual variation per axis;
- pose: rotation up to ~3 degrees about each axis;
- a smooth random elastic deformation (Gaussian basis every 30 mm, ~2 mm RMS) applied identically to
  intensities and tissue maps (trilinear interpolation, labels by argmax afterwards);
- ageing: after 30 years grey matter thins from the CSF side (0.25% of GM volume per year) and after 35
  the ventricles widen into the surrounding white matter (0.6 ml/year, accelerating after 60), each with
  +-30% individual variation; T1 grey/white contrast falls 0.2%/year after 40;
- skull and scalp: diploe 2-4 mm, subcutaneous fat ``3 + 0.25 (BMI - 22)`` mm (15% more in women,
  +-20% individual, 2-9 mm), the whole layer thickness varying smoothly (x 0.75-1.3) over the head.

Acquisition: field strength by manufacturer (1.5 T for Borealis Medical, 3 T otherwise), voxels
1.0-1.1 mm in plane and 1.0-1.2 mm between slices, a gamma (0.8-1.25) on tissue intensities, a smooth
multiplicative bias field (stronger at 3 T), Rician noise (magnitude of complex Gaussian noise; more at
1.5 T). The volume is cropped to the head (3-12 mm beyond 18 mm from the ICV surface, so a thick scalp
may touch an edge); its inferior face lies 2-6 mm above the template's lowest slice, through cerebellum
and brain stem as in a real scan.

Imaging shift (``subject.shift``)
---------------------------------
- ``contrast``: scales intensity differences from the grey/white mid level inside the head (GM/WM, CSF
  and scalp contrast), before gain and noise;
- ``noise``: multiplies the Rician noise standard deviation;
- ``intensity_offset``: added (a.u.) to every voxel of the head (weighted by the head occupancy), after
  gain and bias field;
- ``artefact_probability``: chance of one artefact, drawn from ``subject.rng("artefact")``: ``ghosting``
  (periodic k-space line modulation: faint copies of the head shifted by N/2..N/4 along the phase-encode
  direction, anterior-posterior) or ``motion`` (phase errors on a block of k-space lines from a 3-7 mm
  translation: ringing and ghosts along the phase-encode direction); named in
  ``acquisition["artefact"]`` (``"none"`` otherwise);
- ``organ_scale``: ``grey_matter``, ``white_matter``, ``csf`` change that tissue's volume by moving
  probability to or from a neighbour at their interface (GM < 1: cortex thins into CSF; GM > 1: GM
  grows into WM; WM < 1: ventricles widen (65%) and GM grows into WM (35%); WM > 1: WM grows into GM;
  CSF > 1: cortex thins and ventricles widen; CSF < 1: sulci fill with GM). The label volume follows
  approximately (a factor of 0.8 gives 0.75-0.9) and is limited to what the interface allows (a
  warning says so); other names are ignored with a warning;
- ``blur_mm``: extra Gaussian blur (sigma, mm) before noise.

Conventions a caller must know
------------------------------
Arrays are ``(slices, rows, columns)``: slices axial from superior to inferior (``slice_direction``
``(0, 0, -1)``), rows anterior -> posterior (+y LPS), columns patient right -> left (+x LPS),
``orientation`` ``(1, 0, 0, 0, 1, 0)``. ``origin`` is the LPS position of voxel (0, 0, 0). Subject space
is MNI space (RAS -> LPS: x and y negated) scaled about the anterior commissure, so LPS (0, 0, 0) is near
the AC. Pixels are float32 arbitrary units >= 0 (white matter ~ 600-1100).
"""

from cohorts.mr_brain.sampling import _Grid, _template_coordinates
from cohorts.mr_brain.synthesis import generate
from cohorts.mr_brain.template import _template
from cohorts.mr_brain.tissue import KIND, LABELS

__all__ = ["KIND", "LABELS", "_Grid", "_template", "_template_coordinates", "generate"]
