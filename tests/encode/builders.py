"""Results the NM pipeline would hand over, built around a phantom source."""

from __future__ import annotations

import datetime

import numpy as np
import pydicom

from workers.pipelines.results import (
    ClassProbability,
    Code,
    ModelInfo,
    NMDiagnosis,
    NMResults,
    NotAnalysable,
    SourceImage,
)

CONTENT_DATETIME = datetime.datetime(2025, 3, 14, 9, 26, 53)
SOFTWARE_VERSION = "0.1.0"

# (key, code) as a model card would list them; the probabilities below are the test's input
CLASSES: tuple[tuple[str, Code], ...] = (
    ("graves", Code("353295004", "SCT", "Graves' disease")),
    ("subacute_thyroiditis", Code("SUBAC-THYROIDITS", "99THYAI", "Subacute thyroiditis")),
    ("thyroid_tumour", Code("237557003", "SCT", "Mass of thyroid gland")),
    ("normal", Code("17621005", "SCT", "Normal")),
)
PROBABILITIES: tuple[float, ...] = (0.712345678901234, 0.05, 0.187654321098766, 0.05)


def model_info(*, demo: bool = True, version: str = "0.1.0-demo") -> ModelInfo:
    return ModelInfo(
        name="nm_thyroid_dx",
        version=version,
        title="Thyroid scintigraphy 4-class (ResNet-34, Zhao 2023)",
        weights_sha256="0f" * 32,
        demo=demo,
    )


def source_image(ds: pydicom.Dataset, frame_number: int | None = None) -> SourceImage:
    return SourceImage(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        frame_number=frame_number,
    )


def gaussian_heatmap(rows: int, cols: int, centre: tuple[float, float] = (0.55, 0.5)) -> np.ndarray:
    """A smooth blob in [0, 1] where the phantom's gland lies."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, cx = centre[0] * rows, centre[1] * cols
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * (0.12 * rows) ** 2))
    return (blob / blob.max()).astype(np.float32)


def diagnosis(
    ds: pydicom.Dataset,
    *,
    frame_number: int | None = None,
    model: ModelInfo | None = None,
    probabilities: tuple[float, ...] = PROBABILITIES,
) -> NMDiagnosis:
    probs = tuple(
        ClassProbability(key=key, code=code, probability=p)
        for (key, code), p in zip(CLASSES, probabilities, strict=True)
    )
    return NMDiagnosis(
        source=source_image(ds, frame_number),
        model=model or model_info(),
        probabilities=probs,
        predicted=max(probs, key=lambda c: c.probability),
        heatmap=gaussian_heatmap(int(ds.Rows), int(ds.Columns)),
        frame_choice="anterior view: the frame with the most counts",
    )


def results(
    ds: pydicom.Dataset, *, frame_number: int | None = None, model: ModelInfo | None = None
) -> NMResults:
    return NMResults(
        study_instance_uid=ds.StudyInstanceUID,
        diagnoses=(diagnosis(ds, frame_number=frame_number, model=model),),
    )


def not_analysable(ds: pydicom.Dataset, reason: str, *, model: ModelInfo | None = None) -> NMResults:
    return NMResults(
        study_instance_uid=ds.StudyInstanceUID,
        not_analysable=(NotAnalysable(source=source_image(ds), model=model or model_info(), reason=reason),),
    )


def assert_processing_equipment(ds: pydicom.Dataset) -> None:
    """The node names itself as Processing Equipment (IHE AI Results), at the content time."""
    processing = [
        e for e in ds.ContributingEquipmentSequence if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    ]
    assert processing and all(e.ContributionDateTime.startswith("20250314092653") for e in processing)
    equipment = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "Thyroid AI Node"]
    assert equipment[0].ManufacturerModelName == "nm_thyroid_dx"
    assert equipment[0].SoftwareVersions == SOFTWARE_VERSION
    assert equipment[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
