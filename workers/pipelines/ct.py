"""CT pipeline: chest CT of a DTC patient -> lung lesions outlined, measured, scored (seed 000).

``run`` is plain Python (no Celery, no network): source datasets and loaded models in,
:class:`CTResults` out. ``process`` adds the DICOM encoding: a SEG over the original CT geometry
(one segment per lesion), a TID 1500 SR (one measurement group per lesion) and one heatmap
Secondary Capture per lesion.

Steps: pick the series (:func:`~model_zoo.ct_lung_met_rai.volume.select_series`), build the volume
in patient coordinates, resample to 1 mm, find the lungs, refuse what is not a usable chest CT
(an SR says why), segment and classify (:class:`~model_zoo.ct_lung_met_rai.model.CTLungMetRAI`),
then map every lesion back to the source slices.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
from pydicom import Dataset

from workers.pipelines.results import CTLesion, CTResults, CTSeriesUsed, ModelInfo, NotAnalysable, SourceImage

log = logging.getLogger(__name__)

MODELS = ("ct_lung_met_rai",)
SOFTWARE_VERSION = "thyroid-ai-node 0.1.0"
CT_STORAGE = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}


def model_infos(loaded: Any) -> tuple[ModelInfo, ModelInfo]:
    """ModelInfo of the segmentation network and of the classifier (one bundle, two weights files)."""
    card = loaded.card
    seg = ModelInfo(
        name=f"{card.name}/se_vnet",
        version=card.version,
        title=f"{card.name}: SE V-Net lung lesion segmentation",
        weights_sha256=card.weights[0].sha256,
        demo=bool(card.demo),
    )
    cls = ModelInfo(
        name=f"{card.name}/se_resnet3d",
        version=card.version,
        title=f"{card.name}: 3D SE-ResNet RAI-refractory classifier",
        weights_sha256=card.weights[1].sha256,
        demo=bool(card.demo),
    )
    return seg, cls


def _source(ds: Dataset) -> SourceImage:
    return SourceImage(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
    )


def _to_source_grid(finding: Any, volume: Any, index: int, threshold: float) -> CTLesion:
    """A lesion found on the canonical grid, re-expressed on the source slices (flips only)."""
    shape = volume.hu.shape
    mask = finding.mask
    origin = []
    for axis, (box, flipped) in enumerate(zip(finding.box, volume.flips)):
        if flipped:
            origin.append(shape[axis] - box.stop)
            mask = np.flip(mask, axis)
        else:
            origin.append(box.start)
    k = int(round(finding.centre_index[0]))
    k = min(max(k, 0), shape[0] - 1)
    heat = finding.heatmap_slice
    if volume.flips[1]:
        heat = heat[::-1, :]
    if volume.flips[2]:
        heat = heat[:, ::-1]
    m = finding.measurement
    return CTLesion(
        index=index,
        centre_mm=m.centre_mm,
        diameter_mm=round(m.diameter_mm, 2),
        volume_mm3=round(m.volume_mm3, 1),
        side=finding.side,
        probability=float(finding.probability),
        threshold=threshold,
        box_origin=(int(origin[0]), int(origin[1]), int(origin[2])),
        mask=np.ascontiguousarray(mask),
        centre_slice=(shape[0] - 1 - k) if volume.flips[0] else k,
        heatmap=np.ascontiguousarray(heat, dtype=np.float32),
    )


def run(sources: list[Dataset], models: dict[str, Any]) -> CTResults:
    """Analyse the study's best chest CT series; a study that cannot be analysed is reported, not dropped."""
    from model_zoo.ct_lung_met_rai.volume import build_volume, check_chest, lung_mask, rank_series, resample_iso
    from model_zoo.errors import InputRejected

    loaded = models["ct_lung_met_rai"]
    model = loaded.impl
    seg_info, cls_info = model_infos(loaded)
    study_uid = str(sources[0].StudyInstanceUID) if sources else ""
    if not sources:
        raise InputRejected("no instances to analyse")
    ct_sources = [ds for ds in sources if str(ds.get("SOPClassUID", "")) in CT_STORAGE] or sources
    # the best-ranked series the volume checks accept; the next one if the best is refused
    reasons: list[str] = []
    prepared = None
    try:
        candidates = rank_series(sources)
    except InputRejected as exc:
        candidates, reasons = [], [exc.reason]
    for choice in candidates:
        try:
            volume = build_volume(choice.datasets)
            iso = resample_iso(volume, model.spec.spacing_mm)
            lungs = lung_mask(iso)
            check_chest(volume, choice.datasets, lungs, iso)
        except InputRejected as exc:
            reasons.append(f"{choice.reason.split(':')[0]}: {exc.reason}")
            continue
        prepared = (choice, volume, iso, lungs)
        break
    if prepared is None:
        reason = "; ".join(reasons)
        log.info("CT study not analysable: %s", reason)
        first = sorted(ct_sources, key=lambda d: (str(d.SeriesInstanceUID), str(d.SOPInstanceUID)))[0]
        return CTResults(study_uid, seg_info, cls_info, not_analysable=(NotAnalysable(_source(first), seg_info, reason),))
    choice, volume, iso, lungs = prepared
    prepared = None  # the analysis below drops the 1 mm volume when done with it
    if reasons:
        log.info("CT series refused before the one analysed: %s", "; ".join(reasons))
    analysis = model.analyse(volume, iso, lungs)
    del iso, lungs
    findings = sorted(analysis.lesions, key=lambda f: (-f.measurement.centre_mm[2], f.measurement.centre_mm[0]))
    lesions = tuple(_to_source_grid(f, volume, i, model.threshold) for i, f in enumerate(findings, start=1))
    used = CTSeriesUsed(volume.series_instance_uid, tuple(volume.slices), choice.reason)
    for lesion in lesions:
        log.info("CT lesion %d: %s lung, %.1f mm, %.0f mm3, p(RAI-refractory)=%.3f", lesion.index, lesion.side,
                 lesion.diameter_mm, lesion.volume_mm3, lesion.probability)
    return CTResults(study_uid, seg_info, cls_info, series=used, lesions=lesions)


def process(
    sources: list[Dataset], models: dict[str, Any], content_datetime: datetime, settings: Any = None
) -> list[Dataset]:
    """Run the pipeline and encode: SEG (if lesions), SR, one heatmap SC per lesion."""
    from workers.encode.sc import encode_lesion_sc
    from workers.encode.seg import encode_ct_seg
    from workers.encode.sr_ct import encode_ct_sr

    results = run(sources, models)
    objects: list[Dataset] = []
    seg = None
    if results.lesions:
        seg = encode_ct_seg(results, sources, content_datetime=content_datetime, software_version=SOFTWARE_VERSION)
        if seg is not None:
            objects.append(seg)
    objects.append(encode_ct_sr(results, sources, seg, content_datetime=content_datetime, software_version=SOFTWARE_VERSION))
    for lesion in results.lesions:
        objects.append(
            encode_lesion_sc(lesion, results, sources, content_datetime=content_datetime, software_version=SOFTWARE_VERSION)
        )
    return objects
