"""The bias-discovery scenarios: who the model was trained on, who it is deployed on, which gap to look for.

Three families (Gaggion et al.'s design, on the project's cohorts):

- **under-representation**: a small model is trained with a group at a given share of its training cohort
  (50%, 20%, 5%, 0% women; 2% Black patients) and deployed on a cohort balanced for that attribute. It keeps
  the bundled model's RCA bank (reference images with their ground truth, independent of the model) and is
  recalibrated (RCA calibration, Dice predictor, gate) on a balanced calibration cohort of its own, as a
  deployment that retrains recalibrates (see :func:`fairnode.bias_discovery.run.biased_model`);
- **acquisition shift**: the bundled model on a deployment cohort where one group's images differ (a site
  with low contrast, obese patients imaged noisier, older patients with lower bone attenuation);
- **no bias**: the bundled model on a balanced cohort.

Each scenario names the attribute (an audit-frame column), the group expected to do worse and the groups it
is compared with; its signed gap is ``mean(group) - mean(reference groups)`` of Dice over cases and
structures.
"""

from __future__ import annotations

from dataclasses import dataclass

from cohorts.shift import Group, GroupMatch, ImagingShift, ShiftSpec

#: attributes a scenario may name (audit-frame columns)
ATTRIBUTES: tuple[str, ...] = ("sex", "age_band", "ethnic_group", "bmi_band", "site")
#: the site whose scanners (Cygnus Systems) carry the site shifts
SHIFTED_SITE = "Riverside Community Clinic"


@dataclass(frozen=True)
class Scenario:
    """One bias scenario.

    ``train`` is the training cohort's composition (None: the bundled model is used as shipped);
    ``deploy`` the deployment cohort's. ``group`` is the group whose gap is measured against the
    ``reference`` groups (empty: every other group).
    """

    name: str
    kind: str
    family: str  # under-representation | acquisition-shift | none
    description: str
    attribute: str
    group: str
    deploy: ShiftSpec
    train: ShiftSpec | None = None
    reference: tuple[str, ...] = ()
    expect_bias: bool = True

    def __post_init__(self) -> None:
        if self.attribute not in ATTRIBUTES:
            raise ValueError(f"scenario {self.name}: attribute {self.attribute!r} is not one of {ATTRIBUTES}")
        if self.family not in ("under-representation", "acquisition-shift", "none"):
            raise ValueError(f"scenario {self.name}: unknown family {self.family!r}")


def _spec(name: str, description: str, groups: list[tuple[dict[str, str], float, ImagingShift | None]]) -> ShiftSpec:
    return ShiftSpec(
        name=name,
        description=description,
        groups=[
            Group(match=GroupMatch(**match), share=share, shift=shift or ImagingShift())
            for match, share, shift in groups
        ],
    )


SEX_BALANCED = _spec(
    "sex-balanced", "Half women, half men; images alike.", [({"sex": "F"}, 0.5, None), ({"sex": "M"}, 0.5, None)]
)
BLACK_WHITE = _spec(
    "black-white-balanced",
    "Half Black, half White patients; images alike.",
    [({"ethnic_group": "Black"}, 0.5, None), ({"ethnic_group": "White"}, 0.5, None)],
)


def women_share(percent: int) -> ShiftSpec:
    """A training cohort with ``percent`` % women (0 to 100)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"share of women must be 0..100 %, got {percent}")
    groups: list[tuple[dict[str, str], float, ImagingShift | None]] = []
    if percent:
        groups.append(({"sex": "F"}, percent / 100, None))
    if percent < 100:
        groups.append(({"sex": "M"}, 1 - percent / 100, None))
    return _spec(f"women-{percent}pct", f"Training cohort with {percent}% women.", groups)


def few_black(percent: int) -> ShiftSpec:
    """A training cohort with ``percent`` % Black patients, the other groups in the population's proportions."""
    others = {"White": 0.58, "Asian": 0.16, "Hispanic": 0.08, "Other": 0.04}
    total = sum(others.values())
    rest = 1 - percent / 100
    groups: list[tuple[dict[str, str], float, ImagingShift | None]] = [
        ({"ethnic_group": g}, rest * w / total, None) for g, w in others.items()
    ]
    if percent:
        groups.append(({"ethnic_group": "Black"}, percent / 100, None))
    return _spec(f"black-{percent}pct", f"Training cohort with {percent}% Black patients.", groups)


