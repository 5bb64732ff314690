"""Thyroid B-mode ultrasound phantoms with known nodules (written as DICOM by :mod:`.us_dicom`).

Image
-----
A transverse neck view, ``rows x cols`` pixels of ``spacing_mm`` (default 360 x 480 at 0.1 mm:
36 mm deep, 48 mm wide), rows running away from the transducer. The tissue reflectivity map holds
a dark gel layer and a bright skin line at the top, subcutaneous fat and striated strap muscles
(a brighter near-field band), a thyroid lobe of medium echo with fine texture, darker muscle around
it, the trachea at one side (a bright curved ring with a dark acoustic shadow below) and the
carotid artery at the other (an anechoic circle with a bright wall and posterior enhancement), and
depth attenuation. Speckle is multiplicative and Rayleigh distributed (the magnitude of a complex
Gaussian field smoothed more along the lateral axis than the axial one); specular echoes (skin,
tracheal ring, calcifications) are added after the speckle. The amplitude is log-compressed to a
50 dB dynamic range and stored as uint8.

Nodules (phantom conventions, not biology; the US classifiers are trained on them)
---------------------------------------------------------------------------------
* A nodule is an ellipse (semi-axes ``a >= b``, ``a`` = half the nominal diameter, 5-25 mm unless
  ``diameter_mm`` is given; the upper bound is 25 mm / sqrt(n) for ``n`` nodules, and what fits the
  image) rotated by ``angle_deg`` (the direction of ``a`` from the +column axis
  toward +row, in [-90, 90)), whose radius is perturbed by low-order harmonics
  ``r(t) = 1 + sum_k A_k cos(k t + p_k)``. It lies fully inside the image with a 10 px margin, mostly
  inside the lobe, and never touches another nodule. Its echo is clearly below the parenchyma's.
* **malignant**: markedly hypoechoic (0.17-0.24 of the parenchyma's amplitude), irregular margin
  (lobulated harmonics k = 3-6 plus spiculated k = 9-15), taller than wide in ~65 % (long axis
  within 25 degrees of vertical), and microcalcifications: 3-7 bright punctate foci of 1-3 px inside
  the nodule, with no shadow.
* **benign**: hypoechoic (0.32-0.42), smooth oval margin (k = 2-3, amplitude <= 0.03), wider than
  tall (long axis within 25 degrees of horizontal), and either no calcification or (50/50) a
  macrocalcification: a coarse bright egg-shell arc of 3-6 px along the upper rim, with a posterior
  acoustic shadow below it.
* ``calcification`` overrides the calcification drawn (the rest follows ``malignant``).
* **lvlnm** (large-volume lymph-node metastasis): only malignant nodules; true for ~80 % (by seed) of
  malignant nodules whose measured long axis is >= 12 mm, false otherwise. lvlnm nodules have a
  heterogeneous, blotchy interior (a coarse +-35 % echo modulation instead of +-8 %) and 8-14 foci
  instead of 3-7. Requesting ``lvlnm=True`` forces the first nodule to be malignant with a long axis
  >= 12 mm (and lvlnm); with several nodules the others are then not lvlnm.

Ground truth
------------
``USNoduleTruth.mask`` is the outline rasterised on pixel centres (a pixel is inside when its centre
is), on the image's grid; ``long_axis_px``/``short_axis_px`` come from :func:`feret_axes`, the same
function the US pipeline measures with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

logger = logging.getLogger(__name__)

CALCIFICATIONS: Final[tuple[str, ...]] = ("none", "micro", "macro")
LVLNM_MIN_LONG_AXIS_MM: Final[float] = 12.0
_LVLNM_RATE: Final[float] = 0.8  # share of malignant nodules >= 12 mm that are lvlnm
_MARGIN_PX: Final[int] = 10  # nodule mask to image border
_GAP_PX: Final[int] = 6  # nodule to nodule
_DYNAMIC_RANGE_DB: Final[float] = 50.0
_GREY_AT_UNIT: Final[float] = 150.0  # grey level of unit amplitude (parenchyma, mean speckle)
_DIAMETER_RANGE_MM: Final[tuple[float, float]] = (5.0, 25.0)


@dataclass(frozen=True)
class USNoduleTruth:
    """One phantom nodule: its drawing parameters, labels and exact outline."""

    centre: tuple[float, float]  # (row, col), pixels of the B-mode image
    semi_axes: tuple[float, float]  # (a, b) pixels before margin irregularity
    angle_deg: float  # direction of a, from +col toward +row, in [-90, 90)
    calcification: str  # "none" | "micro" | "macro"
    malignant: bool
    lvlnm: bool  # large-volume lymph-node metastasis label
    mask: np.ndarray  # bool (rows, cols): the exact outline, same shape as the image
    long_axis_px: float  # largest diameter of the mask (max Feret), pixels
    short_axis_px: float  # largest width perpendicular to it, pixels


@dataclass(frozen=True)
class USPhantom:
    """A phantom B-mode image with its nodules.

    ``seed`` and ``options`` (the keyword arguments of :func:`us_phantom`) let :func:`respeckle`
    redraw the same anatomy with new speckle (cine frames); ``None`` for phantoms built elsewhere.
    """

    image: np.ndarray  # uint8 (rows, cols), the B-mode (tissue) image only
    spacing_mm: float  # isotropic pixel size
    nodules: tuple[USNoduleTruth, ...]
    seed: int | None = None
    options: tuple[tuple[str, Any], ...] = ()


# --- measuring ---------------------------------------------------------------------------------


def _one_pixel(direction: np.ndarray, spacing: np.ndarray) -> float:
    """The length of one pixel step along the unit vector ``direction`` (``spacing`` when axis-aligned)."""
    return float(np.hypot(direction[0] * spacing[0], direction[1] * spacing[1]))


def _longest_chord(pts: np.ndarray, u: np.ndarray, n: np.ndarray, step: float) -> float:
    """Largest extent along ``n`` of the points within any slab ``step`` wide across ``u``."""
    along = pts[:, 0] * u[0] + pts[:, 1] * u[1]
    bins = np.floor((along - along.min()) / step).astype(np.intp)
    order = np.argsort(bins, kind="stable")
    across = (pts[:, 0] * n[0] + pts[:, 1] * n[1])[order]
    starts = np.r_[0, np.nonzero(np.diff(bins[order]))[0] + 1]
    return float((np.maximum.reduceat(across, starts) - np.minimum.reduceat(across, starts)).max())


def feret_axes(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """Long and short axes of a 2D mask, as a sonographer measures a nodule.

    The long axis is the maximum Feret diameter: the largest distance between two pixel centres of
    the mask (found on the convex hull of its boundary pixels), plus one pixel along that direction
    (so a ``w``-pixel row measures ``w`` pixels). The short axis is the largest width perpendicular
    to the long axis: the mask is cut into slabs one pixel thick across the long axis, and the
    widest slab's extent between pixel centres, plus one pixel, is the short axis (the longest
    perpendicular chord; for non-convex masks a slab's extent spans any gap).

    Parameters
    ----------
    mask : numpy.ndarray
        2D, non-zero inside.
    spacing : tuple of float
        ``(row, col)`` pixel size; the result is in its units (rows and columns may differ). "One
        pixel" along a direction ``d`` is ``hypot(d_row * row_spacing, d_col * col_spacing)``.

    Returns
    -------
    tuple of float
        ``(long, short)``; ``(0.0, 0.0)`` for an empty mask.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"feret_axes needs a 2D mask, got shape {m.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if not m.any():
        return 0.0, 0.0
    boundary = m & ~ndimage.binary_erosion(m, border_value=0)
    hull = np.argwhere(boundary).astype(np.float64) * sp
    if len(hull) > 3:
        try:
            hull = hull[ConvexHull(hull).vertices]
        except QhullError:  # collinear (a line of pixels): every point is on the hull
            pass
    if len(hull) > 2000:  # only degenerate inputs (long lines) get here; keep the pairwise step bounded
        keep = np.r_[np.argmin(hull, axis=0), np.argmax(hull, axis=0), np.linspace(0, len(hull) - 1, 2000).astype(int)]
        hull = hull[np.unique(keep)]
    diff = hull[:, None, :] - hull[None, :, :]
    dist2 = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    length = float(np.sqrt(dist2[i, j]))
    if length > 0:
        u = diff[i, j] / length
    else:  # one pixel: its larger side is the long direction
        u = np.array([1.0, 0.0]) if sp[0] >= sp[1] else np.array([0.0, 1.0])
    n = np.array([-u[1], u[0]])
    pts = np.argwhere(m).astype(np.float64) * sp
    long_axis = length + _one_pixel(u, sp)
    short_axis = _longest_chord(pts, u, n, _one_pixel(u, sp)) + _one_pixel(n, sp)
    return long_axis, short_axis


