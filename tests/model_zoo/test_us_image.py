from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import convert_color_space

from model_zoo.errors import InputRejected
from model_zoo.phantoms.us import us_phantom
from model_zoo.phantoms.us_dicom import (
    US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE,
    USInstanceTruth,
    write_us_study,
)
from model_zoo.us_image import BMode, bmode_images


def _one(tmp_path: Path, seed: int = 3, **kwargs: object) -> tuple[USInstanceTruth, pydicom.Dataset]:
    study = write_us_study(tmp_path, seed, **kwargs)  # type: ignore[arg-type]
    inst = study.instances[0]
    return inst, pydicom.dcmread(inst.path)


def _truth(inst: USInstanceTruth) -> np.ndarray:
    out: np.ndarray = inst.phantom.image.astype(np.float32) / 255.0
    return out


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def _check_exact(bm: BMode, inst: USInstanceTruth) -> None:
    assert bm.region == inst.region
    assert bm.pixels.dtype == np.float32 and bm.pixels.shape == inst.phantom.image.shape
    assert np.allclose(bm.pixels, _truth(inst), atol=1e-6)


@pytest.mark.parametrize("photometric", ["RGB", "MONOCHROME2"])
def test_explicit_region_spacing_and_pixels_exact(tmp_path: Path, photometric: str) -> None:
    inst, ds = _one(tmp_path, photometric=photometric)
    assert ds.Modality == "US" and ds.SOPClassUID == US_IMAGE_STORAGE and ds.PhotometricInterpretation == photometric
    item = ds.SequenceOfUltrasoundRegions[0]
    r0, c0, r1, c1 = inst.region
    assert (item.RegionLocationMinY0, item.RegionLocationMinX0) == (r0, c0)
    assert (item.RegionLocationMaxY1, item.RegionLocationMaxX1) == (r1 - 1, c1 - 1)  # inclusive in DICOM
    (bm,) = bmode_images(ds)
    _check_exact(bm, inst)
    assert bm.spacing_mm == pytest.approx((0.1, 0.1), rel=1e-12) and inst.spacing_mm == (0.1, 0.1)
    assert (bm.rows, bm.columns) == (600, 800) and bm.frame_number is None
    assert "Sequence of Ultrasound Regions" in bm.choice


def test_burned_in_text_never_reaches_the_region(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=8)
    frame = ds.pixel_array
    grey = frame.max(axis=2) if frame.ndim == 3 else frame
    (bm,) = bmode_images(ds)
    assert len(inst.text_boxes) >= 5
    for box in inst.text_boxes:
        assert not _overlaps(box, bm.region)
        assert grey[box[0]:box[2], box[1]:box[3]].max() == 255  # something bright was drawn there
    # outside the region and its boxes the frame is black
    covered = np.zeros(grey.shape, bool)
    for r0, c0, r1, c1 in (*inst.text_boxes, inst.region):
        covered[r0:r1, c0:c1] = True
    assert grey[~covered].max() == 0
    assert (grey[covered & (grey == 255)]).size > 200
    _check_exact(bm, inst)  # and the region holds no text: it is exactly the phantom


@pytest.mark.parametrize("photometric", ["RGB", "MONOCHROME2"])
def test_jpeg_baseline_close_to_phantom(tmp_path: Path, photometric: str) -> None:
    inst, ds = _one(tmp_path, seed=4, transfer_syntax="jpeg_baseline", photometric=photometric)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.PhotometricInterpretation == ("YBR_FULL_422" if photometric == "RGB" else "MONOCHROME2")
    assert ds.LossyImageCompression == "01"
    (bm,) = bmode_images(ds)
    assert bm.region == inst.region
    err = np.abs(bm.pixels - _truth(inst)) * 255
    assert float(err.mean()) < 4.0
    # the nodule's outline survives: its inside is darker than a ring outside
    mask = inst.phantom.nodules[0].mask
    assert float(bm.pixels[mask].mean()) < float(bm.pixels[~mask].mean())


@pytest.mark.parametrize("syntax", ["rle", "jpeg_ls", "j2k"])
def test_lossless_syntaxes_exact(tmp_path: Path, syntax: str) -> None:
    inst, ds = _one(tmp_path, seed=5, transfer_syntax=syntax, frame_size=(480, 640))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    (bm,) = bmode_images(ds)
    _check_exact(bm, inst)


def test_ybr_full_native_converted(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=6)
    ybr = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL")
    ds.PixelData = np.ascontiguousarray(ybr).tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    (bm,) = bmode_images(ds)
    assert bm.region == inst.region
    assert float(np.abs(bm.pixels - _truth(inst)).max()) * 255 <= 2.0


