"""Planar 99mTc-pertechnetate thyroid scintigraphy phantoms (NM Image Storage).

The images follow the patterns of Zhao et al. 2023 (see MODELS.md, ``nm_thyroid_dx``):

* ``normal``: regular gland, uniform uptake in both lobes, clear gland/background contrast.
* ``graves``: enlarged, rounder gland with diffuse intense uptake; the background and the
  salivary glands fade because the gland takes most of the tracer.
* ``subacute_thyroiditis``: diffusely or locally (one lobe) reduced uptake; the gland barely
  stands out of the neck background, salivary glands relatively prominent, few counts.
* ``thyroid_tumour``: a regular gland with a hot nodule or a cold defect in one lobe.

Anterior pinhole view (the gland fills much of the field, as in the papers' images), radiological
convention: the patient's right lobe is on the image's left.
The ground truth is the ``label`` argument; nothing in the written file names it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from scipy.ndimage import gaussian_filter

NM_LABELS: Final[tuple[str, ...]] = (
    "graves",
    "subacute_thyroiditis",
    "thyroid_tumour",
    "normal",
)

NM_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.20"
_UID_TAG: Final[str] = "thyroid-node-phantom-nm-v1"
_PIXEL_SPACING_MM: Final[float] = 1.0  # at matrix 128: a 128 mm field of view (pinhole)
_ZOOM: Final[float] = 1.6  # gland size relative to a 230 mm parallel-hole field of view
_MAX_FRAMES: Final[int] = 4
# (detector view code value, meaning) per detector; detector 1 is the anterior head.
_VIEWS: Final[tuple[tuple[str, str], ...]] = (
    ("399321004", "Anterior projection"),
    ("399001007", "Posterior projection"),
    ("399135007", "Left anterior oblique projection"),
    ("399356000", "Right anterior oblique projection"),
)


def _coords(matrix: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the field of view, (rows, cols) each."""
    c = (np.arange(matrix, dtype=np.float64) + 0.5) / matrix
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return yy, xx


def _ellipsoid(
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float = 0.0,
) -> np.ndarray:
    """Projected thickness of an ellipsoid, in [0, 1] (planar imaging integrates depth)."""
    ca, sa = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * ca + dy * sa) / rx
    v = (-dx * sa + dy * ca) / ry
    out: np.ndarray = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))
    return out


