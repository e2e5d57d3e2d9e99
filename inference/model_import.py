"""Import a model from elsewhere (a MONAI bundle, or an ONNX graph with a card file) as a fairnode model.

:func:`import_model` reads the source, builds the model card from what the source says (labels, spacing,
intensity transform, network input and output) and from an answers file for what it cannot say, codes each
label with SNOMED CT through :mod:`inference.label_map`, checks the network's shapes, and writes the model
folder fairnode runs:

- an eager network is exported to the two ONNX graphs of :mod:`inference.export` (deterministic, and with
  dropout always on for MC-dropout sampling) when ONNX Runtime then matches torch within
  :data:`EXPORT_TOLERANCE`; otherwise (or when asked) it is kept as TorchScript for
  :mod:`inference.torch_backend`;
- sampling is MC dropout when the network has dropout, test-time augmentation (``tta-flip``) otherwise; the
  card's ``source`` says which, and why.

The answers file (YAML, :class:`~inference.import_answers.ImportAnswers`) is where a person states what cannot
be inferred. When something is missing, :func:`import_model` writes a template there (inferred values filled in,
missing ones ``null``) and raises :class:`AnswersNeededError` naming it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from inference.bundle import FAIRNODE_KEY, BundleError, BundleInfo, has_dropout, read_bundle
from inference.export import WithSoftmax, export_graphs, max_abs_difference
from inference.import_answers import AnswersNeededError, ImportAnswers, ask_for, read_answers
from inference.label_map import LABEL_TABLE, load_label_map, normalise_label
from inference.model_card import (
    CohortSpec,
    InputSpec,
    IntensitySpec,
    LabelSpec,
    ModelCard,
    ModelFiles,
    NetworkSpec,
    QualitySpec,
    SourceSpec,
    TrainingSpec,
    save_card,
    sha256_of,
)
from inference.network import with_dropout_always_on
from inference.onnx_source import OnnxInfo, read_onnx, write_onnx_graphs

__all__ = ["EXPORT_TOLERANCE", "AnswersNeededError", "ImportAnswers", "import_model"]

logger = logging.getLogger(__name__)

#: ONNX Runtime probabilities must match torch within this for the ONNX backend to be used.
EXPORT_TOLERANCE = 1e-4
Backend = Literal["auto", "onnx", "torch"]


def _labels(names: tuple[str, ...], answers: ImportAnswers, table: Path) -> tuple[LabelSpec, ...]:
    codes = load_label_map(table)
    given = {normalise_label(k): v for k, v in answers.codes.items()}
    specs = []
    for value, raw in enumerate(names, start=1):
        name = normalise_label(raw)
        if name in given:
            g = given[name]
            code, meaning, cat, cat_meaning, color = g.code, g.meaning, g.category_code, g.category_meaning, g.color
        elif name in codes:
            c = codes[name]
            code, meaning, cat, cat_meaning, color = c.code, c.meaning, c.category_code, c.category_meaning, c.color
        else:
            raise BundleError(
                f"label '{raw}' (output channel {value}) has no SNOMED CT code in {table}; add a row there "
                f"or give it under 'codes:' in the answers file"
            )
        specs.append(
            LabelSpec(
                value=value,
                name=name,
                code=code,
                meaning=meaning,
                category_code=cat,
                category_meaning=cat_meaning,
                color=color,
            )
        )
    return tuple(specs)


def _check_shapes(module: nn.Module, patch: tuple[int, ...], n_classes: int, source: Path) -> None:
    """Run the network on zeros ``(1, 1, *patch)``; its output must be ``(1, n_classes, *patch)``."""
    x = torch.zeros((1, 1, *patch))
    try:
        with torch.no_grad():
            y = module(x)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(f"{source}: the network does not run on an input of shape {tuple(x.shape)}: {first}") from exc
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (1, n_classes, *patch):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise BundleError(
            f"{source}: for an input {tuple(x.shape)} the network gives {got}; the metadata says "
            f"{(1, n_classes, *patch)} ({n_classes} classes including the background)"
        )


def _training(info_extra: dict[str, Any], answers: ImportAnswers, task: str) -> TrainingSpec:
    stated = info_extra.get("training")
    if isinstance(stated, dict):
        try:
            return TrainingSpec.model_validate(stated)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise BundleError(f"the bundle's metadata '{FAIRNODE_KEY}.training' is not valid: {msg}") from exc
    return TrainingSpec(
        cohort=CohortSpec(kind=task, n=answers.training_subjects or 0, seed=0, shift="not stated"),
        composition={},
        iterations=None,
        batch_size=None,
        learning_rate=None,
        seed=None,
        seconds=None,
        device=None,
    )


def _torchscript(module: nn.Module, patch: tuple[int, ...], folder: Path, mc: bool) -> tuple[str, str]:
    """TorchScript files ending in a softmax: ``model.ts`` and, for MC dropout, ``model_mc.ts``."""
    example = torch.zeros((1, 1, *patch))
    det = torch.jit.trace(WithSoftmax(copy.deepcopy(module)).eval(), example)
    torch.jit.save(det, str(folder / "model.ts"))
    if not mc:
        return "model.ts", "model.ts"
    stochastic = WithSoftmax(with_dropout_always_on(copy.deepcopy(module))).eval()
    traced = torch.jit.trace(stochastic, example, check_trace=False)
    torch.jit.save(traced, str(folder / "model_mc.ts"))
    return "model.ts", "model_mc.ts"


def _export_onnx(module: nn.Module, patch: tuple[int, ...], folder: Path, mc: bool) -> float:
    """The two ONNX graphs into ``folder`` (only the deterministic one without dropout); max |ONNX - torch|."""
    det, mc_path = export_graphs(module, patch, folder)
    if not mc:
        mc_path.unlink()
    x = np.random.default_rng(0).random((1, 1, *patch), dtype=np.float32)
    return max_abs_difference(module, det, x)


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_model(
    source: Path,
    models_root: Path,
    *,
    answers_path: Path | None = None,
    name: str | None = None,
    backend: Backend = "auto",
    replace: bool = False,
    reserved: frozenset[str] = frozenset(),
    label_table: Path = LABEL_TABLE,
) -> ModelCard:
    """Import ``source`` (a MONAI bundle folder, or an ``.onnx`` file) into ``models_root/<name>/``.

    Parameters
    ----------
    source
        the bundle folder or ONNX graph.
    models_root
        where imported models are kept (``<data_dir>/models``).
    answers_path
        the YAML of :class:`ImportAnswers`; written as a template when something cannot be inferred.
    name
        the model's name here (default: the answers', else the source's own name).
    backend
        ``onnx``, ``torch`` or ``auto`` (ONNX when the export matches torch within :data:`EXPORT_TOLERANCE`).
    replace
        replace an imported model of the same name.
    reserved
        names that may not be taken (the bundled models').
    label_table
        the SNOMED CT label table.

    Raises
    ------
    BundleError
        (one line) for a source that cannot be read or does not fit, a label without a code, a name taken;
        :class:`AnswersNeededError` when the answers file must be filled in.
    """
    answers = read_answers(answers_path)
    try:
        if source.is_dir():  # a bundle folder; read_bundle names the file it lacks
            return _import_bundle(
                source, models_root, answers, answers_path, name, backend, replace, reserved, label_table
            )
        if source.is_file() and source.suffix == ".onnx":
            info = read_onnx(source, answers)
            return _import_onnx(info, models_root, answers, answers_path, name, replace, reserved, label_table)
    finally:  # a failed import leaves no half-written folder (a finished one was renamed into place)
        for partial in models_root.glob(".*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
    raise BundleError(
        f"{source} is neither a MONAI bundle folder (configs/metadata.json, configs/inference.json, "
        "models/model.pt or model.ts) nor an .onnx file"
    )


def _target_folder(models_root: Path, name: str, replace: bool, reserved: frozenset[str]) -> Path:
    if name in reserved:
        raise BundleError(f"'{name}' is a bundled model's name; choose another name (--name)")
    folder = models_root / name
    if folder.exists() and not replace:
        raise BundleError(f"an imported model '{name}' exists in {folder}; pass --replace or choose another --name")
    return folder


def _slug(text: str) -> str:
    return "-".join(p for p in "".join(c if c.isalnum() else "-" for c in text.lower()).split("-") if p)


def _import_bundle(
    source: Path,
    models_root: Path,
    answers: ImportAnswers,
    answers_path: Path | None,
    name: str | None,
    backend: Backend,
    replace: bool,
    reserved: frozenset[str],
    label_table: Path,
) -> ModelCard:
    info = read_bundle(source)
    extra = info.fairnode
    training = extra.get("training")
    cohort = training.get("cohort") if isinstance(training, dict) else None
    intensity = answers.intensity or info.intensity
    inferred: dict[str, Any] = {
        "name": name or answers.name or _slug(info.name),
        "version": answers.version or (info.version if _semver(info.version) else None),
        "task": answers.task or (cohort.get("kind") if isinstance(cohort, dict) else None),
        "modality": answers.modality or info.modality,
        "spacing_mm": list(answers.spacing_mm or info.spacing_mm or ()) or None,
        "intensity": intensity.model_dump() if intensity is not None else None,
    }
    missing = [k for k, v in inferred.items() if v is None]
    if missing:
        if "intensity" in missing and info.intensity_problem:
            missing[missing.index("intensity")] = f"intensity (the bundle's is {info.intensity_problem})"
        raise ask_for(answers_path, inferred, missing, source)
    labels = _labels(info.labels, answers, label_table)
    module = info.module
    _check_shapes(module, info.patch_size, len(labels) + 1, source)
    mc = info.network is not None and has_dropout(info.network)
    reason = (
        "the network has dropout layers: MC-dropout samples"
        if mc
        else "TorchScript network (its dropout cannot be switched on): test-time augmentation"
        if info.network is None
        else "the network has no dropout: test-time augmentation"
    )
    target = _target_folder(models_root, str(inferred["name"]), replace, reserved)
    work = models_root / f".{inferred['name']}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(source / "configs", work / "bundle" / "configs")
    weights_name = info.weights_file.name
    shutil.copyfile(info.weights_file, work / weights_name)
    chosen, diff = _backend_files(module, info.patch_size, work, mc, backend, source)
    det_name, mc_name = ("model.onnx", "model_mc.onnx" if mc else "model.onnx") if chosen == "onnx" else ("", "")
    if chosen == "torch":
        det_name, mc_name = _torchscript(module, info.patch_size, work, mc)
    spacing = tuple(float(v) for v in inferred["spacing_mm"])
    mirror = answers.mirror_axes if answers.mirror_axes is not None else tuple(extra.get("mirror_axes", ()))
    card = ModelCard(
        name=str(inferred["name"]),
        version=str(inferred["version"]),
        description=answers.description or info.description,
        labels=labels,
        input=InputSpec(
            modality=inferred["modality"],
            spatial_dims=info.spatial_dims,
            spacing_mm=spacing,
            patch_size=info.patch_size,
            intensity=IntensitySpec.model_validate(inferred["intensity"]),
            mirror_axes=mirror,
        ),
        network=_network_spec(info),
        files=ModelFiles(
            deterministic=det_name,
            mc_dropout=mc_name,
            weights=weights_name,
            deterministic_sha256=sha256_of(work / det_name),
            mc_dropout_sha256=sha256_of(work / mc_name),
            weights_sha256=sha256_of(work / weights_name),
        ),
        training=_training(extra, answers, str(inferred["task"])),
        quality=QualitySpec(
            sampling="mc-dropout" if mc else "tta-flip", samples=answers.samples or int(extra.get("samples", 6))
        ),
        source=SourceSpec(
            format="monai-bundle",
            name=info.name,
            version=info.version,
            path=str(source.resolve()),
            sha256=_sha(info.weights_file),
            imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            backend=chosen,
            sampling="mc-dropout" if mc else "tta-flip",
            sampling_reason=reason,
            export_max_abs_difference=diff,
            answers=answers.model_dump(mode="json", exclude_defaults=True),
            label_map=label_table.name,
        ),
        reproduce=(
            f"fairnode model import {source} --name {inferred['name']}"
            + (f" --answers {answers_path}" if answers_path is not None and answers_path.is_file() else ""),
        ),
    )
    return _install(card, work, target)


def _semver(version: str | None) -> bool:
    parts = (version or "").split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)


def _network_spec(info: BundleInfo) -> NetworkSpec:
    args = info.network_args
    dropout = float(args.get("dropout") or 0.0) if isinstance(args.get("dropout"), int | float | None) else 0.0
    if info.architecture.rsplit(".", 1)[-1] == "UNet" and info.network is not None:
        return NetworkSpec(
            architecture=info.architecture,
            channels=tuple(int(c) for c in args.get("channels", ())),
            strides=tuple(int(s) for s in args.get("strides", ())),
            num_res_units=int(args.get("num_res_units", 0)),
            dropout=dropout,
        )
    return NetworkSpec(architecture=info.architecture, channels=(), strides=(), num_res_units=0, dropout=dropout)


def _backend_files(
    module: nn.Module, patch: tuple[int, ...], folder: Path, mc: bool, backend: Backend, source: Path
) -> tuple[Literal["onnx", "torch"], float | None]:
    """Export to ONNX unless told not to; fall back to torch (``auto``) when the export fails or differs."""
    if backend == "torch":
        return "torch", None
    try:
        diff = _export_onnx(module, patch, folder, mc)
    except (RuntimeError, ValueError, torch.onnx.errors.OnnxExporterError) as exc:
        if backend == "onnx":
            raise BundleError(f"{source}: ONNX export failed: {str(exc).splitlines()[0]}") from exc
        logger.warning("%s: ONNX export failed (%s); the model runs on torch", source, str(exc).splitlines()[0])
        return "torch", None
    if diff <= EXPORT_TOLERANCE:
        return "onnx", diff
    if backend == "onnx":
        raise BundleError(f"{source}: the ONNX graph differs from torch by {diff:.2e} (allowed {EXPORT_TOLERANCE})")
    logger.warning("%s: ONNX differs from torch by %.2e; the model runs on torch", source, diff)
    for f in ("model.onnx", "model_mc.onnx"):
        (folder / f).unlink(missing_ok=True)
    return "torch", diff


def _import_onnx(
    info: OnnxInfo,
    models_root: Path,
    answers: ImportAnswers,
    answers_path: Path | None,
    name: str | None,
    replace: bool,
    reserved: frozenset[str],
    label_table: Path,
) -> ModelCard:
    inferred: dict[str, Any] = {
        "name": name or answers.name or _slug(info.path.stem),
        "version": answers.version,
        "task": answers.task,
        "modality": answers.modality,
        "spacing_mm": list(answers.spacing_mm) if answers.spacing_mm else None,
        "intensity": answers.intensity.model_dump() if answers.intensity else None,
        "labels": list(answers.labels) if answers.labels else None,
        "patch_size": list(info.patch_size) if info.patch_size else None,
        "output": answers.output,
    }
    missing = [k for k, v in inferred.items() if v is None]
    if missing:
        raise ask_for(answers_path, inferred, missing, info.path)
    labels = _labels(tuple(inferred["labels"]), answers, label_table)
    patch = tuple(int(p) for p in inferred["patch_size"])
    if info.n_outputs is not None and info.n_outputs != len(labels) + 1:
        raise BundleError(
            f"{info.path}: the graph gives {info.n_outputs} output channels but the answers name {len(labels)} "
            f"labels ({len(labels) + 1} channels with the background)"
        )
    target = _target_folder(models_root, str(inferred["name"]), replace, reserved)
    work = models_root / f".{inferred['name']}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    mc, diff = write_onnx_graphs(info, patch, len(labels) + 1, work, softmax=inferred["output"] == "logits")
    reason = (
        "the graph has Dropout nodes: MC-dropout samples (training mode switched on in model_mc.onnx)"
        if mc
        else "the graph has no Dropout node: test-time augmentation"
    )
    mc_name = "model_mc.onnx" if mc else "model.onnx"
    card = ModelCard(
        name=str(inferred["name"]),
        version=str(inferred["version"]),
        description=answers.description or f"ONNX model {info.path.name}",
        labels=labels,
        input=InputSpec(
            modality=inferred["modality"],
            spatial_dims=len(patch),
            spacing_mm=tuple(float(s) for s in inferred["spacing_mm"]),
            patch_size=patch,
            intensity=IntensitySpec.model_validate(inferred["intensity"]),
            mirror_axes=answers.mirror_axes or (),
        ),
        network=NetworkSpec(architecture="onnx", channels=(), strides=(), num_res_units=0, dropout=0.0),
        files=ModelFiles(
            deterministic="model.onnx",
            mc_dropout=mc_name,
            weights="source.onnx",
            deterministic_sha256=sha256_of(work / "model.onnx"),
            mc_dropout_sha256=sha256_of(work / mc_name),
            weights_sha256=sha256_of(work / "source.onnx"),
        ),
        training=_training({}, answers, str(inferred["task"])),
        quality=QualitySpec(sampling="mc-dropout" if mc else "tta-flip", samples=answers.samples or 6),
        source=SourceSpec(
            format="onnx",
            name=info.path.name,
            version=None,
            path=str(info.path.resolve()),
            sha256=_sha(info.path),
            imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            backend="onnx",
            sampling="mc-dropout" if mc else "tta-flip",
            sampling_reason=reason,
            export_max_abs_difference=diff,
            answers=answers.model_dump(mode="json", exclude_defaults=True),
            label_map=label_table.name,
        ),
        reproduce=(f"fairnode model import {info.path} --name {inferred['name']} --answers {answers_path}",),
    )
    return _install(card, work, target)


def _install(card: ModelCard, work: Path, target: Path) -> ModelCard:
    """Write the card into ``work`` and move it into place (an old import of the name is replaced)."""
    save_card(card, work)
    if target.exists():
        shutil.rmtree(target)
    work.rename(target)
    backend = card.source.backend if card.source else "onnx"
    sampling = card.quality.sampling if card.quality else "mc-dropout"
    logger.info("imported %s %s into %s (%s backend, %s)", card.name, card.version, target, backend, sampling)
    return card
