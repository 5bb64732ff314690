from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from model_zoo.phantoms.us import (
    CALCIFICATIONS,
    LVLNM_MIN_LONG_AXIS_MM,
    USPhantom,
    feret_axes,
    respeckle,
    training_set,
    us_phantom,
)


def _ring(mask: np.ndarray, inner: int = 5, outer: int = 15) -> np.ndarray:
    out: np.ndarray = ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(mask, iterations=inner)
    return out


def _bright_foci(ph: USPhantom, mask: np.ndarray) -> int:
    """Pixels inside ``mask`` far brighter than the nodule's median (specular echoes)."""
    values = ph.image[mask].astype(int)
    return int((values > np.median(values) + 100).sum())


def test_deterministic_per_seed_and_types() -> None:
    a, b, c = us_phantom(11), us_phantom(11), us_phantom(12)
    assert a.image.dtype == np.uint8 and a.image.shape == (360, 480) and a.spacing_mm == 0.1
    assert np.array_equal(a.image, b.image)
    assert len(a.nodules) == 1 and np.array_equal(a.nodules[0].mask, b.nodules[0].mask)
    assert a.nodules[0].centre == b.nodules[0].centre and a.nodules[0].malignant == b.nodules[0].malignant
    assert not np.array_equal(a.image, c.image)
    nod = a.nodules[0]
    assert nod.mask.dtype == bool and nod.mask.shape == a.image.shape
    assert nod.calcification in CALCIFICATIONS
    assert nod.semi_axes[0] >= nod.semi_axes[1] > 0 and -90 <= nod.angle_deg < 90


def test_respeckle_keeps_anatomy_changes_speckle() -> None:
    a = us_phantom(3, n_nodules=2)
    f = respeckle(a, 99)
    assert not np.array_equal(a.image, f.image)
    for n0, n1 in zip(a.nodules, f.nodules, strict=True):
        assert np.array_equal(n0.mask, n1.mask) and n0.malignant == n1.malignant
    # same anatomy: strongly correlated after smoothing out the speckle
    s0 = ndimage.uniform_filter(a.image.astype(float), 15)
    s1 = ndimage.uniform_filter(f.image.astype(float), 15)
    assert np.corrcoef(s0.ravel(), s1.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", [dict(malignant=True), dict(malignant=False, calcification="none"),
                                  dict(malignant=False, calcification="macro")])
def test_mask_matches_a_hypoechoic_outline(seed: int, kind: dict[str, object]) -> None:
    ph = us_phantom(seed, **kind)  # type: ignore[arg-type]
    nod = ph.nodules[0]
    inside = float(ph.image[ndimage.binary_erosion(nod.mask, iterations=3)].mean())
    ring = float(ph.image[_ring(nod.mask)].mean())
    assert inside < ring - 20, (inside, ring)
    rows, cols = np.nonzero(nod.mask)
    assert rows.min() >= 10 and cols.min() >= 10 and rows.max() <= 349 and cols.max() <= 469
    # the outline sits on the echo edge: just inside is darker than just outside (the rim of a
    # macrocalcified nodule is bright, and its shadow darkens what lies below: not tested there)
    if nod.calcification == "macro":
        return
    edge_in = nod.mask & ~ndimage.binary_erosion(nod.mask, iterations=3)
    edge_out = ndimage.binary_dilation(nod.mask, iterations=4) & ~ndimage.binary_dilation(nod.mask, iterations=1)
    assert float(ph.image[edge_in].mean()) < float(ph.image[edge_out].mean())
    # the stored axes are the mask's
    assert (nod.long_axis_px, nod.short_axis_px) == feret_axes(nod.mask)
    assert 5.0 <= nod.long_axis_px * ph.spacing_mm <= 25.0 * 1.3


