"""CT lesion heatmap SC: attributes, source reference, picture, determinism, dciodvfy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from tests.encode import ct_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, from_bytes, to_bytes, write
from workers.encode.heatmap_render import LONG_SIDE, OUTLINE_RGB
from workers.encode.sc import SC_SERIES_NUMBER, encode_lesion_sc
from workers.pipelines.results import CTLesion, CTResults

DISCLAIMER = "DEMO - not for clinical use"
KINDS = ("single-frame", "enhanced")
_BAND = 40  # height of the DEMO band above the image (heatmap_render)


def _sources(kind: str) -> list[pydicom.Dataset]:
    return ct_builders.ct_series() if kind == "single-frame" else [ct_builders.enhanced_ct()]


def _encode(lesion: CTLesion, results: CTResults, sources: list[pydicom.Dataset]) -> bytes:
    sc = encode_lesion_sc(
        lesion,
        results,
        sources,
        content_datetime=CONTENT_DATETIME,
        software_version=SOFTWARE_VERSION,
    )
    return to_bytes(sc)


def _processing_models(ds: pydicom.Dataset) -> set[str]:
    return {
        e.ManufacturerModelName
        for e in ds.ContributingEquipmentSequence
        if e.Manufacturer == "Thyroid AI Node"
    }


@pytest.mark.parametrize("kind", KINDS)
def test_lesion_sc_round_trip(kind: str, tmp_path: Path) -> None:
    sources = _sources(kind)
    results = ct_builders.results(sources)
    assert results.series is not None
    encoded = [from_bytes(_encode(lesion, results, sources)) for lesion in results.lesions]
    for ds, lesion in zip(encoded, results.lesions, strict=True):
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        assert ds.PatientID == sources[0].PatientID
        assert ds.SeriesNumber == SC_SERIES_NUMBER
        assert ds.InstanceNumber == lesion.index
        assert ds.SeriesDescription.startswith(DISCLAIMER)
        assert (ds.ConversionType, ds.BurnedInAnnotation) == ("WSD", "NO")
        assert ds.BodyPartExamined == "CHEST"
        assert list(ds.PatientOrientation) == ["L", "P"]
        assert (ds.ContentDate, ds.ContentTime) == ("20250314", "092653")

        # the source slice through the lesion's centre (and its frame, for Enhanced CT)
        centre = results.series.slices[lesion.centre_slice]
        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == centre.sop_instance_uid
        assert ref.ReferencedSOPClassUID == centre.sop_class_uid
        frame = centre.frame_number if kind == "enhanced" else None
        assert ref.get("ReferencedFrameNumber") == frame
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert {"ct_lung_met_seg", "ct_lung_met_rai"} <= _processing_models(ds)

        pixels = ds.pixel_array
        assert pixels.dtype == np.uint8 and pixels.shape[1] == LONG_SIDE
        assert tuple(pixels[5, 5]) == (200, 0, 0)  # DEMO band
        # outline drawn, and the heatmap's peak (at the lesion centre) is hot
        assert np.all(pixels == OUTLINE_RGB, axis=-1).sum() > 20
        scale = LONG_SIDE / ct_builders.MATRIX
        r = (lesion.centre_mm[1] - ct_builders.ORIGIN[1]) / ct_builders.PIXEL_MM
        c = (lesion.centre_mm[0] - ct_builders.ORIGIN[0]) / ct_builders.PIXEL_MM
        row, col = _BAND + int((r + 0.5) * scale), int((c + 0.5) * scale)
        red, _, blue = pixels[row, col].astype(int)
        assert red > blue + 50
        assert dciodvfy_errors(write(tmp_path, f"sc_{lesion.index}.dcm", to_bytes(ds))) == []
    first, second = encoded
    assert first.SeriesInstanceUID == second.SeriesInstanceUID  # one series per study and models
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_lesion_sc_is_byte_identical_and_marks_demo() -> None:
    sources = [ct_builders.enhanced_ct()]
    results = ct_builders.results(sources)
    lesion = results.lesions[0]
    assert _encode(lesion, results, sources) == _encode(lesion, results, sources)
    plain = ct_builders.results(
        sources, seg=ct_builders.seg_model(demo=False), cls=ct_builders.cls_model(demo=False)
    )
    data = _encode(plain.lesions[0], plain, sources)
    ds = from_bytes(data)
    assert DISCLAIMER.encode() not in data
    assert tuple(ds.pixel_array[5, 5]) != (200, 0, 0)


def test_lesion_sc_rejects_bad_input() -> None:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources)
    lesion = results.lesions[0]
    with pytest.raises(ValueError, match="heatmap shape"):
        _encode(dataclasses.replace(lesion, heatmap=np.zeros((8, 8), np.float32)), results, sources)
    with pytest.raises(ValueError, match="not among"):
        _encode(dataclasses.replace(lesion, probability=0.1), results, sources)
    moved = dataclasses.replace(lesion, centre_slice=99)
    with pytest.raises(ValueError, match="centre slice"):
        _encode(moved, dataclasses.replace(results, lesions=(moved, results.lesions[1])), sources)
    nan = dataclasses.replace(lesion, heatmap=np.full((64, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        _encode(nan, dataclasses.replace(results, lesions=(nan, results.lesions[1])), sources)
