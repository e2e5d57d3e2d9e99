"""Measure candidate models on one balanced held-out cohort with ground truth: Dice, NSD and HD95 per case.

A :class:`Candidate` is one strategy's deployment: a single model, or for ``group-specific`` the models of
each group plus the fallback, routed by the subject's group as the node routes by header. Each case's
image is generated once and every candidate segments it; per-case scores are appended to a JSON-lines
cache so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cohorts.kinds import get_kind
from cohorts.shift import Group, GroupMatch, ShiftSpec
from cohorts.subjects import AGE_BANDS, BMI_BANDS, ETHNIC_GROUPS, Subject, draw_subject
from inference.metrics import monai_scores
from inference.mitigation import group_key, model_name_for_group
from inference.model_card import load_card
from inference.segmenter import Segmenter

logger = logging.getLogger(__name__)

#: held-out comparison cohorts are drawn from this seed (training 1000, validation 2000, RCA bank 3000,
#: calibration 4000, quality validation 5000+, bias-discovery deployment 6000)
COMPARE_SEED = 7000
#: NSD tolerance (mm): about two pixels of the 1 mm knee grid
NSD_TOLERANCE_MM = 2.0
#: the values of each attribute a balanced cohort is balanced over
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "sex": ("F", "M"),
    "ethnic_group": ETHNIC_GROUPS,
    "age_band": tuple(b[0] for b in AGE_BANDS),
    "bmi_band": tuple(b[0] for b in BMI_BANDS if b[0] != "underweight"),
}


@dataclass(frozen=True)
class Candidate:
    """One strategy's deployment: ``models`` by group (``None``: the fallback, or the only model)."""

    strategy: str
    name: str
    models: dict[str | None, Path]
    attributes: tuple[str, ...] = ("sex",)

    def route(self, subject: Subject) -> tuple[str | None, Path]:
        """The group model for ``subject``'s group when there is one, else the fallback."""
        g = group_key(subject, self.attributes)
        if g in self.models:
            return g, self.models[g]
        return None, self.models[None]


def candidate_from_folder(folder: Path) -> Candidate:
    """A candidate from a model folder; a ``group-specific`` fallback brings its group models (siblings).

    Raises
    ------
    ValueError
        If a group model named in the fallback's training groups is missing.
    """
    card = load_card(folder)
    mit = card.mitigation
    strategy = mit.strategy if mit else "none"
    attributes = tuple(mit.group_by) if mit else ("sex",)
    models: dict[str | None, Path] = {None: folder}
    if mit is not None and mit.strategy == "group-specific" and mit.group is None:
        for g in mit.training_groups:
            sibling = folder.parent / model_name_for_group(card.name, g)
            if not (sibling / "card.yaml").is_file():
                raise ValueError(f"group-specific model {card.name}: the model of group {g} ({sibling}) is missing")
            models[g] = sibling
    return Candidate(strategy=strategy, name=card.name, models=models, attributes=attributes)


def balanced_cohort(attributes: Sequence[str]) -> ShiftSpec:
    """Equal shares of every combination of ``attributes``' values (images alike)."""
    combos: list[dict[str, str]] = [{}]
    for a in attributes:
        if a not in ATTRIBUTE_VALUES:
            raise ValueError(f"cannot balance over '{a}'; choose from {', '.join(ATTRIBUTE_VALUES)}")
        combos = [c | {a: v} for c in combos for v in ATTRIBUTE_VALUES[a]]
    share = 1.0 / len(combos)
    return ShiftSpec(
        name=f"balanced-{'-'.join(attributes)}",
        description=f"Equal shares of each {' x '.join(attributes)} group; images alike.",
        groups=[Group(match=GroupMatch(**c), share=share) for c in combos],
    )