def test_monochrome1_and_palette(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=7, photometric="MONOCHROME2")
    mono1 = pydicom.dcmread(inst.path)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    mono1.PixelData = (255 - mono1.pixel_array).astype(np.uint8).tobytes()
    (bm,) = bmode_images(mono1)
    _check_exact(bm, inst)
    pal = pydicom.dcmread(inst.path)
    pal.PhotometricInterpretation = "PALETTE COLOR"
    lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    for colour in ("Red", "Green", "Blue"):
        setattr(pal, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(pal, f"{colour}PaletteColorLookupTableData", lut)
    (bm,) = bmode_images(pal)
    _check_exact(bm, inst)


def test_multiframe_uses_the_middle_frame(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=9, multiframe=True, frames=5, frame_size=(480, 640))
    assert ds.SOPClassUID == US_MULTIFRAME_IMAGE_STORAGE and int(ds.NumberOfFrames) == 5
    assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) > 0
    assert inst.number_of_frames == 5 and inst.middle_frame == 3
    (bm,) = bmode_images(ds)
    assert bm.frame_number == 3 and "frame 3 of 5" in bm.choice
    _check_exact(bm, inst)
    frames = ds.pixel_array[..., 0]
    r0, c0, r1, c1 = inst.region
    for f in (0, 1, 3, 4):  # the other frames: same anatomy, other speckle
        other = frames[f, r0:r1, c0:c1]
        assert not np.array_equal(other, inst.phantom.image)
        mask = inst.phantom.nodules[0].mask
        assert other[mask].mean() < other[~mask].mean()


def test_doppler_region_ignored_and_colour_not_in_grey(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=10, doppler=True)
    kinds = [int(it.RegionDataType) for it in ds.SequenceOfUltrasoundRegions]
    assert kinds == [1, 2]
    assert inst.doppler_region is not None and _overlaps(inst.doppler_region, inst.region)
    (bm,) = bmode_images(ds)
    assert bm.region == inst.region and "colour flow" in bm.choice and "coloured" in bm.choice
    rgb = ds.pixel_array.astype(int)
    r0, c0, r1, c1 = inst.region
    sub = rgb[r0:r1, c0:c1]
    coloured = (sub.max(axis=2) - sub.min(axis=2)) > 24
    assert coloured.sum() > 200
    # grey pixels are the phantom exactly; coloured ones hold local grey, not the colour's luminance
    assert np.allclose(bm.pixels[~coloured], _truth(inst)[~coloured], atol=1e-6)
    luma = (sub[..., 0] * 0.299 + sub[..., 1] * 0.587 + sub[..., 2] * 0.114) / 255.0
    filled = bm.pixels[coloured]
    assert float(np.abs(filled - luma[coloured]).mean()) > 0.05
    local = _truth(inst)[coloured]
    assert float(np.abs(filled - local).mean()) < 0.15


@pytest.mark.parametrize(("seed", "photometric", "syntax"), [(11, "RGB", "explicit"), (12, "MONOCHROME2", "explicit"),
                                                              (13, "RGB", "jpeg_baseline")])
def test_uncalibrated_region_found_automatically(tmp_path: Path, seed: int, photometric: str, syntax: str) -> None:
    inst, ds = _one(tmp_path, seed=seed, calibrated=False, photometric=photometric, transfer_syntax=syntax)
    assert "SequenceOfUltrasoundRegions" not in ds and inst.spacing_mm is None
    (bm,) = bmode_images(ds)
    assert bm.spacing_mm is None and "found automatically" in bm.choice
    assert _iou(bm.region, inst.region) > 0.95
    for box in inst.text_boxes:
        assert not _overlaps(box, bm.region)


def test_dual_view_and_units(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=14)
    r0, c0, r1, c1 = inst.region
    first = ds.SequenceOfUltrasoundRegions[0]
    second = pydicom.dcmread(inst.path).SequenceOfUltrasoundRegions[0]
    half = (c0 + c1) // 2
    first.RegionLocationMaxX1 = half - 21  # left view, narrower
    second.RegionLocationMinX0 = half  # right view
    second.PhysicalUnitsXDirection = 0  # units not given: uncalibrated
    ds.SequenceOfUltrasoundRegions.append(second)
    views = bmode_images(ds)
    assert [v.region for v in views] == [(r0, half, r1, c1), (r0, c0, r1, half - 20)]
    assert views[0].spacing_mm is None and views[1].spacing_mm == pytest.approx((0.1, 0.1))
    assert "region 1 of 2" in views[0].choice and "uncalibrated" in views[0].choice


