"""The RCA estimate of one case: choose references, register onto each, score the propagated labels."""

from __future__ import annotations

import logging
import time

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the name SimpleITK's own documentation uses

from inference.metrics import dice_per_label, hd95
from quality.rca.bank import ReferenceBank
from quality.rca.grids import checked_pair, to_grid, to_sitk
from quality.rca.registration import (
    affine_registration,
    bspline_registration,
    case_view,
    dense_transform,
    pyramid_levels,
    registration_image,
)
from quality.rca.settings import RcaError, RcaSettings
from quality.rca.similarity import most_similar
from quality.types import RcaResult, StructureRca

logger = logging.getLogger(__name__)


def estimate(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, ...],
    bank: ReferenceBank,
    k: int | None = None,
    settings: RcaSettings | None = None,
) -> RcaResult:
    """Estimate each structure's Dice of a predicted label map by reverse classification accuracy.

    Parameters
    ----------
    image
        The case's network input: float32 in [0, 1], normalised as the bank's images;
        ``(slices, rows, columns)`` or ``(rows, columns)``.
    labels
        The predicted label map, uint8 of the same shape (0 background, ``1..L`` as the bank's names).
    spacing
        mm per array axis of ``image`` and ``labels`` (the model grid).
    bank
        The references; the case is resampled onto the bank's spacing.
    k
        Number of references to register; ``None`` takes ``settings.k`` (5 by default). Clamped, with a
        warning in the log, to the bank size.
    settings
        Selection and registration parameters; ``None`` takes ``RcaSettings()`` for a 3D bank and
        :meth:`RcaSettings.radiograph` for a 2D bank (which may mirror the case: pass settings with
        ``mirror_axis=None`` for 2D label sets with left and right structures).

    Returns
    -------
    RcaResult
        Per structure (label ``1..L``, in order): max and mean Dice over the ``k`` references and HD95 (mm)
        against the reference with the max Dice (``nan`` when either mask is empty), each scored where the
        case's field of view lands on the reference; the reference ids, most similar first; the wall-clock
        seconds.

    Raises
    ------
    RcaError
        For an empty bank, a dimensionality, shape or spacing that does not fit, an image outside [0, 1] or
        constant, labels beyond the bank's structures, or when registration fails onto every chosen
        reference (one that fails is skipped with a warning, and missing from ``RcaResult.references``).
    """
    started = time.perf_counter()
    if settings is None:
        settings = RcaSettings() if bank.ndim == 3 else RcaSettings.radiograph()
    k = settings.k if k is None else k
    if k < 1:
        raise RcaError(f"k must be >= 1, got {k}")
    if not bank.references:
        raise RcaError("the RCA bank is empty; add references before estimating")
    if k > len(bank.references):
        logger.warning("RCA: k=%d but the bank holds %d references; using all of them", k, len(bank.references))
        k = len(bank.references)
    img, lab = checked_pair(image, labels, spacing, bank, what="case")
    if settings.mirror_axis is not None and not -bank.ndim <= settings.mirror_axis < bank.ndim:
        raise RcaError(f"mirror_axis {settings.mirror_axis} is not an axis of the bank's {bank.ndim}D images")
    img, lab = to_grid(img, lab, tuple(float(s) for s in spacing), bank.spacing)

    shown, valid = registration_image(img, bank.spacing, settings.local_contrast_mm)
    chosen = most_similar(shown, bank, k, settings)
    selected = time.perf_counter()

    n_labels = len(bank.label_names)
    levels = pyramid_levels(settings)
    views = {
        mirrored: case_view(shown, valid, lab, bank.spacing, levels, settings.mirror_axis if mirrored else None)
        for mirrored in ((False, True) if settings.mirror_axis is not None else (False,))
    }
    used: list[str] = []
    scores: list[np.ndarray] = []
    propagated: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    failures: list[str] = []
    for ref in chosen:
        fixed = bank._pyramid(ref, settings.local_contrast_mm, levels)
        try:
            affine, mirrored = affine_registration(fixed, {m: view[0] for m, view in views.items()}, settings)
            moving, moving_labels = views[mirrored]
            dense = dense_transform(bspline_registration(fixed, moving, affine, settings), fixed, settings)
        except RuntimeError as exc:  # SimpleITK: e.g. too few samples inside both images
            failures.append(f"{ref.id}: {str(exc).strip().splitlines()[-1][:200]}")
            logger.warning("RCA: registration onto reference %s failed, skipped (%s)", ref.id, failures[-1])
            continue
        # labels + 1 with default 0: one resampling gives the propagated labels and where the case's field of
        # view lands (what the case does not show, it cannot have segmented: not scored)
        grid = to_sitk(ref.labels, bank.spacing)
        warped = sitk.GetArrayFromImage(sitk.Resample(moving_labels, grid, dense, sitk.sitkNearestNeighbor, 0))
        used.append(ref.id)
        propagated.append(np.where(warped > 0, warped - 1, 0).astype(np.uint8))
        truths.append(np.where(warped > 0, ref.labels, 0).astype(np.uint8))
        scores.append(dice_per_label(propagated[-1], truths[-1], n_labels))
    if not used:
        raise RcaError(f"registration failed onto all {k} references: {'; '.join(failures)}")
    dice = np.array(scores)
    structures = []
    for i, name in enumerate(bank.label_names):
        best = int(np.argmax(dice[:, i]))  # ties: the more similar reference
        structures.append(
            StructureRca(
                label=i + 1,
                name=name,
                max_dice=float(dice[best, i]),
                mean_dice=float(dice[:, i].mean()),
                hd95_mm=hd95(propagated[best] == i + 1, truths[best] == i + 1, bank.spacing),
            )
        )
    finished = time.perf_counter()
    logger.debug(
        "RCA: chose %d of %d references in %.2f s, registered and scored %d in %.2f s",
        k,
        len(bank.references),
        selected - started,
        len(used),
        finished - selected,
        extra={"rca_selection_s": selected - started, "rca_registration_s": finished - selected},
    )
    return RcaResult(
        structures=tuple(structures),
        references=tuple(used),
        seconds=finished - started,
    )