def site_shift(shift: ImagingShift, name: str) -> ShiftSpec:
    """Half the cohort from the Cygnus Systems site carrying ``shift``, half from the Aurora Imaging site.

    Two sites only, so that both are large enough for the audit to report and test them.
    """
    return _spec(
        name,
        f"Cygnus Systems site (half the cohort) with {shift.model_dump(exclude_defaults=True)}; Aurora site alike.",
        [
            ({"manufacturer": "Cygnus Systems"}, 0.5, shift),
            ({"manufacturer": "Aurora Imaging"}, 0.5, None),
        ],
    )


def site_shift_three(shift: ImagingShift, name: str) -> ShiftSpec:
    """Half the cohort from the Cygnus Systems site carrying ``shift``, a quarter from each of the two others.

    The reference sites are smaller here (about 10 patients each in a 40-patient cohort), so the audit may
    suppress them and then cannot test the shifted site against them.
    """
    return _spec(
        name,
        f"Cygnus Systems site (half the cohort) with {shift.model_dump(exclude_defaults=True)}; two sites alike.",
        [
            ({"manufacturer": "Cygnus Systems"}, 0.5, shift),
            ({"manufacturer": "Aurora Imaging"}, 0.25, None),
            ({"manufacturer": "Borealis Medical"}, 0.25, None),
        ],
    )


def obese_shift(shift: ImagingShift, name: str = "obese-noisy-deploy") -> ShiftSpec:
    """Half the cohort obese carrying ``shift``; the other half normal weight or overweight."""
    return _spec(
        name,
        f"Obese patients (half the cohort) with {shift.model_dump(exclude_defaults=True)}.",
        [
            ({"bmi_band": "obese"}, 0.5, shift),
            ({"bmi_band": "overweight"}, 0.25, None),
            ({"bmi_band": "normal"}, 0.25, None),
        ],
    )


def older_shift(shift: ImagingShift, name: str = "older-deploy") -> ShiftSpec:
    """Half the cohort aged 75+ carrying ``shift``; the other half aged 18-74."""
    return _spec(
        name,
        f"Patients aged 75+ (half the cohort) with {shift.model_dump(exclude_defaults=True)}.",
        [
            ({"age_band": "75+"}, 0.5, shift),
            ({"age_band": "60-74"}, 0.2, None),
            ({"age_band": "40-59"}, 0.2, None),
            ({"age_band": "18-39"}, 0.1, None),
        ],
    )


#: the shipped site-low-contrast and obese-noisy shifts (cohorts/scenarios/)
SITE_LOW_CONTRAST = ImagingShift(contrast=0.6, noise=1.4, artefact_probability=0.3)
SITE_MILD = ImagingShift(contrast=0.8, noise=1.2)
OBESE_NOISY = ImagingShift(noise=2.0, blur_mm=0.8)
#: a low-dose CT protocol at one site: three times the noise, and half its patients with a metal clip and its streaks
SITE_LOW_DOSE = ImagingShift(noise=3.0, artefact_probability=0.5)
#: lower bone attenuation, modelled as 30% lower attenuation contrast and a little more noise
OLDER_LOW_DENSITY = ImagingShift(contrast=0.7, noise=1.2)
#: the shipped older-atrophy shift (smaller kidneys and spleen, more artefacts)
OLDER_ATROPHY = ImagingShift(
    organ_scale={"right_kidney": 0.8, "left_kidney": 0.8, "spleen": 0.8}, artefact_probability=0.25
)
#: a spine centre: posterior fusion hardware (rods, pedicle screws) and its streaks in the site's patients
SITE_SPINE_HARDWARE = ImagingShift(metal_mm=160.0)
#: obese patients wider than the reconstruction circle: the body's sides cut off, and noisier
OBESE_TRUNCATED = ImagingShift(fov_fraction=0.8, noise=1.5)
#: a site whose abdominal protocol starts below the liver dome
SITE_SHORT_RANGE = ImagingShift(z_coverage=0.7)


def _under_women(kind: str, percent: int) -> Scenario:
    return Scenario(
        name=f"train-women-{percent}pct",
        kind=kind,
        family="under-representation" if percent < 50 else "none",
        description=f"small model trained with {percent}% women, deployed on half women",
        attribute="sex",
        group="F",
        reference=("M",),
        deploy=SEX_BALANCED,
        train=women_share(percent),
        expect_bias=percent < 50,
    )


def _balanced(kind: str) -> Scenario:
    """The control: the bundled model on a sex-balanced cohort, no bias expected."""
    return Scenario(
        "balanced",
        kind,
        "none",
        "bundled model, balanced cohort",
        "sex",
        "F",
        SEX_BALANCED,
        reference=("M",),
        expect_bias=False,
    )


