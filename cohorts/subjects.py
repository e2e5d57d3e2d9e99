"""Synthetic subjects: demographics, identifiers, acquisition site and group shift.

Each subject is drawn from its own generator seeded by ``(seed, kind, index)``, so subject ``i`` of a
cohort is the same whatever ``n`` is. Demographics follow a plausible adult population: sex 50/50,
age 18-90, height by sex, BMI log-normal around 26 (about 4% underweight, 23% obese), ethnic group
as in a mixed European city.
The shift file chooses which group a subject belongs to; the subject is then redrawn until it
matches that group.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from cohorts.shift import BALANCED, GroupMatch, ImagingShift, ShiftSpec

ETHNIC_GROUPS: tuple[str, ...] = ("White", "Black", "Asian", "Hispanic", "Other")
ETHNIC_WEIGHTS: tuple[float, ...] = (0.58, 0.14, 0.16, 0.08, 0.04)

#: Acquisition sites: (manufacturer, model, institution). Fictional names: the cohorts are phantoms.
SITES: tuple[tuple[str, str, str], ...] = (
    ("Aurora Imaging", "AX-64", "Northfield General Hospital"),
    ("Borealis Medical", "Stratus 128", "St. Brigid University Hospital"),
    ("Cygnus Systems", "Lumen 32", "Riverside Community Clinic"),
)

#: Studies are spread over six quarters.
STUDY_PERIOD_START = date(2025, 1, 1)
STUDY_PERIOD_DAYS = 546

AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("18-39", 18, 39),
    ("40-59", 40, 59),
    ("60-74", 60, 74),
    ("75+", 75, 200),
)
BMI_BANDS: tuple[tuple[str, float, float], ...] = (
    ("underweight", 0.0, 18.5),
    ("normal", 18.5, 25.0),
    ("overweight", 25.0, 30.0),
    ("obese", 30.0, 1e9),
)


def age_band(age_years: int) -> str:
    """The age band (``18-39``, ``40-59``, ``60-74``, ``75+``) of an age in years."""
    for name, lo, hi in AGE_BANDS:
        if lo <= age_years <= hi:
            return name
    raise ValueError(f"age {age_years} years is outside the adult range 18-200")


def bmi_band(bmi: float) -> str:
    """The WHO BMI band of a body-mass index in kg/m^2."""
    for name, lo, hi in BMI_BANDS:
        if lo <= bmi < hi:
            return name
    raise ValueError(f"BMI {bmi} is not a positive number")


@dataclass(frozen=True)
class Subject:
    """One synthetic patient and the circumstances of their study.

    ``patient_id``, ``patient_name`` and ``birth_date`` are identifiers: they go into the DICOM headers
    (so that the node's pseudonymisation has something to do) and nowhere else.
    """

    kind: str
    index: int
    seed: int
    patient_id: str
    patient_name: str
    sex: str
    age_years: int
    birth_date: date
    height_m: float
    weight_kg: float
    ethnic_group: str
    study_date: date
    manufacturer: str
    model_name: str
    institution: str
    group: str
    shift: ImagingShift

    @property
    def bmi(self) -> float:
        return self.weight_kg / self.height_m**2

    @property
    def age_band(self) -> str:
        return age_band(self.age_years)

    @property
    def bmi_band(self) -> str:
        return bmi_band(self.bmi)

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator for one purpose (anatomy, noise, ...) of this subject, independent of the others."""
        return np.random.default_rng([self.seed, _stable_int(self.kind), self.index, _stable_int(purpose)])

    def matches(self, match: GroupMatch) -> bool:
        wanted = match.model_dump(exclude_none=True)
        have = {
            "sex": self.sex,
            "age_band": self.age_band,
            "ethnic_group": self.ethnic_group,
            "bmi_band": self.bmi_band,
            "manufacturer": self.manufacturer,
        }
        return all(have[k] == v for k, v in wanted.items())


def _stable_int(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _draw_demographics(rng: np.random.Generator) -> dict[str, object]:
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(np.clip(rng.normal(56, 17), 18, 90))
    height = float(np.clip(rng.normal(1.64 if sex == "F" else 1.77, 0.07), 1.45, 2.05))
    bmi = float(np.clip(rng.lognormal(np.log(26.0), 0.19), 16.0, 48.0))
    ethnic = str(rng.choice(ETHNIC_GROUPS, p=ETHNIC_WEIGHTS))
    site = SITES[int(rng.integers(len(SITES)))]
    return {
        "sex": sex,
        "age_years": age,
        "height_m": round(height, 2),
        "weight_kg": round(bmi * round(height, 2) ** 2, 1),
        "ethnic_group": ethnic,
        "manufacturer": site[0],
        "model_name": site[1],
        "institution": site[2],
    }


def draw_subject(kind: str, index: int, seed: int, spec: ShiftSpec = BALANCED) -> Subject:
    """Draw subject ``index`` of a cohort of ``kind`` for ``seed`` under the shift ``spec``.

    The subject's group is drawn with the groups' shares; demographics are redrawn (up to 10,000 times)
    until they match the group.

    Raises
    ------
    ValueError
        If no plausible subject matches a group (for example ``sex: F`` with a height band nobody has).
    """
    if index < 0:
        raise ValueError(f"subject index must be >= 0, got {index}")
    rng = np.random.default_rng([seed, _stable_int(kind), index, _stable_int("demographics")])
    shares = np.array([g.share for g in spec.groups])
    group_i = int(rng.choice(len(spec.groups), p=shares / shares.sum()))
    group = spec.groups[group_i]
    for _ in range(10_000):
        demo = _draw_demographics(rng)
        probe = Subject(
            kind=kind,
            index=index,
            seed=seed,
            patient_id="",
            patient_name="",
            birth_date=date(1900, 1, 1),
            study_date=date(1900, 1, 1),
            group="",
            shift=group.shift,
            **demo,  # type: ignore[arg-type]
        )
        if probe.matches(group.match):
            break
    else:
        raise ValueError(f"no plausible subject matches group '{group.match.describe()}' of shift '{spec.name}'")
    study_date = STUDY_PERIOD_START + timedelta(days=int(rng.integers(STUDY_PERIOD_DAYS)))
    birth_date = study_date - timedelta(days=int(probe.age_years * 365.25 + rng.integers(0, 365)))
    digest = hashlib.sha256(f"{kind}/{seed}/{index}".encode()).hexdigest()[:6].upper()
    code = kind.replace("-", "").upper()[:6]
    return Subject(
        kind=kind,
        index=index,
        seed=seed,
        patient_id=f"FN{code}{seed:04d}{index:05d}",
        patient_name=f"PHANTOM^{code}{digest}",
        sex=probe.sex,
        age_years=probe.age_years,
        birth_date=birth_date,
        height_m=probe.height_m,
        weight_kg=probe.weight_kg,
        ethnic_group=probe.ethnic_group,
        study_date=study_date,
        manufacturer=probe.manufacturer,
        model_name=probe.model_name,
        institution=probe.institution,
        group=group.match.describe(),
        shift=group.shift,
    )
