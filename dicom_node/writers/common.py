"""What every output of one model run shares: identity settings, derived UIDs, series and algorithm items.

- :class:`OutputSettings`: the node's identity in the objects it writes (UID root, equipment, series);
- :func:`output_uid`: UIDs derived from the run, never random (the same run gives the same UIDs);
- :func:`algorithm_sequence` and :func:`algorithm_equipment`: the algorithm named where IHE AI Results
  asks (AlgorithmIdentificationSequence, ContributingEquipmentSequence with purpose
  ``(Newcode1, 99IHE, "Processing Algorithm")``);
- the checks of the inputs against the source images and the fix-ups that make an object reproducible.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from importlib import metadata
from typing import Final, Protocol, TypedDict, TypeVar

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid
from pydicom.valuerep import DA, DT, TM

from dicom_node.writers.codes import PROCESSING_ALGORITHM
from dicom_node.writers.rle import encode_frame as encode_rle_frame
from inference.model_card import ModelCard

#: The default UID root: UUID-derived UIDs (ISO/IEC 9834-8, PS3.5 B.2), which need no registration. An
#: organisation with its own registered root sets it instead (``uid_root`` in the settings).
DEFAULT_UID_ROOT = "2.25."

#: Namespace of the name-based UUIDs behind the ``2.25.`` UIDs the node derives (fixed: same parts, same UID).
_UUID_NAMESPACE = uuid.UUID("5f0c3b8e-7d4a-4e61-9a2f-6b1d2c9e8a40")


#: Transfer syntaxes the probability SEG and the entropy map may be written in (all lossless).
MAP_TRANSFER_SYNTAXES: Final = (RLELossless, JPEGLSLossless, JPEG2000Lossless, ExplicitVRLittleEndian)

T = TypeVar("T")

_FALLBACK_VERSION = "0.1.0"
#: Longest root that leaves room for a 20-digit suffix within the 64 characters of a UID.
_MAX_ROOT_LENGTH = 44


def fairnode_version() -> str:
    """The installed fairnode's version (``0.1.0`` when run from a source tree that is not installed)."""
    try:
        return metadata.version("fairnode")
    except metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