def _thyroid_activity(label: str, rng: np.random.Generator, matrix: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected counts per pixel (before blur and noise) for the gland and the rest.

    Returns
    -------
    tuple of numpy.ndarray
        ``(gland, body)``: float64 expected counts, each ``(matrix, matrix)``.
    """
    yy, xx = _coords(matrix)
    cy = 0.55 + rng.uniform(-0.04, 0.04)
    cx = 0.5 + rng.uniform(-0.05, 0.05)

    if label == "graves":
        scale = rng.uniform(1.35, 1.75)
        roundness = rng.uniform(1.15, 1.4)
        background = rng.uniform(2.0, 5.0)
        contrast = rng.uniform(45.0, 90.0)
        saliva = rng.uniform(0.0, 0.05)
    elif label == "normal":
        scale = rng.uniform(0.85, 1.15)
        roundness = rng.uniform(0.9, 1.1)
        background = rng.uniform(6.0, 14.0)
        contrast = rng.uniform(12.0, 25.0)
        saliva = rng.uniform(0.15, 0.4)
    elif label == "subacute_thyroiditis":
        scale = rng.uniform(0.85, 1.25)
        roundness = rng.uniform(0.9, 1.15)
        background = rng.uniform(8.0, 16.0)
        contrast = rng.uniform(0.4, 2.0)
        saliva = rng.uniform(1.0, 2.5)  # relative to the faint gland: they dominate the image
    elif label == "thyroid_tumour":
        scale = rng.uniform(0.9, 1.25)
        roundness = rng.uniform(0.9, 1.15)
        background = rng.uniform(6.0, 14.0)
        contrast = rng.uniform(12.0, 25.0)
        saliva = rng.uniform(0.15, 0.4)
    else:
        raise ValueError(f"unknown NM phantom label {label!r}; expected one of {NM_LABELS}")

    scale *= _ZOOM
    half_gap = 0.068 * scale * rng.uniform(0.9, 1.1)
    ry = 0.115 * scale * rng.uniform(0.9, 1.1)
    rx = 0.042 * scale * roundness * rng.uniform(0.9, 1.1)
    tilt = np.deg2rad(rng.uniform(8.0, 20.0))  # upper poles point up and outwards
    # lobe weights: mild physiological asymmetry
    w_right, w_left = rng.uniform(0.85, 1.0, size=2)
    right = _ellipsoid(yy, xx, cy, cx - half_gap, ry * rng.uniform(0.92, 1.05), rx, -tilt)
    left = _ellipsoid(yy, xx, cy, cx + half_gap, ry * rng.uniform(0.92, 1.05), rx, tilt)
    isthmus = _ellipsoid(yy, xx, cy + 0.45 * ry, cx, 0.025 * scale, 0.85 * half_gap, 0.0)
    isthmus_w = rng.uniform(0.35, 0.7)

    if label == "subacute_thyroiditis" and rng.random() < 0.5:
        # limited form: one lobe (or its upper part) is nearly silent
        if rng.random() < 0.5:
            w_right *= rng.uniform(0.0, 0.25)
        else:
            w_left *= rng.uniform(0.0, 0.25)
    gland = np.maximum(np.maximum(w_right * right, w_left * left), isthmus_w * isthmus)

    if label == "thyroid_tumour":
        side = rng.choice([-1.0, 1.0])
        ny = cy + rng.uniform(-0.35, 0.25) * ry
        nx = cx + side * half_gap + rng.uniform(-0.1, 0.1) * rx
        nr = rx * rng.uniform(1.0, 1.3)
        nodule = _ellipsoid(yy, xx, ny, nx, nr * rng.uniform(0.9, 1.2), nr)
        nodule_mask = np.clip(nodule * 3.0, 0.0, 1.0)
        if rng.random() < 0.5:  # hot (autonomous) nodule, the rest of the gland partly suppressed
            gland = gland * rng.uniform(0.1, 0.35) + rng.uniform(2.5, 4.0) * nodule
        else:  # cold defect
            gland = gland * (1.0 - rng.uniform(0.85, 1.0) * nodule_mask)

    # body: neck column and upper chest, salivary glands above the thyroid
    neck_hw = rng.uniform(0.2, 0.26) * _ZOOM
    neck = 1.0 / (1.0 + np.exp((np.abs(xx - cx) - neck_hw) / 0.03))
    chest = 1.0 / (1.0 + np.exp(-(yy - (cy + rng.uniform(0.4, 0.5) * _ZOOM)) / 0.04))
    body = np.clip(neck + chest, 0.0, 1.0) * background + 0.3
    salivary = np.zeros_like(yy)
    if label == "subacute_thyroiditis" or rng.random() < 0.8:
        sy = cy - rng.uniform(0.27, 0.32) * _ZOOM  # submandibular glands at the upper edge
        for side in (-1.0, 1.0):
            sub = _ellipsoid(
                yy, xx, sy, cx + side * rng.uniform(0.1, 0.14) * _ZOOM, 0.03 * _ZOOM, 0.04 * _ZOOM
            )
            par = _ellipsoid(  # parotids, mostly above the field of view
                yy,
                xx,
                sy - rng.uniform(0.07, 0.11) * _ZOOM,
                cx + side * rng.uniform(0.18, 0.22) * _ZOOM,
                0.06 * _ZOOM,
                0.035 * _ZOOM,
            )
            salivary += sub + 0.7 * par
    gland_peak = background * contrast
    salivary_level = max(gland_peak, background * 4.0) * saliva
    return gland * gland_peak, body + salivary * salivary_level


def make_nm_image(label: str, rng: np.random.Generator, matrix: int = 128) -> np.ndarray:
    """Draw one anterior planar thyroid scintigram.

    Parameters
    ----------
    label : str
        One of :data:`NM_LABELS`.
    rng : numpy.random.Generator
        Source of all randomness (position, size, uptake, counts, Poisson noise).
    matrix : int
        Rows = columns of the image.

    Returns
    -------
    numpy.ndarray
        ``(matrix, matrix)`` uint16 counts.
    """
    gland, body = _thyroid_activity(label, rng, matrix)
    sigma = rng.uniform(1.2, 2.0) * matrix / 128.0  # pinhole resolution at this zoom
    expected = gaussian_filter(gland + body, sigma) * rng.uniform(0.8, 1.25)
    counts = rng.poisson(np.clip(expected, 0.0, None))
    image: np.ndarray = np.clip(counts, 0, 65535).astype(np.uint16)
    return image


def _posterior_view(anterior_expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts of the opposite head: mirrored, attenuated (the gland lies anteriorly)."""
    return rng.poisson(np.fliplr(anterior_expected) * rng.uniform(0.35, 0.5)).astype(np.uint16)


def _frames(label: str, seed: int, frames: int, dynamic: bool, matrix: int) -> np.ndarray:
    """Pixel frames ``(frames, rows, cols)`` uint16 for the dataset builder."""
    rng = np.random.default_rng([seed, NM_LABELS.index(label)])
    image = make_nm_image(label, rng, matrix).astype(np.float64)
    if frames == 1:
        return image[None].astype(np.uint16)
    if dynamic:  # the same static distribution split over time slots
        out = np.stack([rng.binomial(image.astype(np.int64), 1.0 / frames) for _ in range(frames)])
        return out.astype(np.uint16)
    smooth = gaussian_filter(image, 1.0)
    views = [image.astype(np.uint16), _posterior_view(smooth, rng)]
    for _ in range(2, frames):  # obliques: somewhat fewer counts than the anterior view
        views.append(rng.poisson(smooth * rng.uniform(0.6, 0.8)).astype(np.uint16))
    return np.stack(views)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _uid(seed: int, label: str, what: str) -> str:
    return str(generate_uid(entropy_srcs=[_UID_TAG, label, str(seed), what]))


def _fake_patient(seed: int, label: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{_UID_TAG}|{label}|{seed}".encode()).hexdigest()[:8].upper()
    return f"PHANTOM-NM-{digest}", f"PHANTOM^NM{digest}"


def nm_phantom_dataset(
    label: str,
    seed: int,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    frames: int = 1,
    dynamic: bool = False,
    matrix: int = 128,
) -> Dataset:
    """Build an NM Image Storage dataset holding a phantom thyroid scintigram.

    Parameters
    ----------
    label : str
        Ground truth, one of :data:`NM_LABELS` (not written into the file).
    seed : int
        Seeds the image and, when not given, every UID and the fake patient identity.
    study_instance_uid, series_instance_uid, sop_instance_uid : str, optional
        UIDs to use instead of the seed-derived ones.
    patient_id, patient_name : str, optional
        Identity to use instead of the fake ``PHANTOM-NM-…`` one.
    frames : int
        1 to 4. A STATIC multi-frame image carries one frame per detector head: anterior,
        posterior, left and right anterior oblique views, in that order.
    dynamic : bool
        With ``frames > 1``: a DYNAMIC image, one detector, one phase of ``frames`` time slots.
    matrix : int
        Rows = columns.

    Returns
    -------
    pydicom.dataset.Dataset
        With ``file_meta`` (Explicit VR Little Endian), ready for ``dcmwrite``.
    """
    if label not in NM_LABELS:
        raise ValueError(f"unknown NM phantom label {label!r}; expected one of {NM_LABELS}")
    if not 1 <= frames <= _MAX_FRAMES:
        raise ValueError(f"frames must be 1..{_MAX_FRAMES}, got {frames}")
    dynamic = dynamic and frames > 1
    pixels = _frames(label, seed, frames, dynamic, matrix)
    fake_id, fake_name = _fake_patient(seed, label)
    # variants of one (label, seed) are distinct instances of the same study
    variant = "" if (frames, dynamic, matrix) == (1, False, 128) else f"/f{frames}d{int(dynamic)}m{matrix}"
    sop_uid = UID(sop_instance_uid or _uid(seed, label, "sop" + variant))
    rng = np.random.default_rng([seed, 7919])
    when = _dt.datetime(2024, 1, 1, 8, 0) + _dt.timedelta(
        days=int(rng.integers(0, 365)), minutes=int(rng.integers(0, 480))
    )
    inj = when - _dt.timedelta(minutes=int(rng.integers(15, 25)))
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(NM_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient (clearly fake)
    ds.PatientName = patient_name or fake_name
    ds.PatientID = patient_id or fake_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom, no real patient"
    # General Study
    ds.StudyInstanceUID = study_instance_uid or _uid(seed, label, "study")
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"P{seed % 100000:05d}"
    ds.AccessionNumber = f"PH{fake_id[-8:]}"
    ds.StudyDescription = "NM THYROID SCINTIGRAPHY (PHANTOM)"
    # General Series
    ds.Modality = "NM"
    ds.SeriesInstanceUID = series_instance_uid or _uid(seed, label, "series" + variant)
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = "THYROID ANT STATIC" if not dynamic else "THYROID DYNAMIC"
    ds.BodyPartExamined = "THYROID"
    # NM/PET Patient Orientation
    orient = _code("102538003", "SCT", "recumbent")
    orient.PatientOrientationModifierCodeSequence = Sequence([_code("40199007", "SCT", "supine")])
    ds.PatientOrientationCodeSequence = Sequence([orient])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code("102540008", "SCT", "headfirst")])
    # Frame of Reference
    ds.FrameOfReferenceUID = _uid(seed, label, "for")
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "Thyroid AI Node phantom"
    ds.ManufacturerModelName = "nm-thyroid-phantom"
    ds.InstitutionName = "Phantom Institution"
    ds.StationName = "PHANTOM"
    ds.SoftwareVersions = "1"
    # General Image / Acquisition
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # anterior view: columns run to the patient's left
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DYNAMIC" if dynamic else "STATIC", "EMISSION"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel / NM Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = matrix
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    spacing = _PIXEL_SPACING_MM * 128.0 / matrix
    ds.PixelSpacing = [f"{spacing:.4g}", f"{spacing:.4g}"]
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    ds.PixelData = pixels.tobytes()
    # Multi-frame / NM Multi-frame
    ds.NumberOfFrames = frames
    ds.NumberOfEnergyWindows = 1
    ds.EnergyWindowVector = [1] * frames
    if dynamic:
        ds.FrameIncrementPointer = [
            pydicom.tag.Tag("EnergyWindowVector"),
            pydicom.tag.Tag("DetectorVector"),
            pydicom.tag.Tag("PhaseVector"),
            pydicom.tag.Tag("TimeSliceVector"),
        ]
        ds.NumberOfDetectors = 1
        ds.DetectorVector = [1] * frames
        ds.NumberOfPhases = 1
        ds.PhaseVector = [1] * frames
        ds.TimeSliceVector = list(range(1, frames + 1))
        phase = Dataset()
        phase.PhaseDelay = 0
        phase.ActualFrameDuration = 60000
        phase.PauseBetweenFrames = 0
        phase.NumberOfFramesInPhase = frames
        phase.TriggerVector = []
        phase.NumberOfTriggersInPhase = 0
        ds.PhaseInformationSequence = Sequence([phase])
    else:
        ds.FrameIncrementPointer = [
            pydicom.tag.Tag("EnergyWindowVector"),
            pydicom.tag.Tag("DetectorVector"),
        ]
        ds.NumberOfDetectors = frames
        ds.DetectorVector = list(range(1, frames + 1))
        ds.ActualFrameDuration = 300000  # 5 min static acquisition
    # NM Image
    ds.CountsAccumulated = int(pixels.sum(dtype=np.int64) // frames)
    ds.AcquisitionTerminationCondition = "TIME"
    # NM Isotope
    window = Dataset()
    rng_item = Dataset()
    rng_item.EnergyWindowLowerLimit = "126.45"
    rng_item.EnergyWindowUpperLimit = "154.55"
    window.EnergyWindowRangeSequence = Sequence([rng_item])
    window.EnergyWindowName = "Tc99m 20%"
    ds.EnergyWindowInformationSequence = Sequence([window])
    radio = Dataset()
    radio.RadiopharmaceuticalRoute = "INTRAVENOUS"
    radio.RadiopharmaceuticalStartTime = inj.strftime("%H%M%S")
    radio.RadionuclideTotalDose = f"{rng.uniform(74.0, 185.0):.1f}"
    radio.Radiopharmaceutical = "Tc-99m pertechnetate"
    radio.RadionuclideCodeSequence = Sequence([_code("72454006", "SCT", "^99m^Technetium")])
    radio.AdministrationRouteCodeSequence = Sequence([_code("47625008", "SCT", "Intravenous route")])
    radio.RadiopharmaceuticalCodeSequence = Sequence(
        [_code("19495007", "SCT", "Sodium pertechnetate Tc^99m^")]
    )
    ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
    # NM Detector: one item per detector head
    detectors = []
    for d in range(int(ds.NumberOfDetectors)):
        item = Dataset()
        item.CollimatorGridName = "PINHOLE 4MM"
        item.CollimatorType = "PINH"
        item.FieldOfViewShape = "RECTANGLE"
        item.FieldOfViewDimensions = [530, 390]
        item.ZoomFactor = [f"{530.0 / (spacing * matrix):.4g}"] * 2
        item.FocalDistance = None
        item.ImagePositionPatient = None  # planar: no position in the patient
        item.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        view_value, view_meaning = _VIEWS[0 if dynamic else d]
        item.ViewCodeSequence = Sequence([_code(view_value, "SCT", view_meaning)])
        detectors.append(item)
    ds.DetectorInformationSequence = Sequence(detectors)
    return ds


def write_nm_study(out_dir: Path, label: str, seed: int, **kw: object) -> Path:
    """Write one phantom NM image as ``<out_dir>/<SOPInstanceUID>.dcm``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Created if missing.
    label, seed, **kw
        As for :func:`nm_phantom_dataset`.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    ds = nm_phantom_dataset(label, seed, **kw)  # type: ignore[arg-type]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
