"""B-mode input for the US models: the tissue region(s) of one US image, as grey in [0, 1].

What the models see is only the B-mode (2D tissue) region of the frame: never the burned-in text,
the depth scale, the grey or colour bars, or a spectral Doppler strip beside it.

* Decoding uses pydicom's pixel handlers (pylibjpeg, libjpeg, openjpeg, pyjpegls), with pydicom 3's
  default colour handling: YBR_FULL / YBR_FULL_422 come back as RGB, and the JPEG 2000 decoders
  undo YBR_RCT / YBR_ICT. Colour becomes grey by ITU-R BT.601 luminance; MONOCHROME1 is inverted;
  PALETTE COLOR goes through its lookup table first.
* Multi-frame (cine) instances: only the middle frame (1-based ``n // 2 + 1``) is decoded and used.
* Regions come from the Sequence of Ultrasound Regions (0018,6011): every region with Region
  Spatial Format 1 (2D) and Region Data Type 1 (tissue), largest first; colour flow, spectral
  Doppler, M-mode and waveform regions are ignored. RegionLocationMax is inclusive in DICOM; the
  returned region is end exclusive and clipped to the frame. Pixel spacing is PhysicalDeltaY (rows)
  and PhysicalDeltaX (columns) when both physical units are cm (3), converted to mm; other units
  leave the image uncalibrated (spacing None).
* Coloured pixels inside a tissue region (a colour-flow box drawn over the B-mode image) are
  replaced by the local mean of the surrounding grey pixels, so no colour leaks into the grey.
* Without a Sequence of Ultrasound Regions the image area is found automatically: pixels brighter
  than a small threshold, closed, the largest connected component's bounding box (text glyphs and
  bars are small and separated by black). Spacing is None, sizes are in pixels. Text or a bar
  *touching* the image area would be included in that box: such images need calibrated regions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, pixel_array
from scipy import ndimage

from model_zoo.errors import InputRejected
from model_zoo.phantoms.us import feret_axes  # re-exported: the pipeline measures nodules with it

__all__ = ["MIN_REGION_PX", "BMode", "bmode_images", "feret_axes"]

logger = logging.getLogger(__name__)

MIN_REGION_PX: Final[int] = 64
_TISSUE: Final[int] = 1
_COLOUR_FLOW: Final[int] = 2
_DATA_TYPES: Final[dict[int, str]] = {
    0: "no data type", 1: "tissue", 2: "colour flow", 3: "PW spectral Doppler", 4: "CW spectral Doppler",
    5: "Doppler mean trace", 6: "Doppler mode trace", 7: "Doppler max trace", 8: "volume trace",
    10: "ECG trace", 11: "pulse trace", 12: "phonocardiogram", 13: "grey bar", 14: "colour bar",
    15: "integrated backscatter", 16: "area trace", 17: "d(area)/dt", 18: "other physiological input",
}
_SPATIAL_FORMATS: Final[dict[int, str]] = {0: "none", 1: "2D", 2: "M-mode", 3: "spectral", 4: "waveform",
                                           5: "graphics"}
_CM: Final[int] = 3
_CHROMA: Final[float] = 24.0 / 255.0  # max - min of R, G, B above this: a coloured pixel
_DARK: Final[float] = 12.0 / 255.0  # "black" background for the automatic image area
_NO_SIGNAL: Final[float] = 2.0 / 255.0


@dataclass(frozen=True)
class BMode:
    """One B-mode region of one frame, ready for the US models."""

    pixels: np.ndarray  # float32 (h, w) grey in [0, 1], the B-mode region ONLY
    region: tuple[int, int, int, int]  # (row0, col0, row1, col1) in the frame, end exclusive
    spacing_mm: tuple[float, float] | None  # (row, col) mm per pixel; None: uncalibrated
    frame_number: int | None  # 1-based for multi-frame sources, None for single-frame
    rows: int  # the full frame size
    columns: int
    choice: str  # human-readable: which region/frame and why


def _frame(ds: pydicom.Dataset) -> tuple[np.ndarray, int | None, str]:
    """Decode the frame to analyse, its 1-based number (multi-frame) and a note.

    The frame is float32 ``(rows, cols, k)`` in [0, 1]: R, G, B and luminance (``k`` = 4) for colour
    sources, grey alone (``k`` = 1) for monochrome ones; the grey is always the last channel.
    """
    if "PixelData" not in ds:
        raise InputRejected("the instance has no pixel data")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = n_frames // 2 if n_frames > 1 else None
    try:
        arr = pixel_array(ds, index=index)
    except Exception as exc:  # pydicom raises many types for unsupported or corrupt pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise InputRejected(f"the pixel data could not be decoded (transfer syntax {syntax}): "
                            f"{type(exc).__name__}: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise InputRejected(f"the palette colour lookup table could not be applied: {exc}") from exc
        top = float(max(int(arr.max()), 1))
        bits = 16 if top > 255 else 8
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        rgb = arr.astype(np.float32) / float(2**bits - 1)
    elif arr.ndim == 2:
        rgb = None
        grey = arr.astype(np.float32)
        if int(ds.get("PixelRepresentation", 0)) == 1:
            grey = grey + float(2 ** (bits - 1))
        grey /= float(2**bits - 1)
        if photometric == "MONOCHROME1":
            grey = 1.0 - grey
    else:
        raise InputRejected(f"unexpected decoded frame shape {arr.shape} (photometric {photometric or 'missing'})")
    if rgb is not None:
        luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        luma = np.where(rgb.max(axis=2) == rgb.min(axis=2), rgb[..., 0], luma)  # grey stays exactly grey
        frame = np.concatenate([rgb, luma[..., None]], axis=2)
    else:
        frame = grey[..., None]
    note = f"frame {index + 1} of {n_frames} (the middle frame of the cine loop)" if index is not None else ""
    return np.clip(frame, 0.0, 1.0), (index + 1 if index is not None else None), note


def _spacing(item: pydicom.Dataset) -> tuple[float, float] | None:
    ux, uy = item.get("PhysicalUnitsXDirection"), item.get("PhysicalUnitsYDirection")
    dx, dy = item.get("PhysicalDeltaX"), item.get("PhysicalDeltaY")
    if ux != _CM or uy != _CM or dx is None or dy is None:
        return None
    dx_mm, dy_mm = abs(float(dx)) * 10.0, abs(float(dy)) * 10.0
    if not (np.isfinite(dx_mm) and np.isfinite(dy_mm)) or dx_mm <= 0 or dy_mm <= 0:
        return None
    return dy_mm, dx_mm


def _box(item: pydicom.Dataset, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """The region's box, end exclusive (DICOM's maxima are inclusive), clipped to the frame."""
    try:
        x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
        x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
    except (AttributeError, TypeError, ValueError):
        return None
    r0, c0 = max(y0, 0), max(x0, 0)
    r1, c1 = min(y1 + 1, rows), min(x1 + 1, cols)
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, c0, r1, c1


def _describe(item: pydicom.Dataset) -> str:
    fmt = int(item.get("RegionSpatialFormat", 0) or 0)
    kind = int(item.get("RegionDataType", 0) or 0)
    return f"{_DATA_TYPES.get(kind, f'data type {kind}')} ({_SPATIAL_FORMATS.get(fmt, f'format {fmt}')})"


def _grey_without_colour(frame: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
    """The region's grey, coloured pixels replaced by the local mean of the grey pixels around them."""
    r0, c0, r1, c1 = box
    sub = frame[r0:r1, c0:c1]
    grey = np.ascontiguousarray(sub[..., -1])
    if sub.shape[-1] == 1:
        return grey, 0
    rgb = sub[..., :3]
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > _CHROMA
    count = int(coloured.sum())
    if count == 0:
        return grey, 0
    valid = (~coloured).astype(np.float32)
    sigma = 6.0
    for _ in range(4):  # widen until every coloured pixel has grey neighbours
        weight = ndimage.gaussian_filter(valid, sigma)
        if float(weight[coloured].min()) > 1e-3:
            break
        sigma *= 2.0
    local = ndimage.gaussian_filter(grey * valid, sigma) / np.maximum(weight, 1e-6)
    out = np.where(coloured, local, grey).astype(np.float32)
    return out, count


