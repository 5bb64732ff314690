from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, ExplicitVRLittleEndian, RLELossless

from model_zoo.ct_lung_met_rai.volume import (
    MIN_SLICES,
    CTVolume,
    build_volume,
    canonical_to_source,
    canonical_to_source_box,
    canonical_to_source_index,
    check_chest,
    iso_to_canonical,
    lung_mask,
    rank_series,
    resample_iso,
    select_series,
    source_to_canonical,
)
from model_zoo.errors import InputRejected
from model_zoo.phantoms.ct import CTPhantomStudy
from model_zoo.phantoms.ct_dicom import write_ct_study

GRID = dict(rows=128, slices=40, pixel_mm=1.6, slice_mm=2.5, nodules=3, diameter_range=(6.0, 14.0))
VARIANTS: dict[str, dict[str, object]] = {
    "head_first": {},
    "feet_first": {"feet_first": True},
    "descending": {"order": "descending"},
    "shuffled": {"order": "shuffled", "feet_first": True},
    "compressed": {"transfer_syntaxes": (ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless)},
    "enhanced": {"enhanced": True, "order": "descending", "feet_first": True, "transfer_syntaxes": (RLELossless,)},
}


def _read(study: CTPhantomStudy) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in study.paths]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CTPhantomStudy, list[Dataset]]]:
    root = tmp_path_factory.mktemp("ct")
    out = {}
    for name, kw in VARIANTS.items():
        study = write_ct_study(root / name, 21, **GRID, **kw)  # type: ignore[arg-type]
        out[name] = (study, _read(study))
    return out


@pytest.fixture(scope="module")
def head_first(studies: dict[str, tuple[CTPhantomStudy, list[Dataset]]]) -> tuple[CTPhantomStudy, CTVolume]:
    study, dss = studies["head_first"]
    return study, build_volume(dss)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_layout_gives_the_same_canonical_volume(
    studies: dict[str, tuple[CTPhantomStudy, list[Dataset]]], variant: str
) -> None:
    study, dss = studies[variant]
    volume = build_volume(select_series(dss).datasets)
    ph = study.phantom
    assert np.array_equal(volume.hu, ph.hu)  # lossless: the very same HU
    assert np.allclose(volume.affine, ph.affine, atol=1e-3)
    assert volume.spacing == pytest.approx((2.5, 1.6, 1.6))
    assert volume.series_instance_uid == study.series_instance_uid
    feet_first = bool(VARIANTS[variant].get("feet_first"))
    assert volume.flips == (feet_first, False, feet_first)
    # a nodule centre from the ground truth maps to a voxel of that nodule
    inv = np.linalg.inv(volume.affine)
    for i, nod in enumerate(study.nodules, start=1):
        idx = tuple(np.round((inv @ np.array([*nod.centre_mm, 1.0]))[:3]).astype(int))
        assert ph.labels[idx] == i
    # source order: along the slice normal, whatever the file order or Instance Numbers
    by_uid = {(str(ds.SOPInstanceUID)): ds for ds in dss}
    normal = -1.0 if feet_first else 1.0  # a feet-first normal points to the feet
    if variant == "enhanced":
        frames = dss[0].PerFrameFunctionalGroupsSequence
        z = [normal * float(frames[s.frame_number - 1].PlanePositionSequence[0].ImagePositionPatient[2])
             for s in volume.slices if s.frame_number is not None]
        assert [s.frame_number for s in volume.slices] == list(range(1, 41))  # written top down = along the normal
    else:
        z = [normal * float(by_uid[s.sop_instance_uid].ImagePositionPatient[2]) for s in volume.slices]
        assert all(s.frame_number is None for s in volume.slices)
    assert z == sorted(z) and len(set(z)) == 40
    if variant == "shuffled":
        by_number = sorted(dss, key=lambda d: int(d.InstanceNumber))
        assert [str(d.SOPInstanceUID) for d in by_number] != [s.sop_instance_uid for s in volume.slices]
        assert [str(d.SOPInstanceUID) for d in by_number][::-1] != [s.sop_instance_uid for s in volume.slices]


