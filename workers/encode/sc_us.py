"""One Grad-CAM Secondary Capture per thyroid nodule on ultrasound.

The picture (see :mod:`workers.encode.heatmap_render`) is the nodule's source frame in grey
(an RGB or YBR frame through its luma: the B-mode image is grey, the scanner's colour
annotations are not the point here), upscaled to 512 pixels on its long side, the malignancy
model's Grad-CAM (``USNodule.heatmap``, box-shaped, placed at ``USNodule.box``) blended in
colour, the nodule's outline in magenta and a legend: nodule number, long and short axis and
area with their unit (pixels, and why, for an uncalibrated image), where the outline came
from, the probability of malignancy and of large-volume lymph node metastasis with the yes/no
decisions at the cards' thresholds, the backbones averaged, every model's name and version,
and for demo models "DEMO - not for clinical use" in red above the image and below the legend.

DICOM choices
-------------
As :mod:`workers.encode.sc` (the same builder writes the dataset): RGB Secondary Capture,
Explicit VR Little Endian, Conversion Type WSD, same patient and study as the source, Source
Image Sequence naming the source instance and, for a multi-frame clip, the Referenced Frame
Number, Burned In Annotation NO, every time stamp from ``content_datetime``.  Specific to US:

* Series Number :data:`SC_SERIES_NUMBER` (9902), Series Description "AI thyroid US nodule
  Grad-CAM" (DEMO prefix for demo models), Instance Number the nodule index.  Series/SOP
  Instance UIDs derive from the study, every image analysed, the models and (SOP Instance UID
  only) the nodule index: all nodules of a study share one series; a re-run replaces.
* Patient Orientation: the source's when it has a usable one; B-mode images usually have none,
  and the SC's is then left empty (Type 2) without a warning, as that is normal for US.
* The SC is a picture of the malignancy model's Grad-CAM: a nodule without a malignancy
  probability or with no box-shaped heatmap gets no SC (ValueError).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import Final

import highdicom as hd
import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, pixel_array

from workers.encode.common import DEFAULT_MANUFACTURER, number_of_frames
from workers.encode.heatmap_render import LegendRow, LegendText, blend, compose, window_to_uint8
from workers.encode.sc import SC_SERIES_NUMBER, secondary_capture
from workers.encode.seg_us import (
    OUTLINE_SITE,
    check_nodules,
    image_source,
    referenced_frame,
    us_model,
)
from workers.encode.uids import ObjectKind, output_uids
from workers.pipelines.results import USNodule, USResults

logger = logging.getLogger(__name__)

SC_US_SERIES_BASE: Final[str] = "AI thyroid US nodule Grad-CAM"
_BIPED: Final[frozenset[str]] = frozenset("APRLHF")
_LUMA: Final[tuple[float, float, float]] = (0.299, 0.587, 0.114)  # ITU-R BT.601


def source_frame_grey(source: pydicom.Dataset, frame_number: int | None) -> np.ndarray:
    """One source frame as grey uint8 (rows, columns); decodes that frame only.

    MONOCHROME1 is inverted, PALETTE COLOR mapped through its LUT, RGB (and YBR, which pydicom
    converts to RGB) reduced to luma; images of more than 8 bits are windowed from their
    minimum to the 99.5th percentile.
    """
    frame = pixel_array(source, index=(frame_number or 1) - 1)
    interpretation = str(source.get("PhotometricInterpretation", "MONOCHROME2"))
    if interpretation == "PALETTE COLOR":
        frame = apply_color_lut(frame, source)
    if frame.ndim == 3:  # (rows, columns, samples)
        frame = frame[..., :3].astype(np.float64) @ np.asarray(_LUMA)
    frame = frame.astype(np.float64)
    bits = int(source.get("BitsStored", 8))
    if interpretation == "MONOCHROME1":
        frame = float(2**bits - 1) - frame
    window = (127.5, 255.0) if bits <= 8 else None  # 8 bit: already display values
    return window_to_uint8(frame, window)


def _orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, col = str(value[0]), str(value[1])
    if not row or not col or not set(row + col) <= _BIPED:
        return None
    return row, col


def _legend(nodule: USNodule, results: USResults, frames: int) -> LegendText:
    mal, lvl, seg = results.malignancy_model, results.lvlnm_model, results.segmentation_model
    assert mal is not None and nodule.malignancy is not None  # checked by the caller
    p_mal = float(np.clip(nodule.malignancy, 0.0, 1.0))
    malignant = p_mal >= nodule.malignancy_threshold
    rows = [LegendRow("P(malignant)", p_mal, malignant)]
    prediction = (
        f"Malignant: {'YES' if malignant else 'NO'} (p = {p_mal * 100:.1f}% "
        f"{'>=' if malignant else '<'} threshold {nodule.malignancy_threshold * 100:.0f}%)"
    )
    if nodule.lvlnm is not None and lvl is not None:
        p_lvl = float(np.clip(nodule.lvlnm, 0.0, 1.0))
        positive = p_lvl >= nodule.lvlnm_threshold
        rows.append(LegendRow("P(LVLNM, > 5 nodes)", p_lvl, positive))
        prediction += (
            f"; LVLNM: {'YES' if positive else 'NO'} (p = {p_lvl * 100:.1f}% "
            f"{'>=' if positive else '<'} threshold {nodule.lvlnm_threshold * 100:.0f}%)"
        )
    if nodule.calibrated:
        sizes = (
            f"long axis {nodule.long_axis:.1f} mm, short axis {nodule.short_axis:.1f} mm, "
            f"area {nodule.area:.1f} mm2"
        )
    else:
        sizes = (
            f"long axis {nodule.long_axis:.0f} px, short axis {nodule.short_axis:.0f} px, "
            f"area {nodule.area:.0f} px2 (sizes in pixels: no calibrated ultrasound region)"
        )
    outline = (
        "the site's SEG"
        if nodule.outline_source == OUTLINE_SITE
        else f"segmentation {seg.name}, version {seg.version}"
    )
    details = [f"Nodule {nodule.index}: {sizes}", f"Magenta outline: {outline}"]
    if nodule.malignancy_backbones:
        details.append(f"Malignancy: {', '.join(nodule.malignancy_backbones)} averaged")
    if lvl is not None and nodule.lvlnm is not None:
        details.append(f"LVLNM: {lvl.name}, version {lvl.version}")
    frame = nodule.image.source.frame_number or 1
    where = f"Frame {frame} of {frames}" if frames > 1 else "Single frame"
    return LegendText(
        title=mal.title,
        model_line=f"Model {mal.name}, version {mal.version}",
        rows=tuple(rows),
        source_line=f"{where}, B-mode. AI output, not verified by a physician.",
        disclaimer=us_model(results).disclaimer,
        details=tuple(details),
        prediction=prediction,
    )


def encode_nodule_sc(
    nodule: USNodule,
    results: USResults,
    sources: Sequence[pydicom.Dataset],
    *,
    content_datetime: datetime.datetime,
    software_version: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> hd.sc.SCImage:
    """Render one nodule's Grad-CAM over its source frame as a Secondary Capture.

    Parameters
    ----------
    nodule : USNodule
        One of ``results.nodules``, with a malignancy probability and a box-shaped heatmap.
    results : USResults
        The study's results (models, images).
    sources : Sequence[pydicom.Dataset]
        The study's datasets; the nodule's source needs pixel data (only its frame is decoded).
    content_datetime : datetime.datetime
        Content Date/Time (and every other time stamp).
    software_version : str
        Version of the node's software.
    manufacturer : str, optional
        Manufacturer of the node.

    Returns
    -------
    highdicom.sc.SCImage
        RGB secondary capture in the source study, series :data:`SC_SERIES_NUMBER`, Instance
        Number the nodule index.

    Raises
    ------
    ValueError
        If the nodule is not among the results, has no malignancy probability or model, its
        heatmap is not box-shaped or not finite, or its source is missing or does not match.
    """
    check_nodules(results)
    if nodule.index > len(results.nodules) or results.nodules[nodule.index - 1] != nodule:
        raise ValueError(f"nodule {nodule.index} is not among the results' nodules")
    if nodule.malignancy is None or results.malignancy_model is None:
        raise ValueError(f"nodule {nodule.index}: no malignancy score, so no Grad-CAM to show")
    r0, c0, r1, c1 = nodule.box
    heatmap = np.asarray(nodule.heatmap, dtype=np.float32)
    if heatmap.shape != (r1 - r0, c1 - c0):
        raise ValueError(
            f"nodule {nodule.index}: heatmap shape {heatmap.shape} differs from its box's "
            f"{(r1 - r0, c1 - c0)}"
        )
    if not np.all(np.isfinite(heatmap)):
        raise ValueError(f"nodule {nodule.index}: heatmap holds NaN or infinite values")
    image = nodule.image
    source = image_source(image, sources)
    grey = source_frame_grey(source, image.source.frame_number)
    heat = np.zeros(grey.shape, dtype=np.float32)
    heat[r0:r1, c0:c1] = np.clip(heatmap, 0.0, 1.0)
    outline = np.zeros(grey.shape, dtype=bool)
    outline[r0:r1, c0:c1] = nodule.mask.astype(bool)
    pixels = compose(
        blend(grey, heat, outline=outline),
        _legend(nodule, results, number_of_frames(source)),
    )
    model = us_model(results)
    uids = output_uids(
        ObjectKind.SC,
        results.study_instance_uid,
        [i.source.sop_instance_uid for i in results.images],
        model.name,
        model.version,
        instance_key=f"nodule={nodule.index}",
    )
    orientation = _orientation(source)
    models = [results.segmentation_model, results.malignancy_model]
    if results.lvlnm_model is not None:
        models.append(results.lvlnm_model)
    sc = secondary_capture(
        source,
        pixels,
        uids=uids,
        models=models,
        description_model=model,
        series_base=SC_US_SERIES_BASE,
        series_number=SC_SERIES_NUMBER,
        instance_number=nodule.index,
        # a placeholder when the source has none (normal for US), emptied below without the
        # builder's warning
        orientation=orientation or ("A", "F"),
        ref_frame=referenced_frame(image, source),
        derivation=(
            f"Grad-CAM of {results.malignancy_model.name} {results.malignancy_model.version} "
            f"for nodule {nodule.index}, blended over its source frame"
        ),
        content_datetime=content_datetime,
        manufacturer=manufacturer,
        software_version=software_version,
    )
    if orientation is None:
        sc.PatientOrientation = []  # Type 2: present, empty
    logger.info(
        "encoded nodule SC %dx%d for nodule %d, models %s",
        sc.Columns,
        sc.Rows,
        nodule.index,
        model.name,
    )
    return sc
