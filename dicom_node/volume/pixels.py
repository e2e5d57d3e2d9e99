"""Pixel data: the sample checks, decoding of (compressed) frames and the Modality LUT."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from dicom_node.volume.model import Plane, VolumeError
from dicom_node.volume.values import uid_of

# --- pixels -------------------------------------------------------------------------------------------


def check_samples(ds: Dataset, uid: str) -> None:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise VolumeError(
            f"{uid}: SamplesPerPixel is {samples} (PhotometricInterpretation "
            f"{ds.get('PhotometricInterpretation', '')}); only single-sample greyscale images make a volume"
        )


def decode_pixels(ds: Dataset, frames: int, rows: int, columns: int) -> np.ndarray:
    """Stored values of every frame, ``(frames, rows, columns)``; any failure names the instance."""
    uid = uid_of(ds)
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if not value:
        raise VolumeError(f"{uid}: no TransferSyntaxUID in the file meta; it is needed to decode the pixels")
    syntax = UID(str(value))
    if "PixelData" not in ds:
        raise VolumeError(f"{uid}: no PixelData (transfer syntax {syntax.name} {syntax})")
    try:
        decoder = get_decoder(syntax)
        array, _ = decoder.as_array(ds)
    except Exception as exc:  # every decoder failure becomes a VolumeError naming the instance
        raise VolumeError(
            f"{uid}: cannot decode the pixel data (transfer syntax {syntax.name} {syntax}): {exc}"
        ) from exc
    if array.size != frames * rows * columns:
        raise VolumeError(
            f"{uid}: decoded pixel data of shape {array.shape} (transfer syntax {syntax.name} {syntax}); "
            f"expected {frames} frame(s) of {rows} x {columns}"
        )
    return array.reshape(frames, rows, columns)


def modality_lut(stored: np.ndarray, ds: Dataset | None, plane: Plane) -> np.ndarray:
    """Stored values -> float32 modality values (RescaleSlope/Intercept, or a Modality LUT Sequence)."""
    if ds is not None and "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    values = stored.astype(np.float64) * plane.slope + plane.intercept
    return values.astype(np.float32)
