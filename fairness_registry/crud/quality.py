"""Quality and review: store what the quality estimators said about a case, then move it along the review states.

:func:`record_quality` stores a case's route, reasons and per-structure scores (in ``case.quality`` and one
``case_structure`` row per structure) with the first review state, which follows the route (``not_needed``
for PASS; ``held``, ``forwarded`` or ``sent_for_review`` for REVIEW: :data:`INITIAL_REVIEW_STATES`).
Radiologists then move it on with :func:`set_review_state` (:data:`REVIEW_TRANSITIONS`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from sqlalchemy import update
from sqlmodel import Session, col

from fairness_registry.crud.common import NotFoundError, ReviewTransitionError, _reasons, _score
from fairness_registry.crud.structures import write_structures
from fairness_registry.models import Case, CaseStatus, ReviewState, utcnow
from quality.types import CaseQuality, Route, SamplingMethod, StructureQuality

__all__ = ["INITIAL_REVIEW_STATES", "QUALITY_STATUSES", "REVIEW_TRANSITIONS", "record_quality", "set_review_state"]

logger = logging.getLogger(__name__)

#: Review states :func:`record_quality` may set first, by route.
INITIAL_REVIEW_STATES: Mapping[Route, frozenset[ReviewState]] = {
    Route.PASS: frozenset({ReviewState.NOT_NEEDED}),
    Route.REVIEW: frozenset({ReviewState.HELD, ReviewState.FORWARDED, ReviewState.SENT_FOR_REVIEW}),
}
#: Review-state changes :func:`set_review_state` accepts. A held case may be released unreviewed (to PACS
#: marked as needing review, or to the review destination); ``not_needed`` and ``reviewed`` are final.
REVIEW_TRANSITIONS: Mapping[ReviewState, frozenset[ReviewState]] = {
    ReviewState.NOT_NEEDED: frozenset(),
    ReviewState.HELD: frozenset({ReviewState.FORWARDED, ReviewState.SENT_FOR_REVIEW, ReviewState.REVIEWED}),
    ReviewState.FORWARDED: frozenset({ReviewState.REVIEWED}),
    ReviewState.SENT_FOR_REVIEW: frozenset({ReviewState.REVIEWED}),
    ReviewState.REVIEWED: frozenset(),
}
#: Case statuses in which :func:`record_quality` accepts quality (a queued case has no segmentation yet, a
#: failed one no outputs to review).
QUALITY_STATUSES: frozenset[CaseStatus] = frozenset({CaseStatus.RUNNING, CaseStatus.DONE})


def _check_review_state(state: ReviewState | str) -> ReviewState:
    """``state`` as a :class:`ReviewState`; ``ValueError`` lists the accepted values."""
    try:
        return ReviewState(state)
    except ValueError:
        accepted = ", ".join(s.value for s in ReviewState)
        raise ValueError(f"review state {state!r} is not known; accepted: {accepted}") from None


def _names(states: frozenset[ReviewState], empty: str) -> str:
    """State values in their declaration order, comma-separated (``empty`` when there are none)."""
    return ", ".join(s.value for s in ReviewState if s in states) or empty


def _structure_scores(structure: StructureQuality) -> dict[str, object]:
    """One structure's entry of ``Case.quality`` (the keys of :data:`fairness_registry.models.QUALITY_KEYS`)."""
    name = structure.name
    uncertainty, rca, prediction = structure.uncertainty, structure.rca, structure.prediction
    return {
        "label": int(structure.label),
        "volume": _score(name, "volume", uncertainty.volume),
        "mean_entropy": _score(name, "mean_entropy", uncertainty.mean_entropy),
        "mean_mutual_information": _score(name, "mean_mutual_information", uncertainty.mean_mutual_information),
        "sample_dice": _score(name, "sample_dice", uncertainty.sample_dice),
        "volume_cv": _score(name, "volume_cv", uncertainty.volume_cv),
        "rca_max_dice": None if rca is None else _score(name, "rca.max_dice", rca.max_dice),
        "rca_mean_dice": None if rca is None else _score(name, "rca.mean_dice", rca.mean_dice),
        "rca_hd95_mm": None if rca is None else _score(name, "rca.hd95_mm", rca.hd95_mm),
        "predicted_dice": None if prediction is None else _score(name, "prediction.dice", prediction.dice),
        "predicted_low": None if prediction is None else _score(name, "prediction.low", prediction.low),
        "predicted_high": None if prediction is None else _score(name, "prediction.high", prediction.high),
        "coverage": None if prediction is None else _score(name, "prediction.coverage", prediction.coverage),
        "route": Route(structure.route).value,
        "reasons": _reasons(f"structure {name!r}", structure.reasons),
        "rca_calibrated_dice": (
            None
            if rca is None or rca.calibrated_dice is None
            else _score(name, "rca.calibrated_dice", rca.calibrated_dice)
        ),
    }


