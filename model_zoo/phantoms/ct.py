"""Non-contrast chest CT phantoms with spherical lung nodules (written as DICOM by :mod:`.ct_dicom`).

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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.2.1"
HU_MIN: Final[int] = -1024
HU_MAX: Final[int] = 3071
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
