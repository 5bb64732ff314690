"""Reading back a DICOM SEG in patient coordinates, and sphere ground truth on a CT's own voxels.

Independent of the node's code (pydicom and numpy only): each SEG frame is placed with its own
Plane Position and the Plane Orientation / Pixel Measures found in the per-frame *or* the shared
functional groups (a reader must look in both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset


def _group(ds: Dataset, frame: int, name: str) -> Dataset:
    per_frame = ds.PerFrameFunctionalGroupsSequence[frame]
    if name in per_frame:
        return per_frame[name][0]
    return ds.SharedFunctionalGroupsSequence[0][name][0]


@dataclass
class Segment:
    number: int
    label: str
    tracking_uid: str
    points_mm: np.ndarray  # (n, 3) voxel centres, LPS
    voxel_mm3: float


def _voxel_key(points: np.ndarray) -> set[tuple[int, int, int]]:
    """Voxel centres as integer keys (0.01 mm) so that two readers' voxels compare exactly."""
    return {tuple(p) for p in np.round(points * 100).astype(np.int64).tolist()}  # type: ignore[misc]


def segments(seg: Dataset) -> dict[int, Segment]:
    """Every segment of a BINARY (or FRACTIONAL, thresholded at half) SEG, as voxel centres in mm."""
    pixels = seg.pixel_array
    if int(seg.NumberOfFrames) == 1:
        pixels = pixels[None]
    out: dict[int, list[np.ndarray]] = {}
    spacing_mm3 = 0.0
    for f in range(int(seg.NumberOfFrames)):
        number = int(_group(seg, f, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        ipp = np.array(_group(seg, f, "PlanePositionSequence").ImagePositionPatient, dtype=float)
        iop = np.array(_group(seg, f, "PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
        measures = _group(seg, f, "PixelMeasuresSequence")
        dr, dc = (float(v) for v in measures.PixelSpacing)
        thickness = float(measures.get("SliceThickness", 0) or 0)
        spacing_mm3 = dr * dc * thickness
        frame = pixels[f]
        if seg.SegmentationType == "FRACTIONAL":
            frame = frame >= int(seg.MaximumFractionalValue) / 2
        rc = np.argwhere(frame > 0).astype(float)
        pts = ipp + rc[:, 1:2] * dc * iop[:3] + rc[:, 0:1] * dr * iop[3:]
        out.setdefault(number, []).append(pts)
    result = {}
    for item in seg.SegmentSequence:
        n = int(item.SegmentNumber)
        pts = np.concatenate(out.get(n, [np.zeros((0, 3))]))
        result[n] = Segment(n, str(item.SegmentLabel), str(item.get("TrackingUID", "")), pts, spacing_mm3)
    return result


def planes(ct: Sequence[Dataset]) -> list[tuple[np.ndarray, np.ndarray, float, float, int, int]]:
    """(position, orientation, row spacing, column spacing, rows, columns) of every slice or frame."""
    out = []
    for ds in ct:
        if "PerFrameFunctionalGroupsSequence" in ds:  # Enhanced CT: one plane per frame
            for f in range(int(ds.NumberOfFrames)):
                ipp = np.array(_group(ds, f, "PlanePositionSequence").ImagePositionPatient, dtype=float)
                iop = np.array(_group(ds, f, "PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
                dr, dc = (float(v) for v in _group(ds, f, "PixelMeasuresSequence").PixelSpacing)
                out.append((ipp, iop, dr, dc, int(ds.Rows), int(ds.Columns)))
        else:
            dr, dc = (float(v) for v in ds.PixelSpacing)
            out.append((np.array(ds.ImagePositionPatient, dtype=float), np.array(ds.ImageOrientationPatient, dtype=float),
                        dr, dc, int(ds.Rows), int(ds.Columns)))
    return out


def sphere_voxels(ct_slices: Sequence[Dataset], centre: Sequence[float], diameter: float) -> np.ndarray:
    """Centres (n, 3) of the CT's voxels whose centre lies inside the sphere (the phantom's truth)."""
    c = np.asarray(centre, dtype=float)
    r = diameter / 2.0
    found = []
    for ipp, iop, dr, dc, n_rows, n_cols in planes(ct_slices):
        normal = np.cross(iop[:3], iop[3:])
        if abs(float(np.dot(c - ipp, normal))) > r:
            continue
        rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        pts = ipp + cols.reshape(-1, 1) * dc * iop[:3] + rows.reshape(-1, 1) * dr * iop[3:]
        found.append(pts[np.linalg.norm(pts - c, axis=1) <= r])
    return np.concatenate(found) if found else np.zeros((0, 3))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two voxel-centre sets given as (n, 3) arrays on the same grid."""
    ka, kb = _voxel_key(a), _voxel_key(b)
    total = len(ka) + len(kb)
    return 2.0 * len(ka & kb) / total if total else 1.0


def equivalent_diameter(segment: Segment, voxel_mm3: float) -> float:
    """Diameter of the sphere with the segment's volume (mm), voxels of ``voxel_mm3`` (the CT's)."""
    volume = len(segment.points_mm) * voxel_mm3
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0))
