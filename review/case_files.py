"""Where a case's images and outputs lie on disk, found from what the registry holds about the case.

The registry row gives the study and series UIDs and the run; the node's spool layout
(:class:`dicom_node.spool.Spool`) gives the rest:

* source images: ``<spool>/incoming/<study UID>/<series UID>/<SOP UID>.dcm`` (every instance received);
* outputs of run ``N``: ``<spool>/outbox/<study UID>/run-<N>/<series UID>/`` holding ``seg.dcm`` (BINARY
  SEG), ``probability-seg.dcm``, ``uncertainty.dcm`` (entropy Parametric Map, bits) and ``sr.dcm``.

The case's run is the study's run that produced it (the pipeline records one with the other), so nothing
beyond the registry row and the spool folder is needed to find the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CaseFiles", "CaseFilesError", "locate_case_files"]

logger = logging.getLogger(__name__)

SEG_NAME = "seg.dcm"
PROBABILITY_SEG_NAME = "probability-seg.dcm"
UNCERTAINTY_NAME = "uncertainty.dcm"
SR_NAME = "sr.dcm"


class CaseFilesError(FileNotFoundError):
    """A case's source images or its SEG are not where the spool layout puts them."""


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes
    ----------
    sources
        source image files of the series (any order), at least one.
    seg
        fairnode's BINARY SEG of the case.
    uncertainty
        the entropy Parametric Map, or ``None`` when quality was not assessed.
    probability_seg, sr
        the fractional SEG (``None`` without quality assessment) and the SR.
    """

    sources: tuple[Path, ...]
    seg: Path
    uncertainty: Path | None
    probability_seg: Path | None
    sr: Path | None


def locate_case_files(spool_root: Path, *, study_uid: str, series_uid: str, run: int) -> CaseFiles:
    """Find the files of the case that segmented ``series_uid`` in run ``run`` of ``study_uid``.

    Parameters
    ----------
    spool_root
        the node's spool folder (``<data_dir>/spool``), holding ``incoming/`` and ``outbox/``.
    study_uid, series_uid
        the case's study and series (from the registry).
    run
        the case's run number (>= 1).

    Raises
    ------
    CaseFilesError
        When the source images or the SEG are missing; the message names the folder looked in.
    """
    for name, uid in (("study_uid", study_uid), ("series_uid", series_uid)):
        if not uid or "/" in uid or uid.startswith("."):
            raise ValueError(f"{name} {uid!r} is not a DICOM UID (digits and dots)")
    source_dir = spool_root / "incoming" / study_uid / series_uid
    sources = tuple(sorted(source_dir.glob("*.dcm")))
    if not sources:
        raise CaseFilesError(f"no source images of series {series_uid} in {source_dir}")
    out = spool_root / "outbox" / study_uid / f"run-{run}" / series_uid
    seg = out / SEG_NAME
    if not seg.is_file():
        raise CaseFilesError(f"no SEG of series {series_uid} run {run} at {seg}")

    def optional(name: str) -> Path | None:
        path = out / name
        return path if path.is_file() else None

    return CaseFiles(
        sources=sources,
        seg=seg,
        uncertainty=optional(UNCERTAINTY_NAME),
        probability_seg=optional(PROBABILITY_SEG_NAME),
        sr=optional(SR_NAME),
    )