# --- drawing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    centre: tuple[float, float]
    a: float
    b: float
    angle: float  # radians
    harmonics: tuple[tuple[int, float, float], ...]  # (k, amplitude, phase)

    def reach(self) -> float:
        return self.a * (1.0 + sum(abs(h[1]) for h in self.harmonics)) + 1.0

    def box(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        r = self.reach()
        cr, cc = self.centre
        return (max(int(np.floor(cr - r)), 0), max(int(np.floor(cc - r)), 0),
                min(int(np.ceil(cr + r)) + 1, shape[0]), min(int(np.ceil(cc + r)) + 1, shape[1]))

    def raster(self, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The outline on pixel centres within its bounding box, and that box."""
        r0, c0, r1, c1 = self.box(shape)
        y = (np.arange(r0, r1, dtype=np.float64) - self.centre[0])[:, None]
        x = (np.arange(c0, c1, dtype=np.float64) - self.centre[1])[None, :]
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        u = (x * ca + y * sa) / self.a
        v = (-x * sa + y * ca) / self.b
        t = np.arctan2(v, u)
        radius = np.ones_like(t)
        for k, amp, phase in self.harmonics:
            radius += amp * np.cos(k * t + phase)
        inside: np.ndarray = (u * u + v * v) <= radius * radius
        return inside, (r0, c0, r1, c1)


def _harmonics(rng: np.random.Generator, malignant: bool) -> tuple[tuple[int, float, float], ...]:
    if not malignant:  # smooth oval
        return tuple((k, float(rng.uniform(0.0, 0.015)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3))
    lobes = [(int(k), float(rng.uniform(0.03, 0.06)), float(rng.uniform(0, 2 * np.pi)))
             for k in rng.choice(np.arange(3, 7), size=2, replace=False)]
    spikes = [(int(k), float(rng.uniform(0.015, 0.03)), float(rng.uniform(0, 2 * np.pi)))
              for k in rng.choice(np.arange(9, 16), size=2, replace=False)]
    return tuple(lobes + spikes)


def _lerp_axis(a: np.ndarray, n: int, grain: float, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at ``arange(n) / grain`` (no BLAS: small arrays)."""
    pos = np.arange(n, dtype=np.float32) / np.float32(grain)
    i0 = np.minimum(np.floor(pos).astype(np.intp), a.shape[axis] - 2)
    w = pos - i0.astype(np.float32)
    shape = [1, 1]
    shape[axis] = n
    w = w.reshape(shape)
    out: np.ndarray = np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i0 + 1, axis=axis) * w
    return out


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], grain: float) -> np.ndarray:
    """A smooth zero-mean random field (unit std at the nodes) with features of ``grain`` pixels."""
    mr, mc = int(np.ceil(shape[0] / grain)) + 2, int(np.ceil(shape[1] / grain)) + 2
    coarse = rng.standard_normal((mr, mc), dtype=np.float32)
    return _lerp_axis(_lerp_axis(coarse, shape[0], grain, 0), shape[1], grain, 1)


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-mean Rayleigh speckle, correlated over ~4 px laterally and ~1.5 px axially."""
    field = rng.standard_normal((2, *shape), dtype=np.float32)
    re = ndimage.gaussian_filter(field[0], (0.7, 1.8), mode="wrap", truncate=3.0)
    im = ndimage.gaussian_filter(field[1], (0.7, 1.8), mode="wrap", truncate=3.0)
    mag = np.hypot(re, im)
    out: np.ndarray = mag / np.float32(mag.mean())
    return out


class _Anatomy:
    """The speckle-free reflectivity (diffuse) and specular amplitude maps of a neck section."""

    def __init__(self, rng: np.random.Generator, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        d = (np.arange(rows, dtype=np.float32) / rows)[:, None]
        x = (np.arange(cols, dtype=np.float32) / cols)[None, :]
        echo = np.full((rows, cols), 0.5, dtype=np.float32)  # deep muscle
        self.lobe_c = (0.56 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03))
        self.lobe_r = (0.40 + rng.uniform(-0.02, 0.02), 0.37 + rng.uniform(-0.02, 0.02))
        lobe_q = ((d - self.lobe_c[0]) / self.lobe_r[0]) ** 2 + ((x - self.lobe_c[1]) / self.lobe_r[1]) ** 2
        self.lobe = lobe_q <= 1.0
        texture = _smooth_field(rng, (rows, cols), 12.0)
        echo[self.lobe] = (1.0 + 0.08 * texture)[self.lobe]
        skin = int(round(0.015 * rows)) + 2
        strap = 0.05 + rng.uniform(0.0, 0.03)
        fat = (d >= skin / rows) & (d < strap)
        echo = np.where(fat, np.float32(0.8), echo)
        fibres = 0.25 * np.sin(2 * np.pi * d * rows / rng.uniform(6.0, 9.0))
        muscle = (d >= strap) & (d < strap + 0.09) & ~self.lobe
        echo = np.where(muscle, (0.65 + fibres).astype(np.float32), echo)
        echo[:skin - 2] = 0.02  # coupling gel
        specular = np.zeros((rows, cols), dtype=np.float32)
        specular[skin - 2:skin] = 3.0  # skin line
        trachea_left = bool(rng.random() < 0.5)
        xc_t = 0.0 if trachea_left else 1.0
        xc_c = 1.0 - xc_t
        # trachea: a bright ring arc with an acoustic shadow below it
        r_t = 0.11
        ring = np.abs(np.sqrt(((x - xc_t) * cols / rows) ** 2 + (d - 0.42 - r_t) ** 2) - r_t) < 0.008
        ring &= d < 0.42 + r_t
        specular[ring] += 2.5
        top = np.where(np.abs((x - xc_t) * cols / rows) < r_t,
                       0.42 + r_t - np.sqrt(np.clip(r_t**2 - ((x - xc_t) * cols / rows) ** 2, 0.0, None)), 2.0)
        echo = np.where(d > top + 0.01, echo * np.float32(0.08), echo)
        # carotid: anechoic lumen, bright wall, posterior enhancement
        r_c = 0.085
        dist_c = np.sqrt(((x - xc_c) * cols / rows) ** 2 + (d - 0.5) ** 2)
        enhance = (np.abs((x - xc_c) * cols / rows) < r_c) & (d > 0.5)
        echo = np.where(enhance, echo * np.float32(1.35), echo)
        echo = np.where(dist_c < r_c, np.float32(0.03), echo)
        specular[np.abs(dist_c - r_c) < 0.006] += 1.2
        self.echo = echo
        self.specular = specular
        # near-field gain band and depth attenuation (partly compensated by TGC)
        self.gain = (1.0 + 0.35 * np.exp(-d / 0.12)) * np.exp(-0.9 * d)


def _place(
    rng: np.random.Generator,
    anatomy: _Anatomy,
    placed: list[tuple[_Shape, np.ndarray]],
    malignant: bool,
    diameter_px: float | None,
    min_diameter_px: float,
    max_diameter_px: float,
) -> tuple[_Shape, np.ndarray]:
    """Draw one nodule outline inside the image (margin) and the lobe, clear of the ``placed`` ones."""
    rows, cols = anatomy.rows, anatomy.cols
    for attempt in range(400):
        if diameter_px is not None:
            diam = diameter_px
        else:
            shrink = 1.0 - 0.6 * attempt / 400  # large random sizes may not fit: shrink slowly
            diam = float(rng.uniform(min_diameter_px, max(min_diameter_px, max_diameter_px * shrink)))
        a = diam / 2
        if malignant:
            b = a * rng.uniform(0.6, 0.9)
            tall = rng.random() < 0.65
            angle = 90.0 + rng.uniform(-25, 25) if tall else rng.uniform(-90, 90)
        else:
            b = a * rng.uniform(0.55, 0.85)
            angle = rng.uniform(-25, 25)
        angle = (angle + 90.0) % 180.0 - 90.0
        cr = anatomy.lobe_c[0] * rows + rng.normal(0.0, 0.12) * rows
        cc = anatomy.lobe_c[1] * cols + rng.normal(0.0, 0.12) * cols
        shape = _Shape((float(cr), float(cc)), float(a), float(b), float(np.deg2rad(angle)), _harmonics(rng, malignant))
        near = [m for p, m in placed
                if np.hypot(cr - p.centre[0], cc - p.centre[1]) < shape.reach() + p.reach() + _GAP_PX]
        inside, (r0, c0, r1, c1) = shape.raster((rows, cols))
        rr, ccs = np.nonzero(inside)
        if len(rr) == 0:
            continue
        if rr.min() + r0 < _MARGIN_PX or rr.max() + r0 > rows - 1 - _MARGIN_PX:
            continue
        if ccs.min() + c0 < _MARGIN_PX or ccs.max() + c0 > cols - 1 - _MARGIN_PX:
            continue
        in_lobe = float(anatomy.lobe[r0:r1, c0:c1][inside].mean())
        if in_lobe < (0.9 if attempt < 300 else 0.6):
            continue
        if near:  # bounding circles too close: check the outlines themselves
            g0, h0 = max(r0 - _GAP_PX, 0), max(c0 - _GAP_PX, 0)
            grown = np.zeros((min(r1 + _GAP_PX, rows) - g0, min(c1 + _GAP_PX, cols) - h0), dtype=bool)
            grown[r0 - g0:r1 - g0, c0 - h0:c1 - h0] = inside
            grown = ndimage.binary_dilation(grown, iterations=_GAP_PX)
            if any((grown & m[g0:g0 + grown.shape[0], h0:h0 + grown.shape[1]]).any() for m in near):
                continue
        mask = np.zeros((rows, cols), dtype=bool)
        mask[r0:r1, c0:c1] = inside
        return shape, mask
    raise ValueError("could not place the nodule(s) in the image; use fewer or smaller nodules or a larger image")


def _micro_foci(rng: np.random.Generator, mask: np.ndarray, count: int, specular: np.ndarray) -> None:
    """Add ``count`` punctate bright foci of 1-3 px inside ``mask`` (no shadow)."""
    core = ndimage.binary_erosion(mask, iterations=3)
    pts = np.argwhere(core if core.any() else mask)
    picks = pts[rng.choice(len(pts), size=min(count, len(pts)), replace=False)]
    for r, c in picks:
        size = int(rng.integers(1, 4))
        amp = float(rng.uniform(8.0, 12.0))
        if size == 1:
            specular[r, c] += amp
        elif size == 2:
            specular[r:r + 2, c:c + 2] += amp
        else:  # a 3-px disc (plus sign)
            specular[r - 1:r + 2, c] += amp
            specular[r, c - 1:c + 2] += amp


def _egg_shell(rng: np.random.Generator, shape: _Shape, mask: np.ndarray, specular: np.ndarray,
               shadow: np.ndarray) -> None:
    """A coarse bright arc along the upper rim and the acoustic shadow below it."""
    r0, c0, r1, c1 = shape.box(mask.shape)
    sub = mask[r0:r1, c0:c1]
    depth = ndimage.distance_transform_edt(sub)
    thick = float(rng.uniform(3.0, 6.0))
    y = (np.arange(r0, r1) - shape.centre[0])[:, None]
    x = (np.arange(c0, c1) - shape.centre[1])[None, :]
    psi = np.degrees(np.arctan2(y, x))  # -90 = straight up (toward the transducer)
    mid = -90.0 + rng.uniform(-35.0, 35.0)
    half = rng.uniform(35.0, 70.0)
    arc = sub & (depth <= thick) & (np.abs((psi - mid + 180.0) % 360.0 - 180.0) <= half)
    if not arc.any():
        return
    specular[r0:r1, c0:c1] += np.where(arc, np.float32(rng.uniform(4.0, 6.0)), np.float32(0.0))
    rows_idx = np.arange(r0, r1)[:, None]
    bottom = np.where(arc, rows_idx, -1).max(axis=0)  # lowest arc pixel per column
    cols = np.nonzero(bottom >= 0)[0]
    for j in cols:
        shadow[bottom[j] + 1:, c0 + j] = True


def _render(anatomy: _Anatomy, diffuse: np.ndarray, specular: np.ndarray, shadow: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Speckle, shadow, gain and log compression of the amplitude maps into uint8 grey."""
    att = np.ones_like(diffuse)
    if shadow.any():
        soft = ndimage.gaussian_filter1d(shadow.astype(np.float32), 2.0, axis=1)
        att = 1.0 - 0.88 * soft
    amp = (diffuse * _speckle(rng, diffuse.shape) + specular) * att * anatomy.gain
    grey = _GREY_AT_UNIT + 255.0 / _DYNAMIC_RANGE_DB * 20.0 * np.log10(np.maximum(amp, 1e-6))
    out: np.ndarray = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return out