def _auto_area(frame: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box of the largest non-dark connected area (the image without its text)."""
    grey = frame[..., -1]
    bright = ndimage.binary_closing(grey > _DARK, structure=np.ones((5, 5), bool))
    labels, count = ndimage.label(bright)
    if count == 0:
        raise InputRejected("the frame has no signal (no non-dark pixels)")
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    rs, cs = ndimage.find_objects(labels)[largest - 1]  # type: ignore[misc]
    return int(rs.start), int(cs.start), int(rs.stop), int(cs.stop)


def bmode_images(ds: pydicom.Dataset) -> list[BMode]:
    """The B-mode region(s) of a US image, as grey in [0, 1], largest region first.

    Parameters
    ----------
    ds : pydicom.Dataset
        A US Image or US Multi-frame Image (with pixel data).

    Returns
    -------
    list of BMode
        One per 2D tissue region (one when the image area is found automatically).

    Raises
    ------
    model_zoo.errors.InputRejected
        Not an ultrasound image, no pixel data, undecodable pixel data, no 2D tissue region, regions
        smaller than 64 x 64 pixels, or a region without signal.
    """
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality != "US":
        raise InputRejected(f"not an ultrasound image (Modality {modality or 'missing'})")
    frame, frame_number, frame_note = _frame(ds)
    rows, cols = frame.shape[:2]
    regions = ds.get("SequenceOfUltrasoundRegions")
    found: list[tuple[tuple[int, int, int, int], tuple[float, float] | None, str]] = []
    if regions:
        tissue = [it for it in regions
                  if it.get("RegionSpatialFormat") == 1 and it.get("RegionDataType") == _TISSUE]
        tissue_ids = {id(it) for it in tissue}
        ignored = sorted({_describe(it) for it in regions if id(it) not in tissue_ids})
        if not tissue:
            raise InputRejected("no 2D tissue (B-mode) region in the Sequence of Ultrasound Regions; found: "
                                + ", ".join(_describe(it) for it in regions))
        boxes = [(b, _spacing(it)) for it in tissue if (b := _box(it, rows, cols)) is not None]
        small = [b for b, _ in boxes if b[2] - b[0] < MIN_REGION_PX or b[3] - b[1] < MIN_REGION_PX]
        boxes = [(b, s) for b, s in boxes if b not in small]
        if not boxes:
            raise InputRejected(f"no B-mode region of at least {MIN_REGION_PX}x{MIN_REGION_PX} pixels "
                                f"({len(tissue)} tissue region(s), {len(small)} too small or outside the frame)")
        boxes.sort(key=lambda bs: -(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]))
        for k, (box, spacing) in enumerate(boxes, start=1):
            what = f"B-mode region {k} of {len(boxes)} from the Sequence of Ultrasound Regions (2D tissue)"
            if spacing is None:
                what += ", physical units not cm: uncalibrated, sizes in pixels"
            else:
                what += f", {spacing[0]:.4g} x {spacing[1]:.4g} mm per pixel"
            if ignored:
                what += "; ignored: " + ", ".join(ignored)
            found.append((box, spacing, what))
    else:
        box = _auto_area(frame)
        if box[2] - box[0] < MIN_REGION_PX or box[3] - box[1] < MIN_REGION_PX:
            raise InputRejected(f"no calibrated ultrasound region, and the image area found automatically "
                                f"({box[2] - box[0]}x{box[3] - box[1]} px) is smaller than "
                                f"{MIN_REGION_PX}x{MIN_REGION_PX}")
        found.append((box, None, "no calibrated ultrasound region: image area found automatically, sizes in pixels"))
    out: list[BMode] = []
    for box, spacing, what in found:
        grey, coloured = _grey_without_colour(frame, box)
        if float(grey.max() - grey.min()) <= _NO_SIGNAL:
            logger.info("US B-mode region %s holds no signal; skipped", box)
            continue
        if coloured:
            what += f"; {coloured} coloured (colour-flow) pixels replaced by the local grey mean"
        if frame_note:
            what += f"; {frame_note}"
        out.append(BMode(pixels=grey, region=box, spacing_mm=spacing, frame_number=frame_number,
                         rows=rows, columns=cols, choice=what))
        logger.debug("US B-mode region %s chosen: %s", box, what)
    if not out:
        raise InputRejected("the B-mode region(s) hold no signal (a blank frame)")
    return out
