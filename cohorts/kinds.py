"""The cohort kinds fairnode can generate, and the one place that maps a kind name to its generator."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject


@dataclass(frozen=True)
class Kind:
    """A cohort kind: its name, modality, what it shows, and where its generator lives."""

    name: str
    modality: str
    description: str
    module: str

    def _module(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def labels(self) -> tuple[Label, ...]:
        labels: tuple[Label, ...] = self._module().LABELS
        return labels

    @property
    def generate(self) -> Callable[[Subject], SyntheticImage]:
        gen: Callable[[Subject], SyntheticImage] = self._module().generate
        return gen


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "ct-abdomen",
            "CT",
            "3D abdominal CT phantoms: liver, spleen, kidneys, aorta",
            "cohorts.ct_abdomen",
        ),
        Kind("xr-knee", "DX", "2D AP knee radiographs: femur, tibia, fibula, patella", "cohorts.xr_knee"),
        Kind(
            "mr-brain",
            "MR",
            "3D T1 brain MR from the MNI152 template: grey/white matter, CSF",
            "cohorts.mr_brain",
        ),
    )
}


class UnknownKindError(ValueError):
    """A cohort kind fairnode does not generate."""


def get_kind(name: str) -> Kind:
    """The :class:`Kind` called ``name``.

    Raises
    ------
    UnknownKindError
        naming the kind asked for and the kinds available.
    """
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKindError(f"unknown cohort kind '{name}'; choose one of: {', '.join(KINDS)}") from None