def test_region_clipped_to_frame(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=15)
    item = ds.SequenceOfUltrasoundRegions[0]
    item.RegionLocationMaxY1 = 5000
    (bm,) = bmode_images(ds)
    assert bm.region == (inst.region[0], inst.region[1], 600, inst.region[3])


def test_rejects_with_reasons(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=16, doppler=True)
    no_tissue = pydicom.dcmread(inst.path)
    no_tissue.SequenceOfUltrasoundRegions[0].RegionDataType = 3  # PW spectral Doppler
    with pytest.raises(InputRejected, match="no 2D tissue"):
        bmode_images(no_tissue)
    tiny = pydicom.dcmread(inst.path)
    item = tiny.SequenceOfUltrasoundRegions[0]
    item.RegionLocationMaxX1 = item.RegionLocationMinX0 + 40
    with pytest.raises(InputRejected, match="64x64"):
        bmode_images(tiny)
    ct = pydicom.dcmread(inst.path)
    ct.Modality = "CT"
    with pytest.raises(InputRejected, match="not an ultrasound") as err:
        bmode_images(ct)
    assert "PHANTOM" not in err.value.reason
    no_pixels = pydicom.dcmread(inst.path, stop_before_pixels=True)
    with pytest.raises(InputRejected, match="no pixel data"):
        bmode_images(no_pixels)
    blank = pydicom.dcmread(inst.path)
    blank.PixelData = bytes(len(blank.PixelData))
    with pytest.raises(InputRejected, match="no signal"):
        bmode_images(blank)
    del blank.SequenceOfUltrasoundRegions
    with pytest.raises(InputRejected, match="no signal"):
        bmode_images(blank)


def test_undecodable_pixel_data_rejected(tmp_path: Path) -> None:
    inst, ds = _one(tmp_path, seed=17, transfer_syntax="jpeg_baseline", frame_size=(480, 640))
    broken = pydicom.dcmread(inst.path)
    data = bytearray(broken.PixelData)
    start = len(data) // 3
    data[start:start + 4000] = b"\xff\xd9" * 2000  # end-of-image markers in the middle of the scan
    data[16:64] = b"\x00" * 48  # and a wrecked header
    broken.PixelData = bytes(data)
    with pytest.raises(InputRejected, match="could not be decoded"):
        bmode_images(broken)


def test_several_images_one_series_deterministic(tmp_path: Path) -> None:
    a = write_us_study(tmp_path / "a", 20, n_images=3, photometric="MONOCHROME2", frame_size=(480, 640))
    b = write_us_study(tmp_path / "b", 20, n_images=3, photometric="MONOCHROME2", frame_size=(480, 640))
    assert a.study_instance_uid == b.study_instance_uid
    assert [i.sop_instance_uid for i in a.instances] == [i.sop_instance_uid for i in b.instances]
    assert len({i.sop_instance_uid for i in a.instances}) == 3
    assert len({i.series_instance_uid for i in a.instances}) == 1
    for k, inst in enumerate(a.instances):
        assert np.array_equal(inst.phantom.image, us_phantom(20 + k).image)
        ds = pydicom.dcmread(inst.path)
        assert ds.PatientName == "PHANTOM^US" and ds.StudyInstanceUID == a.study_instance_uid
        assert int(ds.InstanceNumber) == k + 1
    given = [us_phantom(1, malignant=True, rows=300, cols=400)]
    c = write_us_study(tmp_path / "c", 21, phantoms=given, study_uid="1.2.3.4", accession="ACC1", patient_id="P7")
    ds = pydicom.dcmread(c.instances[0].path)
    assert ds.StudyInstanceUID == "1.2.3.4" and ds.AccessionNumber == "ACC1" and ds.PatientID == "P7"
    assert c.instances[0].region[2] - c.instances[0].region[0] == 300
    with pytest.raises(ValueError, match="does not fit"):
        write_us_study(tmp_path / "d", 1, frame_size=(300, 400))


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    assert exe is not None, "dciodvfy not installed (make peers installs dicom3tools)"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("kwargs", [dict(doppler=True),
                                    dict(multiframe=True, frames=3, transfer_syntax="jpeg_baseline"),
                                    dict(transfer_syntax="j2k", calibrated=False, frame_size=(480, 640))])
def test_dciodvfy_no_errors(tmp_path: Path, kwargs: dict[str, object]) -> None:
    inst, _ = _one(tmp_path, seed=30, **kwargs)
    assert _dciodvfy_errors(inst.path) == []
