"""NM pipeline: planar thyroid scintigraphy -> seed-003 4-class diagnosis + Grad-CAM.

``run`` is plain Python (no Celery, no network): it takes the source datasets and the
loaded models and returns :class:`NMResults`. ``process`` adds the DICOM encoding.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydicom import Dataset

from workers.pipelines.results import ClassProbability, Code, NMDiagnosis, NMResults, NotAnalysable, SourceImage

log = logging.getLogger(__name__)

MODELS = ("nm_thyroid_dx",)
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


def run(sources: list[Dataset], models: dict[str, Any]) -> NMResults:
    """Diagnose every NM image of the study; images the model cannot use are reported, not dropped."""
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
    return NMResults(study_uid, tuple(diagnoses), tuple(rejected))


def process(
    sources: list[Dataset], models: dict[str, Any], content_datetime: datetime, settings: Any = None
) -> list[Dataset]:
    """Run the pipeline and encode its results: one TID 1500 SR, one heatmap SC per diagnosis."""
    from workers.encode.sc import encode_heatmap_sc
    from workers.encode.sr import encode_nm_sr

    results = run(sources, models)
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
    return objects
