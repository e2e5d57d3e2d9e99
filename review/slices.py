"""Server-rendered slices of a case: the source image under a window preset, with fairnode's SEG overlay and
the entropy heatmap, each switched on or off, as PNG.

Why slices rendered here rather than Cornerstone3D or NiiVue in the browser
--------------------------------------------------------------------------
* Nothing to build or audit: a browser viewer means an npm bundle (Cornerstone3D pulls in a WebAssembly
  codec set and a few hundred packages) to build reproducibly, serve with its licences and keep patched.
  Here the page is one small script (``static/viewer.js``) that swaps ``<img>`` sources.
* It reads exactly what the node wrote: the same :mod:`dicom_node.volume` ordering and Modality LUT, the
  SEG and the Parametric Map read back by highdicom, so what the radiologist sees is what went to PACS.
* It fits 1280×800: one image scaled to the viewport, no canvas sizing or GPU context to negotiate, and it
  works on a locked-down reading-room browser without WebGL.
* It is fast enough: a case is decoded once and kept (:class:`SliceCache`), the next doubtful case is decoded
  in the background while the radiologist reads this one, each PNG is rendered once per (slice, preset,
  overlay, heatmap) and kept, and the page preloads the neighbouring slices. Measured with
  ``benchmarks/review_page.py`` on the 2-core build machine, shared (load average 4.4), a 200-slice
  512×512 CT in Debian's Chromium at 1280×800: 5.2 s from navigation to the first slice on screen when
  the case is opened cold (series, SEG and entropy map decoded), 0.14 s warm; arrow-key scrolling 35 ms
  per slice (at most 66 ms); one slice rendered in 40–50 ms, 4–9 ms from the cache.

What a browser viewer would add — free rotation, MPR, measuring tools — belongs to the radiologist's own
viewer; a corrected SEG made there comes back by C-STORE (:mod:`fairnode.corrections`).

Array conventions are those of :mod:`dicom_node.volume`: ``(slices, rows, columns)``; a radiograph is one
slice. Slice ``k`` is shown as stored (rows down, columns right), scaled so that the longer side is at least
:data:`MIN_DISPLAY` and at most :data:`MAX_DISPLAY` pixels, with non-square pixels corrected.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image

from dicom_node.volume import load_volume, read_series
from inference.model_card import LabelSpec
from review.case_files import CaseFiles

__all__ = [
    "FULL_RANGE",
    "PRESETS",
    "CaseImages",
    "SliceCache",
    "SliceError",
    "StructureView",
    "WindowPreset",
    "presets_for",
]

logger = logging.getLogger(__name__)

#: Shortest and longest side (pixels) of a rendered slice.
MIN_DISPLAY = 512
MAX_DISPLAY = 1024
#: Opacity of the SEG fill; the outline is opaque.
FILL_ALPHA = 0.30
#: Entropy (as a share of the most a voxel can have, log2 of the classes) below which the heatmap is clear.
HEAT_FLOOR = 0.05
#: Most opacity of the heatmap.
HEAT_ALPHA = 0.75
#: Percentiles that make the "full range" window (robust to a few hot pixels).
FULL_RANGE_PERCENTILES = (0.5, 99.5)
#: Colours of structures when the model card is not at hand (label value 1, 2, ... in turn).
FALLBACK_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
)


class SliceError(ValueError):
    """A slice or preset that the case does not have, or outputs that do not fit its image."""


@dataclass(frozen=True)
class WindowPreset:
    """A window/level preset. ``center``/``width`` in the image's values (HU for CT); ``None`` for the full
    range of the image (:data:`FULL_RANGE_PERCENTILES`)."""

    name: str
    title: str
    center: float | None = None
    width: float | None = None


FULL_RANGE = WindowPreset("full", "Full range")
#: Presets by name.
PRESETS: dict[str, WindowPreset] = {
    p.name: p
    for p in (
        WindowPreset("abdomen", "Abdomen (W400 L40)", 40.0, 400.0),
        WindowPreset("bone", "Bone (W1800 L400)", 400.0, 1800.0),
        WindowPreset("lung", "Lung (W1500 L−600)", -600.0, 1500.0),
        FULL_RANGE,
    )
}


def presets_for(modality: str) -> tuple[WindowPreset, ...]:
    """The presets offered for a modality, the default first: CT abdomen, bone, lung, full range; any other
    modality (DX, CR, MR, ...) the full range only."""
    if modality.upper() == "CT":
        return tuple(PRESETS[n] for n in ("abdomen", "bone", "lung", "full"))
    return (FULL_RANGE,)


@dataclass(frozen=True)
class StructureView:
    """One structure of the SEG: its label value, name, display colour (RGB) and the slice where it is
    largest (``None`` when the SEG holds none of it)."""

    label: int
    name: str
    color: tuple[int, int, int]
    largest_slice: int | None
    voxels: int

    @property
    def hex_color(self) -> str:
        """The colour as CSS ``#rrggbb``."""
        return "#{:02x}{:02x}{:02x}".format(*self.color)