def test_several_nodules_do_not_touch() -> None:
    ph = us_phantom(21, n_nodules=3, diameter_mm=8.0)
    assert len(ph.nodules) == 3
    masks = [n.mask for n in ph.nodules]
    for i in range(3):
        grown = ndimage.binary_dilation(masks[i], iterations=3)
        for j in range(i + 1, 3):
            assert not (grown & masks[j]).any()
    for n in ph.nodules:
        assert abs(n.semi_axes[0] * 2 * ph.spacing_mm - 8.0) < 1e-9


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], a: float, b: float, angle_deg: float,
             spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """An ellipse in physical units (semi-axes a, b) on a grid of ``spacing``, on pixel centres."""
    t = np.deg2rad(angle_deg)
    y = (np.arange(shape[0])[:, None] - centre[0]) * spacing[0]
    x = (np.arange(shape[1])[None, :] - centre[1]) * spacing[1]
    u = x * np.cos(t) + y * np.sin(t)
    v = -x * np.sin(t) + y * np.cos(t)
    out: np.ndarray = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return out


def _rectangle(shape: tuple[int, int], centre: tuple[float, float], length: float, width: float,
               angle_deg: float) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    y = np.arange(shape[0])[:, None] - centre[0]
    x = np.arange(shape[1])[None, :] - centre[1]
    u = x * np.cos(t) + y * np.sin(t)
    v = -x * np.sin(t) + y * np.cos(t)
    out: np.ndarray = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
    return out


def test_feret_axes_exact_cases() -> None:
    assert feret_axes(np.zeros((5, 5), bool)) == (0.0, 0.0)
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert feret_axes(one) == (1.0, 1.0)
    assert feret_axes(one, (0.5, 2.0)) == (2.0, 0.5)
    rect = np.zeros((40, 60), bool)
    rect[5:15, 10:40] = True  # 10 rows x 30 columns
    long_, short = feret_axes(rect)
    assert long_ == pytest.approx(np.hypot(29, 9) + 1.0, abs=1e-9)  # the diagonal between pixel centres
    assert abs(short - 10 * np.hypot(30, 10) / 30) <= 1.0  # the chord across the diagonal
    line = np.zeros((20, 20), bool)
    line[4, 3:17] = True
    assert feret_axes(line) == pytest.approx((14.0, 1.0))
    assert feret_axes(line, (0.3, 0.2)) == pytest.approx((14 * 0.2, 0.3))
    assert feret_axes(line.T, (0.3, 0.2)) == pytest.approx((14 * 0.3, 0.2))


@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0, 71.0, 90.0, -33.0])
def test_feret_axes_rotated_ellipses_and_rectangles(angle: float) -> None:
    shape = (220, 240)
    ell = _ellipse(shape, (110.3, 119.6), 80.0, 35.0, angle)
    long_, short = feret_axes(ell)
    assert abs(long_ - 160.0) <= 1.0 and abs(short - 70.0) <= 1.0
    rect = _rectangle(shape, (110.5, 120.2), 120.0, 20.0, angle)
    diag = np.hypot(120.0, 20.0)  # a rectangle's max Feret diameter is its diagonal
    long_, short = feret_axes(rect)
    assert abs(long_ - diag) <= 1.0
    # the longest chord perpendicular to the diagonal runs side to side: w * diag / l
    assert abs(short - 20.0 * diag / 120.0) <= 1.0


@pytest.mark.parametrize("spacing", [(0.1, 0.1), (0.1, 0.25), (0.3, 0.12)])
@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, -60.0])
def test_feret_axes_anisotropic_spacing(spacing: tuple[float, float], angle: float) -> None:
    a, b = 8.0, 3.5  # mm
    shape = (int(np.ceil(20 / spacing[0])), int(np.ceil(20 / spacing[1])))
    centre = ((shape[0] - 1) / 2 + 0.3, (shape[1] - 1) / 2 - 0.2)
    ell = _ellipse(shape, centre, a, b, angle, spacing)
    long_, short = feret_axes(ell, spacing)
    tol = max(spacing)  # one pixel
    assert abs(long_ - 2 * a) <= tol and abs(short - 2 * b) <= tol


def test_malignant_have_micro_foci_benign_none_or_macro() -> None:
    for seed in range(8):
        mal = us_phantom(seed, malignant=True)
        nod = mal.nodules[0]
        assert nod.malignant and nod.calcification == "micro"
        assert _bright_foci(mal, nod.mask) >= 3
        ben = us_phantom(100 + seed, malignant=False)
        bn = ben.nodules[0]
        assert not bn.malignant and not bn.lvlnm and bn.calcification in ("none", "macro")
        if bn.calcification == "none":
            assert _bright_foci(ben, bn.mask) == 0
    none = us_phantom(5, malignant=False, calcification="none")
    assert _bright_foci(none, none.nodules[0].mask) == 0