def us_phantom(
    seed: int,
    *,
    rows: int = 360,
    cols: int = 480,
    spacing_mm: float = 0.1,
    n_nodules: int = 1,
    malignant: bool | None = None,
    lvlnm: bool | None = None,
    calcification: str | None = None,
    diameter_mm: float | None = None,
    speckle_seed: int | None = None,
) -> USPhantom:
    """Draw a thyroid B-mode phantom with ``n_nodules`` nodules (conventions in the module docstring).

    Parameters
    ----------
    seed : int
        Seeds the anatomy, the nodules and their labels (and the speckle unless ``speckle_seed``).
    rows, cols, spacing_mm : int, int, float
        Image size and isotropic pixel size.
    n_nodules : int
        How many nodules (non-overlapping).
    malignant, lvlnm, calcification, diameter_mm
        Fix the label, calcification (one of :data:`CALCIFICATIONS`) or nominal diameter (2 a, mm)
        of every nodule; ``None`` draws each from the seed. ``lvlnm=True`` makes the first (index)
        nodule an lvlnm one (malignant, long axis >= 12 mm); any further nodules then follow
        ``malignant`` and are not lvlnm. ``lvlnm=False``: no nodule is lvlnm.
    speckle_seed : int or None
        Seeds the speckle only: the same ``seed`` with another ``speckle_seed`` is the same anatomy
        and nodules with new speckle (a cine frame).

    Returns
    -------
    USPhantom
    """
    if calcification is not None and calcification not in CALCIFICATIONS:
        raise ValueError(f"unknown calcification {calcification!r}; expected one of {CALCIFICATIONS}")
    if lvlnm and malignant is False:
        raise ValueError("lvlnm is only possible for malignant nodules")
    if lvlnm and diameter_mm is not None and diameter_mm < LVLNM_MIN_LONG_AXIS_MM:
        raise ValueError(f"an lvlnm nodule needs a long axis >= {LVLNM_MIN_LONG_AXIS_MM} mm")
    if rows < 64 or cols < 64 or spacing_mm <= 0 or n_nodules < 0:
        raise ValueError("a US phantom needs rows, cols >= 64, spacing_mm > 0 and n_nodules >= 0")
    options: tuple[tuple[str, Any], ...] = (
        ("rows", rows), ("cols", cols), ("spacing_mm", spacing_mm), ("n_nodules", n_nodules),
        ("malignant", malignant), ("lvlnm", lvlnm), ("calcification", calcification), ("diameter_mm", diameter_mm),
    )
    rng = np.random.default_rng([seed, 4004])
    anatomy = _Anatomy(rng, rows, cols)
    diffuse = anatomy.echo.copy()
    specular = anatomy.specular.copy()
    shadow = np.zeros((rows, cols), dtype=bool)
    placed: list[tuple[_Shape, np.ndarray]] = []
    lo, hi = (np.array(_DIAMETER_RANGE_MM) / spacing_mm).tolist()
    max_fit = (min(rows, cols) - 2 * _MARGIN_PX - 4) / 1.25  # keep room for the irregular margin
    hi = max(min(hi, max_fit) / np.sqrt(max(n_nodules, 1)), lo)  # several nodules: smaller ones
    nodules: list[USNoduleTruth] = []
    for k in range(n_nodules):
        force = bool(lvlnm) and k == 0  # lvlnm=True: the first (index) nodule is the lvlnm one
        mal = bool(rng.random() < 0.5) if malignant is None else bool(malignant)
        mal = mal or force
        want_lvlnm: bool | None = True if force else (None if lvlnm is None else False)
        lvl_draw = bool(rng.random() < _LVLNM_RATE)
        min_d = max(lo, 1.1 * LVLNM_MIN_LONG_AXIS_MM / spacing_mm) if force else lo
        d_px = None if diameter_mm is None else diameter_mm / spacing_mm
        for _grow in range(20):
            shape, mask = _place(rng, anatomy, placed, mal, d_px, min_d, max(hi, min_d))
            long_px, short_px = feret_axes(mask)
            big = long_px * spacing_mm >= LVLNM_MIN_LONG_AXIS_MM
            if not force or big:
                break
            d_px = (d_px if d_px is not None else 2 * shape.a) * 1.05
        else:
            raise ValueError("could not draw an lvlnm nodule of long axis >= 12 mm in this image")
        is_lvlnm = bool(mal and big and (lvl_draw if want_lvlnm is None else want_lvlnm))
        calc = calcification if calcification is not None else (
            "micro" if mal else ("macro" if rng.random() < 0.5 else "none"))
        # echo of the interior: a fraction of the surrounding parenchyma, textured
        level = rng.uniform(0.17, 0.24) if mal else rng.uniform(0.32, 0.42)
        r0, c0, r1, c1 = shape.box((rows, cols))
        blotch = _smooth_field(rng, (r1 - r0, c1 - c0), 18.0 if is_lvlnm else 10.0)
        inner = (level * (1.0 + (0.35 if is_lvlnm else 0.08) * np.clip(blotch, -2.0, 2.0))).astype(np.float32)
        sub = mask[r0:r1, c0:c1]
        diffuse[r0:r1, c0:c1] = np.where(sub, np.maximum(inner, 0.03), diffuse[r0:r1, c0:c1])
        if calc == "micro":
            count = int(rng.integers(8, 15)) if is_lvlnm else int(rng.integers(3, 8))
            _micro_foci(rng, mask, count, specular)
        elif calc == "macro":
            _egg_shell(rng, shape, mask, specular, shadow)
        placed.append((shape, mask))
        nodules.append(USNoduleTruth(
            centre=shape.centre, semi_axes=(shape.a, shape.b), angle_deg=float(np.degrees(shape.angle)),
            calcification=calc, malignant=mal, lvlnm=is_lvlnm, mask=mask,
            long_axis_px=long_px, short_axis_px=short_px,
        ))
    # soften the nodules' edges slightly (a beam is a few pixels wide); masks stay exact
    diffuse = ndimage.gaussian_filter(diffuse, (0.8, 1.2), truncate=2.5)
    speckle_rng = np.random.default_rng([seed if speckle_seed is None else speckle_seed, 4005])
    image = _render(anatomy, diffuse, specular, shadow, speckle_rng)
    return USPhantom(image=image, spacing_mm=float(spacing_mm), nodules=tuple(nodules), seed=seed, options=options)