def _display_size(rows: int, columns: int, row_mm: float, column_mm: float) -> tuple[int, int]:
    """(width, height) in pixels of a slice on screen: square pixels, longer side in [MIN, MAX]_DISPLAY."""
    height_units = rows * (row_mm / column_mm if column_mm > 0 and row_mm > 0 else 1.0)
    longer = max(height_units, float(columns))
    scale = 1.0
    if longer < MIN_DISPLAY:
        scale = math.ceil(MIN_DISPLAY / longer)
    elif longer > MAX_DISPLAY:
        scale = MAX_DISPLAY / longer
    return max(1, round(columns * scale)), max(1, round(height_units * scale))


def _outline(labels: np.ndarray) -> np.ndarray:
    """Pixels of a 2D label map whose 4-neighbourhood holds another label (boolean, same shape)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def _labels_of(files: CaseFiles, order: Future[list[str]]) -> tuple[dict[int, str], np.ndarray]:
    """The SEG's segment labels by number, and its label map (uint8) on the source images in ``order``."""
    seg = hd.seg.segread(files.seg)
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    uids = order.result()
    try:
        values = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    except (ValueError, KeyError, IndexError) as exc:
        raise SliceError(f"SEG {files.seg} does not refer to the case's {len(uids)} source images: {exc}") from exc
    return names, np.asarray(values, dtype=np.uint8)


def _entropy_of(files: CaseFiles, order: Future[list[str]]) -> np.ndarray:
    """The entropy map's values (bits, float32) on the source images in ``order``."""
    if files.uncertainty is None:
        raise ValueError("the case has no entropy map")
    pm = hd.imread(files.uncertainty)
    uids = order.result()
    try:
        values = pm.get_pixels_by_source_instance(uids, apply_real_world_transform=True)
    except (ValueError, KeyError, IndexError) as exc:
        raise SliceError(f"entropy map {files.uncertainty} does not refer to the case's images: {exc}") from exc
    return np.asarray(values, dtype=np.float32)


_HEAT_LUT = (colormaps["inferno"](np.linspace(0.3, 1.0, 256))[:, :3] * 255).astype(np.uint8)