def test_macrocalcification_casts_a_shadow() -> None:
    for seed in range(4):
        ph = us_phantom(seed, malignant=False, calcification="macro")
        nod = ph.nodules[0]
        assert nod.calcification == "macro"
        rim = nod.mask & ~ndimage.binary_erosion(nod.mask, iterations=7)
        assert _bright_foci(ph, rim) >= 20  # a coarse bright arc along the rim
        rows, cols = np.nonzero(nod.mask)
        below = slice(rows.max() + 5, 360)
        img = ph.image.astype(float)
        bright_cols = np.unique(np.nonzero(rim & (img > np.median(img[nod.mask]) + 100))[1])
        shadow = img[below][:, bright_cols].mean()
        beside = np.setdiff1d(np.arange(cols.min(), cols.max() + 1), np.arange(bright_cols.min() - 6,
                                                                                bright_cols.max() + 7))
        if len(beside) and rows.max() + 5 < 350:
            assert shadow < img[below][:, beside].mean() - 20
        else:
            assert shadow < 60


def test_malignant_taller_than_wide_more_often() -> None:
    def tall(ph: USPhantom) -> bool:
        return abs(ph.nodules[0].angle_deg) > 45

    mal = sum(tall(us_phantom(s, malignant=True, diameter_mm=8.0)) for s in range(30))
    ben = sum(tall(us_phantom(s, malignant=False, diameter_mm=8.0)) for s in range(30))
    assert ben == 0 and mal >= 15


def test_lvlnm_rule() -> None:
    seen = 0
    for seed in range(30):
        ph = us_phantom(seed)
        nod = ph.nodules[0]
        if nod.lvlnm:
            seen += 1
            assert nod.malignant and nod.long_axis_px * ph.spacing_mm >= LVLNM_MIN_LONG_AXIS_MM
        if not nod.malignant or nod.long_axis_px * ph.spacing_mm < LVLNM_MIN_LONG_AXIS_MM:
            assert not nod.lvlnm
    assert seen >= 1
    for seed in range(5):
        forced = us_phantom(seed, lvlnm=True)
        nod = forced.nodules[0]
        assert nod.lvlnm and nod.malignant and nod.long_axis_px * forced.spacing_mm >= LVLNM_MIN_LONG_AXIS_MM
        assert _bright_foci(forced, nod.mask) >= 8
    assert not us_phantom(4, malignant=True, lvlnm=False).nodules[0].lvlnm
    with pytest.raises(ValueError, match="malignant"):
        us_phantom(1, malignant=False, lvlnm=True)
    with pytest.raises(ValueError, match="12"):
        us_phantom(1, lvlnm=True, diameter_mm=8.0)
    with pytest.raises(ValueError, match="calcification"):
        us_phantom(1, calcification="coarse")


def test_training_set_balanced_and_deterministic() -> None:
    ts = training_set(5, 12, rows=240, cols=320)
    assert len(ts) == 12 and all(p.image.shape == (240, 320) for p in ts)
    mal = [p.nodules[0].malignant for p in ts]
    lvl = [p.nodules[0].lvlnm for p in ts]
    assert sum(mal) == 6
    assert all(m for m, v in zip(mal, lvl) if v)
    again = training_set(5, 12, rows=240, cols=320)
    assert all(np.array_equal(p.image, q.image) for p, q in zip(ts, again))
    assert len({p.image.tobytes() for p in ts}) == 12
    cohort = training_set(6, 8, malignant=True, rows=240, cols=320)
    assert all(p.nodules[0].malignant for p in cohort)
    assert sum(p.nodules[0].lvlnm for p in cohort) == 4


def test_lvlnm_with_several_nodules_marks_the_index_nodule() -> None:
    ph = us_phantom(3, lvlnm=True, n_nodules=3)
    first, *others = ph.nodules
    assert first.lvlnm and first.malignant and first.long_axis_px * ph.spacing_mm >= LVLNM_MIN_LONG_AXIS_MM
    assert not any(n.lvlnm for n in others)
    assert not any(n.lvlnm for n in us_phantom(3, lvlnm=False, malignant=True, n_nodules=3).nodules)
