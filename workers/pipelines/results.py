"""What a pipeline hands to the encoders.

Frozen dataclasses that know nothing of DICOM encoding: the encoders in
:mod:`workers.encode` turn them into highdicom objects.  Source images are
named by their UIDs only; the encoders get the source datasets separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Code:
    """A coded concept, as written in a model card (value, scheme, meaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model that produced a result (IHE AI Results)."""

    name: str  # zoo key, e.g. "nm_thyroid_dx"
    version: str  # bundle version, e.g. "0.1.0-demo"
    title: str  # human-readable, e.g. "Thyroid scintigraphy 4-class (ResNet-34, Zhao 2023)"
    weights_sha256: str
    demo: bool  # True for weights trained here on phantoms

    @property
    def disclaimer(self) -> str | None:
        return "DEMO - not for clinical use" if self.demo else None


@dataclass(frozen=True)
class SourceImage:
    """One source instance (and frame) a result was computed from."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None  # 1-based, for multi-frame sources


@dataclass(frozen=True)
class ClassProbability:
    key: str  # label key from the model card, e.g. "graves"
    code: Code  # the class as a coded concept (SNOMED CT)
    probability: float


@dataclass(frozen=True)
class NMDiagnosis:
    """Seed-003 result for one planar thyroid scintigram."""

    source: SourceImage
    model: ModelInfo
    probabilities: tuple[ClassProbability, ...]
    predicted: ClassProbability
    # Grad-CAM on the source frame's pixel grid (rows, columns), float32 in [0, 1].
    heatmap: np.ndarray = field(repr=False, compare=False)
    frame_choice: str = ""  # why this frame was taken (logged, and put in the SR)


@dataclass(frozen=True)
class NotAnalysable:
    """A study the pipeline could not use, with the reason (sent back as an SR)."""

    source: SourceImage
    model: ModelInfo
    reason: str


@dataclass(frozen=True)
class NMResults:
    """Everything the NM pipeline produced for one study."""

    study_instance_uid: str
    diagnoses: tuple[NMDiagnosis, ...] = ()
    not_analysable: tuple[NotAnalysable, ...] = ()
