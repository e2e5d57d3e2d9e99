"""Measuring cases with known truth: the node's own analysis on each, cached per case (JSON lines).

A measurement holds, per structure, the true Dice, the feature row (uncertainty, raw RCA, image statistics)
and the plausibility reasons, and per case the input reasons: everything calibration and validation need
to refit and re-score the predictor, the RCA calibration and the gate without running the model again. The
cache file is named by a fingerprint of what the measurement depends on (model graphs, reference bank, RCA
settings, sampling), so that a change of any of them starts a new file instead of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from cohorts import ct_abdomen
from cohorts.image import SyntheticImage
from cohorts.kinds import get_kind
from cohorts.make import read_manifest
from cohorts.shift import ShiftSpec
from cohorts.subjects import Subject, draw_subject
from dicom_node.volume import load_volume, read_series
from fairnode.pipeline import QualitySettings, analyse
from inference.metrics import dice
from inference.model_card import ModelCard
from inference.segmenter import Segmenter
from quality import gate
from quality.assess import QualityModel

logger = logging.getLogger(__name__)

GROUPS = ("sex", "age_band", "ethnic_group", "bmi_band")

Step = Callable[[str], None]


def generate(kind: str, subject: Subject) -> SyntheticImage:
    """A subject's image; CT at a 256 matrix (5x faster to make; the model runs at 3 mm anyway)."""
    if kind == "ct-abdomen":
        return ct_abdomen.generate(subject, matrix=256)
    return get_kind(kind).generate(subject)


def demographics(subject: Subject) -> dict[str, str]:
    return {g: str(getattr(subject, g)) for g in GROUPS}


@dataclass
class CaseMeasure:
    """One case measured: per structure its true Dice, features, estimates and plausibility reasons."""

    case: str
    demographics: dict[str, str]
    group: str
    route: str
    reasons: list[str]
    structures: list[dict[str, object]]
    timings: dict[str, float]
    other_flag: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    input_reasons: list[str] = field(default_factory=list)


