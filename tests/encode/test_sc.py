"""Grad-CAM secondary capture: attributes, references, pixels, determinism, dciodvfy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from tests.encode import builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, from_bytes, to_bytes, write
from workers.encode.heatmap_render import LONG_SIDE
from workers.encode.sc import SC_SERIES_NUMBER, encode_heatmap_sc
from workers.pipelines.results import NMDiagnosis

DISCLAIMER = "DEMO - not for clinical use"


def _encode(diagnosis: NMDiagnosis, source: pydicom.Dataset) -> bytes:
    sc = encode_heatmap_sc(
        diagnosis, source, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    return to_bytes(sc)


def test_sc_round_trip(nm_source: pydicom.Dataset, tmp_path: Path) -> None:
    data = _encode(builders.diagnosis(nm_source), nm_source)
    ds = from_bytes(data)

    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.StudyInstanceUID == nm_source.StudyInstanceUID
    assert ds.PatientID == nm_source.PatientID
    assert ds.SeriesInstanceUID != nm_source.SeriesInstanceUID
    assert ds.SeriesNumber == SC_SERIES_NUMBER
    assert ds.ConversionType == "WSD"
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("RGB", 3, 8)
    assert ds.BodyPartExamined == nm_source.BodyPartExamined
    assert list(ds.PatientOrientation) == list(nm_source.PatientOrientation)
    assert (ds.ContentDate, ds.ContentTime) == ("20250314", "092653")
    assert (ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture) == ("20250314", "092653")
    assert "Grad-CAM" in ds.SeriesDescription

    (ref,) = ds.SourceImageSequence
    assert ref.ReferencedSOPClassUID == nm_source.SOPClassUID
    assert ref.ReferencedSOPInstanceUID == nm_source.SOPInstanceUID
    assert "ReferencedFrameNumber" not in ref  # the result named no frame of a 1-frame image
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"

    builders.assert_processing_equipment(ds)

    pixels = ds.pixel_array
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert pixels.shape[1] == LONG_SIDE  # 128x128 source, upscaled
    assert pixels.shape[0] > LONG_SIDE  # + legend (+ DEMO bands)

    assert dciodvfy_errors(write(tmp_path, "sc.dcm", data)) == []


def test_heatmap_is_blended_in_colour(nm_source: pydicom.Dataset) -> None:
    model = builders.model_info(demo=False)
    diagnosis = builders.diagnosis(nm_source, model=model)
    pixels = from_bytes(_encode(diagnosis, nm_source)).pixel_array.astype(int)
    # the blob peaks at (0.55, 0.5) of the frame; without a DEMO band the frame starts at row 0
    hot = pixels[round(0.55 * LONG_SIDE), LONG_SIDE // 2]
    assert hot[0] > hot[2] + 60  # red-dominated where the heatmap is high
    corner = pixels[5, 5]
    assert abs(corner[0] - corner[2]) < 5  # plain grey where it is ~0


@pytest.mark.parametrize("demo", [True, False])
def test_demo_marking(nm_source: pydicom.Dataset, demo: bool) -> None:
    model = builders.model_info(demo=demo)
    ds = from_bytes(_encode(builders.diagnosis(nm_source, model=model), nm_source))
    assert (DISCLAIMER in ds.SeriesDescription) is demo
    top_left = ds.pixel_array[2, 2]
    assert (tuple(top_left) == (200, 0, 0)) is demo  # the red DEMO band above the image


def test_encoding_is_byte_identical_and_versioned(nm_source: pydicom.Dataset) -> None:
    diagnosis = builders.diagnosis(nm_source)
    first, second = _encode(diagnosis, nm_source), _encode(diagnosis, nm_source)
    assert first == second
    a = from_bytes(first)
    other = builders.diagnosis(nm_source, model=builders.model_info(version="0.2.0-demo"))
    c = from_bytes(_encode(other, nm_source))
    assert c.SeriesInstanceUID != a.SeriesInstanceUID
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_multi_frame_source(nm_source_2frames: pydicom.Dataset, tmp_path: Path) -> None:
    first = _encode(builders.diagnosis(nm_source_2frames, frame_number=1), nm_source_2frames)
    second = _encode(builders.diagnosis(nm_source_2frames, frame_number=2), nm_source_2frames)
    a, b = from_bytes(first), from_bytes(second)
    assert b.SourceImageSequence[0].ReferencedFrameNumber == 2
    assert b.InstanceNumber == 2
    assert a.SeriesInstanceUID == b.SeriesInstanceUID  # one series per source and model
    assert a.SOPInstanceUID != b.SOPInstanceUID  # one instance per frame
    assert not np.array_equal(a.pixel_array, b.pixel_array)  # anterior vs posterior view
    assert dciodvfy_errors(write(tmp_path, "sc_mf.dcm", second)) == []


def test_source_without_orientation(nm_source: pydicom.Dataset, tmp_path: Path) -> None:
    source = nm_source.copy()
    del source.PatientOrientation
    data = _encode(builders.diagnosis(source), source)
    assert from_bytes(data).PatientOrientation in (None, "")
    assert dciodvfy_errors(write(tmp_path, "sc_noorient.dcm", data)) == []


def test_rejects_bad_input(nm_source: pydicom.Dataset, nm_source_2frames: pydicom.Dataset) -> None:
    diagnosis = builders.diagnosis(nm_source)
    with pytest.raises(ValueError, match="heatmap shape"):
        _encode(dataclasses.replace(diagnosis, heatmap=np.zeros((64, 64), np.float32)), nm_source)
    with pytest.raises(ValueError, match="NaN"):
        _encode(dataclasses.replace(diagnosis, heatmap=np.full((128, 128), np.nan, np.float32)), nm_source)
    with pytest.raises(ValueError, match="names none"):
        _encode(builders.diagnosis(nm_source_2frames), nm_source_2frames)
    with pytest.raises(ValueError, match="no source dataset"):
        _encode(diagnosis, nm_source_2frames)
