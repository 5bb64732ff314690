"""Non-contrast chest CT phantoms with spherical lung nodules, and writing them as DICOM studies.

Geometry
--------
Arrays are indexed ``(k, r, c)`` in the *canonical* orientation: axis 0 runs to +S (superior,
LPS +z), axis 1 to +P (posterior, +y), axis 2 to the patient's left (+x); ``affine`` maps
``[k, r, c, 1]`` to LPS millimetres. The volume's centre lies at LPS (0, 0, 0).

Anatomy (``kind="chest"``)
--------------------------
Air (-1000 HU) outside an elliptical body (subcutaneous fat -100 HU around 40 HU soft tissue);
two lung fields (-850 HU with smooth texture) either side of a mediastinum and heart (40 HU),
tapering toward the base and the apex along axis 0; a vertebra (450 HU, 700 HU cortex) posteriorly;
thin rib arcs at regular levels; Gaussian noise (sigma 15-25 HU). Sizes scale with the field of
view, so one function serves small (~200 mm) and full-size (~350 mm, 512 x 512) volumes.
``kind="abdomen"``: the same body with a liver, small bowel gas pockets and no lungs.

Nodules (a phantom convention, not biology)
-------------------------------------------
Spheres inside one lung, >= 3 mm from the lung boundary and >= 4 mm from each other, rendered with
partial-volume anti-aliasing. RAI-refractory nodules are solid (about +35 HU); iodine-avid
(non-refractory) ones are part-solid (about -300 HU): a visible, learnable difference that stands
in for whatever the paper's network learnt.

Stored values are integers in [-1024, 3071] (12-bit unsigned pixels, rescale intercept -1024), and
``ChestPhantom.hu`` holds exactly those integers, so a written and re-read study matches it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2.1"
HU_MIN: Final[int] = -1024
HU_MAX: Final[int] = 3071
_UID_TAG: Final[str] = "thyroid-node-phantom-ct-v1"
_MARGIN_MM: Final[float] = 3.0  # nodule to lung boundary
_GAP_MM: Final[float] = 4.0  # nodule to nodule (surface to surface)
_TEXTURE_MM: Final[float] = 6.0  # lung texture grain


@dataclass(frozen=True)
class PhantomNodule:
    """One spherical lung nodule (ground truth)."""

    centre_mm: tuple[float, float, float]  # LPS patient coordinates, mm
    diameter_mm: float
    refractory: bool  # ground-truth RAI-refractory label
    side: str  # "right" | "left" (which lung)


@dataclass(frozen=True)
class ChestPhantom:
    """A phantom CT volume on the canonical grid, with its ground truth."""

    hu: np.ndarray  # float32 (k, r, c), canonical orientation, Hounsfield units (integers)
    affine: np.ndarray  # 4x4, canonical index -> LPS mm
    nodules: tuple[PhantomNodule, ...]
    labels: np.ndarray  # int16 (k, r, c): 0 background, i = voxel centre inside nodule i (1-based)
    lungs: np.ndarray  # bool (k, r, c), ground-truth lung fields (nodules included)


@dataclass(frozen=True)
class CTPhantomStudy:
    """What :func:`write_ct_study` wrote."""

    paths: list[Path]  # files written (in the order written)
    study_instance_uid: str
    series_instance_uid: str  # the main (analysable) series
    nodules: tuple[PhantomNodule, ...]
    phantom: ChestPhantom  # on the canonical grid of the written main series
    extra_series: dict[str, str]  # role -> SeriesInstanceUID (localizer, coronal, thick)


# --- anatomy ---------------------------------------------------------------------------------


def _lerp(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``coords``."""
    i0 = np.clip(np.floor(coords).astype(np.intp), 0, a.shape[axis] - 2)
    w = (coords - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(coords)
    w = w.reshape(shape)
    out: np.ndarray = np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i0 + 1, axis=axis) * w
    return out


def _lung_scale(u: np.ndarray) -> np.ndarray:
    """Cross-section scale of the lungs at height ``u`` (0 base, 1 apex): dome below, taper above."""
    base = np.sqrt(np.clip(u / 0.12, 0.0, 1.0))
    apex = np.sqrt(np.clip(1.0 - np.clip((u - 0.5) / 0.5, 0.0, None) ** 2, 0.0, None))
    out: np.ndarray = np.where((u >= 0.0) & (u <= 1.0), base * apex, 0.0)
    return out