class Algorithm(Protocol):
    """What the outputs need to know of a model: a :class:`~inference.model_card.ModelCard` or the lesion
    model's card (name, version, and a description for its ContributingEquipmentSequence item)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def description(self) -> str: ...


@dataclass(frozen=True)
class OutputSettings:
    """Identity of this node in the objects it writes.

    Attributes
    ----------
    uid_root
        root of every UID written, ending with ``"."``; at most 44 characters. The default ``2.25.`` writes
        UUID-derived UIDs, valid without any registration; an organisation's own registered root may
        replace it.
    manufacturer, manufacturer_model_name, software_version, device_serial_number, institution_name
        General Equipment of the SEG and SR (and the algorithm's ContributingEquipmentSequence item).
        An empty ``institution_name`` is left out.
    seg_series_number, sr_series_number, probability_series_number, uncertainty_series_number
        SeriesNumber of the BINARY SEG, SR, PROBABILITY SEG and entropy map series.
    seg_series_description, sr_series_description, probability_series_description, uncertainty_series_description
        SeriesDescription templates; ``{model}`` is replaced by the model name.
    map_transfer_syntax
        transfer syntax of the PROBABILITY SEG and the entropy map, one of :data:`MAP_TRANSFER_SYNTAXES`:
        RLE Lossless (default: decoded by every toolkit, pydicom without plugins), JPEG-LS Lossless (about
        4 times smaller and faster to write, needs a JPEG-LS codec on the reading side), JPEG 2000 Lossless,
        or uncompressed Explicit VR Little Endian (about 50 times larger).
    """

    uid_root: str = DEFAULT_UID_ROOT
    manufacturer: str = "fairnode"
    manufacturer_model_name: str = "fairnode"
    software_version: str = fairnode_version()
    device_serial_number: str = "1"
    institution_name: str = ""
    seg_series_number: int = 9100
    seg_series_description: str = "AI segmentation ({model})"
    sr_series_number: int = 9101
    sr_series_description: str = "AI measurements ({model})"
    probability_series_number: int = 9102
    probability_series_description: str = "AI probabilities ({model})"
    uncertainty_series_number: int = 9103
    uncertainty_series_description: str = "AI uncertainty ({model})"
    map_transfer_syntax: str = RLELossless

    def __post_init__(self) -> None:
        root = self.uid_root
        parts = root[:-1].split(".") if root.endswith(".") else []
        if not parts or any(not p.isdigit() or (len(p) > 1 and p[0] == "0") for p in parts):
            raise ValueError(
                f"uid_root must be dot-separated numbers without leading zeros ending with '.', got {root!r}"
            )
        if len(root) > _MAX_ROOT_LENGTH:
            raise ValueError(f"uid_root must be at most {_MAX_ROOT_LENGTH} characters, got {len(root)}")
        for name in (
            "seg_series_description",
            "sr_series_description",
            "probability_series_description",
            "uncertainty_series_description",
        ):
            template: str = getattr(self, name)
            try:
                template.format(model="m")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name} may use only the field {{model}}, got {template!r} ({exc!r})") from exc
        for name in ("seg_series_number", "sr_series_number", "probability_series_number", "uncertainty_series_number"):
            value: int = getattr(self, name)
            if not 0 < value < 2**31:
                raise ValueError(f"{name} must be a positive 32-bit integer, got {value}")
        if self.map_transfer_syntax not in MAP_TRANSFER_SYNTAXES:
            allowed = ", ".join(f"{UID(t).name} ({t})" for t in MAP_TRANSFER_SYNTAXES)
            raise ValueError(f"map_transfer_syntax must be one of {allowed}, got {self.map_transfer_syntax!r}")


def output_uid(settings: OutputSettings, *parts: str) -> str:
    """A UID under ``settings.uid_root`` derived from ``parts`` (same parts, same UID).

    Under the ``2.25.`` root the UID is ``2.25.`` followed by the decimal value of a name-based (SHA-1,
    version 5) UUID of the parts, as PS3.5 B.2 requires; under any other root, the root followed by digits
    of a SHA-512 hash of the parts, cut to 64 characters.

    Raises
    ------
    TypeError
        If no part is given (the UID would not depend on anything).
    """
    if not parts:
        raise TypeError("output_uid needs at least one part to derive the UID from")
    if settings.uid_root == DEFAULT_UID_ROOT:
        return f"{DEFAULT_UID_ROOT}{uuid.uuid5(_UUID_NAMESPACE, chr(31).join(str(p) for p in parts)).int}"
    return str(generate_uid(prefix=settings.uid_root, entropy_srcs=[str(p) for p in parts]))


class Equipment(TypedDict):
    """The General Equipment attributes every object the node writes carries (highdicom keyword arguments)."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str
    institution_name: str | None


def equipment(settings: OutputSettings) -> Equipment:
    """:class:`Equipment` from the output settings."""
    return {
        "manufacturer": settings.manufacturer,
        "manufacturer_model_name": settings.manufacturer_model_name,
        "software_versions": settings.software_version,
        "device_serial_number": settings.device_serial_number,
        "institution_name": settings.institution_name or None,
    }


class ObjectIdentity(TypedDict):
    """highdicom's keyword arguments that name one object, the only instance of its series, and date it."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    series_description: str
    series_date: date
    series_time: time
    content_date: date
    content_time: time


def object_identity(
    series_uid: str, sop_uid: str, series_number: int, series_description: str, created: datetime
) -> ObjectIdentity:
    """:class:`ObjectIdentity` of instance 1 of series ``series_uid``, its series and content dated ``created``;
    the description cut to the 64 characters of an LO."""
    return {
        "series_instance_uid": series_uid,
        "series_number": series_number,
        "sop_instance_uid": sop_uid,
        "instance_number": 1,
        "series_description": series_description[:64],
        "series_date": created.date(),
        "series_time": created.time(),
        "content_date": created.date(),
        "content_time": created.time(),
    }


def run_identity(
    settings: OutputSettings,
    key: tuple[str, ...],
    role: str,
    series_number: int,
    series_description: str,
    created: datetime,
) -> ObjectIdentity:
    """:func:`object_identity` of the object ``role`` of one run (``key``: :func:`series_key`), its series and
    instance UIDs derived from the key and the role."""
    return object_identity(
        output_uid(settings, *key, role, "series"),
        output_uid(settings, *key, role, "instance"),
        series_number,
        series_description,
        created,
    )


def check_label_values(labels: np.ndarray, card: ModelCard) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array (uint8), got dtype {labels.dtype}")
    if labels.size == 0:
        raise ValueError(f"labels must not be empty, got shape {labels.shape}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > len(card.labels):
        raise ValueError(
            f"label values must lie in 0..{len(card.labels)} (the labels of model {card.name!r}), got {lo}..{hi}"
        )


def algorithm_sequence(card: Algorithm, parameters: dict[str, str] | None = None) -> hd.AlgorithmIdentificationSequence:
    """The AlgorithmIdentificationSequence of a model: name, version, family "Artificial Intelligence"
    and, when given, its ``parameters``."""
    return hd.AlgorithmIdentificationSequence(
        name=card.name, family=codes.cid7162.ArtificialIntelligence, version=card.version, parameters=parameters
    )


def algorithm_equipment(
    card: Algorithm, settings: OutputSettings, created: datetime, detail: str | None = None
) -> hd.ContributingEquipment:
    """The ContributingEquipmentSequence item naming the algorithm (IHE AI Results).

    Its ContributionDescription is ``"AI model <name> <version>: <description>"``, followed by
    ``" (<detail>)"`` when ``detail`` is given. highdicom admits only DICOM's CID 7005 purposes; the item is
    built with Processing Equipment and its purpose then replaced by IHE's ``(Newcode1, 99IHE, "Processing
    Algorithm")``.
    """
    description = f"AI model {card.name} {card.version}: {card.description}"
    if detail is not None:
        description += f" ({detail})"
    item = hd.ContributingEquipment(
        manufacturer=settings.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=card.name,
        software_versions=card.version,
        device_serial_number=settings.device_serial_number,
        institution_name=settings.institution_name or None,
        contribution_datetime=created,
        contribution_description=description[:1024],
    )
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(PROCESSING_ALGORITHM)]
    return item


def source_frames(labels: np.ndarray, sources: Sequence[Dataset], what: str = "labels") -> np.ndarray:
    """``labels`` as ``(frames, rows, columns)``, checked against the source images (named ``what`` in errors)."""
    if not sources:
        raise ValueError("source_images is empty: a derived object needs the images it was derived from")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    n_frames = int(sources[0].get("NumberOfFrames", 1)) if len(sources) == 1 else len(sources)
    expected = (n_frames, rows, cols)
    frames = labels[np.newaxis] if labels.ndim == 2 else labels
    sizes = {(int(s.Rows), int(s.Columns)) for s in sources}
    if frames.shape != expected or len(sizes) != 1:
        raise ValueError(
            f"{what} of shape {labels.shape} do not match the source images: {len(sources)} image(s) of "
            f"{sorted(sizes)} (rows, columns), expected {what} of shape {expected}"
            + (" or (rows, columns)" if n_frames == 1 else "")
        )
    return frames


def series_key(sources: Sequence[Dataset], card: Algorithm, run: int) -> tuple[str, ...]:
    """What every UID of one run's outputs is derived from: source series, model name and version, run."""
    return (str(sources[0].SeriesInstanceUID), card.name, card.version, str(run))


def check_run(run: int) -> None:
    if run < 1:
        raise ValueError(f"run must be 1 or more, got {run}")


def has_frame_of_reference(sources: Sequence[Dataset]) -> bool:
    return "FrameOfReferenceUID" in sources[0]


def make_reproducible(dataset: Dataset, created: datetime, organization_uid: str | None = None) -> None:
    """Replace highdicom's wall-clock stamps (and random dimension organisation UID) by derived values."""
    dataset.InstanceCreationDate = DA(created.date())
    dataset.InstanceCreationTime = TM(created.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == "highdicom" and "ContributionDateTime" in item:
            item.ContributionDateTime = DT(created)
    if organization_uid is not None:
        for item in [
            *dataset.get("DimensionOrganizationSequence", []),
            *dataset.get("DimensionIndexSequence", []),
        ]:
            item.DimensionOrganizationUID = organization_uid


#: How far out of range (rounding of float32 sums) a probability or entropy may be before it is refused.
RANGE_TOLERANCE = 1e-4


#: Voxels of one block of frames turned from floats into stored values at a time (:func:`frame_blocks`).
BLOCK_VOXELS: Final = 1 << 20


def frame_blocks(frames: np.ndarray) -> Iterator[slice]:
    """Slices of the first axis of ``frames`` ``(frames, rows, columns)``, about :data:`BLOCK_VOXELS` voxels
    each: the elementwise steps from floats to stored values run block by block on data that stays in the
    cache, instead of each step on a whole-volume temporary (a third of the time on a 128-slice CT, the same
    values)."""
    step = max(1, BLOCK_VOXELS // max(1, int(np.prod(frames.shape[1:]))))
    for start in range(0, frames.shape[0], step):
        yield slice(start, start + step)


#: Threads that compress the frames of one object in parallel where the codec releases the GIL (JPEG-LS,
#: JPEG 2000); RLE frames are encoded in the calling thread (:class:`FrameEncoder`).
ENCODE_THREADS: Final = min(4, os.cpu_count() or 1)


class FrameEncoder(Executor):
    """highdicom's ``workers`` for a compressed object: RLE Lossless frames encoded at once in the calling
    thread by :func:`~dicom_node.writers.rle.encode_frame`, frames of other syntaxes by highdicom's own
    encoder in ``pool`` (in the calling thread when ``None``).

    highdicom submits each frame as ``submit(highdicom.frame.encode_frame, array=frame, transfer_syntax_uid=...,
    bits_allocated=..., bits_stored=..., photometric_interpretation=..., pixel_representation=...)`` and
    collects the futures in frame order. An RLE frame of one sample per pixel, all its bits stored, takes the
    segment encoder (the same bytes as pydicom's RLE encoder, a tenth of its time on 8-bit CT frames; the
    encoder holds the GIL, so threads would only add switching); any other call runs as submitted.
    """

    def __init__(self, pool: Executor | None = None) -> None:
        self._pool = pool

    def submit(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future[T]:
        if fn is hd.frame.encode_frame and not args and _segment_encodable(kwargs):
            return _done(encode_rle_frame, kwargs["array"])  # type: ignore[arg-type]  # bytes, as fn returns
        if self._pool is not None:
            return self._pool.submit(fn, *args, **kwargs)
        return _done(fn, *args, **kwargs)


def _done(fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future[T]:
    """``fn(*args, **kwargs)`` run now, in the calling thread, as a finished future (its result or exception,
    handed to the caller who reads the future)."""
    future: Future[T] = Future()
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:
        future.set_exception(exc)
    return future


def _segment_encodable(kwargs: dict[str, object]) -> bool:
    """Whether highdicom's ``encode_frame`` arguments are an RLE frame :func:`encode_rle_frame` writes the same."""
    array = kwargs.get("array")
    return (
        kwargs.get("transfer_syntax_uid") == RLELossless
        and isinstance(array, np.ndarray)
        and array.ndim == 2
        and array.dtype.kind in "iu"
        and array.dtype.itemsize in (1, 2)  # the Bits Allocated of pydicom's RLE profiles (PS3.5 8.2.2)
        and kwargs.get("bits_allocated") == kwargs.get("bits_stored") == 8 * array.dtype.itemsize
        and kwargs.get("pixel_representation") == (1 if array.dtype.kind == "i" else 0)
        and str(kwargs.get("photometric_interpretation")) in _RLE_MONOCHROME
    )


#: Photometric interpretations of one sample per pixel that RLE Lossless takes (PS3.5 Table 8.2.2-1).
_RLE_MONOCHROME: Final = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"})


@contextmanager
def frame_encoders(transfer_syntax_uid: str) -> Iterator[Executor | int]:
    """highdicom's ``workers`` for an object written in ``transfer_syntax_uid``: ``0`` (in the caller) for an
    uncompressed transfer syntax, else a :class:`FrameEncoder` (frames keep their order) whose thread pool of
    :data:`ENCODE_THREADS` threads compresses the frames of codecs other than RLE."""
    syntax = UID(transfer_syntax_uid)
    if not syntax.is_compressed:
        yield 0
        return
    if syntax == RLELossless or ENCODE_THREADS < 2:
        yield FrameEncoder()
        return
    with ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="frame-encoder") as pool:
        yield FrameEncoder(pool)
