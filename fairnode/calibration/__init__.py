"""Quality calibration and validation of a model: the reference bank, the calibration cohort, the RCA
calibration, the Dice predictor, the gate's per-structure thresholds and review budget, and the held-out
validation that says how well they work.

This is composition-root work: it generates cohorts (``cohorts``), runs the same
:func:`fairnode.pipeline.analyse` the node runs, reads DICOM cohorts (``dicom_node``) and fits the pure
estimators of ``quality``. Modules: :mod:`~fairnode.calibration.measure` (measuring and caching cases),
:mod:`~fairnode.calibration.bank`, :mod:`~fairnode.calibration.score` (re-scoring cached cases),
:mod:`~fairnode.calibration.fit` (:func:`calibrate`), :mod:`~fairnode.calibration.validate` and
:mod:`~fairnode.calibration.plots`.
"""

from fairnode.calibration.bank import BANK_SEED, BANK_SPEC, BankBuild, build_bank, input_limits
from fairnode.calibration.fit import CALIBRATION_SEED, CalibrationOptions, calibrate
from fairnode.calibration.measure import CaseMeasure, cohort_cases, measure, read_case
from fairnode.calibration.validate import card_summary, validate, write_card_validation

__all__ = [
    "BANK_SEED",
    "BANK_SPEC",
    "CALIBRATION_SEED",
    "BankBuild",
    "CalibrationOptions",
    "CaseMeasure",
    "build_bank",
    "calibrate",
    "card_summary",
    "cohort_cases",
    "input_limits",
    "measure",
    "read_case",
    "validate",
    "write_card_validation",
]
