"""Lesion cutting and measuring (model_zoo.ct_lung_met_rai.lesions) on digitised spheres of known size."""

from __future__ import annotations

import numpy as np
import pytest

from model_zoo.ct_lung_met_rai.lesions import components, largest_component, measure, side_of


def _sphere(shape: tuple[int, int, int], spacing: tuple[float, float, float], centre_mm: np.ndarray, d: float) -> np.ndarray:
    k, r, c = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    return (k - centre_mm[0]) ** 2 + (r - centre_mm[1]) ** 2 + (c - centre_mm[2]) ** 2 <= (d / 2) ** 2


@pytest.mark.parametrize("d", [5.0, 8.0, 14.0, 20.0])
def test_sphere_measures_its_diameter_centre_and_volume(d: float) -> None:
    spacing = (1.25, 0.8, 0.8)  # (k, r, c): the phantom CT's voxels
    shape = (40, 50, 50)
    centre = np.array([24.3, 19.7, 20.2])  # off-grid
    mask = _sphere(shape, spacing, centre, d)
    # an oblique-free affine with a flipped axis and an offset: centre comes back in patient mm
    affine = np.array([[0, 0, 0.8, -10.0], [0, 0.8, 0, 5.0], [1.25, 0, 0, 30.0], [0, 0, 0, 1]])
    m = measure(mask, affine)
    expected = affine[:3, :3] @ (centre / np.array(spacing)) + affine[:3, 3]
    assert np.allclose(m.centre_mm, expected, atol=0.3)
    assert abs(m.diameter_mm - d) <= 0.6, m.diameter_mm
    assert abs(m.volume_mm3 - np.pi * d**3 / 6) / (np.pi * d**3 / 6) < 0.15


def test_cropped_mask_keeps_patient_position() -> None:
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    mask = _sphere((30, 30, 30), (1, 1, 1), np.array([15.0, 12.0, 9.0]), 6.0)
    whole = measure(mask, affine)
    box = (slice(10, 20), slice(7, 18), slice(4, 15))
    crop = measure(mask[box], affine, origin=(10, 7, 4))
    assert np.allclose(whole.centre_mm, crop.centre_mm) and whole.diameter_mm == pytest.approx(crop.diameter_mm)
    assert crop.centre_mm == pytest.approx((9.0, 12.0, 15.0), abs=1e-6)  # (x, y, z) = (c, r, k)


def test_single_voxel_measures_one_voxel() -> None:
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    m = measure(mask, np.eye(4))
    assert m.voxels == 1 and m.volume_mm3 == 1.0 and m.diameter_mm == pytest.approx(1.0)
    with pytest.raises(ValueError):
        measure(np.zeros((2, 2, 2), bool), np.eye(4))


def test_components_drop_small_ones_and_keep_largest_first() -> None:
    mask = np.zeros((30, 30, 30), bool)
    mask |= _sphere(mask.shape, (1, 1, 1), np.array([8.0, 8.0, 8.0]), 6.0)
    mask |= _sphere(mask.shape, (1, 1, 1), np.array([20.0, 20.0, 20.0]), 10.0)
    mask[2, 27, 2] = True  # a 1 mm3 speck
    found = components(mask, 1.0, min_volume_mm3=8.0)
    assert len(found) == 2
    sizes = [int(comp.sum()) for _, comp in found]
    assert sizes == sorted(sizes, reverse=True)
    box, comp = found[0]
    assert comp.shape == tuple(b.stop - b.start for b in box)
    assert len(components(mask, 1.0, min_volume_mm3=0.0)) == 3


def test_largest_component_and_side() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[1:3, 1:3, 1:3] = True
    mask[5:9, 5:9, 5:9] = True
    assert int(largest_component(mask).sum()) == 64
    assert side_of(30.0, 0.0) == "left" and side_of(-30.0, 0.0) == "right"  # LPS: +x is the patient's left