def test_source_grid_maps(studies: dict[str, tuple[CTPhantomStudy, list[Dataset]]]) -> None:
    study, dss = studies["feet_first"]
    volume = build_volume(dss)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in dss}
    # canonical voxel -> source voxel: the same HU in the source file, the same LPS point
    for kc, rc, cc in [(3, 40, 20), (30, 70, 110), (0, 0, 0)]:
        ks, rs, cs = (int(v) for v in canonical_to_source_index(volume, (kc, rc, cc)))
        ds = by_uid[volume.slices[ks].sop_instance_uid]
        assert ds.pixel_array[rs, cs] + float(ds.RescaleIntercept) == volume.hu[kc, rc, cc]
        lps_c = volume.affine @ np.array([kc, rc, cc, 1.0])
        assert np.allclose(volume.source_affine @ np.array([ks, rs, cs, 1.0]), lps_c)
        pos = np.asarray(ds.ImagePositionPatient, dtype=float)
        assert np.allclose(pos + cs * np.asarray(ds.ImageOrientationPatient[:3], dtype=float) * 1.6
                           + rs * np.asarray(ds.ImageOrientationPatient[3:], dtype=float) * 1.6, lps_c[:3])
    # a nodule's mask cropped on the canonical grid, moved to the source grid
    labels = study.phantom.labels
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(labels == 1))
    crop = labels[box] == 1
    src, src_box = canonical_to_source(volume, crop, box)
    assert src.shape == crop.shape and src_box == canonical_to_source_box(volume, box)
    src_labels, _ = canonical_to_source(volume, labels)
    assert np.array_equal(src_labels[src_box] == 1, src)
    back, back_box = source_to_canonical(volume, src, src_box)
    assert back_box == box and np.array_equal(back, crop)


def test_enhanced_geometry_in_per_frame_groups(studies: dict[str, tuple[CTPhantomStudy, list[Dataset]]]) -> None:
    study, dss = studies["enhanced"]
    ds = copy.deepcopy(dss[0])
    shared = ds.SharedFunctionalGroupsSequence[0]
    for per in ds.PerFrameFunctionalGroupsSequence:
        per.PlaneOrientationSequence = copy.deepcopy(shared.PlaneOrientationSequence)
        per.PixelValueTransformationSequence = copy.deepcopy(shared.PixelValueTransformationSequence)
    del shared.PlaneOrientationSequence, shared.PixelValueTransformationSequence
    assert np.array_equal(build_volume([ds]).hu, study.phantom.hu)


def test_series_selection_prefers_the_thin_axial_series(tmp_path: Path) -> None:
    study = write_ct_study(tmp_path, 22, extra_series=("localizer", "coronal", "thick"), **GRID)  # type: ignore[arg-type]
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.paths]
    sr = Dataset()  # a non-CT instance in the study
    sr.SOPClassUID, sr.SeriesInstanceUID = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3"
    choice = select_series(dss + [sr])
    assert {str(ds.SeriesInstanceUID) for ds in choice.datasets} == {study.series_instance_uid}
    assert len(choice.datasets) == 40
    reason = choice.reason
    assert reason.startswith("series 3 'Chest 2.5 mm': 40 axial slices, 2.5 mm (thinnest of 2 axial series")
    assert "'Topogram' (localizer)" in reason and "'Chest coronal' (not axial" in reason
    assert "1 non-CT instance" in reason
    ranked = rank_series(dss)
    assert [str(c.datasets[0].SeriesInstanceUID) for c in ranked] == [study.series_instance_uid,
                                                                      study.extra_series["thick"]]
    with pytest.raises(InputRejected, match="localizer.*not axial|not axial.*localizer"):
        select_series([ds for ds in dss if str(ds.SeriesInstanceUID) not in (study.series_instance_uid,
                                                                                study.extra_series["thick"])])
    with pytest.raises(InputRejected, match="no CT images"):
        select_series([sr])


def test_rejections(tmp_path: Path, studies: dict[str, tuple[CTPhantomStudy, list[Dataset]]]) -> None:
    small = dict(GRID, nodules=0)

    def reason(**kw: object) -> str:
        study = write_ct_study(tmp_path / str(len(list(tmp_path.iterdir()))), 23, **{**small, **kw})  # type: ignore[arg-type]
        with pytest.raises(InputRejected) as info:
            build_volume(_read(study))
        return info.value.reason

    assert "gantry tilt of 12 deg" in reason(gantry_tilt_deg=12.0)
    assert "uneven slice spacing" in reason(uneven_spacing=True)
    assert f"at least {MIN_SLICES}" in reason(slices=10)
    with pytest.raises(InputRejected, match=r"2 slice\(s\) < 16"):
        select_series(_read(write_ct_study(tmp_path / "few", 23, **{**small, "slices": 2})))  # type: ignore[arg-type]
    # sheared positions without a GantryDetectorTilt attribute: still a tilted gantry
    sheared = _read(write_ct_study(tmp_path / "shear", 23, gantry_tilt_deg=5.0, **small))  # type: ignore[arg-type]
    for ds in sheared:
        del ds.GantryDetectorTilt
    with pytest.raises(InputRejected, match="off the slice normal"):
        build_volume(sheared)
    _, dss = studies["head_first"]
    with pytest.raises(InputRejected, match="share a position"):
        build_volume(dss + [dss[5]])
    odd = [copy.deepcopy(ds) for ds in dss]
    odd[3].PixelSpacing = [1.0, 1.0]
    with pytest.raises(InputRejected, match="mixed pixel spacings"):
        build_volume(odd)
    coronal = write_ct_study(tmp_path / "cor", 23, extra_series=("coronal",), **small)  # type: ignore[arg-type]
    cor = [ds for ds in _read(coronal) if str(ds.SeriesInstanceUID) == coronal.extra_series["coronal"]]
    with pytest.raises(InputRejected, match="not an axial series"):
        build_volume(cor)


