"""From CT instances to a volume: series selection, geometry checks, HU, 1 mm resampling, lungs.

Grids
-----
* *source* grid: ``(slice, row, column)`` of the chosen series, slices sorted by their position
  along the slice normal (the cross product of the row and column cosines), never by Instance
  Number or arrival order; ``CTVolume.slices[k]`` is source slice ``k``.
* *canonical* grid: the source grid with some axes reversed (``CTVolume.flips``), so that axis 0
  runs to +S (superior), axis 1 to +P (posterior) and axis 2 to the patient's left (LPS +z, +y, +x).
  Only flips, never transposes: boxes and masks move between the two grids by reversing indices
  (:func:`canonical_to_source`, :func:`canonical_to_source_box`).
* *iso* grid: the canonical grid resampled to isotropic voxels (:func:`resample_iso`); its axes are
  the canonical axes, voxel 0 at canonical voxel 0.

Every affine is a 4x4 float64 matrix with ``LPS_mm = affine @ [i, j, k, 1]``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from scipy import ndimage

from model_zoo.errors import InputRejected
from workers.pipelines.results import SourceImage

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2.1"
MIN_SLICES: Final[int] = 16
MIN_LUNG_ML: Final[float] = 250.0
MAX_AXIS_ANGLE_DEG: Final[float] = 30.0  # slice normal (and in-plane axes) to the patient axes
MAX_SHEAR_DEG: Final[float] = 0.5  # slice-to-slice offset against the slice normal
MAX_GAP_DEVIATION: Final[float] = 0.10  # relative to the median gap
#: BodyPartExamined values (upper case, letters and digits only) that cover the lungs
CHEST_BODY_PARTS: Final[frozenset[str]] = frozenset({
    "CHEST", "THORAX", "LUNG", "LUNGS", "MEDIASTINUM", "CHESTABDOMEN", "CHESTABDPELVIS", "CHESTABDOMENPELVIS",
    "THORAXABDOMEN", "NECKCHEST", "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "HEADNECKCHEST", "TORSO", "TRUNK",
    "WHOLEBODY", "BODY",
})


@dataclass(frozen=True)
class SelectionRules:
    """Which series may be analysed, and how the usable ones are ranked.

    A series is usable when its instances are of ``sop_classes``, no image is of a type in
    ``skip_image_types``, its slice normal lies within ``max_normal_angle_deg`` of the z axis and
    it has at least ``min_slices`` distinct slice positions. Usable series are ranked by slice
    spacing (thinnest first), then slice count (most first), then SeriesNumber (lowest first).
    """

    sop_classes: tuple[str, ...] = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)
    skip_image_types: tuple[str, ...] = ("LOCALIZER",)
    max_normal_angle_deg: float = MAX_AXIS_ANGLE_DEG
    min_slices: int = MIN_SLICES


RULES: Final[SelectionRules] = SelectionRules()


@dataclass(frozen=True)
class SeriesChoice:
    """The chosen series and why."""

    datasets: list[Dataset]  # the chosen series' instances
    reason: str


@dataclass(frozen=True)
class CTVolume:
    """A CT series as one volume in Hounsfield units, on the canonical grid."""

    hu: np.ndarray  # float32 (k, r, c), canonical orientation
    affine: np.ndarray  # canonical index -> LPS mm
    spacing: tuple[float, float, float]  # (k, r, c) mm
    slices: tuple[SourceImage, ...]  # source image of each source slice, in source order
    source_shape: tuple[int, int, int]  # (n_slices, rows, cols) of the source grid
    flips: tuple[bool, bool, bool]  # axis i of the canonical array is source axis i reversed
    series_instance_uid: str

    @property
    def source_affine(self) -> np.ndarray:
        """Source index -> LPS mm."""
        return self.affine @ _flip_matrix(self.flips, self.source_shape)


@dataclass(frozen=True)
class IsoVolume:
    """The canonical volume resampled to isotropic voxels (same axes)."""

    hu: np.ndarray  # float32, canonical orientation
    affine: np.ndarray  # iso index -> LPS mm
    spacing_mm: float


@dataclass(frozen=True)
class _Frame:
    """One image plane (a single-frame instance, or one frame of a multi-frame one)."""

    ds: Dataset
    frame: int | None  # 0-based frame index in a multi-frame instance
    position: np.ndarray  # (3,) ImagePositionPatient
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    pixel_spacing: tuple[float, float]  # between rows, between columns
    slope: float
    intercept: float
    image_type: tuple[str, ...]
    tilt_deg: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


# --- reading geometry ------------------------------------------------------------------------


def _group(per: Dataset | None, shared: Dataset | None, name: str) -> Dataset | None:
    """Item 0 of functional group ``name``, per-frame first, then shared."""
    for source in (per, shared):
        if source is not None and name in source and len(source[name].value) > 0:
            item: Dataset = source[name].value[0]
            return item
    return None


def _frames(ds: Dataset) -> list[_Frame]:
    """The image planes of one instance, with their geometry (InputRejected if it has none)."""
    top_type = tuple(str(v).upper() for v in ds.get("ImageType", []) or [])
    try:
        if "PerFrameFunctionalGroupsSequence" not in ds:
            return [_Frame(
                ds, None, np.asarray(ds.ImagePositionPatient, dtype=np.float64),
                np.asarray(ds.ImageOrientationPatient, dtype=np.float64),
                (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0), top_type,
                float(ds.get("GantryDetectorTilt", 0) or 0),
            )]
        shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
        frames = []
        for i, per in enumerate(ds.PerFrameFunctionalGroupsSequence):
            pos = _group(per, shared, "PlanePositionSequence")
            ori = _group(per, shared, "PlaneOrientationSequence")
            meas = _group(per, shared, "PixelMeasuresSequence")
            if pos is None or ori is None or meas is None:
                raise AttributeError("plane position, orientation or pixel measures")
            pvt = _group(per, shared, "PixelValueTransformationSequence") or ds
            ftype = _group(per, shared, "CTImageFrameTypeSequence")
            details = _group(per, shared, "CTAcquisitionDetailsSequence")
            frames.append(_Frame(
                ds, i, np.asarray(pos.ImagePositionPatient, dtype=np.float64),
                np.asarray(ori.ImageOrientationPatient, dtype=np.float64),
                (float(meas.PixelSpacing[0]), float(meas.PixelSpacing[1])),
                float(pvt.get("RescaleSlope", 1) or 1), float(pvt.get("RescaleIntercept", 0) or 0),
                tuple(str(v).upper() for v in ftype.FrameType) if ftype is not None and "FrameType" in ftype
                else top_type,
                float((details.get("GantryDetectorTilt", 0) if details is not None else 0) or 0),
            ))
        return frames
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputRejected(f"a CT image has no usable geometry ({exc})") from exc


def _normal_angle_deg(frame: _Frame) -> float:
    n = frame.normal
    return float(np.degrees(np.arccos(min(1.0, abs(n[2]) / max(np.linalg.norm(n), 1e-9)))))


def _label(ds: Dataset) -> str:
    number = ds.get("SeriesNumber")
    desc = str(ds.get("SeriesDescription", "") or "")
    return f"series {number if number not in (None, '') else '?'}" + (f" '{desc}'" if desc else "")


@dataclass(frozen=True)
class _Candidate:
    datasets: list[Dataset]
    label: str
    slices: int
    spacing_mm: float
    number: int


def _assess(datasets: list[Dataset], rules: SelectionRules) -> _Candidate | str:
    """A usable series, or the reason it is skipped."""
    frames = [f for ds in datasets for f in _frames(ds)]
    if not frames:
        return "no image frames"
    if any(t in f.image_type for f in frames for t in rules.skip_image_types):
        return "localizer"
    angle = _normal_angle_deg(frames[0])
    if angle > rules.max_normal_angle_deg:
        return f"not axial: slice normal {angle:.0f} deg from the z axis"
    d = np.sort([float(f.position @ frames[0].normal) for f in frames])
    d = d[np.concatenate([[True], np.diff(d) > 0.01])]  # distinct positions
    if len(d) < rules.min_slices:
        return f"{len(d)} slice(s) < {rules.min_slices}"
    spacing = float(np.median(np.diff(d)))
    number = datasets[0].get("SeriesNumber")
    return _Candidate(datasets, _label(datasets[0]), len(d), spacing,
                      int(number) if number not in (None, "") else 1 << 30)


def rank_series(datasets: Sequence[Dataset], rules: SelectionRules = RULES) -> list[SeriesChoice]:
    """Every usable series of the study, best first (see :class:`SelectionRules`).

    Raises
    ------
    InputRejected
        When no series is usable; the reason names each skipped series and why.
    """
    groups: dict[str, list[Dataset]] = defaultdict(list)
    ignored = 0
    for ds in datasets:
        if str(ds.get("SOPClassUID", "")) in rules.sop_classes:
            groups[str(ds.SeriesInstanceUID)].append(ds)
        else:
            ignored += 1
    candidates: list[_Candidate] = []
    skipped: list[str] = []
    for members in groups.values():
        try:
            verdict = _assess(members, rules)
        except InputRejected as exc:
            verdict = exc.reason
        if isinstance(verdict, str):
            skipped.append(f"{_label(members[0])} ({verdict})")
        else:
            candidates.append(verdict)
    skipped.sort()
    if ignored:
        skipped.append(f"{ignored} non-CT instance(s)")
    skip_text = "; ".join(skipped) if skipped else "none"
    if not candidates:
        what = f"skipped: {skip_text}" if groups else f"no CT images ({ignored} other instance(s))"
        raise InputRejected(f"no usable axial CT series ({what})")
    candidates.sort(key=lambda c: (round(c.spacing_mm, 2), -c.slices, c.number))
    out = []
    for rank, c in enumerate(candidates):
        standing = (f"thinnest of {len(candidates)} axial series" if rank == 0 else
                    f"choice {rank + 1} of {len(candidates)} axial series") if len(candidates) > 1 else "only axial series"
        out.append(SeriesChoice(
            c.datasets, f"{c.label}: {c.slices} axial slices, {c.spacing_mm:g} mm ({standing}; skipped: {skip_text})"
        ))
    return out


def select_series(datasets: Sequence[Dataset]) -> SeriesChoice:
    """The series to analyse: the best of :func:`rank_series`.

    Raises
    ------
    InputRejected
        When no series is usable.
    """
    choice = rank_series(datasets)[0]
    logger.info("CT series chosen: %s", choice.reason)
    return choice


# --- the volume ------------------------------------------------------------------------------


def _flip_matrix(flips: tuple[bool, bool, bool], shape: tuple[int, int, int]) -> np.ndarray:
    """Index map between the two grids (its own inverse): ``i -> n - 1 - i`` on flipped axes."""
    m = np.eye(4)
    for axis, (flip, n) in enumerate(zip(flips, shape)):
        if flip:
            m[axis, axis], m[axis, 3] = -1.0, n - 1.0
    return m


def _check_geometry(frames: list[_Frame]) -> None:
    """InputRejected unless the planes form one consistent axial stack (before sorting)."""
    if not frames:
        raise InputRejected("no image frames in the series")
    first = frames[0]
    sizes = {(f.ds.get("Rows"), f.ds.get("Columns")) for f in frames}
    if any(None in size for size in sizes):
        raise InputRejected("a CT image has no Rows or Columns")
    if len(sizes) > 1:
        raise InputRejected(f"mixed image sizes in the series: {sorted(sizes)}")
    if any(not np.allclose(f.pixel_spacing, first.pixel_spacing, rtol=1e-3) for f in frames):
        raise InputRejected("mixed pixel spacings in the series")
    if any(not np.allclose(f.orientation, first.orientation, atol=1e-3) for f in frames):
        raise InputRejected("mixed image orientations in the series")
    tilt = max((f.tilt_deg for f in frames), key=abs)
    if abs(tilt) > 0.01:
        raise InputRejected(f"gantry tilt of {tilt:g} deg: tilted slices are not supported")
    row, col = first.orientation[:3], first.orientation[3:]
    limit = np.cos(np.radians(MAX_AXIS_ANGLE_DEG))
    if abs(first.normal[2]) < limit:
        raise InputRejected(f"not an axial series: slice normal {_normal_angle_deg(first):.0f} deg from the z axis")
    if abs(row[0]) < limit or abs(col[1]) < limit:
        raise InputRejected("axial series whose rows and columns do not run along x and y (rotated or transposed)")


def _sorted_stack(frames: list[_Frame]) -> tuple[list[_Frame], float]:
    """Frames sorted along the slice normal and the slice spacing; InputRejected on bad stacks."""
    if len(frames) < MIN_SLICES:
        raise InputRejected(f"{len(frames)} slice(s): at least {MIN_SLICES} are needed")
    normal = frames[0].normal / np.linalg.norm(frames[0].normal)
    d = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(d, kind="stable")
    frames, d = [frames[i] for i in order], d[order]
    gaps = np.diff(d)
    if np.any(gaps < 0.01):
        raise InputRejected(f"{int(np.sum(gaps < 0.01)) + 1} slices share a position (several acquisitions in one series?)")
    median = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - median)))
    if worst > MAX_GAP_DEVIATION * median:
        raise InputRejected(f"uneven slice spacing: gaps from {gaps.min():.3g} to {gaps.max():.3g} mm "
                            f"(median {median:.3g} mm; missing slices?)")
    offset = frames[-1].position - frames[0].position
    shear = float(np.degrees(np.arccos(min(1.0, abs(offset @ normal) / np.linalg.norm(offset)))))
    if shear > MAX_SHEAR_DEG:
        raise InputRejected(f"slice positions run {shear:.1f} deg off the slice normal (gantry tilt): not supported")
    return frames, float((d[-1] - d[0]) / (len(d) - 1))


def build_volume(datasets: Sequence[Dataset]) -> CTVolume:
    """One CT series (single-frame CT images or Enhanced CT) as a canonical HU volume.

    Parameters
    ----------
    datasets : sequence of pydicom.dataset.Dataset
        The series' instances, with pixel data, in any order.

    Returns
    -------
    CTVolume

    Raises
    ------
    InputRejected
        Mixed sizes, spacings or orientations; gantry tilt; uneven spacing or duplicate positions;
        fewer than :data:`MIN_SLICES` slices; a non-axial series.
    """
    if not datasets:
        raise InputRejected("no CT images")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise InputRejected(f"{len(series)} series given where one was expected")
    frames = [f for ds in datasets for f in _frames(ds)]
    _check_geometry(frames)
    frames, sk = _sorted_stack(frames)
    first = frames[0]
    row, col = first.orientation[:3], first.orientation[3:]
    normal = first.normal / np.linalg.norm(first.normal)
    sr, sc = first.pixel_spacing
    n, rows, cols = len(frames), int(first.ds.Rows), int(first.ds.Columns)
    flips = (bool(normal[2] < 0), bool(col[1] < 0), bool(row[0] < 0))
    source_affine = np.eye(4)
    source_affine[:3, 0], source_affine[:3, 1], source_affine[:3, 2] = normal * sk, col * sr, row * sc
    source_affine[:3, 3] = first.position
    affine = source_affine @ _flip_matrix(flips, (n, rows, cols))
    hu = np.empty((n, rows, cols), dtype=np.float32)
    for i, f in enumerate(frames):
        try:  # pydicom's decoders (pylibjpeg plugins for compressed data); one frame, not cached
            pixels = pixel_array(f.ds, index=f.frame).reshape(rows, cols)
        except (AttributeError, ValueError, RuntimeError, NotImplementedError) as exc:
            raise InputRejected(f"pixel data of a CT image cannot be decoded ({exc})") from exc
        plane = pixels[:: -1 if flips[1] else 1, :: -1 if flips[2] else 1]
        k = n - 1 - i if flips[0] else i
        np.multiply(plane, np.float32(f.slope), out=hu[k], casting="unsafe")
        hu[k] += np.float32(f.intercept)
    slices = tuple(
        SourceImage(str(f.ds.StudyInstanceUID), str(f.ds.SeriesInstanceUID), str(f.ds.SOPInstanceUID),
                    str(f.ds.SOPClassUID), None if f.frame is None else f.frame + 1)
        for f in frames
    )
    logger.info("CT volume: %d x %d x %d, spacing %.3g x %.3g x %.3g mm, flips %s",
                n, rows, cols, sk, sr, sc, flips)
    return CTVolume(hu, affine, (sk, sr, sc), slices, (n, rows, cols), flips, next(iter(series)))


# --- moving between the source and canonical grids -------------------------------------------


def canonical_to_source_index(volume: CTVolume, index: Sequence[float]) -> tuple[float, float, float]:
    """A (possibly fractional) canonical index on the source grid; also the reverse map."""
    out = [(n - 1 - i) if flip else i for i, n, flip in zip(index, volume.source_shape, volume.flips)]
    return (out[0], out[1], out[2])


def canonical_to_source_box(volume: CTVolume, box: Sequence[slice]) -> tuple[slice, slice, slice]:
    """A box (slices with unit step) on the canonical grid as a box on the source grid; also the reverse."""
    out = []
    for b, n, flip in zip(box, volume.source_shape, volume.flips):
        start, stop, step = b.indices(n)
        if step != 1:
            raise ValueError("boxes must have unit steps")
        out.append(slice(n - stop, n - start) if flip else slice(start, stop))
    return (out[0], out[1], out[2])


source_to_canonical_box = canonical_to_source_box
source_to_canonical_index = canonical_to_source_index


def canonical_to_source(
    volume: CTVolume, array: np.ndarray, box: Sequence[slice] | None = None
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """An array on the canonical grid (whole, or cropped to ``box``) re-oriented to the source grid.

    Returns
    -------
    tuple
        ``(array, source_box)``: a flipped view of ``array`` (``np.ascontiguousarray`` it for
        storage) and the box it covers on the source grid; ``array[k, r, c]`` is then source voxel
        ``(source_box[0].start + k, source_box[1].start + r, source_box[2].start + c)``.
    """
    box = tuple(slice(0, n) for n in volume.source_shape) if box is None else tuple(box)
    if tuple(b.stop - b.start for b in canonical_to_source_box(volume, box)) != array.shape[:3]:
        raise ValueError(f"array of shape {array.shape} does not fill box {box}")
    axes = tuple(i for i, flip in enumerate(volume.flips) if flip)
    return (np.flip(array, axes) if axes else array), canonical_to_source_box(volume, box)


def source_to_canonical(
    volume: CTVolume, array: np.ndarray, box: Sequence[slice] | None = None
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """The reverse of :func:`canonical_to_source` (a source-grid array and box to the canonical grid)."""
    return canonical_to_source(volume, array, box)


# --- isotropic grid --------------------------------------------------------------------------


def resample_iso(volume: CTVolume, spacing_mm: float = 1.0) -> IsoVolume:
    """Trilinear resampling of the canonical volume to isotropic ``spacing_mm`` voxels.

    Iso voxel ``j`` along axis ``i`` lies at canonical index ``j * spacing_mm / spacing[i]``; the
    grid stops at the last canonical voxel. The axes being shared, the map is diagonal: scipy's
    ``affine_transform`` computes it without coordinate arrays (only the output is allocated).
    """
    steps = np.array([spacing_mm / s for s in volume.spacing])
    shape = tuple(int(np.floor((n - 1) / st + 1e-6)) + 1 for n, st in zip(volume.hu.shape, steps))
    hu = ndimage.affine_transform(volume.hu, steps, output_shape=shape, order=1, mode="nearest", prefilter=False)
    affine = volume.affine @ np.diag([*steps, 1.0])
    logger.debug("resampled %s -> %s at %.3g mm", volume.hu.shape, shape, spacing_mm)
    return IsoVolume(hu.astype(np.float32, copy=False), affine, float(spacing_mm))


def iso_to_canonical(
    values_iso: np.ndarray, iso: IsoVolume, volume: CTVolume, box: tuple[slice, slice, slice] | None = None
) -> np.ndarray:
    """Sample an iso-grid array (e.g. a probability map) at the canonical voxel centres.

    Trilinear, per-axis coordinates (the grids share axes), edges replicated.

    Parameters
    ----------
    values_iso : numpy.ndarray
        On ``iso``'s grid.
    iso, volume
        The two grids.
    box : tuple of slice, optional
        Only this box of the canonical grid (unit steps); default the whole grid.

    Returns
    -------
    numpy.ndarray
        float32, the box's shape.
    """
    to_iso = np.linalg.inv(iso.affine) @ volume.affine
    scale = np.diag(to_iso)[:3]
    if not np.allclose(to_iso[:3, :3], np.diag(scale), atol=1e-6):
        raise ValueError("the iso grid does not share the canonical axes")
    whole = tuple(slice(0, n) for n in volume.hu.shape)
    bounds = [b.indices(n)[:2] for b, n in zip(whole if box is None else box, volume.hu.shape)]
    offset = to_iso[:3, 3] + scale * np.array([start for start, _ in bounds])
    out: np.ndarray = ndimage.affine_transform(
        np.asarray(values_iso, dtype=np.float32), scale, offset=offset,
        output_shape=tuple(stop - start for start, stop in bounds), order=1, mode="nearest", prefilter=False,
    )
    return out


# --- lungs and the chest check ---------------------------------------------------------------

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def lung_mask(iso: IsoVolume, threshold_hu: float = -400.0, min_component_ml: float = 20.0) -> np.ndarray:
    """Aerated lung fields: air inside the body, holes (nodules, vessels) filled.

    Air (below ``threshold_hu``) connected, within its axial slice, to the edge of the field of view
    is outside the body; the rest is kept as 3D components of at least ``min_component_ml``
    (dropping bowel gas and noise), then filled slice by slice.

    Returns
    -------
    numpy.ndarray
        bool, ``iso.hu``'s shape.
    """
    air = iso.hu < threshold_hu
    planes, _ = ndimage.label(air, structure=_IN_PLANE)
    edge = np.unique(np.concatenate([planes[:, 0, :].ravel(), planes[:, -1, :].ravel(),
                                     planes[:, :, 0].ravel(), planes[:, :, -1].ravel()]))
    inside = air & ~np.isin(planes, edge[edge > 0])
    del planes, air
    comps, count = ndimage.label(inside)
    sizes = np.bincount(comps.ravel(), minlength=count + 1)
    keep = sizes * iso.spacing_mm**3 / 1000.0 >= min_component_ml
    keep[0] = False
    lungs: np.ndarray = keep[comps]
    del comps
    for k in np.nonzero(lungs.any(axis=(1, 2)))[0]:
        lungs[k] = ndimage.binary_fill_holes(lungs[k])
    logger.debug("lung mask: %d of %d components kept, %.0f mL", int(keep.sum()), count,
                 lungs.sum() * iso.spacing_mm**3 / 1000.0)
    return lungs


def check_chest(volume: CTVolume, datasets: Sequence[Dataset], lungs: np.ndarray, iso: IsoVolume) -> None:
    """InputRejected unless this is a chest CT.

    A BodyPartExamined (where present) must be one of :data:`CHEST_BODY_PARTS` (compared in upper
    case, letters and digits only), and the lung fields must hold at least :data:`MIN_LUNG_ML`.
    """
    for ds in datasets:
        part = str(ds.get("BodyPartExamined", "") or "")
        key = "".join(ch for ch in part.upper() if ch.isalnum())
        if key and key not in CHEST_BODY_PARTS:
            raise InputRejected(f"body part examined is {part!r}, not a chest region: not a chest CT")
    if lungs.shape != iso.hu.shape:
        raise ValueError("the lung mask is not on the iso grid")
    ml = float(lungs.sum()) * iso.spacing_mm**3 / 1000.0
    if ml < MIN_LUNG_ML:
        raise InputRejected(f"no lung fields found: not a chest CT ({ml:.0f} mL of aerated lung, "
                            f"at least {MIN_LUNG_ML:.0f} mL expected)")
    logger.info("chest check passed for series %s: %.0f mL of lung", volume.series_instance_uid, ml)
