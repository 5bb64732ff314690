"""Graves' disease scintigrams with a cure label, for seed 001 (``nm_graves_i131``).

The images are :mod:`model_zoo.phantoms.nm`'s Graves phantoms (enlarged, rounder gland with
diffuse intense uptake, faint background and salivary glands), drawn by
:func:`~model_zoo.phantoms.nm.make_nm_image` unchanged. What this module adds is the outcome of a
first, fixed I-131 activity, by a phantom convention loosely after the clinical picture (the
larger the gland, the less often one standard activity cures it):

* **gland area**: the anterior projection of the gland (both lobes and the isthmus: the pixels
  where the noise-free gland activity is non-zero), in mm² at the phantom's pixel spacing
  (1 mm at matrix 128, the field of view is 128 mm whatever the matrix). For glands of one shape
  the volume grows as area^1.5, so a cut on the area is a cut on the volume;
* **convention**: cured ⇔ gland area < :data:`CURE_AREA_CUTOFF_MM2` (4,000 mm², the median of
  the Graves phantoms, so about half are cured);
* **label noise**: the label is then flipped with probability :data:`LABEL_NOISE` (5 %), as
  outcomes depend on more than the image. A perfect model therefore scores about 0.95 accuracy
  and AUC against these labels, not 1.

Uptake intensity is not part of the convention: after the node's normalisation (counts divided by
the frame's 99.5th percentile) the gland's absolute uptake is gone from the image, while its size
stays.

The noise-free gland is read by running the generator that draws the image through
:func:`model_zoo.phantoms.nm._thyroid_activity` on a copy of itself: ``make_nm_image`` draws the
activity first from the same generator, so the gland measured is the one in the image. Phantom
``(seed, attempt)`` draws from ``default_rng([1001, seed, attempt])``: a stream of its own,
disjoint from the seed-003 phantoms of :func:`~model_zoo.phantoms.nm.nm_phantom_dataset`.
The ground truth is returned, never written into the DICOM file.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from model_zoo.phantoms.nm import _thyroid_activity, make_nm_image, nm_phantom_dataset

CURE_AREA_CUTOFF_MM2: Final[float] = 4000.0
LABEL_NOISE: Final[float] = 0.05
FIELD_OF_VIEW_MM: Final[float] = 128.0  # nm.py's phantoms: 1 mm pixels at matrix 128
_STREAM: Final[int] = 1001  # seed 001
_MAX_ATTEMPTS: Final[int] = 64  # each attempt has the asked-for label with probability about 1/2
_UID_TAG: Final[str] = "thyroid-node-phantom-nm-graves-v1"


@dataclass(frozen=True)
class GravesPhantom:
    """One Graves' scintigram and its outcome.

    Attributes
    ----------
    image : numpy.ndarray
        ``(matrix, matrix)`` uint16 counts, anterior view.
    cured : bool
        The outcome label (convention, then label noise).
    gland_area_mm2 : float
        Anterior projected gland area.
    gland : numpy.ndarray
        ``(matrix, matrix)`` bool: where the noise-free gland activity is non-zero (the area's pixels).
    by_convention : bool
        ``gland_area_mm2 < CURE_AREA_CUTOFF_MM2``; differs from ``cured`` when the label was flipped.
    seed : int
    attempt : int
        Which draw of ``seed``'s stream this is (0 for ``cured=None``).
    """

    image: np.ndarray
    cured: bool
    gland_area_mm2: float
    gland: np.ndarray
    by_convention: bool
    seed: int
    attempt: int

    @property
    def noisy(self) -> bool:
        """Whether the label noise flipped this phantom's outcome."""
        return self.cured != self.by_convention


def _draw(seed: int, attempt: int, matrix: int) -> GravesPhantom:
    rng = np.random.default_rng([_STREAM, seed, attempt])
    gland, _ = _thyroid_activity("graves", copy.deepcopy(rng), matrix)
    image = make_nm_image("graves", rng, matrix)
    pixel_mm = FIELD_OF_VIEW_MM / matrix
    mask = gland > 0.0
    area = float(np.count_nonzero(mask)) * pixel_mm * pixel_mm
    rule = area < CURE_AREA_CUTOFF_MM2
    flipped = bool(rng.random() < LABEL_NOISE)
    return GravesPhantom(image, rule != flipped, area, mask, rule, seed, attempt)


def graves_case(seed: int, cured: bool | None = None, matrix: int = 128) -> GravesPhantom:
    """Draw one Graves' phantom with its outcome.

    Parameters
    ----------
    seed : int
        Non-negative; the same ``(seed, cured, matrix)`` always gives the same phantom.
    cured : bool, optional
        ``None``: the outcome as the convention and the noise give it (attempt 0). ``True`` /
        ``False``: the first draw of ``seed``'s stream with that outcome, i.e. a phantom from the
        distribution conditioned on the label (label noise included).
    matrix : int
        Rows = columns.

    Returns
    -------
    GravesPhantom
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    for attempt in range(_MAX_ATTEMPTS):
        case = _draw(seed, attempt, matrix)
        if cured is None or case.cured == cured:
            return case
    raise RuntimeError(f"no phantom with cured={cured} in {_MAX_ATTEMPTS} draws of seed {seed}")  # p < 1e-15


def graves_phantom(seed: int, cured: bool | None = None) -> tuple[np.ndarray, bool]:
    """``(image, cured)``: a 128 x 128 uint16 Graves' scintigram and its outcome (:func:`graves_case`)."""
    case = graves_case(seed, cured)
    return case.image, case.cured


def _uid(case: GravesPhantom, matrix: int, what: str) -> str:
    return str(generate_uid(entropy_srcs=[_UID_TAG, str(case.seed), str(case.attempt), str(matrix), what]))


def graves_dataset(seed: int, cured: bool | None = None, matrix: int = 128) -> tuple[Dataset, GravesPhantom]:
    """An NM Image Storage dataset (one anterior static frame) of :func:`graves_case`, and the case.

    Built by :func:`model_zoo.phantoms.nm.nm_phantom_dataset` (same header, detector and isotope
    modules), with this phantom's pixels, counts, UIDs and fake identity. UIDs derive from
    ``(seed, attempt, matrix)``: a re-run writes the same instance, and no UID is shared with a
    seed-003 phantom.
    """
    case = graves_case(seed, cured, matrix)
    digest = hashlib.sha256(f"{_UID_TAG}|{seed}|{case.attempt}".encode()).hexdigest()[:8].upper()
    ds = nm_phantom_dataset(
        "graves",
        seed,
        study_instance_uid=_uid(case, matrix, "study"),
        series_instance_uid=_uid(case, matrix, "series"),
        sop_instance_uid=_uid(case, matrix, "sop"),
        patient_id=f"PHANTOM-GD-{digest}",
        patient_name=f"PHANTOM^GD{digest}",
        matrix=matrix,
    )
    pixels = case.image
    ds.PixelData = pixels.tobytes()
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    ds.CountsAccumulated = int(pixels.sum(dtype=np.int64))
    ds.FrameOfReferenceUID = _uid(case, matrix, "for")
    ds.AccessionNumber = f"GD{digest}"
    ds.StudyID = f"G{seed % 100000:05d}"
    ds.StudyDescription = "NM THYROID SCINTIGRAPHY PRE I-131 (PHANTOM)"
    return ds, case


def write_graves_study(out_dir: Path, seed: int, cured: bool | None = None, matrix: int = 128) -> Path:
    """Write :func:`graves_dataset` as ``<out_dir>/<SOPInstanceUID>.dcm`` (folder created).

    Returns
    -------
    pathlib.Path
        The written file. The outcome is not in it: take it from :func:`graves_case` with the
        same arguments.
    """
    ds, _ = graves_dataset(seed, cured, matrix)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
