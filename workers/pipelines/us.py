"""US pipeline: thyroid ultrasound -> nodules outlined, measured and scored (seeds 004 and 002).

``run`` is plain Python (no Celery, no network): source datasets and loaded models in,
:class:`USResults` out. ``process`` adds the DICOM encoding: a SEG of the nodules over their
source images (frames), a TID 1500 SR with one measurement group per nodule, and one heatmap
Secondary Capture per nodule.

Steps, per ultrasound image (a cine clip's middle frame):

1. the B-mode region from the Sequence of Ultrasound Regions (:func:`model_zoo.us_image.bmode_images`):
   only its pixels are model input, never the burned-in text or a colour-flow box; its physical
   spacing makes sizes mm (without calibrated regions they are pixels, and the SR says so);
2. the nodules: the site's outline when the study holds a SEG referencing the image
   (:mod:`workers.pipelines.site_roi`), else the node's segmentation model (``us_nodule_seg``);
3. per nodule the largest diameter and the largest width perpendicular to it, the malignancy
   probability of seed 004 (``us_calcified_nodule``, the configured backbones averaged) with its
   Grad-CAM, and the probability of large-volume node metastasis of seed 002 (``us_lvlnm``).

An image the models cannot use gets a "not analysable" row with the reason; it never stops the
study's other images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from pydicom import Dataset

from workers.pipelines.results import ModelInfo, NotAnalysable, SourceImage, USImageUsed, USNodule, USResults

log = logging.getLogger(__name__)

MODELS = ("us_nodule_seg", "us_calcified_nodule", "us_lvlnm")
COMPANION_MODALITIES = ("SEG",)  # a site's nodule outlines travel in SEG series of the same study
SOFTWARE_VERSION = "thyroid-ai-node 0.1.0"
US_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.6.1",  # US Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # US Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # retired US Image Storage
    "1.2.840.10008.5.1.4.1.1.3",  # retired US Multi-frame Image Storage
}


def _source(ds: Dataset, frame_number: int | None = None) -> SourceImage:
    return SourceImage(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        frame_number=frame_number,
    )


def _order(ds: Dataset) -> tuple[int, str, int, str]:
    series = ds.get("SeriesNumber")
    instance = ds.get("InstanceNumber")
    return (int(series) if series not in (None, "") else 0, str(ds.SeriesInstanceUID),
            int(instance) if instance not in (None, "") else 0, str(ds.SOPInstanceUID))


def _options(settings: Any) -> tuple[list[str], bool, int]:
    us = getattr(settings, "us", None)
    if us is None:
        return ["xception"], True, 64
    return list(us.malignancy_backbones), bool(us.run_lvlnm), int(us.max_images)


def measure(mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> tuple[float, float, float]:
    """Long axis, short axis and area of a nodule mask, in mm / mm² (pixels when ``spacing_mm`` is None)."""
    from model_zoo.us_image import feret_axes

    spacing = spacing_mm or (1.0, 1.0)
    long_axis, short_axis = feret_axes(mask, spacing)
    area = float(mask.sum()) * spacing[0] * spacing[1]
    return float(long_axis), float(short_axis), area


def _nodule_masks(bmode: Any, rois: list[Any], seg_model: Any) -> tuple[list[np.ndarray], str]:
    """The nodules of one B-mode region (region-shaped masks): the site's outlines first, else the model's."""
    r0, c0, r1, c1 = bmode.region
    if rois:
        masks = [roi.mask[r0:r1, c0:c1] for roi in rois]
        return [m for m in masks if m.any()], "site SEG"
    found = seg_model.segment(bmode.pixels, bmode.spacing_mm)
    return [n.mask for n in found], "model"


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _analyse_image(
    ds: Dataset, bmode: Any, rois: list[Any], models: dict[str, Any], backbones: list[str], run_lvlnm: bool,
) -> tuple[USImageUsed, list[dict[str, Any]]]:
    """One B-mode region: its nodules with sizes, probabilities and heatmaps (indices assigned later)."""
    seg_model = models["us_nodule_seg"].impl
    calcified = models["us_calcified_nodule"].impl
    lvlnm_model = models["us_lvlnm"].impl if run_lvlnm else None
    image = USImageUsed(
        source=_source(ds, bmode.frame_number), rows=bmode.rows, columns=bmode.columns, region=bmode.region,
        spacing_mm=bmode.spacing_mm, choice=bmode.choice,
    )
    masks, outline_source = _nodule_masks(bmode, rois, seg_model)
    r0, c0 = bmode.region[0], bmode.region[1]
    found: list[dict[str, Any]] = []
    for mask in sorted(masks, key=lambda m: -int(m.sum())):
        box = _box(mask)
        crop = np.ascontiguousarray(mask[box[0] : box[2], box[1] : box[3]])
        long_axis, short_axis, area = measure(crop, bmode.spacing_mm)
        rows, cols = np.nonzero(mask)
        malignancy = calcified.predict(bmode.pixels, mask, backbones)
        heat = np.zeros(mask.shape, np.float32)
        hb = malignancy.box
        heat[hb[0] : hb[2], hb[1] : hb[3]] = malignancy.heatmap
        lvlnm = lvlnm_model.predict(bmode.pixels, mask, bmode.spacing_mm) if lvlnm_model is not None else None
        found.append(dict(
            image=image,
            box=(box[0] + r0, box[1] + c0, box[2] + r0, box[3] + c0),
            mask=crop,
            outline_source=outline_source,
            long_axis=round(long_axis, 2),
            short_axis=round(short_axis, 2),
            calibrated=bmode.spacing_mm is not None,
            area=round(area, 2),
            centre_px=(float(rows.mean()) + r0, float(cols.mean()) + c0),
            malignancy=float(malignancy.probability),
            malignancy_threshold=float(calcified.threshold),
            malignancy_backbones=tuple(malignancy.backbones),
            lvlnm=float(lvlnm.probability) if lvlnm is not None else None,
            lvlnm_threshold=float(lvlnm_model.threshold) if lvlnm_model is not None else 0.5,
            heatmap=np.ascontiguousarray(heat[box[0] : box[2], box[1] : box[3]]),
        ))
    return image, found


def run(sources: Sequence[Dataset], models: dict[str, Any], settings: Any = None) -> USResults:
    """Analyse every ultrasound image of the study (up to ``settings.us.max_images``)."""
    from model_zoo.errors import InputRejected
    from model_zoo.us_image import bmode_images
    from workers.pipelines.site_roi import site_rois

    backbones, run_lvlnm, max_images = _options(settings)
    seg_info: ModelInfo = models["us_nodule_seg"].info
    mal_info: ModelInfo = models["us_calcified_nodule"].info
    lvl_info: ModelInfo | None = models["us_lvlnm"].info if run_lvlnm else None
    if not sources:
        raise InputRejected("no instances to analyse")
    study_uid = str(sources[0].StudyInstanceUID)
    rois = site_rois(sources)
    images = sorted((ds for ds in sources if str(ds.get("SOPClassUID", "")) in US_STORAGE
                     or (str(ds.get("Modality", "")) == "US" and "PixelData" in ds)), key=_order)
    rejected: list[NotAnalysable] = []
    if not images:
        first = sorted(sources, key=_order)[0]
        reason = "the study holds no ultrasound image"
        return USResults(study_uid, seg_info, mal_info, lvl_info, not_analysable=(NotAnalysable(_source(first), seg_info, reason),))
    for ds in images[max_images:]:
        rejected.append(NotAnalysable(_source(ds), seg_info, f"not analysed: over the limit of {max_images} images per study"))
    used: list[USImageUsed] = []
    pending: list[dict[str, Any]] = []
    for ds in images[:max_images]:
        try:
            regions = bmode_images(ds)
            for bmode in regions:
                image, found = _analyse_image(
                    ds, bmode, rois.get((str(ds.SOPInstanceUID), bmode.frame_number), []), models, backbones, run_lvlnm
                )
                used.append(image)
                pending.extend(found)
        except InputRejected as exc:
            log.info("US image not analysable: %s", exc.reason)
            rejected.append(NotAnalysable(_source(ds), seg_info, exc.reason))
    nodules = tuple(USNodule(index=i, **fields) for i, fields in enumerate(pending, start=1))
    for n in nodules:
        log.info("US nodule %d (%s outline): %.1f x %.1f %s, p(malignant)=%.3f%s", n.index, n.outline_source,
                 n.long_axis, n.short_axis, n.unit, n.malignancy or 0.0,
                 f", p(LVLNM)={n.lvlnm:.3f}" if n.lvlnm is not None else "")
    return USResults(study_uid, seg_info, mal_info, lvl_info, images=tuple(used), nodules=nodules,
                     not_analysable=tuple(rejected))


def process(
    sources: list[Dataset], models: dict[str, Any], content_datetime: datetime, settings: Any = None
) -> list[Dataset]:
    """Run the pipeline and encode: a SEG per image with nodules, the SR, one heatmap SC per nodule."""
    from workers.encode.sc_us import encode_nodule_sc
    from workers.encode.seg_us import encode_us_segs
    from workers.encode.sr_us import encode_us_sr

    results = run(sources, models, settings)
    # one SEG per image with nodules (highdicom cannot put several frames of images without a
    # frame of reference into one SEG), all in one series
    segs = encode_us_segs(results, sources, content_datetime=content_datetime, software_version=SOFTWARE_VERSION)
    objects: list[Dataset] = [*segs]
    objects.append(encode_us_sr(results, sources, segs, content_datetime=content_datetime, software_version=SOFTWARE_VERSION))
    for nodule in results.nodules:
        if nodule.malignancy is not None and nodule.heatmap.size:
            objects.append(
                encode_nodule_sc(nodule, results, sources, content_datetime=content_datetime, software_version=SOFTWARE_VERSION)
            )
    return objects
