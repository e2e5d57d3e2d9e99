"""The mr-brain cohort's kind name, tissue labels and the channels of the prepared template stack."""

from __future__ import annotations

from pydicom.sr.codedict import codes

from cohorts.image import Label

KIND = "mr-brain"

LABELS: tuple[Label, ...] = (
    Label.from_code(1, "grey_matter", codes.SCT.GrayMatter, (236, 142, 60), codes.cid7150.Tissue),
    Label.from_code(2, "white_matter", codes.SCT.WhiteMatter, (100, 180, 240), codes.cid7150.Tissue),
    Label.from_code(3, "csf", codes.SCT.CerebrospinalFluid, (90, 220, 120), codes.cid7150.Tissue),
)

# stack channels
_T1, _GM, _WM = 0, 1, 2
_CSF = -1  # implicit channel: icv - gm - wm
