"""Model cards: what a bundled model is, what it expects, what it was trained on and how well it does.

A card is a YAML file (``card.yaml``) beside the model's two ONNX graphs; :class:`ModelCard` validates it.
Cards are written by training and read by everything that runs a model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MODELS_DIR = Path(__file__).parent / "models"
CARD_FILE = "card.yaml"


class ModelCardError(ValueError):
    """A model card that is missing, unreadable or does not follow the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    """One output class: its value in the label map, SNOMED CT code and meaning, and display colour."""

    value: int = Field(ge=1)
    name: str
    code: str = Field(pattern=r"^\d+$", description="SNOMED CT concept id")
    scheme: Literal["SCT"] = "SCT"
    meaning: str
    category_code: str = Field(pattern=r"^\d+$")
    category_meaning: str
    color: tuple[int, int, int]


class IntensitySpec(_Strict):
    """How raw pixel values become network input in [0, 1].

    ``window``: values (HU for CT) mapped linearly from ``[low, high]`` to ``[0, 1]`` and clipped.
    ``percentile``: per image, the ``low``/``high`` percentiles of non-zero pixels map to 0 and 1.
    """

    mode: Literal["window", "percentile"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> IntensitySpec:
        if self.high <= self.low:
            raise ValueError(f"intensity high ({self.high}) must exceed low ({self.low})")
        return self


class InputSpec(_Strict):
    """What the network expects: modality, dimensions, spacing (mm, in array axis order), patch size."""

    modality: Literal["CT", "MR", "DX"]
    spatial_dims: Literal[2, 3]
    spacing_mm: tuple[float, ...] = Field(description="(slice, row, column) for 3D; (row, column) for 2D")
    patch_size: tuple[int, ...] = Field(description="sliding-window size in voxels, same axis order")
    intensity: IntensitySpec
    mirror_axes: tuple[int, ...] = Field(
        (), description="array axes along which a mirrored image is still a valid input (test-time flips)"
    )

    @model_validator(mode="after")
    def _dims_agree(self) -> InputSpec:
        for name, v in (("spacing_mm", self.spacing_mm), ("patch_size", self.patch_size)):
            if len(v) != self.spatial_dims:
                raise ValueError(f"{name} has {len(v)} values, spatial_dims is {self.spatial_dims}")
        return self


class NetworkSpec(_Strict):
    """The network that was trained: for fairnode's MONAI UNet, enough to rebuild it for export.

    An imported model names its own ``architecture`` (the bundle's ``network_def`` target, or ``onnx`` for a
    graph without one); ``channels``, ``strides`` and ``num_res_units`` are those of a MONAI UNet and empty
    for other architectures, and ``dropout`` is 0 for a network without dropout.
    """

    architecture: str = "monai.networks.nets.UNet"
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    num_res_units: int
    dropout: float = Field(ge=0, lt=1)


class ModelFiles(_Strict):
    """The two ONNX graphs (deterministic, and with dropout always applied for MC-dropout sampling), both
    ending in a softmax, and the torch weights they were exported from."""

    deterministic: str = "model.onnx"
    mc_dropout: str = "model_mc.onnx"
    weights: str = Field("weights.pt", description="the trained torch state_dict the graphs were exported from")
    deterministic_sha256: str
    mc_dropout_sha256: str
    weights_sha256: str


class CohortSpec(_Strict):
    kind: str
    n: int
    seed: int
    shift: str = "balanced"


class TrainingSpec(_Strict):
    """How the model was trained. For an imported model trained elsewhere, ``cohort.kind`` is the cohort kind of
    its task (what its reference bank and calibration cohorts are drawn from), ``cohort.n`` the training
    subjects its maker states (0: not stated), and the schedule fields are ``None`` when not stated."""

    cohort: CohortSpec
    composition: dict[str, dict[str, int]] = Field(description="subjects by sex, age_band, ethnic_group, bmi_band")
    iterations: int | None
    batch_size: int | None
    learning_rate: float | None
    seed: int | None
    seconds: float | None
    device: str | None


class MitigationSpec(_Strict):
    """How a model was trained to serve groups alike (see ``inference.mitigation``), and how it compared."""

    strategy: str = Field(description="none, balanced, stratified-batches, reweighted, group-specific, group-dro")
    group_by: tuple[str, ...] = Field(description="the group attributes (several: their intersection)")
    training_groups: dict[str, int] = Field(description="training subjects per group")
    sample_weights: dict[str, float] = Field(default_factory=dict, description="inverse-frequency weight per group")
    dro_final_weights: dict[str, float] | None = None
    group: str | None = Field(None, description="group-specific: the group this model serves (None: fallback)")
    comparison: list[dict[str, object]] = Field(default_factory=list, description="the comparison table rows")
    note: str = ""


class ValidationSpec(_Strict):
    """Dice on a held-out cohort, per label: overall and per demographic group."""

    cohort: CohortSpec
    composition: dict[str, dict[str, int]]
    dice: dict[str, float] = Field(description="mean Dice per label name")
    dice_by_group: dict[str, dict[str, dict[str, float]]] = Field(
        description="attribute -> group -> label -> mean Dice"
    )
    n_by_group: dict[str, dict[str, int]]


class RcaBankSpec(_Strict):
    """The reference bank for reverse classification accuracy: held-out images with ground truth."""

    file: str = "rca-bank.npz"
    sha256: str
    spacing_mm: tuple[float, ...]
    k: int = Field(5, ge=1)
    cohort: CohortSpec
    composition: dict[str, dict[str, int]] = Field(description="references by sex, age_band, ethnic_group, bmi_band")
    settings: dict[str, object] = Field(
        default_factory=dict,
        description="RCA settings that differ from quality.rca.RcaSettings.for_bank's defaults for this bank",
    )
    calibration: RcaCalibrationSpec | None = Field(
        None, description="per-structure map from raw RCA to true Dice (None: RCA is reported raw)"
    )


class RcaCalibrationSpec(_Strict):
    """How raw RCA (max Dice over the references) is mapped to an estimate of true Dice, per structure."""

    method: Literal["isotonic", "linear"] = "isotonic"
    split: str = Field("fit", description="the calibration table's split it is fitted on (refitted at load)")
    n_by_structure: dict[str, int] = Field(default_factory=dict, description="structures fitted on, by name")


class StructureGateSpec(_Strict):
    """One structure's thresholds and what they rest on (the calibration table's conformal split)."""

    predicted_low_min: float
    rca_min: float = Field(description="on the calibrated RCA when the card has an RCA calibration, else raw")
    cases: int
    failures: int
    caught: float | None = Field(description="share of its failing structures it flagged on the calibration cases")
    caught_low95: float | None = Field(description="Clopper-Pearson 95% lower bound of caught")
    flagged: float = Field(description="share of the calibration cases on which it flagged this structure")
    pooled: bool = Field(description="True: too few failures of its own, thresholds pooled over all structures")


class PredictorSpec(_Strict):
    """The two-stage Dice predictor, refitted at load from its calibration table."""

    table: str = "quality-calibration.csv"
    sha256: str
    regressor: str
    features: tuple[str, ...]
    coverage: float = Field(gt=0, lt=1)
    half_width: float = Field(
        ge=0,
        description="the Dice interval's conformal q (half-width = q x (tree spread + 0.01)); for the earlier "
        "boosted trees the half-width itself",
    )
    n_fit: int
    n_conformal: int
    cohort: CohortSpec
    composition: dict[str, dict[str, int]]


class GateSpec(_Strict):
    """The routing gate's limits and what they achieved on the calibration cohort."""

    failure_dice: float = 0.8
    target_catch: float = 0.95
    predicted_low_min: float
    rca_min: float
    volume_range: dict[str, tuple[float, float]]
    volume_unit: str
    spacing_range: tuple[tuple[float, float], ...]
    image_mean_range: tuple[float, float]
    image_std_range: tuple[float, float]
    saturated_max: float
    calibration_caught: float
    calibration_review_rate: float
    calibration_failures: int
    calibration_cases: int
    structures: dict[str, StructureGateSpec] = Field(
        default_factory=dict, description="per-structure thresholds; a structure not named uses the two above"
    )
    review_budget: float | None = Field(None, description="at most this share of cases sent to review")
    budget_shift: float = Field(0.0, description="added to every threshold to keep within the review budget")
    expected_prevalence: float | None = Field(
        None, description="share of cases with a failing structure at which the review budget is taken"
    )
    calibration_structure_caught: float | None = Field(None, description="failing structures flagged themselves")
    calibration_structure_review_rate: float | None = Field(None, description="structures flagged")


class QualitySpec(_Strict):
    """How quality is estimated for this model, and the calibration behind it."""

    sampling: Literal["mc-dropout", "tta-flip"] = "mc-dropout"
    samples: int = Field(6, ge=2)
    rca: RcaBankSpec | None = None
    predictor: PredictorSpec | None = None
    gate: GateSpec | None = None
    validation: dict[str, object] | None = Field(None, description="figures of the last held-out validation")


class SourceSpec(_Strict):
    """Where an imported model came from, how it runs here and how its samples are drawn."""

    format: Literal["monai-bundle", "onnx"]
    name: str = Field(description="the bundle's (or graph's) own name")
    version: str | None = Field(None, description="the bundle's own version")
    path: str = Field(description="what was imported (folder or file), as given")
    sha256: str = Field(description="of the imported weights (model.pt / model.ts) or ONNX graph")
    imported_at: str = Field(description="ISO 8601, UTC")
    backend: Literal["onnx", "torch"] = Field(description="onnx: exported graphs; torch: the bundle's network")
    sampling: Literal["mc-dropout", "tta-flip"] = Field(description="mc-dropout when the network has dropout")
    sampling_reason: str
    export_max_abs_difference: float | None = Field(
        None, description="largest |ONNX - torch| probability on a random input (None: not exported)"
    )
    answers: dict[str, object] = Field(default_factory=dict, description="what the importer was told, not inferred")
    label_map: str = Field("", description="the SNOMED CT label table the labels were coded with")


class ModelCard(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    task: Literal["segmentation"] = "segmentation"
    description: str
    labels: tuple[LabelSpec, ...] = Field(min_length=1)
    input: InputSpec
    network: NetworkSpec
    files: ModelFiles
    training: TrainingSpec
    validation: ValidationSpec | None = None
    quality: QualitySpec | None = None
    mitigation: MitigationSpec | None = None
    source: SourceSpec | None = Field(None, description="set for an imported model (None: trained by fairnode)")
    reproduce: tuple[str, ...] = Field(description="shell commands that rebuild this model from scratch")

    @model_validator(mode="after")
    def _labels_consecutive(self) -> ModelCard:
        values = [lab.value for lab in self.labels]
        if values != list(range(1, len(values) + 1)):
            raise ValueError(f"label values must be 1..{len(values)} in order, got {values}")
        return self

    @property
    def n_classes(self) -> int:
        """Output channels including background."""
        return len(self.labels) + 1


def load_card(path: Path) -> ModelCard:
    """Read and validate a model card (``path`` is the YAML file or the model's folder).

    Raises
    ------
    ModelCardError
        naming the file and the first problem found.
    """
    path = path / CARD_FILE if path.is_dir() else path
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelCardError(f"cannot read model card {path}: {exc}") from exc
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ModelCardError(f"model card {path}: {where}: {first['msg']}") from exc


def save_card(card: ModelCard, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CARD_FILE
    data = card.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=110), encoding="utf-8")
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundled_models(root: Path = MODELS_DIR) -> dict[str, Path]:
    """Folders of the models shipped with fairnode, by model name."""
    return {p.name: p for p in sorted(root.iterdir()) if (p / CARD_FILE).is_file()} if root.is_dir() else {}