@pytest.mark.parametrize("body_part", ["ABDOMEN", None])
def test_abdomen_is_not_a_chest_ct(tmp_path: Path, body_part: str | None) -> None:
    study = write_ct_study(tmp_path, 24, kind="abdomen", body_part=body_part, **dict(GRID, nodules=0))  # type: ignore[arg-type]
    dss = _read(study)
    volume = build_volume(select_series(dss).datasets)
    iso = resample_iso(volume)
    with pytest.raises(InputRejected, match="not a chest CT") as info:
        check_chest(volume, dss, lung_mask(iso), iso)
    assert ("ABDOMEN" in info.value.reason) == (body_part is not None)
    if body_part is None:
        assert "no lung fields found" in info.value.reason


def test_lung_mask_and_chest_check(head_first: tuple[CTPhantomStudy, CTVolume]) -> None:
    study, volume = head_first
    iso = resample_iso(volume, 1.0)
    lungs = lung_mask(iso)
    on_canonical = iso_to_canonical(lungs.astype(np.float32), iso, volume) >= 0.5
    truth = study.phantom.lungs
    assert (on_canonical & truth).sum() >= 0.9 * truth.sum()  # covers the lungs (nodules included)
    assert (on_canonical & ~truth).sum() <= 0.1 * on_canonical.sum()
    check_chest(volume, [], lungs, iso)  # passes


def test_resample_iso_is_trilinear(head_first: tuple[CTPhantomStudy, CTVolume]) -> None:
    _, volume = head_first
    ramp = CTVolume(  # HU = a linear function of position: trilinear resampling is exact
        hu=np.zeros(volume.hu.shape, np.float32), affine=volume.affine, spacing=volume.spacing, slices=(),
        source_shape=volume.source_shape, flips=volume.flips, series_instance_uid="1.2",
    )
    idx = np.indices(volume.hu.shape, dtype=np.float64)
    lps = np.tensordot(volume.affine[:3, :3], idx, axes=1) + volume.affine[:3, 3, None, None, None]
    ramp.hu[...] = (lps[2] + 0.5 * lps[1] - 0.25 * lps[0]).astype(np.float32)
    iso = resample_iso(ramp, 1.0)
    assert iso.hu.shape == (98, 204, 204) and iso.hu.dtype == np.float32
    assert np.allclose(iso.affine[:3, :3], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert np.allclose(iso.affine[:3, 3], volume.affine[:3, 3])
    iso_idx = np.indices(iso.hu.shape, dtype=np.float64)
    iso_lps = np.tensordot(iso.affine[:3, :3], iso_idx, axes=1) + iso.affine[:3, 3, None, None, None]
    assert np.allclose(iso.hu, iso_lps[2] + 0.5 * iso_lps[1] - 0.25 * iso_lps[0], atol=1e-3)
    box = (slice(5, 20), slice(30, 90), slice(7, 11))
    back = iso_to_canonical(iso.hu, iso, ramp, box)
    assert back.shape == (15, 60, 4) and np.allclose(back, ramp.hu[box], atol=1e-3)


def test_iso_to_canonical_keeps_small_lesions() -> None:
    """A 6 mm sphere's probability on the 1 mm grid maps back to a mask with Dice >= 0.9."""
    shape, spacing = (40, 64, 64), (1.25, 0.8, 0.8)
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, 0.8], [0, 0.8, 0], [1.25, 0, 0]]
    affine[:3, 3] = [-25.0, -25.0, -24.0]
    volume = CTVolume(np.zeros(shape, np.float32), affine, spacing, (), shape, (False, False, False), "1.2")
    iso = resample_iso(volume, 1.0)
    rng = np.random.default_rng(0)
    idx = np.indices(shape, dtype=np.float64)
    lps = np.tensordot(affine[:3, :3], idx, axes=1) + affine[:3, 3, None, None, None]
    iso_idx = np.indices(iso.hu.shape, dtype=np.float64)
    iso_lps = np.tensordot(iso.affine[:3, :3], iso_idx, axes=1) + iso.affine[:3, 3, None, None, None]
    for _ in range(5):
        centre = rng.uniform(-3.0, 3.0, 3)[:, None, None, None]
        radius = 3.0
        dist_iso = np.sqrt(((iso_lps - centre) ** 2).sum(axis=0))
        prob = np.clip(0.5 - (dist_iso - radius) / 1.0, 0.0, 1.0).astype(np.float32)  # partial-volume map
        box = (slice(10, 30), slice(20, 44), slice(20, 44))
        mask = iso_to_canonical(prob, iso, volume, box) >= 0.5
        truth = (np.sqrt(((lps - centre) ** 2).sum(axis=0)) <= radius)[box]
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert truth.sum() > 100 and dice >= 0.9
