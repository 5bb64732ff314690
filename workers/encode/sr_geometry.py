"""Where a measurement lies on its image: SCOORD children of SR measurements.

OHIF v3 (3.13, through ``@cornerstonejs/adapters``) loads a TID 1500 measurement into its
Measurements panel only when (1) the group's Tracking Identifier names a Cornerstone tool
(``"Cornerstone3DTools@^0.1.0:<Tool>"``, matched as a prefix) and (2) the group's *first*
NUM has a SCOORD child (relationship INFERRED FROM, TID 300 row 7 / TID 320) with an IMAGE
child (SELECTED FROM) naming the image (and frame).  The tool reads the geometry:

* ``Bidirectional``: the NUMs whose Code Meaning is exactly "Long Axis" and "Short Axis", each
  with a 2-point POLYLINE (one measurement, one text box: the two axes never carry two
  overlapping labels);
* ``ArrowAnnotate``: a POINT, or a 2-point POLYLINE (tip, tail); its label is the group's
  (121106, DCM, "Comment") TEXT row.

This module computes that geometry from the pipelines' masks and heatmaps and attaches it;
the group classes stay highdicom's.  Image coordinates follow PS3.3 C.18.6.1.1: (column, row),
the top left corner of the top left pixel is (0, 0), so pixel ``(r, c)``'s centre is
``(c + 0.5, r + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr.templates import Template
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from workers.encode import codes as thy_codes

#: Tracking Identifier prefix the Cornerstone adapters match (``CORNERSTONE_3D_TAG``).
CORNERSTONE_TAG: Final[str] = "Cornerstone3DTools@^0.1.0"
BIDIRECTIONAL: Final[str] = "Bidirectional"
ARROW_ANNOTATE: Final[str] = "ArrowAnnotate"
RECTANGLE_ROI: Final[str] = "RectangleROI"
_MAX_HULL: Final[int] = 2000


def cornerstone_tracking_identifier(tool: str, label: str) -> str:
    """Tracking Identifier text ``"Cornerstone3DTools@^0.1.0:<tool>:<label>"``.

    The adapters pick the tool by prefix; the label keeps the identifier readable.  A label
    holding ``":Series"`` would make the adapters treat the measurement as series-level.
    """
    if ":Series" in label:
        raise ValueError(f"label {label!r} holds ':Series'")
    return f"{CORNERSTONE_TAG}:{tool}:{label}"


@dataclass(frozen=True)
class Axes:
    """Long and short axis of a 2D mask with their end points.

    ``long`` and ``short`` are lengths in the spacing's units (mm, or pixels for a unit
    spacing); ``long_line`` / ``short_line`` are ``(2, 2)`` arrays of (column, row) image
    coordinates, PS3.3 C.18.6.1.1, already shifted by the mask's origin.
    """

    long: float
    short: float
    long_line: np.ndarray
    short_line: np.ndarray


def _one_pixel(direction: np.ndarray, spacing: np.ndarray) -> float:
    return float(np.hypot(direction[0] * spacing[0], direction[1] * spacing[1]))


def axes(
    mask: np.ndarray, spacing: tuple[float, float], origin: tuple[int, int] = (0, 0)
) -> Axes:
    """The axes :func:`model_zoo.us_image.feret_axes` measures, with where they lie.

    Same construction (so the lengths equal ``feret_axes``'s): the long axis joins the two
    boundary pixels farthest apart, lengthened by one pixel along it (half at each end); the
    short axis is the widest slab, one pixel thick across the long axis, drawn through the
    slab's middle and lengthened by one pixel across.

    Parameters
    ----------
    mask : numpy.ndarray
        2D, non-zero inside; not empty.
    spacing : tuple of float
        ``(row, column)`` pixel size.
    origin : tuple of int, optional
        ``(row, column)`` of ``mask[0, 0]`` in the image.

    Returns
    -------
    Axes
        Lengths and end points.

    Raises
    ------
    ValueError
        If the mask is not 2D or is empty, or a spacing is not positive.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        raise ValueError(f"axes need a non-empty 2D mask, got shape {m.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if not np.all(sp > 0):
        raise ValueError(f"pixel spacing {spacing} is not positive")
    boundary = m & ~ndimage.binary_erosion(m, border_value=0)
    hull = np.argwhere(boundary).astype(np.float64) * sp
    if len(hull) > 3:
        try:
            hull = hull[ConvexHull(hull).vertices]
        except QhullError:  # collinear: every point is on the hull
            pass
    if len(hull) > _MAX_HULL:
        keep = np.r_[
            np.argmin(hull, axis=0),
            np.argmax(hull, axis=0),
            np.linspace(0, len(hull) - 1, _MAX_HULL).astype(int),
        ]
        hull = hull[np.unique(keep)]
    diff = hull[:, None, :] - hull[None, :, :]
    dist2 = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    length = float(np.sqrt(dist2[i, j]))
    if length > 0:
        u = (hull[i] - hull[j]) / length
        start, end = hull[j], hull[i]
    else:  # one pixel: its larger side is the long direction
        u = np.array([1.0, 0.0]) if sp[0] >= sp[1] else np.array([0.0, 1.0])
        start = end = hull[i]
    n = np.array([-u[1], u[0]])
    step_u, step_n = _one_pixel(u, sp), _one_pixel(n, sp)
    long_ends = np.array([start - u * step_u / 2, end + u * step_u / 2])

    pts = np.argwhere(m).astype(np.float64) * sp
    along = pts @ u
    across = pts @ n
    bins = np.floor((along - along.min()) / step_u).astype(np.intp)
    best, extent = 0, -1.0
    lo = hi = 0.0
    for b in np.unique(bins):
        sel = across[bins == b]
        if sel.max() - sel.min() > extent:
            best, extent, lo, hi = int(b), float(sel.max() - sel.min()), float(sel.min()), float(sel.max())
    t = float(along.min() + (best + 0.5) * step_u)
    short_ends = np.array([t * u + (lo - step_n / 2) * n, t * u + (hi + step_n / 2) * n])

    def to_image(points_mm: np.ndarray) -> np.ndarray:
        rc = points_mm / sp + np.asarray(origin, dtype=np.float64) + 0.5  # pixel centre -> corner
        return np.round(rc[:, ::-1], 3)  # (row, column) -> (column, row)

    return Axes(
        long=length + step_u,
        short=extent + step_n,
        long_line=to_image(long_ends),
        short_line=to_image(short_ends),
    )


def heatmap_peak(heatmap: np.ndarray) -> tuple[float, float]:
    """(column, row) image coordinates of the centre of a heatmap's highest pixel (first if tied)."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2 or h.size == 0 or not np.all(np.isfinite(h)):
        raise ValueError("a heatmap must be a finite, non-empty 2D array")
    r, c = np.unravel_index(int(np.argmax(h)), h.shape)
    return float(c) + 0.5, float(r) + 0.5


def arrow(tip: tuple[float, float], rows: int, columns: int, *, down: bool) -> np.ndarray:
    """A 2-point arrow (tip, tail), the tail a tenth of the image to the right, up or down.

    Two arrows on one image (NM: seed 003's and seed 001's) point from opposite sides, so that
    their labels (drawn at the tails) never cover each other even where both tips coincide.
    """
    x, y = tip
    tail_x = min(x + columns / 10, columns - 0.5)
    if tail_x - x < 1.0:  # at the right border: point from the left instead
        tail_x = max(x - columns / 10, 0.5)
    dy = rows / 10 if down else -rows / 10
    tail_y = min(max(y + dy, 0.5), rows - 0.5)
    return np.array([[x, y], [tail_x, tail_y]], dtype=np.float64)


def rectangle(row0: float, col0: float, row1: float, col1: float) -> np.ndarray:
    """A closed 5-point POLYLINE around pixels ``[row0, row1) x [col0, col1)``.

    Corners in the order Cornerstone's RectangleROI adapter reads them: top left, top right,
    bottom right, bottom left, top left again.
    """
    if not (row1 > row0 and col1 > col0):
        raise ValueError(f"empty rectangle rows {row0}..{row1}, columns {col0}..{col1}")
    return np.array(
        [[col0, row0], [col1, row0], [col1, row1], [col0, row1], [col0, row0]], dtype=np.float64
    )


def source_for_region(ds: pydicom.Dataset, frame: int | None) -> hd.sr.SourceImageForRegion:
    """The IMAGE (SELECTED FROM) item under a SCOORD: the image, and its frame if multi-frame."""
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        referenced_frame_numbers=[frame] if frame is not None and "NumberOfFrames" in ds else None,
    )


def attach_scoord(
    group: Template,
    measurement: hd.sr.CodedConcept,
    graphic_type: hd.sr.GraphicTypeValues,
    graphic_data: np.ndarray,
    source: hd.sr.SourceImageForRegion,
    *,
    name: hd.sr.CodedConcept = thy_codes.PATH,
) -> None:
    """Add a SCOORD (INFERRED FROM) with its source image (SELECTED FROM) under a group's NUM.

    TID 300 row 7 (TID 320) lets a measurement name the spatial coordinates it was inferred
    from; that is what viewers draw.  highdicom 0.28's :class:`~highdicom.sr.Measurement`
    writes image references only, and its TID 1410 / 1411 group classes refuse measurements
    with coordinates (TID 1419 lists no such row; the templates are extensible, dciodvfy and
    dsrdump accept the item, and it is how OHIF and dcmjs write every measurement).  So the
    group is built and validated by highdicom first, and the SCOORD is appended afterwards as
    the NUM's last child, after its algorithm identification.

    Parameters
    ----------
    group : highdicom.sr.Template
        A measurement group (its first item is the group's CONTAINER); changed in place.
    measurement : highdicom.sr.CodedConcept
        Concept name of the NUM; exactly one NUM of the group must have it.
    graphic_type : highdicom.sr.GraphicTypeValues
        POINT or POLYLINE.
    graphic_data : numpy.ndarray
        ``(n, 2)`` (column, row) image coordinates.
    source : highdicom.sr.SourceImageForRegion
        The image (frame) the coordinates lie on.
    name : highdicom.sr.CodedConcept, optional
        Concept name of the SCOORD: (121055, DCM, "Path") for a line (TID 1400's name for
        the path of a linear measurement).

    Raises
    ------
    ValueError
        If the group has no NUM, or several, of that concept.
    """
    nums = [
        item
        for item in group[0].ContentSequence
        if item.ValueType == "NUM"
        and item.ConceptNameCodeSequence[0].CodeValue == measurement.value
        and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == measurement.scheme_designator
    ]
    if len(nums) != 1:
        raise ValueError(f"{len(nums)} measurement(s) {measurement.meaning!r} in the group, not 1")
    item = hd.sr.ScoordContentItem(
        name=name,
        graphic_type=graphic_type,
        graphic_data=np.asarray(graphic_data, dtype=np.float64),
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )
    item.ContentSequence = hd.sr.ContentSequence([source], is_root=False)
    num = nums[0]
    if "ContentSequence" not in num:
        num.ContentSequence = hd.sr.ContentSequence([], is_root=False)
    num.ContentSequence.append(item)
