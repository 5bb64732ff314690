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
    # seed 001 (nm_graves_i131) on some of the diagnosed images (see GravesOutcome); each names
    # the same source (and frame) as one of ``diagnoses``
    graves: tuple["GravesOutcome", ...] = ()


# --- CT (seed 000): lung metastases of differentiated thyroid cancer -------------------------


@dataclass(frozen=True)
class CTSeriesUsed:
    """The CT series the pipeline analysed, slice by slice in volume order.

    ``slices[k]`` is the source image (and frame, for Enhanced CT) of volume slice ``k``;
    volume slices are ordered along the slice normal (never by Instance Number).
    """

    series_instance_uid: str
    slices: tuple[SourceImage, ...]
    choice: str  # why this series was chosen, e.g. "series 3 'Lung 1.25': 80 axial slices of 1.25 mm"


@dataclass(frozen=True)
class CTLesion:
    """One lung lesion (a connected component of the segmentation) and its classification.

    The mask is on the *source* grid (the original CT slices, not the resampled 1 mm grid),
    cropped to a box: ``mask[k, r, c]`` is voxel ``(box_origin[0] + k, box_origin[1] + r,
    box_origin[2] + c)`` of the volume whose slice ``k`` is ``CTSeriesUsed.slices[k]``.
    """

    index: int  # 1-based; the SEG segment number and the SR group order
    centre_mm: tuple[float, float, float]  # centroid in patient coordinates (LPS, mm)
    diameter_mm: float  # largest diameter (3D), mm
    volume_mm3: float
    side: str  # "right" | "left" (lung side, from the patient's x coordinate)
    probability: float  # probability of RAI-refractory (non-iodine-avid) status, 0..1
    threshold: float  # decision threshold from the classifier's model card
    box_origin: tuple[int, int, int]
    mask: np.ndarray = field(repr=False, compare=False)  # bool (k, r, c), cropped
    centre_slice: int = 0  # volume slice index (into CTSeriesUsed.slices) through the centre
    # 3D Grad-CAM on the axial source slice through the centre, (rows, columns) of that slice,
    # float32 in [0, 1]
    heatmap: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False, compare=False)

    @property
    def refractory(self) -> bool:
        """The yes/no evaluation: probability at or above the card's decision threshold."""
        return self.probability >= self.threshold


@dataclass(frozen=True)
class CTResults:
    """Everything the CT pipeline produced for one study.

    Either ``series`` is set (the study was analysed; ``lesions`` may be empty when none was
    found) or ``not_analysable`` says why not.
    """

    study_instance_uid: str
    segmentation_model: ModelInfo
    classifier_model: ModelInfo
    series: CTSeriesUsed | None = None
    lesions: tuple[CTLesion, ...] = ()
    not_analysable: tuple[NotAnalysable, ...] = ()


# --- US (seeds 004 and 002): thyroid nodules on B-mode ultrasound ---------------------------


@dataclass(frozen=True)
class USImageUsed:
    """One B-mode image (an instance, or one frame of a cine clip) the US pipeline analysed.

    ``region`` is the B-mode region taken from the Sequence of Ultrasound Regions (or, without
    calibrated regions, found in the image): ``(row0, col0, row1, col1)`` in the source frame's
    pixels, end exclusive. Only pixels inside it were model input.
    """

    source: SourceImage  # frame_number set for multi-frame sources
    rows: int  # the source frame's size
    columns: int
    region: tuple[int, int, int, int]
    spacing_mm: tuple[float, float] | None  # (row, column) pixel size in mm; None: uncalibrated
    choice: str  # how the region (and frame) was chosen, for the SR and the logs


@dataclass(frozen=True)
class USNodule:
    """One thyroid nodule on one analysed image, its outline, sizes and the models' scores.

    ``mask`` is on the *source frame's* pixel grid, cropped to ``box``: ``mask[r, c]`` is pixel
    ``(box[0] + r, box[1] + c)`` of ``image``'s frame.
    """

    index: int  # 1-based over the study; the SEG segment number and the SR group order
    image: USImageUsed
    box: tuple[int, int, int, int]  # (row0, col0, row1, col1) in source pixels, end exclusive
    mask: np.ndarray = field(repr=False, compare=False)  # bool, box-shaped
    outline_source: str = "model"  # "model" (our segmentation) | "site SEG" (an ROI the site sent)
    # the largest diameter and the largest width perpendicular to it, in mm when the image is
    # calibrated, else in pixels (``calibrated`` False)
    long_axis: float = 0.0
    short_axis: float = 0.0
    calibrated: bool = True
    area: float = 0.0  # mm² (or pixels² when uncalibrated)
    centre_px: tuple[float, float] = (0.0, 0.0)  # centroid (row, column), source pixels
    malignancy: float | None = None  # seed 004: probability of malignancy, 0..1 (None: not run)
    malignancy_threshold: float = 0.5
    malignancy_backbones: tuple[str, ...] = ()  # which backbones were averaged, e.g. ("xception",)
    lvlnm: float | None = None  # seed 002: probability of large-volume node metastasis (None: not run)
    lvlnm_threshold: float = 0.5
    # Grad-CAM of the malignancy model on the source frame, cropped to ``box``, float32 in [0, 1]
    heatmap: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False, compare=False)

    @property
    def unit(self) -> str:
        return "mm" if self.calibrated else "pixels"


@dataclass(frozen=True)
class USResults:
    """Everything the US pipeline produced for one study.

    ``images`` lists every image analysed (nodules may be empty for some); images that could not
    be used are in ``not_analysable`` with the reason.
    """

    study_instance_uid: str
    segmentation_model: ModelInfo
    malignancy_model: ModelInfo | None
    lvlnm_model: ModelInfo | None
    images: tuple[USImageUsed, ...] = ()
    nodules: tuple[USNodule, ...] = ()
    not_analysable: tuple[NotAnalysable, ...] = ()


# --- NM (seed 001): cure after a first I-131 therapy of Graves' disease -------------------------


@dataclass(frozen=True)
class GravesOutcome:
    """Seed-001 result for one pre-treatment scintigram that seed 003 also diagnosed.

    Kept beside the diagnoses (``NMResults.graves``) rather than inside :class:`NMDiagnosis`:
    another model, with its own identity, threshold and heatmap, run on a subset of the images
    (those seed 003 calls Graves' disease, by default). ``source`` equals the matching
    diagnosis' source (both models read the same frame through the same pre-processing).
    """

    source: SourceImage
    model: ModelInfo
    probability_cured: float  # random forest on the LASSO-selected deep features, 0..1
    threshold: float  # the card's decision threshold on probability_cured
    # Grad-CAM of the ResNet50's "cured" logit on the source frame's grid, float32 in [0, 1]
    heatmap: np.ndarray = field(repr=False, compare=False)
    frame_choice: str = ""
    resnet_probability: float | None = None  # the end-to-end ResNet50's own P(cured), for the record

    @property
    def cured(self) -> bool:
        """The yes/no evaluation: probability at or above the card's decision threshold."""
        return self.probability_cured >= self.threshold
