from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, ExplicitVRLittleEndian, RLELossless
from scipy import ndimage

from model_zoo.phantoms.ct import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    ChestPhantom,
    PhantomNodule,
    chest_phantom,
)
from model_zoo.phantoms.ct_dicom import write_ct_study

SHAPE = (48, 128, 128)
SPACING = (2.0, 1.6, 1.6)  # a 205 mm field of view, 96 mm long
SMALL = dict(rows=96, slices=24, pixel_mm=2.0, slice_mm=4.0, nodules=2, diameter_range=(6.0, 12.0))


@pytest.fixture(scope="module")
def phantom() -> ChestPhantom:
    return chest_phantom(np.random.default_rng(5), shape=SHAPE, spacing=SPACING, nodules=5, diameter_range=(4.0, 16.0))


def _centres_mm(ph: ChestPhantom) -> np.ndarray:
    """LPS coordinates of every voxel centre, (k, r, c, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in ph.hu.shape], indexing="ij"), axis=-1).astype(np.float64)
    out: np.ndarray = idx @ ph.affine[:3, :3].T + ph.affine[:3, 3]
    return out


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy not installed (make peers installs dicom3tools)")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_grid_types_and_hu_ranges(phantom: ChestPhantom) -> None:
    hu, lungs, labels = phantom.hu, phantom.lungs, phantom.labels
    assert hu.shape == lungs.shape == labels.shape == SHAPE
    assert hu.dtype == np.float32 and labels.dtype == np.int16 and lungs.dtype == bool
    assert np.array_equal(hu, np.rint(hu)) and hu.min() >= -1024 and hu.max() <= 3071
    # canonical axes: +z, +y, +x; the volume's centre at the origin
    assert np.allclose(phantom.affine[:3, :3], [[0, 0, 1.6], [0, 1.6, 0], [2.0, 0, 0]])
    centre = phantom.affine @ np.array([(n - 1) / 2 for n in SHAPE] + [1.0])
    assert np.allclose(centre[:3], 0.0)
    assert abs(float(hu[:, :4, :4].mean()) + 1000) < 15  # air in the corners
    lung_only = hu[lungs & (labels == 0)]
    assert -900 < float(lung_only.mean()) < -800
    body = hu[:, 40:88, 56:72]  # mediastinum and vertebra, between the lungs
    assert float(np.median(body)) > -200 and float(body.max()) > 400
    # two lungs, left and right of the midline, tapering toward the apex
    mid = SHAPE[0] // 2
    assert lungs[mid, :, :60].sum() > 500 and lungs[mid, :, 68:].sum() > 500
    assert lungs[-2].sum() < 0.5 * lungs[mid].sum()
    assert 250 < lungs.sum() * np.prod(SPACING) / 1000 < 2000  # mL


def test_nodules_inside_lungs_apart_and_labelled(phantom: ChestPhantom) -> None:
    assert len(phantom.nodules) == 5
    spacing = np.array(SPACING)
    inside = ndimage.distance_transform_edt(phantom.lungs, sampling=SPACING)
    inv = np.linalg.inv(phantom.affine)
    xyz = _centres_mm(phantom)
    for i, nod in enumerate(phantom.nodules, start=1):
        r = nod.diameter_mm / 2
        assert 4.0 <= nod.diameter_mm <= 16.0
        assert (nod.centre_mm[0] < 0) == (nod.side == "right")  # LPS: +x is the patient's left
        idx = np.round((inv @ np.array([*nod.centre_mm, 1.0]))[:3]).astype(int)
        assert inside[tuple(idx)] >= r + 3.0 - 0.5 * spacing.max()  # >= 3 mm from the lung boundary
        sphere = np.linalg.norm(xyz - np.array(nod.centre_mm), axis=-1) <= r
        assert np.array_equal(phantom.labels == i, sphere)  # labels = the sphere equation
        assert abs(sphere.sum() * np.prod(spacing) / (4 / 3 * np.pi * r**3) - 1) < 0.35
        for other in phantom.nodules[i:]:
            gap = np.linalg.norm(np.subtract(nod.centre_mm, other.centre_mm)) - r - other.diameter_mm / 2
            assert gap >= 4.0


def test_refractory_nodules_are_denser() -> None:
    nods = [PhantomNodule((-45.0, 0.0, 0.0), 14.0, True, "right"), PhantomNodule((45.0, 0.0, 10.0), 14.0, False, "left")]
    ph = chest_phantom(np.random.default_rng(1), shape=SHAPE, spacing=SPACING, nodules=nods)
    assert ph.nodules == tuple(nods)
    solid, part_solid = (float(ph.hu[ndimage.binary_erosion(ph.labels == i)].mean()) for i in (1, 2))
    assert 0 < solid < 70 and -380 < part_solid < -220
    # partial volume: the boundary is graded, values between lung and nodule in the shell
    shell = ndimage.binary_dilation(ph.labels == 1) & (ph.labels == 0)
    assert -800 < float(ph.hu[shell].mean()) < -100


def test_refractory_fraction_and_sizes() -> None:
    ph = chest_phantom(np.random.default_rng(2), shape=SHAPE, spacing=SPACING, nodules=6, refractory_fraction=0.5,
                       diameter_range=(3.0, 8.0))
    assert sum(n.refractory for n in ph.nodules) == 3
    assert all(3.0 <= n.diameter_mm <= 8.0 for n in ph.nodules)


def test_determinism() -> None:
    a = chest_phantom(np.random.default_rng(9), shape=SHAPE, spacing=SPACING, nodules=3)
    b = chest_phantom(np.random.default_rng(9), shape=SHAPE, spacing=SPACING, nodules=3)
    c = chest_phantom(np.random.default_rng(10), shape=SHAPE, spacing=SPACING, nodules=3)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels) and a.nodules == b.nodules
    assert not np.array_equal(a.hu, c.hu) and a.nodules != c.nodules


def test_abdomen_has_no_lungs() -> None:
    ph = chest_phantom(np.random.default_rng(3), shape=SHAPE, spacing=SPACING, kind="abdomen")
    assert ph.nodules == () and not ph.lungs.any() and not ph.labels.any()
    inside_air = (ph.hu < -400)[:, 30:98, 20:108].sum() * np.prod(SPACING) / 1000
    assert inside_air < 100  # small bowel gas pockets only (mL)
    with pytest.raises(ValueError):
        chest_phantom(np.random.default_rng(3), shape=SHAPE, spacing=SPACING, kind="knee")


def test_speed(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    chest_phantom(np.random.default_rng(4), shape=(100, 256, 256), spacing=(1.25, 0.8, 0.8), nodules=4)
    assert time.perf_counter() - t0 < 2.0
    t0 = time.perf_counter()
    study = write_ct_study(tmp_path, 4)  # 80 x 256 x 256, uncompressed
    assert len(study.paths) == 80 and time.perf_counter() - t0 < 3.0


@pytest.mark.parametrize("enhanced", [False, True])
def test_written_files_pass_dciodvfy(tmp_path: Path, enhanced: bool) -> None:
    ts = (JPEGLSLossless,) if enhanced else (ExplicitVRLittleEndian,)
    study = write_ct_study(tmp_path, 11, enhanced=enhanced, transfer_syntaxes=ts, **SMALL)  # type: ignore[arg-type]
    ds = pydicom.dcmread(study.paths[0])
    assert ds.SOPClassUID == (ENHANCED_CT_IMAGE_STORAGE if enhanced else CT_IMAGE_STORAGE)
    assert len(study.paths) == (1 if enhanced else 24)
    assert _dciodvfy_errors(study.paths[0]) == []
    if enhanced:
        assert int(ds.NumberOfFrames) == 24
    else:  # a compressed single-frame image too
        other = write_ct_study(tmp_path / "j2k", 11, transfer_syntaxes=(JPEG2000Lossless,), **SMALL)  # type: ignore[arg-type]
        assert _dciodvfy_errors(other.paths[0]) == []


def test_compressed_transfer_syntaxes_decode_to_identical_hu(tmp_path: Path) -> None:
    syntaxes = (ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless)
    study = write_ct_study(tmp_path, 12, transfer_syntaxes=syntaxes, **SMALL)  # type: ignore[arg-type]
    ph = study.phantom
    seen = set()
    for path in study.paths:
        ds = pydicom.dcmread(path)
        seen.add(str(ds.file_meta.TransferSyntaxUID))
        k = int(round((float(ds.ImagePositionPatient[2]) - ph.affine[2, 3]) / ph.affine[2, 0]))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu, ph.hu[k])
    assert seen == set(syntaxes)


def test_study_options(tmp_path: Path) -> None:
    common = dict(SMALL, extra_series=("localizer", "coronal", "thick"))
    a = write_ct_study(tmp_path / "a", 13, **common)  # type: ignore[arg-type]
    again = write_ct_study(tmp_path / "again", 13, **common)  # type: ignore[arg-type]
    assert (a.study_instance_uid, a.series_instance_uid, a.extra_series) == (
        again.study_instance_uid, again.series_instance_uid, again.extra_series)
    assert set(a.extra_series) == {"localizer", "coronal", "thick"}
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for p in a.paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
        assert ds.PatientID.startswith("PHANTOM-") and ds.BodyPartExamined == "CHEST" and ds.PatientPosition == "HFS"
    assert len(by_series[a.series_instance_uid]) == 24
    assert list(by_series[a.extra_series["localizer"]][0].ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    coronal = by_series[a.extra_series["coronal"]]
    assert len(coronal) == 40 and coronal[0].ImageType[0] == "DERIVED"
    assert float(by_series[a.extra_series["thick"]][0].SliceThickness) == 4.0  # 5 mm rounded to whole slices
    # feet first, shuffled, tilted, uneven, no body part: same phantom, other geometry
    b = write_ct_study(tmp_path / "b", 13, feet_first=True, order="shuffled", gantry_tilt_deg=10.0,
                       uneven_spacing=True, body_part=None, **SMALL)  # type: ignore[arg-type]
    assert np.array_equal(a.phantom.hu, b.phantom.hu) and a.nodules == b.nodules
    assert b.study_instance_uid != a.study_instance_uid
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in b.paths]
    assert len(dss) == 23 and all("BodyPartExamined" not in ds for ds in dss)
    assert dss[0].PatientPosition == "FFS" and [float(v) for v in dss[0].ImageOrientationPatient] == [-1, 0, 0, 0, 1, 0]
    assert float(dss[0].GantryDetectorTilt) == 10.0
    z_by_instance = [float(ds.ImagePositionPatient[2]) for ds in sorted(dss, key=lambda d: int(d.InstanceNumber))]
    assert z_by_instance != sorted(z_by_instance) and z_by_instance != sorted(z_by_instance, reverse=True)
    z = np.array(sorted(float(ds.ImagePositionPatient[2]) for ds in dss))
    y = np.array([float(ds.ImagePositionPatient[1]) for ds in sorted(dss, key=lambda d: float(d.ImagePositionPatient[2]))])
    assert np.isclose(np.diff(z).max(), 8.0) and np.isclose(np.median(np.diff(z)), 4.0)  # one gap doubled
    assert np.allclose(np.diff(y), np.diff(z) * np.tan(np.radians(10.0)), atol=1e-3)  # sheared positions