def _quality_scores(quality: CaseQuality) -> dict[str, dict[str, object]]:
    """Structure name -> scores, in label order; names must be unique and non-empty."""
    scores: dict[str, dict[str, object]] = {}
    for structure in sorted(quality.structures, key=lambda s: s.label):
        if not isinstance(structure, StructureQuality):
            raise TypeError(f"quality.structures must hold StructureQuality, got {type(structure).__name__}")
        if not isinstance(structure.name, str) or not structure.name.strip():
            raise ValueError(f"structure with label {structure.label} has no name; the quality is stored by name")
        if structure.name in scores:
            raise ValueError(f"structure name {structure.name!r} appears twice in the quality; names must be unique")
        scores[structure.name] = _structure_scores(structure)
    return scores


def record_quality(
    session: Session,
    *,
    case_id: int,
    quality: CaseQuality,
    review_state: ReviewState | str | None = None,
    providers: Sequence[str] = (),
) -> Case:
    """Store the quality estimates and route of a case, and its first review state.

    Parameters
    ----------
    session : sqlmodel.Session
    case_id : int
        A case that is ``running`` or ``done`` (:data:`QUALITY_STATUSES`).
    quality : quality.types.CaseQuality
        The gate's route and reasons, each structure's scores and the sampling behind them. Structure names
        must be unique (they key ``Case.quality`` and ``case_structure``); NaN and infinite scores are stored
        as ``null``. Each structure also gets its ``case_structure`` row (scores and ``regions``; a true Dice
        already recorded for it is kept).
    review_state : ReviewState or str, optional
        What was done with the outputs (:data:`INITIAL_REVIEW_STATES`): ``not_needed`` for a PASS case (the
        default there); ``held``, ``forwarded`` or ``sent_for_review`` for a REVIEW case (required there).
    providers : sequence of str, optional
        The inference backend the samples were computed on (``Segmenter.providers_in_use``, e.g.
        ``["CPUExecutionProvider"]`` or ``["torch-cuda"]``), kept in ``Case.sampling``.

    Returns
    -------
    Case

    Raises
    ------
    NotFoundError
        When ``case_id`` is not in the registry.
    TypeError
        When ``quality`` is not a ``CaseQuality`` (or holds a non-number score), or a REVIEW case comes
        without ``review_state``.
    ValueError
        For an unknown review state or one that does not fit the route, duplicate structure names, a bad
        number of samples, or a case that is queued or failed.
    ReviewTransitionError
        When the case already has a different route or review state (quality is recorded once per run;
        recording the same route and state again replaces the scores).
    """
    if not isinstance(quality, CaseQuality):
        raise TypeError(f"quality must be a quality.types.CaseQuality, got {type(quality).__name__}")
    route = Route(quality.route)
    initial = INITIAL_REVIEW_STATES[route]
    if review_state is None:
        if route is not Route.PASS:
            raise TypeError(
                f"case {case_id}: a {route.value} case needs review_state, one of "
                f"{_names(initial, '')} (what was done with its outputs)"
            )
        state = ReviewState.NOT_NEEDED
    else:
        state = _check_review_state(review_state)
    if state not in initial:
        raise ValueError(
            f"case {case_id}: review state {state.value!r} does not fit route {route.value}; "
            f"accepted for {route.value}: {_names(initial, '')}"
        )
    method = SamplingMethod(quality.method)
    samples = quality.samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"case {case_id}: quality.samples {samples!r} must be an int >= 1")
    reasons = _reasons("case", quality.reasons)
    scores = _quality_scores(quality)
    case = session.get(Case, case_id)
    if case is None:
        raise NotFoundError(f"case_id {case_id} is not in the registry")
    if case.status not in QUALITY_STATUSES:
        raise ValueError(
            f"case {case_id} is {case.status.value}; quality is recorded for a case that is "
            f"{' or '.join(sorted(s.value for s in QUALITY_STATUSES))}"
        )
    if case.review_state is not None and (case.route, case.review_state) != (route, state):
        raise ReviewTransitionError(
            f"case {case_id} already has route {case.route} and review state {case.review_state.value!r}; "
            f"quality is recorded once per run (record a new run to estimate it again), and the review state "
            f"changes through set_review_state",
            case_id=case_id,
            current=case.review_state,
            requested=state,
            allowed=REVIEW_TRANSITIONS[case.review_state],
        )
    case.route = route
    case.review_state = state
    case.review_reasons = reasons
    case.quality = scores
    case.sampling = {"method": method.value, "samples": samples}
    if providers:
        case.sampling["providers"] = list(providers)
    session.add(case)
    write_structures(session, case_id=case_id, quality=quality, scores=scores)
    session.commit()
    session.refresh(case)
    logger.info("case %d quality recorded: route %s, review state %s", case_id, route.value, state.value)
    return case