def balanced_subjects(kind: str, attributes: Sequence[str], per_group: int, seed: int = COMPARE_SEED) -> list[Subject]:
    """``per_group`` subjects of each group, drawn in index order from the balanced cohort (exact counts)."""
    spec = balanced_cohort(attributes)
    n_groups = len(spec.groups)
    want: dict[str, int] = {}
    out: list[Subject] = []
    i = 0
    while len(out) < per_group * n_groups:
        s = draw_subject(kind, i, seed, spec)
        g = group_key(s, attributes)
        if want.get(g, 0) < per_group:
            want[g] = want.get(g, 0) + 1
            out.append(s)
        i += 1
        if i > 50 * per_group * n_groups:
            raise ValueError(f"could not draw {per_group} subjects of every group of {','.join(attributes)}")
    return out


@dataclass
class CaseScores:
    """One case segmented by one candidate: per structure Dice, NSD and HD95 (mm)."""

    candidate: str
    case: str
    index: int
    group: str
    routed_to: str
    demographics: dict[str, str | float | int]
    structures: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _clean(v: float) -> float | None:
    return round(float(v), 5) if np.isfinite(v) else None


def score_case(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], labels: Sequence[tuple[int, str]]
) -> dict[str, dict[str, float | None]]:
    """MONAI Dice, NSD and HD95 of each label, each computed on the bounding box of the two masks."""
    out: dict[str, dict[str, float | None]] = {}
    for value, name in labels:
        p, t = pred == value, truth == value
        both = p | t
        if both.any():
            idx = np.argwhere(both)
            lo = np.maximum(idx.min(0) - 3, 0)
            hi = idx.max(0) + 4
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            s = monai_scores(p[box], t[box], spacing, NSD_TOLERANCE_MM)
            out[name] = {"dice": _clean(s.dice), "nsd": _clean(s.nsd), "hd95_mm": _clean(s.hd95_mm)}
        else:
            out[name] = {"dice": 1.0, "nsd": None, "hd95_mm": None}
    return out


def _demographics(s: Subject) -> dict[str, str | float | int]:
    return {
        "sex": s.sex,
        "age_years": s.age_years,
        "age_band": s.age_band,
        "ethnic_group": s.ethnic_group,
        "bmi": round(s.bmi, 1),
        "bmi_band": s.bmi_band,
        "manufacturer": s.manufacturer,
        "scanner_model": s.model_name,
        "site": s.institution,
        "study_date": s.study_date.isoformat(),
    }


def measure(
    candidates: Sequence[Candidate],
    subjects: Sequence[Subject],
    attributes: Sequence[str],
    cache: Path | None = None,
    step: Callable[[str], None] | None = None,
) -> list[CaseScores]:
    """Segment every subject with every candidate and score it (cached per candidate and case)."""
    done: dict[tuple[str, str], CaseScores] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                done[(d["candidate"], d["case"])] = CaseScores(**d)
    segmenters: dict[Path, Segmenter] = {}
    out: list[CaseScores] = []
    for s in subjects:
        case = f"{s.kind}-{s.seed}-{s.index}"
        missing = [c for c in candidates if (c.name, case) not in done]
        if missing:
            synth = get_kind(s.kind).generate(s)
            labels = [(lab.value, lab.name) for lab in get_kind(s.kind).labels]
            for c in missing:
                routed, folder = c.route(s)
                seg = segmenters.get(folder)
                if seg is None:
                    seg = segmenters[folder] = Segmenter(folder, prefer_gpu=False)
                pred = seg.segment(synth.pixels, tuple(synth.spacing))
                row = CaseScores(
                    candidate=c.name,
                    case=case,
                    index=s.index,
                    group=group_key(s, attributes),
                    routed_to=folder.name if routed is not None else f"{folder.name} (fallback)",
                    demographics=_demographics(s),
                    structures=score_case(pred, synth.labels, tuple(synth.spacing), labels),
                )
                done[(c.name, case)] = row
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    with cache.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(asdict(row)) + "\n")
        out.extend(done[(c.name, case)] for c in candidates)
        if step:
            step(case)
    return out
