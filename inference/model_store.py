"""Where models are found: the bundled ones shipped with fairnode, and those imported into the data folder.

Bundled models live in :data:`inference.model_card.MODELS_DIR` (or a folder given in the settings);
imported ones in ``<data_dir>/models/<name>/`` (:func:`imported_models_dir`), each a folder with a
``card.yaml`` like a bundled model's. :func:`find_models` is the one place that merges the two (a bundled
name wins: an import may not take a bundled model's name), and :func:`open_segmenter` opens either with the
backend its card names.
"""

from __future__ import annotations

import logging
from pathlib import Path

from inference.backends import InferenceSettings
from inference.model_card import MODELS_DIR, bundled_models, load_card
from inference.segmenter import Segmenter

__all__ = ["IMPORTED_SUBDIR", "find_models", "imported_models", "imported_models_dir", "open_segmenter"]

logger = logging.getLogger(__name__)

#: Imported models are kept in this folder of the data folder.
IMPORTED_SUBDIR = "models"


def imported_models_dir(data_dir: Path) -> Path:
    """The folder imported models are kept in: ``<data_dir>/models``."""
    return data_dir / IMPORTED_SUBDIR


def imported_models(root: Path | None) -> dict[str, Path]:
    """Folders of the models imported into ``root`` (a data folder's ``models``), by model name."""
    return bundled_models(root) if root is not None else {}


def find_models(models_dir: Path | None = None, imported_dir: Path | None = None) -> dict[str, Path]:
    """Every model this node can run, by name: the bundled ones (``models_dir``, default the shipped folder)
    and then the imported ones (``imported_dir``); an imported folder that has a bundled name is ignored
    with a warning."""
    found = dict(bundled_models(models_dir or MODELS_DIR))
    for name, folder in imported_models(imported_dir).items():
        if name in found:
            logger.warning("imported model %s in %s ignored: a bundled model has that name", name, folder)
            continue
        found[name] = folder
    return found


def open_segmenter(folder: Path, prefer_gpu: bool = True, inference: InferenceSettings | None = None) -> Segmenter:
    """The model in ``folder`` ready to run, on the backend its card names (ONNX Runtime unless an imported
    model could only be kept as a torch network); a bundled model on the backend ``inference`` chooses
    (:mod:`inference.backends`)."""
    card = load_card(folder)
    if card.source is not None and card.source.backend == "torch":
        from inference.torch_backend import TorchSegmenter

        return TorchSegmenter(folder, prefer_gpu=prefer_gpu)
    return Segmenter(folder, prefer_gpu=prefer_gpu, settings=inference)
