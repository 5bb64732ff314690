"""US nodule heatmap SC: attributes, source frame reference, picture, determinism, dciodvfy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from tests.encode import us_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, from_bytes, to_bytes, write
from workers.encode.heatmap_render import OUTLINE_RGB
from workers.encode.sc import SC_SERIES_NUMBER
from workers.encode.sc_us import encode_nodule_sc, source_frame_grey
from workers.pipelines.results import USNodule, USResults

DISCLAIMER = "DEMO - not for clinical use"
_BAND = 40  # height of the DEMO band above the image (heatmap_render)


def _encode(nodule: USNodule, results: USResults, sources: list[pydicom.Dataset]) -> bytes:
    sc = encode_nodule_sc(
        nodule, results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    return to_bytes(sc)


@pytest.fixture(scope="module")
def encoded() -> tuple[list[pydicom.Dataset], USResults, list[bytes]]:
    sources = us_builders.study()
    results = us_builders.results(sources)
    return sources, results, [_encode(n, results, sources) for n in results.nodules]


def test_sc_attributes_and_source_reference(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]],
) -> None:
    sources, results, data = encoded
    by_uid = {s.SOPInstanceUID: s for s in sources}
    scs = [from_bytes(d) for d in data]
    assert len({ds.SeriesInstanceUID for ds in scs}) == 1
    assert len({ds.SOPInstanceUID for ds in scs}) == len(scs)
    for ds, nodule in zip(scs, results.nodules, strict=True):
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        assert ds.PatientID == sources[0].PatientID
        assert ds.SeriesNumber == SC_SERIES_NUMBER
        assert ds.InstanceNumber == nodule.index
        assert ds.SeriesDescription.startswith(DISCLAIMER)
        assert "AI thyroid US nodule Grad-CAM" in ds.SeriesDescription
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("RGB", 3)
        assert ds.PatientOrientation == ""  # the B-mode sources have none
        (ref,) = ds.SourceImageSequence
        source = by_uid[ref.ReferencedSOPInstanceUID]
        assert ref.ReferencedSOPInstanceUID == nodule.image.source.sop_instance_uid
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ref.get("ReferencedFrameNumber") == nodule.image.source.frame_number
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        models = {
            e.ManufacturerModelName
            for e in ds.ContributingEquipmentSequence
            if e.Manufacturer == "Thyroid AI Node"
        }
        assert models == {"us_nodule_seg", "us_calcified_nodule", "us_lvlnm"}
    assert scs[2].SourceImageSequence[0].ReferencedFrameNumber == us_builders.CINE_FRAME


def test_picture_shows_outline_heatmap_and_demo_band(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]],
) -> None:
    _, _, data = encoded
    for raw in data:
        pixels = from_bytes(raw).pixel_array
        band = pixels[:_BAND].reshape(-1, 3)
        assert (band == (200, 0, 0)).all(axis=1).mean() > 0.5  # red DEMO band
        image = pixels[_BAND : _BAND + 384]  # 160 x 120 upscaled to 512 x 384
        assert (image == OUTLINE_RGB).all(axis=-1).sum() > 100  # the magenta outline
        red = (image[..., 0].astype(int) - image[..., 2].astype(int)) > 100
        assert red.sum() > 50  # the heatmap's hot centre


def test_source_frame_is_the_analysed_frame() -> None:
    cine, mono = us_builders.us_cine(), us_builders.us_mono()
    frames = cine.pixel_array.astype(np.float64)
    luma = frames @ np.asarray([0.299, 0.587, 0.114])
    third = source_frame_grey(cine, us_builders.CINE_FRAME)
    assert third.dtype == np.uint8 and third.shape == (us_builders.ROWS, us_builders.COLUMNS)
    assert np.abs(third.astype(np.float64) - luma[us_builders.CINE_FRAME - 1]).max() <= 1.0
    assert np.abs(third.astype(np.float64) - luma[0]).max() > 10.0
    np.testing.assert_array_equal(source_frame_grey(mono, None), mono.pixel_array)


def test_jpeg_ybr_source(tmp_path: Path) -> None:
    """A YBR_FULL_422 JPEG Baseline source: decoded to RGB, then to grey, and encoded."""
    jpeg = us_builders.us_rgb_jpeg()
    luma = us_builders.us_rgb().pixel_array.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114])
    assert np.abs(source_frame_grey(jpeg, None) - luma).mean() < 3.0  # lossy, but the same image
    sources = us_builders.study()
    sources[0] = jpeg
    results = us_builders.results(sources)
    ds = from_bytes(_encode(results.nodules[0], results, sources))
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == jpeg.SOPInstanceUID
    assert dciodvfy_errors(write(tmp_path, "jpeg.dcm", to_bytes(jpeg))) == []


def test_scs_pass_dciodvfy(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]], tmp_path: Path
) -> None:
    _, _, data = encoded
    for i, raw in enumerate(data):
        assert dciodvfy_errors(write(tmp_path, f"sc{i}.dcm", raw)) == []


def test_sc_is_byte_identical_versioned_and_non_demo_has_no_disclaimer(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]],
) -> None:
    sources, results, data = encoded
    assert _encode(results.nodules[2], results, list(reversed(sources))) == data[2]
    plain = us_builders.results(
        sources,
        seg=us_builders.seg_model(demo=False),
        malignancy=us_builders.malignancy_model(demo=False),
        lvlnm=us_builders.lvlnm_model(demo=False),
    )
    raw = _encode(plain.nodules[0], plain, sources)
    assert DISCLAIMER.encode() not in raw
    newer = us_builders.with_model_versions(results, "0.2.0-demo")
    other = from_bytes(_encode(newer.nodules[0], newer, sources))
    assert other.SeriesInstanceUID != from_bytes(data[0]).SeriesInstanceUID
    assert other.SOPInstanceUID != from_bytes(data[0]).SOPInstanceUID


def test_sc_rejects_bad_input() -> None:
    sources = us_builders.study()
    results = us_builders.results(sources)
    one = results.nodules[0]
    with pytest.raises(ValueError, match="not among"):
        _encode(dataclasses.replace(one, index=2), results, sources)
    unscored = dataclasses.replace(one, malignancy=None)
    with pytest.raises(ValueError, match="no malignancy score"):
        _encode(unscored, dataclasses.replace(results, nodules=(unscored, *results.nodules[1:])), sources)
    flat = dataclasses.replace(one, heatmap=np.zeros((0, 0), np.float32))
    with pytest.raises(ValueError, match="heatmap shape"):
        _encode(flat, dataclasses.replace(results, nodules=(flat, *results.nodules[1:])), sources)
    with pytest.raises(ValueError, match="no source dataset"):
        _encode(one, results, sources[1:])
