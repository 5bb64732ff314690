"""NM pipeline: planar thyroid scintigraphy -> seed-003 4-class diagnosis + Grad-CAM, then
seed 001 (cure after a first I-131 therapy) on the Graves' disease scintigrams.

``run`` is plain Python (no Celery, no network): it takes the source datasets and the
loaded models and returns :class:`NMResults`. ``process`` adds the DICOM encoding.

Seed 001 (``nm_graves_i131``) runs by ``settings.nm.graves_i131``: "if_graves" (default) on the
images seed 003 calls Graves' disease, "always" on every image seed 003 diagnosed, "off" never.
:func:`models_for` names the models to load, so that with "off" (or with no bundle configured
for it under "if_graves") its bundle is never loaded; ``run`` uses it only when it is among the
loaded models.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydicom import Dataset

from workers.pipelines.results import (
    ClassProbability,
    Code,
    GravesOutcome,
    NMDiagnosis,
    NMResults,
    NotAnalysable,
    SourceImage,
)

log = logging.getLogger(__name__)

MODELS = ("nm_thyroid_dx",)  # always loaded; see models_for
GRAVES_MODEL = "nm_graves_i131"
GRAVES_CLASS = "graves"  # seed 003's label key for Graves' disease
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
SOFTWARE_VERSION = "thyroid-ai-node 0.1.0"


def _source(ds: Dataset, frame_index: int | None) -> SourceImage:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return SourceImage(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        frame_number=(frame_index + 1) if (frame_index is not None and frames > 1) else None,
    )


def graves_mode(settings: Any) -> str:
    """``settings.nm.graves_i131`` ("if_graves", "always", "off"); the default without settings."""
    from config.settings import NMOptions

    nm = getattr(settings, "nm", None) or NMOptions()
    return str(nm.graves_i131)


def models_for(settings: Any) -> tuple[str, ...]:
    """The zoo models to load: seed 003, and seed 001 unless its option is "off" or (under
    "if_graves") no bundle is configured for it."""
    if graves_mode(settings) == "off":
        return MODELS
    if GRAVES_MODEL not in (getattr(settings, "models", None) or {}):
        log.info("no bundle configured for %s: the NM pipeline runs seed 003 alone", GRAVES_MODEL)
        return MODELS
    return (*MODELS, GRAVES_MODEL)


def _graves_outcome(model: Any, ds: Dataset, diagnosis: NMDiagnosis) -> GravesOutcome | None:
    """Seed 001 on one diagnosed image; None (logged) if it rejects the image."""
    from model_zoo.errors import InputRejected

    try:
        pred = model.impl.predict(ds)
    except InputRejected as exc:
        log.warning("seed 001 could not use an image seed 003 diagnosed: %s", exc)
        return None
    source = _source(ds, pred.frame_index)
    if source != diagnosis.source:  # same pre-processing: the same frame; a mismatch is a bug
        raise RuntimeError(f"seed 001 read frame {source.frame_number}, seed 003 frame {diagnosis.source.frame_number}")
    outcome = GravesOutcome(
        source=source,
        model=model.info,
        probability_cured=float(pred.probability_cured),
        threshold=float(pred.threshold),
        heatmap=pred.heatmap,
        frame_choice=pred.frame_choice,
        resnet_probability=float(pred.resnet_probability),
    )
    log.info("seed 001: P(cured after I-131) = %.3f (threshold %.3f)", outcome.probability_cured, outcome.threshold)
    return outcome


def run(sources: list[Dataset], models: dict[str, Any], settings: Any = None) -> NMResults:
    """Diagnose every NM image of the study; images the model cannot use are reported, not dropped.

    Seed 001 then runs on the diagnosed images ``settings.nm.graves_i131`` selects, when its
    model is among ``models`` (see :func:`models_for`).
    """
    from model_zoo.errors import InputRejected

    model = models["nm_thyroid_dx"]
    labels = {label.key: label for label in model.card.labels}
    diagnoses, rejected = [], []
    study_uid = str(sources[0].StudyInstanceUID) if sources else ""
    for ds in sources:
        if str(ds.get("SOPClassUID", "")) != NM_IMAGE_STORAGE:
            rejected.append(NotAnalysable(_source(ds, None), model.info, "not an NM Image Storage instance"))
            continue
        try:
            pred = model.impl.predict(ds)
        except InputRejected as exc:
            log.info("NM image not analysable: %s", exc)
            rejected.append(NotAnalysable(_source(ds, None), model.info, str(exc)))
            continue
        probs = tuple(
            ClassProbability(key, Code(labels[key].code_value, labels[key].coding_scheme, labels[key].code_meaning), float(p))
            for key, p in pred.probabilities.items()
        )
        predicted = next(p for p in probs if p.key == pred.label)
        diagnoses.append(
            NMDiagnosis(
                source=_source(ds, pred.frame_index),
                model=model.info,
                probabilities=probs,
                predicted=predicted,
                heatmap=pred.heatmap,
                frame_choice=pred.frame_choice,
            )
        )
        log.info("NM diagnosis: %s (p=%.3f)", predicted.key, predicted.probability)
    graves: list[GravesOutcome] = []
    mode = graves_mode(settings)
    if mode != "off" and GRAVES_MODEL in models:
        by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
        for diagnosis in diagnoses:
            if mode == "always" or diagnosis.predicted.key == GRAVES_CLASS:
                outcome = _graves_outcome(models[GRAVES_MODEL], by_uid[diagnosis.source.sop_instance_uid], diagnosis)
                if outcome is not None:
                    graves.append(outcome)
    return NMResults(study_uid, tuple(diagnoses), tuple(rejected), tuple(graves))


def process(
    sources: list[Dataset], models: dict[str, Any], content_datetime: datetime, settings: Any = None
) -> list[Dataset]:
    """Run the pipeline and encode its results: one TID 1500 SR, one heatmap SC per diagnosis and
    one per seed-001 outcome."""
    from workers.encode.sc import encode_graves_sc, encode_heatmap_sc
    from workers.encode.sr import encode_nm_sr

    results = run(sources, models, settings)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    objects: list[Dataset] = [
        encode_nm_sr(results, sources, content_datetime=content_datetime, software_version=SOFTWARE_VERSION)
    ]
    for diagnosis in results.diagnoses:
        objects.append(
            encode_heatmap_sc(
                diagnosis, by_uid[diagnosis.source.sop_instance_uid],
                content_datetime=content_datetime, software_version=SOFTWARE_VERSION,
            )
        )
    for outcome in results.graves:
        objects.append(
            encode_graves_sc(
                outcome, by_uid[outcome.source.sop_instance_uid],
                content_datetime=content_datetime, software_version=SOFTWARE_VERSION,
            )
        )
    return objects