def set_review_state(session: Session, *, case_id: int, state: ReviewState | str) -> Case:
    """Move a case along the review states (a radiologist closing it, outputs released).

    Setting the state the case already has changes nothing (a repeated click). ``reviewed`` records
    ``reviewed_at``. Two concurrent changes cannot both apply: the update only lands while the state is
    still the one read, and the loser gets :class:`ReviewTransitionError`.

    Parameters
    ----------
    session : sqlmodel.Session
    case_id : int
    state : ReviewState or str
        The new state; must be allowed from the current one (:data:`REVIEW_TRANSITIONS`).

    Returns
    -------
    Case

    Raises
    ------
    ValueError
        When ``state`` is not a review state (the message lists the accepted ones).
    NotFoundError
        When ``case_id`` is not in the registry.
    ReviewTransitionError
        When the case has no review state yet (quality not recorded) or the change is not allowed from
        its current state (the message lists the allowed ones).
    """
    new = _check_review_state(state)
    case = session.get(Case, case_id, populate_existing=True)
    if case is None:
        raise NotFoundError(f"case_id {case_id} is not in the registry")
    current = case.review_state
    if current is None:
        raise ReviewTransitionError(
            f"case {case_id} has no review state yet: its quality is not recorded (record_quality sets the "
            "first state)",
            case_id=case_id,
            current=None,
            requested=new,
            allowed=frozenset(),
        )
    if new is current:
        return case
    allowed = REVIEW_TRANSITIONS[current]
    if new not in allowed:
        raise ReviewTransitionError(
            f"case {case_id} cannot go from review state {current.value!r} to {new.value!r}; allowed: "
            f"{_names(allowed, 'nothing (final)')}",
            case_id=case_id,
            current=current,
            requested=new,
            allowed=allowed,
        )
    values: dict[str, object] = {"review_state": new}
    if new is ReviewState.REVIEWED:
        values["reviewed_at"] = utcnow()
    statement = (
        update(Case)
        .where(col(Case.id) == case_id, col(Case.review_state) == current)
        .values(**values)
        .returning(col(Case.id))
    )
    # RETURNING, not rowcount (see _insert_subject_if_new).
    changed = session.exec(statement).first() is not None
    session.commit()
    if not changed:  # another session changed it between the read and the update
        return set_review_state(session, case_id=case_id, state=new)
    session.refresh(case)
    logger.info("case %d review state %s -> %s", case_id, current.value, new.value)
    return case