def fingerprint(card: ModelCard, qm: QualityModel, settings: QualitySettings) -> str:
    """12 hex digits naming what a measurement depends on: graphs, bank, RCA settings and sampling."""
    q = card.quality
    bank = hashlib.sha256()
    if qm.bank is not None:  # by content: the file's zip members carry the time they were written
        bank.update(json.dumps([qm.bank.spacing, qm.bank.label_names]).encode())
        for r in qm.bank.references:
            bank.update(r.id.encode())
            bank.update(np.round(r.image * 255).astype(np.uint8).tobytes())
            bank.update(r.labels.tobytes())
    what = {
        "model": [card.files.deterministic_sha256, card.files.mc_dropout_sha256],
        "bank": bank.hexdigest() if qm.bank is not None else None,
        "rca": asdict(qm.rca_settings) if qm.rca_settings else None,
        "method": settings.method or (q.sampling if q else None),
        "samples": settings.samples or (q.samples if q else None),
        "use_rca": settings.rca,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def measure(
    case: str,
    pixels: np.ndarray,
    spacing: tuple[float, ...],
    truth: np.ndarray,
    modality: str,
    segmenter: Segmenter,
    qm: QualityModel,
    settings: QualitySettings,
    demographics: dict[str, str],
    group: str,
) -> CaseMeasure:
    """Run :func:`analyse` on one image with known truth and collect what calibration and validation need."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    analysis = analyse(pixels, spacing, modality, segmenter, qm, settings, t)
    t["total"] = round(time.perf_counter() - t0, 3)
    a = analysis.assessment
    if a is None:
        raise ValueError("quality assessment is switched off")
    structures = []
    other = False
    for s in a.quality.structures:
        true = dice(analysis.labels == s.label, truth == s.label)
        plausibility = gate.plausibility_reasons(s.uncertainty, qm.limits) if qm.limits else []
        other = other or bool(plausibility)
        structures.append(
            {
                "label": s.label,
                "name": s.name,
                "true_dice": round(true, 5),
                "features": a.features[s.label],
                "rca_max_dice": s.rca.max_dice if s.rca else None,
                "predicted_dice": s.prediction.dice if s.prediction else None,
                "predicted_low": s.prediction.low if s.prediction else None,
                "predicted_high": s.prediction.high if s.prediction else None,
                "route": s.route.value,
                "plausibility": plausibility,
            }
        )
    input_problems = [r for r in a.quality.reasons if r.startswith(("input:", "RCA could not"))]
    return CaseMeasure(
        case=case,
        demographics=demographics,
        group=group,
        route=a.quality.route.value,
        reasons=list(a.quality.reasons),
        structures=structures,
        timings=t,
        other_flag=other or bool(input_problems),
        input_reasons=input_problems,
    )


def cached(path: Path) -> dict[str, CaseMeasure]:
    """The measurements in a cache file, by case."""
    out: dict[str, CaseMeasure] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out[d["case"]] = CaseMeasure(**d)
    return out


def append(path: Path, m: CaseMeasure) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(m.__dict__, allow_nan=True) + "\n")


def generated_cases(
    card: ModelCard,
    segmenter: Segmenter,
    qm: QualityModel,
    settings: QualitySettings,
    spec: ShiftSpec,
    indices: range,
    seed: int,
    cache: Path,
    step: Step | None = None,
) -> list[CaseMeasure]:
    """Measure generated subjects ``indices`` of ``seed`` under ``spec`` (cached per subject in ``cache``)."""
    kind = card.training.cohort.kind
    done = cached(cache)
    out = []
    for i in indices:
        case = f"{kind}-{seed}-{i}"
        if case not in done:
            subject = draw_subject(kind, i, seed, spec)
            image = generate(kind, subject)
            m = measure(
                case,
                image.pixels,
                tuple(image.spacing),
                image.labels,
                image.modality,
                segmenter,
                qm,
                settings,
                demographics(subject),
                subject.group,
            )
            append(cache, m)
            done[case] = m
        out.append(done[case])
        if step:
            step(f"{case}: {done[case].timings.get('total', 0):.1f} s")
    return out


def cohort_cases(cohort: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """(manifest row, image folder, ground-truth SEG) of each subject of a cohort folder."""
    manifest = cohort / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{cohort} is not a cohort folder: it has no manifest.csv (make one with 'fairnode cohort make')"
        )
    for row in read_manifest(manifest):
        yield row, cohort / row["image_dir"], cohort / row["seg_path"]


def read_case(image_dir: Path, seg_path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, str]:
    """Pixels, spacing, ground-truth label map (same slice order) and modality of one cohort subject."""
    volume = load_volume(read_series(sorted(image_dir.glob("*.dcm"))))
    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    truth = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    truth = np.asarray(truth).reshape(volume.pixels.shape).astype(np.uint8)
    modality = str(pydicom.dcmread(next(iter(sorted(image_dir.glob("*.dcm")))), stop_before_pixels=True).Modality)
    return volume.pixels, tuple(volume.spacing), truth, modality


def folder_cases(
    cohort: Path,
    segmenter: Segmenter,
    qm: QualityModel,
    settings: QualitySettings,
    cache: Path,
    skip: int = 0,
    step: Step | None = None,
) -> list[CaseMeasure]:
    """Measure every subject of a labelled cohort folder after the first ``skip`` (cached per subject)."""
    done = cached(cache)
    out = []
    for n, (row, image_dir, seg_path) in enumerate(cohort_cases(cohort)):
        if n < skip:
            continue
        case = f"{cohort.name}-{row['index']}"
        if case not in done:
            pixels, spacing, truth, modality = read_case(image_dir, seg_path)
            demo = {g: row.get(g, "") for g in GROUPS}
            m = measure(case, pixels, spacing, truth, modality, segmenter, qm, settings, demo, row.get("group", ""))
            append(cache, m)
            done[case] = m
        out.append(done[case])
        if step:
            step(f"{case}: {done[case].timings.get('total', 0):.1f} s, {done[case].route}")
    return out