def _affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    sk, sr, sc = spacing
    origin = [-(shape[2] - 1) / 2 * sc, -(shape[1] - 1) / 2 * sr, -(shape[0] - 1) / 2 * sk]
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, sc], [0.0, sr, 0.0], [sk, 0.0, 0.0]]
    affine[:3, 3] = origin
    return affine


class _Body:
    """2D maps of one body cross-section (mm coordinates), shared by every slice."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray) -> None:
        _, rows, cols = shape
        self.x = (affine[0, 3] + np.arange(cols) * affine[0, 2]).astype(np.float32)[None, :]
        self.y = (affine[1, 3] + np.arange(rows) * affine[1, 1]).astype(np.float32)[:, None]
        self.bx = 0.44 * cols * affine[0, 2]
        self.by = min(0.7 * self.bx, 0.45 * rows * affine[1, 1])

    def q(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        """Squared normalised radius of an ellipse centred at ``(cx, cy)`` (body-relative units)."""
        out: np.ndarray = ((self.x - cx * self.bx) / (ax * self.bx)) ** 2 + (
            (self.y - cy * self.by) / (ay * self.by)
        ) ** 2
        return out

    def base(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        """The slice-independent part: air, fat, soft tissue, vertebra (and a liver)."""
        img = np.full(np.broadcast_shapes(self.x.shape, self.y.shape), -1000.0, dtype=np.float32)
        fat = 0.08 * self.bx
        img[self.q(0, 0, 1, 1) <= 1] = -100.0
        inner = ((self.x / (self.bx - fat)) ** 2 + (self.y / (self.by - fat)) ** 2) <= 1
        img[inner] = 40.0
        if kind == "abdomen":
            img[self.q(-0.3, -0.1, 0.5, 0.62) <= 1] = 60.0  # liver
        img[self.q(0, 0.62, 0.11, 0.16) <= 1] = 700.0  # vertebral body, cortex
        img[self.q(0, 0.62, 0.085, 0.12) <= 1] = 450.0
        return img


def _render_nodules(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    nodules: Sequence[PhantomNodule],
    rng: np.random.Generator,
) -> None:
    """Blend each nodule into ``hu`` (partial volume) and mark ``labels``, within its box only."""
    spacing = np.array([affine[2, 0], affine[1, 1], affine[0, 2]])
    inv = np.linalg.inv(affine)
    for i, nod in enumerate(nodules, start=1):
        centre = (inv @ np.array([*nod.centre_mm, 1.0]))[:3]
        radius = nod.diameter_mm / 2
        reach = radius / spacing + 1.5
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, hu.shape)
        if np.any(hi <= lo):
            logger.warning("nodule %d lies outside the volume; not rendered", i)
            continue
        d = [((np.arange(lo[a], hi[a]) - centre[a]) * spacing[a]).astype(np.float32) for a in range(3)]
        dk, dr, dc = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
        dist = np.sqrt(dk**2 + dr**2 + dc**2)
        # voxel extent along the radial direction (box width), for sub-voxel boundaries
        width = (np.abs(dk) * spacing[0] + np.abs(dr) * spacing[1] + np.abs(dc) * spacing[2]) / np.maximum(
            dist, 1e-6
        )
        frac = np.clip(0.5 - (dist - radius) / np.maximum(width, 1e-6), 0.0, 1.0)
        if nod.refractory:  # solid
            value = rng.uniform(25.0, 45.0) + rng.normal(0.0, 8.0, dist.shape)
        else:  # part-solid
            value = rng.uniform(-340.0, -260.0) + rng.normal(0.0, 25.0, dist.shape)
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        hu[box] = hu[box] * (1.0 - frac) + value.astype(np.float32) * frac
        labels[box][dist <= radius] = i


def _place_nodules(
    rng: np.random.Generator,
    lungs: np.ndarray,
    affine: np.ndarray,
    lung_centres_x: tuple[float, float],
    count: int,
    diameter_range: tuple[float, float],
    refractory_fraction: float,
) -> tuple[PhantomNodule, ...]:
    """Draw ``count`` non-overlapping nodules, each inside one lung with a margin."""
    spacing = np.array([affine[2, 0], affine[1, 1], affine[0, 2]])
    lung_idx = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if count and len(lung_idx) == 0:
        raise ValueError("no lungs to place nodules in")
    exact = refractory_fraction * count
    n_ref = int(np.floor(exact)) + int(rng.random() < exact - np.floor(exact))
    flags = rng.permutation(np.array([True] * n_ref + [False] * (count - n_ref), dtype=bool))
    placed: list[PhantomNodule] = []
    for j in range(count):
        for attempt in range(3000):
            if attempt % 60 == 0:
                diameter = float(rng.uniform(*diameter_range))
                side = "right" if rng.random() < 0.5 else "left"
            radius = diameter / 2
            check = radius + _MARGIN_MM + 0.5 * spacing.max()
            reach = np.ceil(check / spacing).astype(int)
            idx = np.array(
                [rng.uniform(lung_idx[0], lung_idx[-1] + 1), rng.uniform(0, lungs.shape[1]), 0.0]
            ) - 0.5
            x_mm = lung_centres_x[0 if side == "right" else 1] + rng.normal(0.0, 0.25 * abs(lung_centres_x[0]))
            idx[2] = (x_mm - affine[0, 3]) / spacing[2]
            near = np.round(idx).astype(int)
            if np.any(near - reach < 0) or np.any(near + reach + 1 > lungs.shape):
                continue
            box = tuple(slice(n - r, n + r + 1) for n, r in zip(near, reach))
            d = [(np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, idx, spacing)]
            ball = (d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2) <= check**2
            if not lungs[box][ball].all():
                continue
            centre = (affine @ np.array([*idx, 1.0]))[:3]
            if any(
                np.linalg.norm(centre - np.array(p.centre_mm)) < radius + p.diameter_mm / 2 + _GAP_MM for p in placed
            ):
                continue
            c_mm = (round(float(centre[0]), 3), round(float(centre[1]), 3), round(float(centre[2]), 3))
            placed.append(PhantomNodule(c_mm, round(diameter, 3), bool(flags[j]), side))
            break
        else:
            raise ValueError(f"could not place nodule {j + 1} of {count} (lungs too small for {diameter_range} mm)")
    return tuple(placed)


def chest_phantom(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    nodules: int | Sequence[PhantomNodule] = 4,
    diameter_range: tuple[float, float] = (3.0, 20.0),
    refractory_fraction: float = 0.5,
    kind: str = "chest",
) -> ChestPhantom:
    """Draw a phantom chest (or abdomen) CT volume with lung nodules.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness.
    shape : tuple of int
        ``(slices, rows, columns)`` of the canonical grid.
    spacing : tuple of float
        ``(slice, row, column)`` spacing, mm.
    nodules : int or sequence of PhantomNodule
        How many nodules to draw at random, or the nodules to render as given.
    diameter_range : tuple of float
        Random diameters are uniform in this range, mm.
    refractory_fraction : float
        Share of random nodules that are RAI-refractory (rounded at random to a count).
    kind : str
        ``"chest"`` or ``"abdomen"`` (no lungs, hence no nodules).

    Returns
    -------
    ChestPhantom
    """
    if kind not in ("chest", "abdomen"):
        raise ValueError(f"unknown phantom kind {kind!r}; expected 'chest' or 'abdomen'")
    if kind == "abdomen" and not isinstance(nodules, int) and len(nodules) > 0:
        raise ValueError("an abdomen phantom has no lungs for nodules")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    affine = _affine(shape, spacing)
    body = _Body(shape, affine)
    base = body.base(kind, rng)
    hu = np.empty(shape, dtype=np.float32)
    lungs = np.zeros(shape, dtype=bool)
    labels = np.zeros(shape, dtype=np.int16)
    z = affine[2, 3] + np.arange(shape[0]) * spacing[0]
    length = max(z[-1] - z[0], spacing[0])
    u = (z - (z[0] + 0.03 * length)) / (0.95 * length)  # 0 lung base .. 1 apex
    scale = _lung_scale(u)
    heart_u = np.clip(1.0 - ((u - 0.22) / 0.33) ** 2, 0.0, None)  # an ellipsoid in the lower half
    lung_q = (body.q(-0.45, 0.06, 0.31, 0.64), body.q(0.45, 0.06, 0.31, 0.64))
    heart_q = body.q(0.1, -0.2, 0.3, 0.36)
    fat = 0.08 * body.bx
    rib_q = (body.x / (body.bx - fat - 0.07 * body.bx)) ** 2 + (body.y / (body.by - fat - 0.07 * body.bx)) ** 2
    rib_band = (np.abs(np.sqrt(rib_q) - 1.0) < 0.025) & (body.y > -0.3 * body.by)
    rib_phase = rng.uniform(0.0, 30.0)
    # lung texture: a coarse random field, interpolated slice by slice
    coarse = [int(np.ceil(n * s / _TEXTURE_MM)) + 2 for n, s in zip(shape, spacing)]
    field = rng.normal(0.0, 45.0, coarse).astype(np.float32)
    rows_c = np.arange(shape[1]) * spacing[1] / _TEXTURE_MM
    cols_c = np.arange(shape[2]) * spacing[2] / _TEXTURE_MM
    gas = []
    if kind == "abdomen":  # a few small bowel gas pockets (ellipsoids), each a few mL
        for _ in range(int(rng.integers(3, 7))):
            gas.append((rng.uniform(-0.1, 0.6) * body.bx, rng.uniform(-0.6, 0.2) * body.by,
                        rng.uniform(z[0], z[-1]), rng.uniform(4.0, 10.0)))
    for k in range(shape[0]):
        sl = base.copy()
        if ((z[k] - rib_phase) % 30.0) < 9.0:
            sl[rib_band] = 600.0
        if kind == "chest" and scale[k] > 0:
            lung = (lung_q[0] <= scale[k] ** 2) | (lung_q[1] <= scale[k] ** 2)
            if heart_u[k] > 0:
                lung &= heart_q > heart_u[k]
            t = k * spacing[0] / _TEXTURE_MM
            plane = _lerp(field, np.array([t]), 0)[0]
            texture = _lerp(_lerp(plane, rows_c, 0), cols_c, 1)
            sl[lung] = -850.0 + texture[lung]
            lungs[k] = lung
        for gx, gy, gz, gr in gas:
            dz = (z[k] - gz) / gr
            if abs(dz) < 1:
                sl[((body.x - gx) ** 2 + (body.y - gy) ** 2) <= (gr**2) * (1 - dz * dz)] = -1000.0
        hu[k] = sl
    if isinstance(nodules, int):
        centres_x = (-0.45 * body.bx, 0.45 * body.bx)
        count = nodules if kind == "chest" else 0
        placed = _place_nodules(rng, lungs, affine, centres_x, count, diameter_range, refractory_fraction)
    else:
        placed = tuple(nodules)
    _render_nodules(hu, labels, affine, placed, rng)
    sigma = rng.uniform(15.0, 25.0)
    for k in range(shape[0]):  # noise and quantisation, slice by slice (no full-volume temporaries)
        plane = hu[k]
        plane += rng.standard_normal(plane.shape, dtype=np.float32) * np.float32(sigma)
        np.rint(plane, out=plane)
        np.clip(plane, HU_MIN, HU_MAX, out=plane)
    lungs |= labels > 0
    logger.debug("CT phantom %s %s: %d nodule(s)", kind, shape, len(placed))
    return ChestPhantom(hu=hu, affine=affine, nodules=placed, labels=labels, lungs=lungs)


# --- DICOM -----------------------------------------------------------------------------------


def _ds_str(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(**attrs: object) -> DicomSequence:
    """A one-item sequence; numbers given as text become floats where the VR is binary (FD, FL)."""
    item = Dataset()
    for key, val in attrs.items():
        if dictionary_VR(key) in ("FD", "FL"):
            val = [float(v) for v in val] if isinstance(val, list) else float(val)  # type: ignore[arg-type]
        setattr(item, key, val)
    return DicomSequence([item])


@dataclass(frozen=True)
class _Slice:
    """One image to write: stored pixels and where they lie."""

    pixels: np.ndarray  # uint16 (rows, cols), stored values
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]  # PixelSpacing (between rows, between columns)
    thickness: float


class _Writer:
    """Common attributes of every image of one phantom study."""

    def __init__(self, seed: int, variant: str, kind: str, body_part: str | None, feet_first: bool) -> None:
        self.seed, self.variant = seed, variant
        digest = hashlib.sha256(f"{_UID_TAG}|{seed}".encode()).hexdigest()[:8].upper()
        self.patient_id, self.patient_name = f"PHANTOM-CT-{digest}", f"PHANTOM^CT{digest}"
        rng = np.random.default_rng([seed, 104729])
        when = _dt.datetime(2024, 1, 1, 8, 0) + _dt.timedelta(
            days=int(rng.integers(0, 365)), minutes=int(rng.integers(0, 480))
        )
        self.date, self.time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
        self.kind, self.body_part, self.feet_first = kind, body_part, feet_first
        self.study_uid = self.uid("study")
        self.for_uid = self.uid("for")

    def uid(self, what: str) -> str:
        return str(generate_uid(entropy_srcs=[_UID_TAG, str(self.seed), self.variant, what]))

    def dataset(self, sop_class: str, sop_uid: str, series_uid: str, series_number: int, description: str) -> Dataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = self.date, self.time
        ds.PatientName, ds.PatientID = self.patient_name, self.patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "Synthetic phantom, no real patient"
        ds.StudyInstanceUID = self.study_uid
        ds.StudyDate, ds.StudyTime = self.date, self.time
        ds.ReferringPhysicianName = ""
        ds.StudyID = f"C{self.seed % 100000:05d}"
        ds.AccessionNumber = f"PC{self.patient_id[-8:]}"
        ds.StudyDescription = "CT CHEST NON-CONTRAST (PHANTOM)" if self.kind == "chest" else "CT ABDOMEN (PHANTOM)"
        ds.Modality = "CT"
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
        ds.SeriesDate, ds.SeriesTime = self.date, self.time
        ds.SeriesDescription = description
        if self.body_part is not None:
            ds.BodyPartExamined = self.body_part
        ds.PatientPosition = "FFS" if self.feet_first else "HFS"
        ds.FrameOfReferenceUID = self.for_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "Thyroid AI Node phantom"
        ds.ManufacturerModelName = "ct-chest-phantom"
        ds.DeviceSerialNumber = "0001"
        ds.SoftwareVersions = "1"
        ds.InstitutionName = "Phantom Institution"
        ds.StationName = "PHANTOM"
        ds.ContentDate, ds.ContentTime = self.date, self.time
        ds.AcquisitionDate, ds.AcquisitionTime = self.date, self.time
        ds.BurnedInAnnotation = "NO"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        return ds

    def ct_image(self, ds: Dataset, sl: _Slice, image_type: list[str], instance: int, tilt_deg: float) -> Dataset:
        """Fill the per-image attributes of a (single-frame) CT Image."""
        ds.ImageType = image_type
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        ds.KVP = "120"
        ds.ConvolutionKernel = "B30f"
        ds.GantryDetectorTilt = _ds_str(tilt_deg)
        ds.ImagePositionPatient = [_ds_str(v) for v in sl.position]
        ds.ImageOrientationPatient = [_ds_str(v) for v in sl.orientation]
        ds.PixelSpacing = [_ds_str(v) for v in sl.spacing]
        ds.SliceThickness = _ds_str(sl.thickness)
        ds.SliceLocation = _ds_str(sl.position[2])
        ds.RescaleIntercept, ds.RescaleSlope = str(HU_MIN), "1"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.Rows, ds.Columns = sl.pixels.shape
        ds.PixelData = np.ascontiguousarray(sl.pixels, dtype=np.uint16).tobytes()
        return ds


def _stored(hu: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.clip(np.rint(hu) - HU_MIN, 0, HU_MAX - HU_MIN).astype(np.uint16)
    return out


def _axial_slices(
    phantom: ChestPhantom, feet_first: bool, tilt_deg: float, thickness: float, group: int = 1
) -> list[_Slice]:
    """Axial images of the phantom in canonical slice order (``group`` slices averaged into one)."""
    aff = phantom.affine
    n = phantom.hu.shape[0] // group
    shear = np.tan(np.deg2rad(tilt_deg))
    out = []
    for j in range(n):
        block = phantom.hu[j * group : (j + 1) * group]
        hu = block[0] if group == 1 else block.mean(axis=0)
        z = aff[2, 3] + (j * group + (group - 1) / 2) * aff[2, 0]
        y = aff[1, 3] + (z - aff[2, 3]) * shear
        if feet_first:  # rows run to the patient's right: columns mirrored, first column at max x
            x = aff[0, 3] + (hu.shape[1] - 1) * aff[0, 2]
            orient: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
            hu = hu[:, ::-1]
        else:
            x, orient = aff[0, 3], (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        out.append(_Slice(_stored(hu), (x, y, z), orient, (aff[1, 1], aff[0, 2]), thickness))
    return out


def _coronal_slices(phantom: ChestPhantom, count: int) -> list[_Slice]:
    """Coronal reformats (rows from superior to inferior, columns to the patient's left)."""
    aff, shape = phantom.affine, phantom.hu.shape
    top = aff[2, 3] + (shape[0] - 1) * aff[2, 0]
    rows = np.unique(np.linspace(0.15 * shape[1], 0.85 * shape[1], count).astype(int))
    return [
        _Slice(_stored(phantom.hu[::-1, r, :]), (aff[0, 3], aff[1, 3] + r * aff[1, 1], top),
               (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (aff[2, 0], aff[0, 2]), aff[1, 1])
        for r in rows
    ]


def _localizer(phantom: ChestPhantom) -> _Slice:
    """An antero-posterior projection (a topogram), coronal orientation."""
    aff, shape = phantom.affine, phantom.hu.shape
    path = np.clip(phantom.hu + 1000.0, 0.0, None).sum(axis=1)[::-1] * aff[1, 1] / 1000.0  # water-equivalent mm
    scaled = path / max(float(path.max()), 1.0) * 3000.0 + HU_MIN
    top = aff[2, 3] + (shape[0] - 1) * aff[2, 0]
    return _Slice(_stored(scaled), (aff[0, 3], 0.0, top), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
                  (aff[2, 0], aff[0, 2]), 1.0)


def _enhanced(writer: _Writer, slices: list[_Slice], sop_uid: str, series_uid: str, description: str,
              tilt_deg: float) -> Dataset:
    """One Enhanced CT Image holding ``slices`` as frames, in the given order."""
    ds = writer.dataset(ENHANCED_CT_IMAGE_STORAGE, sop_uid, series_uid, 3, description)
    del ds.AcquisitionDate, ds.AcquisitionTime
    first = slices[0]
    frame_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    acquired = f"{writer.date}{writer.time}"
    ds.ImageType = frame_type
    ds.InstanceNumber, ds.AcquisitionNumber = 1, 1
    ds.AcquisitionDateTime, ds.AcquisitionDuration = acquired, 5.0
    ds.ContentQualification = "RESEARCH"
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.PresentationLUTShape, ds.LossyImageCompression = "IDENTITY", "00"
    ds.AcquisitionContextSequence = DicomSequence([])
    dim_uid = writer.uid(f"dimension/{series_uid}")
    ds.DimensionOrganizationSequence = _item(DimensionOrganizationUID=dim_uid)
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = _item(
        DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00200032, FunctionalGroupPointer=0x00209113,
        DimensionDescriptionLabel="Image Position",
    )
    anatomy = _code("51185008", "SCT", "Thorax") if writer.kind == "chest" else _code("818981001", "SCT", "Abdomen")
    shared = Dataset()
    shared.PixelMeasuresSequence = _item(
        PixelSpacing=[_ds_str(v) for v in first.spacing], SliceThickness=_ds_str(first.thickness)
    )
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[_ds_str(v) for v in first.orientation])
    shared.PixelValueTransformationSequence = _item(RescaleIntercept=str(HU_MIN), RescaleSlope="1", RescaleType="HU")
    shared.FrameVOILUTSequence = _item(WindowCenter="-600", WindowWidth="1500")
    shared.FrameAnatomySequence = _item(AnatomicRegionSequence=DicomSequence([anatomy]), FrameLaterality="U")
    shared.IrradiationEventIdentificationSequence = _item(IrradiationEventUID=writer.uid(f"event/{series_uid}"))
    shared.CTImageFrameTypeSequence = _item(
        FrameType=frame_type, PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
    )
    shared.CTAcquisitionTypeSequence = _item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
    shared.CTAcquisitionDetailsSequence = _item(
        DataCollectionDiameter="500", RevolutionTime="0.5", TotalCollimationWidth="38.4",
        SingleCollimationWidth="0.6", TableHeight="150", GantryDetectorTilt=_ds_str(tilt_deg), RotationDirection="CW",
    )
    shared.CTTableDynamicsSequence = _item(TableSpeed="46", TableFeedPerRotation="23", SpiralPitchFactor="0.6")
    shared.CTGeometrySequence = _item(DistanceSourceToDetector="1085.6", DistanceSourceToDataCollectionCenter="595")
    fov = first.pixels.shape[1] * first.spacing[1]
    shared.CTReconstructionSequence = _item(
        ReconstructionAlgorithm="FILTER_BACK_PROJ", ConvolutionKernel="B30f", ConvolutionKernelGroup="SOFT_TISSUE",
        ReconstructionDiameter=_ds_str(fov), ReconstructionPixelSpacing=[_ds_str(v) for v in first.spacing],
        ReconstructionAngle=360.0, ImageFilter="NONE",
    )
    shared.CTExposureSequence = _item(
        ExposureTimeInms=500.0, XRayTubeCurrentInmA=200.0, ExposureInmAs=100.0, ExposureModulationType="NONE",
        CTDIvol=6.0, CTDIPhantomTypeCodeSequence=DicomSequence([_code("113691", "DCM", "IEC Body Dosimetry Phantom")]),
    )
    shared.CTXRayDetailsSequence = _item(KVP="120", FocalSpots=["1.2"], FilterType="BODY", FilterMaterial=["ALUMINUM"])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ranks = np.argsort(np.argsort([s.position[2] for s in slices]))  # stack position: ascending z
    frames = []
    for j, sl in enumerate(slices):
        item = Dataset()
        item.FrameContentSequence = _item(
            FrameAcquisitionNumber=1, FrameReferenceDateTime=acquired, FrameAcquisitionDateTime=acquired,
            FrameAcquisitionDuration=500.0, StackID="1", InStackPositionNumber=int(ranks[j]) + 1,
            DimensionIndexValues=[int(ranks[j]) + 1],
        )
        item.PlanePositionSequence = _item(ImagePositionPatient=[_ds_str(v) for v in sl.position])
        centre = [_ds_str(0.0), _ds_str(0.0), _ds_str(sl.position[2])]
        item.CTPositionSequence = _item(
            TablePosition=_ds_str(sl.position[2]), ReconstructionTargetCenterPatient=centre,
            DataCollectionCenterPatient=centre,
        )
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.NumberOfFrames = len(slices)
    ds.Rows, ds.Columns = first.pixels.shape
    ds.PixelData = np.stack([s.pixels for s in slices]).astype(np.uint16).tobytes()
    return ds


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> Path:
    ts = UID(transfer_syntax)
    if ts.is_compressed:
        ds.compress(ts)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_study(
    out_dir: Path,
    seed: int,
    *,
    rows: int = 256,
    slices: int = 80,
    pixel_mm: float = 0.8,
    slice_mm: float = 1.25,
    nodules: int | Sequence[PhantomNodule] = 4,
    diameter_range: tuple[float, float] = (5.0, 20.0),
    kind: str = "chest",
    feet_first: bool = False,
    order: str = "ascending",
    transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
    gantry_tilt_deg: float = 0.0,
    enhanced: bool = False,
    body_part: str | None = "CHEST",
    extra_series: Sequence[str] = (),
    uneven_spacing: bool = False,
) -> CTPhantomStudy:
    """Write a phantom CT study: one analysable axial series, optionally with distractor series.

    Parameters
    ----------
    out_dir : pathlib.Path
        Created if missing; files are named ``<SOPInstanceUID>.dcm``.
    seed : int
        Seeds the phantom (the same seed and grid give the same phantom whatever the other options),
        the UIDs (which also depend on every option) and the fake patient.
    rows, slices, pixel_mm, slice_mm : int, int, float, float
        Matrix (rows = columns), slice count, pixel spacing and slice spacing (= thickness), mm.
    nodules, diameter_range, kind
        As for :func:`chest_phantom`.
    feet_first : bool
        PatientPosition FFS, rows running to the patient's right (ImageOrientationPatient
        ``[-1, 0, 0, 0, 1, 0]``, so the slice normal points to the feet).
    order : str
        Writing (acquisition) order: ``"ascending"`` (inferior to superior), ``"descending"``, or
        ``"shuffled"`` (also scrambles the Instance Numbers, which then do not sort the slices).
    transfer_syntaxes : sequence of str
        Cycled slice by slice (lossless ones keep the HU exact); an Enhanced CT uses the first.
    gantry_tilt_deg : float
        Non-zero: GantryDetectorTilt set and positions sheared along y (pixels are not re-sampled).
    enhanced : bool
        Write the main series as one Enhanced CT Image (multi-frame) instead.
    body_part : str or None
        BodyPartExamined (omitted when None).
    extra_series : sequence of str
        Any of ``"localizer"`` (one topogram), ``"coronal"`` (~40 reformats), ``"thick"`` (5 mm axial).
    uneven_spacing : bool
        Leave out the middle slice (one doubled gap); ``phantom`` still holds every slice.

    Returns
    -------
    CTPhantomStudy
    """
    if order not in ("ascending", "descending", "shuffled"):
        raise ValueError(f"unknown order {order!r}")
    unknown = set(extra_series) - {"localizer", "coronal", "thick"}
    if unknown:
        raise ValueError(f"unknown extra series {sorted(unknown)}")
    phantom = chest_phantom(
        np.random.default_rng([seed, 7127]), shape=(slices, rows, rows), spacing=(slice_mm, pixel_mm, pixel_mm),
        nodules=nodules, diameter_range=diameter_range, kind=kind,
    )
    variant = repr((rows, slices, pixel_mm, slice_mm, nodules, diameter_range, kind, feet_first, order,
                    tuple(transfer_syntaxes), gantry_tilt_deg, enhanced, body_part, tuple(extra_series),
                    uneven_spacing))
    writer = _Writer(seed, variant, kind, body_part, feet_first)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31])
    title = "Chest" if kind == "chest" else "Abdomen"
    paths: list[Path] = []
    extras: dict[str, str] = {}

    def write_series(role: str, number: int, description: str, images: list[_Slice], image_type: list[str],
                     tilt: float = 0.0, syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
                     numbers: Sequence[int] | None = None) -> str:
        series_uid = writer.uid(f"series/{role}")
        for i, sl in enumerate(images):
            ds = writer.dataset(CT_IMAGE_STORAGE, writer.uid(f"sop/{role}/{i}"), series_uid, number, description)
            writer.ct_image(ds, sl, image_type, numbers[i] if numbers else i + 1, tilt)
            paths.append(_save(ds, out_dir / f"{ds.SOPInstanceUID}.dcm", syntaxes[i % len(syntaxes)]))
        return series_uid

    if "localizer" in extra_series:
        extras["localizer"] = write_series("localizer", 1, "Topogram", [_localizer(phantom)],
                                           ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    if "thick" in extra_series:
        group = max(1, int(round(5.0 / slice_mm)))
        thick = _axial_slices(phantom, feet_first, 0.0, group * slice_mm, group)
        extras["thick"] = write_series("thick", 2, f"{title} {group * slice_mm:g} mm", thick,
                                       ["ORIGINAL", "PRIMARY", "AXIAL"])
    main = _axial_slices(phantom, feet_first, gantry_tilt_deg, slice_mm)
    if uneven_spacing:
        del main[len(main) // 2]
    if order == "descending":
        main = main[::-1]
    elif order == "shuffled":
        main = [main[i] for i in rng.permutation(len(main))]
    instances = [int(i) + 1 for i in (rng.permutation(len(main)) if order == "shuffled" else range(len(main)))]
    description = f"{title} {slice_mm:g} mm"
    if enhanced:
        series_uid = writer.uid("series/main")
        ds = _enhanced(writer, main, writer.uid("sop/main/enhanced"), series_uid, description, gantry_tilt_deg)
        paths.append(_save(ds, out_dir / f"{ds.SOPInstanceUID}.dcm", transfer_syntaxes[0]))
    else:
        series_uid = write_series("main", 3, description, main, ["ORIGINAL", "PRIMARY", "AXIAL"],
                                  gantry_tilt_deg, transfer_syntaxes, instances)
    if "coronal" in extra_series:
        extras["coronal"] = write_series("coronal", 4, f"{title} coronal", _coronal_slices(phantom, 40),
                                         ["DERIVED", "SECONDARY", "REFORMATTED"])
    logger.info("wrote CT phantom study (%d files, %d nodules)", len(paths), len(phantom.nodules))
    return CTPhantomStudy(paths, writer.study_uid, series_uid, phantom.nodules, phantom, extras)
