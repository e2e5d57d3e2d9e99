"""The outputs of one segmented series: BINARY SEG, PROBABILITY SEG, entropy map and SR, built and written.

:func:`write_series_outputs` is the outputs stage of :func:`fairnode.pipeline.process_study`: the objects are built
one after the other, each written as soon as nothing else needs changing in it. (Computing the quality maps'
stored values in a thread of their own while the BINARY SEG was built and written made the stage slower on two
shared cores, 5.2-5.8 s against 5.0-5.5 s: their many short numpy steps each wait for the GIL.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import numpy as np
import pydicom

from dicom_node.writers import (
    OutputSettings,
    SegmentMeasurement,
    build_probability_seg_from_stored,
    build_seg,
    build_sr,
    build_uncertainty_map_from_stored,
    segment_measurements,
)
from dicom_node.writers.encoding import save_dataset
from fairnode.source_maps import stored_source_maps
from inference.model_card import ModelCard
from quality.assess import Assessment

#: The prefix of the SeriesDescription of every output of a REVIEW case forwarded at once.
REVIEW_MARK: Final = "NEEDS REVIEW"
#: File names of the outputs in a series' output folder.
SEG_FILE, PROBABILITY_FILE, UNCERTAINTY_FILE, SR_FILE = "seg.dcm", "probability-seg.dcm", "uncertainty.dcm", "sr.dcm"


@dataclass(frozen=True)
class SeriesOutputs:
    """What :func:`write_series_outputs` built (each written under its file name in the series' folder)."""

    seg: pydicom.Dataset
    sr: pydicom.Dataset
    measurements: list[SegmentMeasurement]
    probability_seg: pydicom.Dataset | None = None
    uncertainty_map: pydicom.Dataset | None = None


def write_dataset(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` as a DICOM file, atomically (a ``.part`` file renamed): the bytes of
    ``ds.save_as(path, enforce_file_format=True)``, encoded faster (``dicom_node.writers.encoding.save_dataset``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    save_dataset(ds, tmp)
    tmp.replace(path)


def mark_for_review(ds: pydicom.Dataset) -> None:
    """Prefix the SeriesDescription of ``ds`` with :data:`REVIEW_MARK` (cut to the 64 characters of an LO)."""
    ds.SeriesDescription = f"{REVIEW_MARK}: {ds.get('SeriesDescription', '')}"[:64]


def write_series_outputs(
    sources: Sequence[pydicom.Dataset],
    labels: np.ndarray,
    spacing: tuple[float, ...],
    assessment: Assessment | None,
    card: ModelCard,
    settings: OutputSettings,
    out: Path,
    *,
    run: int,
    selection_reason: str,
    providers: Sequence[str],
    mark_review: bool,
    created: datetime | None = None,
) -> SeriesOutputs:
    """Build the outputs of one prediction and write them to ``out``.

    Parameters
    ----------
    sources, labels, spacing
        the source images, the label map on their grid ``(slices, rows, columns)`` (``(rows, columns)`` for one
        2D image) and its spacing (mm).
    assessment
        the quality assessment: with it, the PROBABILITY SEG and the entropy map are written too and the SR
        carries the quality estimates.
    card, settings, run, created
        as for the builders of :mod:`dicom_node.writers` (``created`` ``None``: each object stamped when built).
    selection_reason, providers
        the SR's comment on the model's selection and its inference backend parameter.
    mark_review
        prefix every object's SeriesDescription with :data:`REVIEW_MARK` (a REVIEW case forwarded at once).
    """
    frames = labels if labels.ndim == 3 else labels[None]
    seg = build_seg(sources, frames, card, settings, run=run, created=created)
    measurements = segment_measurements(labels, spacing, card)
    if mark_review:
        mark_for_review(seg)  # the SR references the SEG by UIDs only: marking it first changes nothing there
    write_dataset(seg, out / SEG_FILE)  # the SEG's memory (its frames and functional groups) is not needed again
    prob_seg = umap = None
    if assessment is not None:
        probabilities, entropy = stored_source_maps(assessment.maps, labels.shape)
        prob_seg = build_probability_seg_from_stored(sources, probabilities, card, settings, run, created=created)
        umap = build_uncertainty_map_from_stored(sources, entropy, card, settings, run, created=created)
    sr = build_sr(
        sources,
        seg,
        measurements,
        card,
        settings,
        run=run,
        created=created,
        quality=assessment.quality if assessment is not None else None,
        probabilities=prob_seg,
        uncertainty_map=umap,
        selection_reason=selection_reason,
        providers=providers,
    )
    for ds, name in [(prob_seg, PROBABILITY_FILE), (umap, UNCERTAINTY_FILE), (sr, SR_FILE)]:
        if ds is not None:
            if mark_review:
                mark_for_review(ds)
            write_dataset(ds, out / name)
    return SeriesOutputs(seg, sr, measurements, prob_seg, umap)
