"""From an NM dataset to the network's input tensor.

The studies behind ``nm_thyroid_dx`` (Zhao et al. 2023) trained on one anterior static planar
image per patient. A PACS sends what the camera wrote: one frame, several detector heads in one
multi-frame object (anterior + posterior, obliques), or a dynamic series. :func:`select_frame`
picks the image closest to what the model was trained on, and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from model_zoo.errors import InputRejected

MIN_MATRIX: Final[int] = 32
ANTERIOR_CODES: Final[frozenset[str]] = frozenset({"399321004"})  # SCT "Anterior projection"
NORMALISATION: Final[str] = (
    "rescale slope/intercept applied; counts divided by the frame's 99.5th percentile and "
    "clipped to [0, 1]; bilinear antialiased resize to size x size"
)


@dataclass(frozen=True)
class Prepared:
    """A dataset made ready for the network.

    Attributes
    ----------
    tensor : torch.Tensor
        ``(1, 1, size, size)`` float32 in [0, 1].
    frame_index : int or None
        0-based source frame; ``None`` when all frames were summed (DYNAMIC).
    frame_choice : str
        Why that frame.
    shape : tuple of int
        ``(rows, cols)`` of the source frame.
    """

    tensor: torch.Tensor
    frame_index: int | None
    frame_choice: str
    shape: tuple[int, int]


def _n_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _is_dynamic(ds: Dataset) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return len(image_type) > 2 and image_type[2] == "DYNAMIC"


def _frame_is_anterior(ds: Dataset, frame: int) -> bool | None:
    """True/False when the header tells this frame's view, None when it does not."""
    vector = ds.get("DetectorVector")
    detectors = ds.get("DetectorInformationSequence")
    if vector is None or not detectors:
        return None
    values = list(vector) if not isinstance(vector, int) else [vector]
    if frame >= len(values):
        return None
    det = int(values[frame]) - 1
    if not 0 <= det < len(detectors):
        return None
    views = detectors[det].get("ViewCodeSequence")
    if not views:
        return None
    code = views[0]
    value = str(code.get("CodeValue", ""))
    meaning = str(code.get("CodeMeaning", "")).strip().lower()
    return value in ANTERIOR_CODES or meaning in {"anterior", "anterior projection"}


def _frame_sums(ds: Dataset) -> np.ndarray:
    pixels = _pixels(ds)
    if pixels.ndim == 2:
        pixels = pixels[None]
    sums: np.ndarray = pixels.reshape(pixels.shape[0], -1).sum(axis=1, dtype=np.float64)
    return sums


def select_frame(ds: Dataset) -> tuple[int | None, str]:
    """Choose the frame the model should see.

    Rules, in order:

    1. one frame: frame 0;
    2. DYNAMIC (``ImageType`` value 3): ``None``, meaning all frames summed into one static
       image (a dynamic acquisition split over time is still one view);
    3. a frame whose detector's ``ViewCodeSequence`` says ANTERIOR (``DetectorVector`` ->
       ``DetectorInformationSequence``), the one with most counts if several;
    4. otherwise the frame with the most counts (the anterior view of the thyroid, which lies
       just under the skin, collects more counts than the attenuated posterior one).

    The papers trained on one anterior static planar image; rules 3-4 keep to that.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset

    Returns
    -------
    tuple
        ``(index0 or None, reason)``.
    """
    n = _n_frames(ds)
    if n == 1:
        return 0, "single frame"
    if _is_dynamic(ds):
        return None, f"dynamic image: all {n} frames summed"
    views = [_frame_is_anterior(ds, i) for i in range(n)]
    anterior = [i for i, v in enumerate(views) if v]
    if len(anterior) == 1:
        return anterior[0], f"frame {anterior[0] + 1} of {n}: anterior view (ViewCodeSequence)"
    sums = _frame_sums(ds)
    if len(anterior) > 1:
        best = max(anterior, key=lambda i: sums[i])
        return best, f"frame {best + 1} of {n}: anterior view with the most counts"
    best = int(np.argmax(sums))
    return best, f"frame {best + 1} of {n}: most counts (view not stated)"


def _pixels(ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputRejected("no pixel data")
    try:
        pixels: np.ndarray = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises several types for undecodable pixel data
        raise InputRejected(f"pixel data cannot be decoded: {type(exc).__name__}: {exc}") from exc
    return pixels


def _check_header(ds: Dataset) -> None:
    modality = str(ds.get("Modality", "")).upper()
    if modality != "NM":
        raise InputRejected(f"modality {modality or 'missing'} is not NM")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputRejected("no pixel data")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputRejected("not a single-channel image (SamplesPerPixel != 1)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if min(rows, cols) < MIN_MATRIX:
        raise InputRejected(f"matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}")


def normalise(image: np.ndarray, size: int) -> torch.Tensor:
    """Counts ``(rows, cols)`` -> ``(1, 1, size, size)`` float32 in [0, 1].

    Shared by training and serving so both see the same scaling.
    """
    img = np.asarray(image, dtype=np.float32)
    if not np.isfinite(img).all():
        raise InputRejected("image holds non-finite values")
    img = np.clip(img, 0.0, None)
    peak = float(img.max())
    if peak <= 0.0:
        raise InputRejected("image is all zero")
    scale = float(np.percentile(img, 99.5))
    if scale <= 0.0:  # very sparse image: fall back to the maximum
        scale = peak
    t = torch.from_numpy(np.clip(img / scale, 0.0, 1.0))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp_(0.0, 1.0).contiguous()


def prepare(ds: Dataset, size: int) -> Prepared:
    """Validate, choose the frame, rescale and normalise.

    Raises
    ------
    InputRejected
        Not NM, no pixel data, matrix under 32, multi-channel, undecodable or all-zero pixels.
    """
    _check_header(ds)
    index, reason = select_frame(ds)
    pixels = _pixels(ds).astype(np.float64)
    if pixels.ndim == 3 and _n_frames(ds) == 1:
        pixels = pixels[0]
    frame = pixels.sum(axis=0) if index is None else (pixels[index] if pixels.ndim == 3 else pixels)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    frame = frame * slope + intercept
    tensor = normalise(frame, size)
    return Prepared(tensor=tensor, frame_index=index, frame_choice=reason, shape=(frame.shape[0], frame.shape[1]))


def to_input(ds: Dataset, size: int) -> torch.Tensor:
    """``(1, 1, size, size)`` float32 input for the network; see :func:`prepare`."""
    return prepare(ds, size).tensor