def _site_low_contrast(kind: str) -> Scenario:
    """The bundled model at a second site whose images have low contrast, more noise and artefacts."""
    return Scenario(
        "site-low-contrast",
        kind,
        "acquisition-shift",
        "bundled model; Cygnus site: contrast 0.6, noise 1.4, artefacts 30%",
        "site",
        SHIFTED_SITE,
        site_shift(SITE_LOW_CONTRAST, "site-low-contrast-2site"),
    )


def _site_mild_contrast(kind: str) -> Scenario:
    """The bundled model at a second site whose images have a little less contrast and more noise."""
    return Scenario(
        "site-mild-contrast",
        kind,
        "acquisition-shift",
        "bundled model; Cygnus site: contrast 0.8, noise 1.2",
        "site",
        SHIFTED_SITE,
        site_shift(SITE_MILD, "site-mild-2site"),
    )


def _obese_noisy(kind: str) -> Scenario:
    """The bundled model on a cohort whose obese half has noisier, blurred images."""
    return Scenario(
        "obese-noisy",
        kind,
        "acquisition-shift",
        "bundled model; obese patients: noise x2, blur 0.8 mm",
        "bmi_band",
        "obese",
        obese_shift(OBESE_NOISY),
    )


def knee_scenarios() -> list[Scenario]:
    """The xr-knee scenarios, cheapest and most informative first."""
    k = "xr-knee"
    return [
        _balanced(k),
        _site_low_contrast(k),
        _under_women(k, 0),
        _obese_noisy(k),
        _under_women(k, 50),
        Scenario(
            "older-low-density",
            k,
            "acquisition-shift",
            "bundled model; aged 75+: attenuation contrast 0.7, noise 1.2",
            "age_band",
            "75+",
            older_shift(OLDER_LOW_DENSITY),
        ),
        _under_women(k, 5),
        _site_mild_contrast(k),
        Scenario(
            "train-black-2pct",
            k,
            "under-representation",
            "small model trained with 2% Black patients",
            "ethnic_group",
            "Black",
            BLACK_WHITE,
            train=few_black(2),
            reference=("White",),
        ),
        _under_women(k, 20),
        Scenario(
            "site-low-contrast-3site",
            k,
            "acquisition-shift",
            "bundled model; Cygnus site: contrast 0.6, noise 1.4, artefacts 30%; two smaller reference sites",
            "site",
            SHIFTED_SITE,
            site_shift_three(SITE_LOW_CONTRAST, "site-low-contrast-deploy"),
        ),
    ]


def ct_scenarios() -> list[Scenario]:
    """The ct-abdomen scenarios: acquisition shifts with the bundled model, cheapest first, then a small model
    trained without women (the one CT scenario that trains)."""
    k = "ct-abdomen"
    return [
        _balanced(k),
        _site_low_contrast(k),
        _obese_noisy(k),
        _site_mild_contrast(k),
        Scenario(
            "site-low-dose",
            k,
            "acquisition-shift",
            "bundled model; Cygnus site: low-dose protocol, noise x3, a metal clip with streaks in 50%",
            "site",
            SHIFTED_SITE,
            site_shift(SITE_LOW_DOSE, "site-low-dose-2site"),
        ),
        Scenario(
            "older-atrophy",
            k,
            "acquisition-shift",
            "bundled model; aged 75+: kidneys and spleen 0.8x, artefacts 25%",
            "age_band",
            "75+",
            older_shift(OLDER_ATROPHY),
        ),
        _under_women(k, 0),
        Scenario(
            "site-spine-hardware",
            k,
            "acquisition-shift",
            "bundled model; Cygnus site (a spine centre): fusion hardware 160 mm with its streaks",
            "site",
            SHIFTED_SITE,
            site_shift(SITE_SPINE_HARDWARE, "site-spine-hardware-2site"),
        ),
        Scenario(
            "obese-truncated",
            k,
            "acquisition-shift",
            "bundled model; obese patients: 80% of the body's width in the reconstruction circle, noise x1.5",
            "bmi_band",
            "obese",
            obese_shift(OBESE_TRUNCATED, "obese-truncated-deploy"),
        ),
        Scenario(
            "site-short-range",
            k,
            "acquisition-shift",
            "bundled model; Cygnus site: scan range starting below the liver dome (70% of it kept)",
            "site",
            SHIFTED_SITE,
            site_shift(SITE_SHORT_RANGE, "site-short-range-2site"),
        ),
    ]


def scenarios(kind: str) -> list[Scenario]:
    """The scenarios of one task (``xr-knee`` or ``ct-abdomen``)."""
    table = {"xr-knee": knee_scenarios, "ct-abdomen": ct_scenarios}
    if kind not in table:
        raise ValueError(f"no bias-discovery scenarios for {kind!r}; have {', '.join(table)}")
    return table[kind]()