def respeckle(phantom: USPhantom, speckle_seed: int) -> USPhantom:
    """The same anatomy and nodules with new speckle (a cine frame); needs ``phantom.seed``."""
    if phantom.seed is None:
        raise ValueError("this phantom carries no seed, so its speckle cannot be redrawn")
    return us_phantom(phantom.seed, **dict(phantom.options), speckle_seed=speckle_seed)


def training_set(seed: int, n: int, **kwargs: Any) -> list[USPhantom]:
    """``n`` phantoms, deterministic from ``seed``, with balanced labels.

    Malignant and benign alternate (in a seeded random order) unless ``malignant`` is given; among
    malignant phantoms, lvlnm and not-lvlnm alternate likewise unless ``lvlnm`` is given. lvlnm is
    only possible for malignant nodules, so the default set is 50 % malignant and 25 % lvlnm; pass
    ``malignant=True`` for an lvlnm training set (the cohort of seed 002: all papillary carcinoma),
    which is then 50/50 lvlnm.

    Parameters
    ----------
    seed : int
    n : int
    **kwargs
        Passed to :func:`us_phantom` (``n_nodules``, ``rows``, ``malignant``...).

    Returns
    -------
    list of USPhantom
    """
    rng = np.random.default_rng([seed, 4006])
    fixed_mal = kwargs.pop("malignant", None)
    fixed_lvl = kwargs.pop("lvlnm", None)
    mal_flags = rng.permutation(np.arange(n) % 2 == 0) if fixed_mal is None else np.full(n, bool(fixed_mal))
    if fixed_lvl:
        mal_flags[:] = True
    n_mal = int(mal_flags.sum())
    lvl_of_mal = rng.permutation(np.arange(n_mal) % 2 == 0) if fixed_lvl is None else np.full(n_mal, bool(fixed_lvl))
    lvl_flags = np.zeros(n, dtype=bool)
    lvl_flags[mal_flags] = lvl_of_mal
    seeds = rng.integers(0, 2**31 - 1, size=n)
    out = []
    for i in range(n):
        mal = bool(mal_flags[i])
        out.append(us_phantom(int(seeds[i]), malignant=mal, lvlnm=bool(lvl_flags[i]) if mal else False, **kwargs))
    logger.debug("US training set: %d phantoms, %d malignant, %d lvlnm", n, n_mal, int(lvl_flags.sum()))
    return out
