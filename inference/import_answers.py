"""The answers file of an import: what a person states about a model that its files cannot say.

:func:`read_answers` validates it (:class:`ImportAnswers`); :func:`ask_for` writes a template with what was
inferred filled in and the missing keys ``null``, and returns the :class:`AnswersNeededError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.bundle import BundleError
from inference.model_card import IntensitySpec

__all__ = ["AnswersNeededError", "ImportAnswers", "LabelAnswer", "ask_for", "read_answers"]


class AnswersNeededError(BundleError):
    """Something the source cannot say; the message names the answers file to fill in."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelAnswer(_Strict):
    """A label's SNOMED CT coding when the label table does not have it."""

    code: str = Field(pattern=r"^\d+$")
    meaning: str
    category_code: str = Field("91723000", pattern=r"^\d+$")
    category_meaning: str = "Anatomical Structure"
    color: tuple[int, int, int] = (200, 200, 200)


class ImportAnswers(_Strict):
    """What a person states about an imported model (every field optional; asked for only when needed).

    ``task`` is the fairnode cohort kind of the model's task (``xr-knee``, ``ct-abdomen``, ``mr-brain``): the
    cohorts its reference bank, calibration and benchmarks are drawn from. ``labels`` (channel order, without
    the background) and ``patch_size`` are needed for an ONNX graph only; ``codes`` give SNOMED CT codes for
    labels the table lacks; ``output`` says whether an ONNX graph ends in a softmax (``probabilities``).
    """

    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str | None = Field(None, pattern=r"^\d+\.\d+\.\d+$")
    description: str | None = None
    task: str | None = None
    modality: Literal["CT", "MR", "DX"] | None = None
    spacing_mm: tuple[float, ...] | None = None
    intensity: IntensitySpec | None = None
    mirror_axes: tuple[int, ...] | None = None
    samples: int | None = Field(None, ge=2)
    training_subjects: int | None = Field(None, ge=0, description="as its maker states")
    labels: tuple[str, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    output: Literal["probabilities", "logits"] | None = None
    codes: dict[str, LabelAnswer] = Field(default_factory=dict)


def read_answers(path: Path | None) -> ImportAnswers:
    if path is None or not path.is_file():
        return ImportAnswers()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return ImportAnswers.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise BundleError(f"cannot read answers file {path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BundleError(f"answers file {path}: {where}: {first['msg']}") from exc


def ask_for(path: Path | None, filled: dict[str, Any], missing: list[str], source: Path) -> AnswersNeededError:
    """Write the answers template (inferred values, ``null`` for the missing ones); the error naming it."""
    if path is None:
        return AnswersNeededError(
            f"{source}: cannot infer {', '.join(missing)}; pass an answers file (--answers) giving them"
        )
    template = {k: v for k, v in filled.items() if v is not None} | {k: None for k in missing}
    existing = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    template = (existing or {}) | {k: v for k, v in template.items() if k not in (existing or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Answers for importing {source} into fairnode: fill in the null values and run the import again.\n"
        "# task: the fairnode cohort kind of this model's task (xr-knee, ct-abdomen, mr-brain).\n"
    )
    path.write_text(header + yaml.safe_dump(template, sort_keys=False), encoding="utf-8")
    what = ", ".join(missing)
    return AnswersNeededError(f"{source}: cannot infer {what}; fill them in {path} and run the import again")