class CaseImages:
    """One case's image, labels and entropy, decoded once and rendered slice by slice.

    Parameters
    ----------
    pixels
        float32 ``(slices, rows, columns)`` after the Modality LUT.
    labels
        uint8 label map of the same shape (0 background, else the model card's label value).
    entropy
        float32 entropy in bits of the same shape, or ``None`` when quality was not assessed.
    max_entropy
        the most a voxel can have (log2 of the number of classes), bits; scales the heatmap.
    modality
        the series' Modality (chooses the presets).
    structures
        the card's labels present in the SEG, with colours and largest slices.
    spacing
        (row, column) pixel spacing in mm.
    invert
        True for a MONOCHROME1 image (shown with low values white).
    """

    def __init__(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        entropy: np.ndarray | None,
        *,
        max_entropy: float,
        modality: str,
        structures: Sequence[StructureView],
        spacing: tuple[float, float],
        invert: bool = False,
    ):
        if pixels.ndim != 3 or labels.shape != pixels.shape:
            raise SliceError(f"labels of shape {labels.shape} do not fit the image of shape {pixels.shape}")
        if entropy is not None and entropy.shape != pixels.shape:
            raise SliceError(f"entropy map of shape {entropy.shape} does not fit the image of shape {pixels.shape}")
        self.pixels = pixels
        self.labels = labels
        # half precision (3 significant digits) is plenty for a heatmap and halves what a cached case holds
        self.entropy = None if entropy is None else entropy.astype(np.float16)
        self.max_entropy = max_entropy
        self.modality = modality
        self.structures = tuple(structures)
        self.spacing = spacing
        self.invert = invert
        # percentiles of every 4th voxel along each axis: the same window, 64 times less sorting
        lo, hi = np.percentile(pixels[::4, ::4, ::4] if pixels.size > 4_000_000 else pixels, FULL_RANGE_PERCENTILES)
        self.full_range = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        self.colors = np.zeros((256, 3), dtype=np.uint8)
        for s in self.structures:
            self.colors[s.label] = s.color
        self.size = _display_size(pixels.shape[1], pixels.shape[2], *spacing)

    # -- reading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, files: CaseFiles, labels: Sequence[LabelSpec] = ()) -> CaseImages:
        """Read a case's source series, its SEG and (if written) its entropy map.

        Parameters
        ----------
        files
            where the case's files are (:func:`review.case_files.locate_case_files`).
        labels
            the model card's labels (names and colours); without them the SEG's segment labels are used
            with :data:`FALLBACK_COLORS`.

        Raises
        ------
        SliceError
            When the SEG or the map does not refer to the source images.
        dicom_node.volume.VolumeError
            When the source series cannot be made into a volume.
        """
        # the series, the SEG and the map are read side by side (file reading and decoding overlap); each
        # highdicom object is used in the thread that read it, once the series gives the images' order
        order: Future[list[str]] = Future()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="case-read") as pool:
            seg_job = pool.submit(_labels_of, files, order)
            map_job = pool.submit(_entropy_of, files, order) if files.uncertainty is not None else None
            try:
                volume = load_volume(read_series(list(files.sources)))
            except BaseException as exc:
                order.set_exception(exc)
                raise
            order.set_result([str(ds.SOPInstanceUID) for ds in volume.datasets])
            pixels = volume.pixels if volume.pixels.ndim == 3 else volume.pixels[np.newaxis]
            names, label_map = seg_job.result()
            label_map = label_map.reshape(pixels.shape)
            entropy = map_job.result().reshape(pixels.shape) if map_job is not None else None
        # voxels of each label per slice, in one pass
        per_slice_counts = np.stack([np.bincount(sl.ravel(), minlength=256) for sl in label_map])
        by_value = {lab.value: lab for lab in labels}
        views: list[StructureView] = []
        for number in sorted(names):
            spec = by_value.get(number)
            per_slice = per_slice_counts[:, number]
            total = int(per_slice.sum())
            views.append(
                StructureView(
                    label=number,
                    name=spec.name if spec else names[number],
                    color=spec.color if spec else FALLBACK_COLORS[(number - 1) % len(FALLBACK_COLORS)],
                    largest_slice=int(per_slice.argmax()) if total else None,
                    voxels=total,
                )
            )
        n_classes = max(len(names), len(labels)) + 1
        first = volume.datasets[0]
        spacing = (float(volume.spacing[-2]), float(volume.spacing[-1]))
        logger.info(
            "case images loaded: %d slices of %dx%d, %d structures, entropy map %s",
            *pixels.shape,
            len(views),
            "yes" if entropy is not None else "no",
        )
        return cls(
            pixels.astype(np.float32, copy=False),
            label_map,
            entropy,
            max_entropy=math.log2(n_classes),
            modality=str(first.get("Modality", "")),
            structures=views,
            spacing=spacing,
            invert=str(first.get("PhotometricInterpretation", "")) == "MONOCHROME1",
        )

    # -- what the page needs ---------------------------------------------------------------------------------
    @property
    def n_slices(self) -> int:
        """Number of slices (1 for a radiograph)."""
        return int(self.pixels.shape[0])

    @property
    def presets(self) -> tuple[WindowPreset, ...]:
        """The presets for this modality, the default first."""
        return presets_for(self.modality)

    def structure(self, name: str) -> StructureView | None:
        """The structure called ``name``, if the SEG has it."""
        return next((s for s in self.structures if s.name == name), None)

    # -- rendering -------------------------------------------------------------------------------------------
    def check(self, k: int, preset: str) -> WindowPreset:
        """The preset named ``preset`` after checking it and ``k``; :class:`SliceError` names what is allowed."""
        if not 0 <= k < self.n_slices:
            raise SliceError(f"slice {k} does not exist: this case has slices 0 to {self.n_slices - 1}")
        allowed = {p.name: p for p in self.presets}
        if preset not in allowed:
            raise SliceError(f"preset {preset!r} is not offered for {self.modality}; use one of {', '.join(allowed)}")
        return allowed[preset]

    def rgb(self, k: int, *, preset: str, overlay: bool, heatmap: bool) -> np.ndarray:
        """Slice ``k`` as a ``(height, width, 3)`` uint8 image at display size."""
        window = self.check(k, preset)
        if window.center is None or window.width is None:
            lo, hi = self.full_range
        else:
            lo, hi = window.center - window.width / 2, window.center + window.width / 2
        grey = np.clip((self.pixels[k] - lo) / (hi - lo), 0.0, 1.0)
        if self.invert:
            grey = 1.0 - grey
        size = self.size
        grey_img = Image.fromarray((grey * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
        out = np.repeat(np.asarray(grey_img, dtype=np.float32)[..., None], 3, axis=2)
        if heatmap and self.entropy is not None:
            share = np.clip(self.entropy[k].astype(np.float32) / self.max_entropy, 0.0, 1.0)
            share_img = np.asarray(
                Image.fromarray(share.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
            )
            alpha = np.where(share_img < HEAT_FLOOR, 0.0, np.clip(share_img * 2.5, 0.0, 1.0) * HEAT_ALPHA)[..., None]
            colour = _HEAT_LUT[np.clip((share_img * 255).astype(np.int32), 0, 255)].astype(np.float32)
            out = (out * (1.0 - alpha) + colour * alpha).astype(np.float32)
        if overlay:
            labels = np.asarray(Image.fromarray(self.labels[k]).resize(size, Image.Resampling.NEAREST))
            if labels.any():
                colour = self.colors[labels].astype(np.float32)
                inside = (labels > 0)[..., None]
                out = np.where(inside, out * (1.0 - FILL_ALPHA) + colour * FILL_ALPHA, out)
                edge = _outline(labels)
                out[edge] = colour[edge]
        return np.clip(out, 0, 255).astype(np.uint8)

    def png(self, k: int, *, preset: str, overlay: bool, heatmap: bool) -> bytes:
        """Slice ``k`` encoded as PNG (fast compression: the images are cached and sent on loopback/LAN)."""
        buffer = io.BytesIO()
        image = Image.fromarray(self.rgb(k, preset=preset, overlay=overlay, heatmap=heatmap), mode="RGB")
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


class SliceCache:
    """Decoded cases and rendered PNGs, least recently used dropped first; safe to share between threads.

    Parameters
    ----------
    max_cases
        cases kept decoded (a 200-slice 512×512 CT holds about 350 MB with labels and entropy).
    max_pngs
        rendered slices kept (about 100–300 kB each at 512×512).
    """

    def __init__(self, max_cases: int = 3, max_pngs: int = 1024):
        if max_cases < 1 or max_pngs < 1:
            raise ValueError(f"max_cases ({max_cases}) and max_pngs ({max_pngs}) must be 1 or more")
        self.max_cases = max_cases
        self.max_pngs = max_pngs
        self._cases: OrderedDict[Hashable, CaseImages] = OrderedDict()
        self._pngs: OrderedDict[tuple[Hashable, int, str, bool, bool], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def images(self, key: Hashable, load: Callable[[], CaseImages]) -> CaseImages:
        """The case under ``key``, loaded with ``load()`` the first time (once, even when asked concurrently)."""
        with self._lock:
            if key in self._cases:
                self._cases.move_to_end(key)
                return self._cases[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._cases:
                    return self._cases[key]
            images = load()
            with self._lock:
                self._cases[key] = images
                self._loading.pop(key, None)
                while len(self._cases) > self.max_cases:
                    old, _ = self._cases.popitem(last=False)
                    for png_key in [p for p in self._pngs if p[0] == old]:
                        del self._pngs[png_key]
            return images

    def png(
        self, key: Hashable, load: Callable[[], CaseImages], k: int, *, preset: str, overlay: bool, heatmap: bool
    ) -> bytes:
        """Slice ``k`` of the case under ``key`` as PNG, rendered the first time it is asked for."""
        png_key = (key, k, preset, overlay, heatmap)
        with self._lock:
            if png_key in self._pngs:
                self._pngs.move_to_end(png_key)
                return self._pngs[png_key]
        data = self.images(key, load).png(k, preset=preset, overlay=overlay, heatmap=heatmap)
        with self._lock:
            self._pngs[png_key] = data
            while len(self._pngs) > self.max_pngs:
                self._pngs.popitem(last=False)
        return data

    def has(self, key: Hashable) -> bool:
        """Whether the case under ``key`` is decoded (or being decoded)."""
        with self._lock:
            return key in self._cases or key in self._loading

    def forget(self, key: Hashable) -> None:
        """Drop a case and its slices (its outputs changed)."""
        with self._lock:
            self._cases.pop(key, None)
            for png_key in [p for p in self._pngs if p[0] == key]:
                del self._pngs[png_key]
