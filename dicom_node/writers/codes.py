"""The codes of fairnode's outputs: :data:`QUALITY_CODES`, the private scheme and the fixed DICOM codes.

The quality items of the SR and the entropy map use the codes of :data:`QUALITY_CODES` (documented in
``dicom_node/QUALITY_CODES.md``); codes of the private scheme :data:`FAIRNODE_SCHEME` are declared in the
CodingSchemeIdentificationSequence item of :func:`fairnode_scheme`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from quality.types import SamplingMethod

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
SAMPLING_METHODS: Final[Mapping[SamplingMethod, str]] = MappingProxyType(
    {SamplingMethod.MC_DROPOUT: "mc_dropout", SamplingMethod.TTA_FLIP: "tta_flip"}
)

#: Algorithm Name (TID 4019) of the quality estimates; its version is the node's software version.
QUALITY_ALGORITHM_NAME: Final = "fairnode-quality"


def fairnode_scheme() -> Dataset:
    """The CodingSchemeIdentificationSequence item that declares :data:`FAIRNODE_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = FAIRNODE_SCHEME
    item.CodingSchemeName = "fairnode segmentation quality codes"
    item.CodingSchemeResponsibleOrganization = "fairnode project (dicom_node/QUALITY_CODES.md)"
    return item


def coded(item: Dataset) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
