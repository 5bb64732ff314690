"""CT lesion SEG: segments, frame references, geometry, determinism, dciodvfy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage

from tests.encode import ct_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, from_bytes, to_bytes, write
from workers.encode.seg import CONTENT_LABEL, SEG_SERIES_NUMBER, encode_ct_seg
from workers.encode.uids import lesion_tracking_uid
from workers.pipelines.results import CTResults

DISCLAIMER = "DEMO - not for clinical use"
KINDS = ("single-frame", "enhanced")


def _sources(kind: str) -> list[pydicom.Dataset]:
    return ct_builders.ct_series() if kind == "single-frame" else [ct_builders.enhanced_ct()]


def _encode(results: CTResults, sources: list[pydicom.Dataset]) -> bytes:
    seg = encode_ct_seg(
        results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    assert seg is not None
    return to_bytes(seg)


@pytest.fixture(scope="module", params=KINDS)
def encoded(request: pytest.FixtureRequest) -> tuple[list[pydicom.Dataset], CTResults, bytes]:
    sources = _sources(request.param)
    results = ct_builders.results(sources)
    return sources, results, _encode(results, sources)


def _functional(ds: pydicom.Dataset, frame_index: int, sequence: str) -> pydicom.Dataset:
    """A functional group macro of one frame, from the per-frame or the shared groups."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[frame_index]
    if sequence in per_frame:
        return per_frame[sequence][0]
    return ds.SharedFunctionalGroupsSequence[0][sequence][0]


def _segment_points(ds: pydicom.Dataset, segment: int) -> set[tuple[float, float, float]]:
    """Patient coordinates (0.01 mm) of every voxel of a segment, by the SEG's own geometry."""
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    points: set[tuple[float, float, float]] = set()
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        if group.SegmentIdentificationSequence[0].ReferencedSegmentNumber != segment:
            continue
        position = np.asarray(
            _functional(ds, i, "PlanePositionSequence").ImagePositionPatient, float
        )
        cosines = np.asarray(
            _functional(ds, i, "PlaneOrientationSequence").ImageOrientationPatient, float
        )
        spacing = np.asarray(_functional(ds, i, "PixelMeasuresSequence").PixelSpacing, float)
        rows, cols = np.nonzero(pixels[i])
        xyz = (
            position
            + cols[:, None] * spacing[1] * cosines[:3]
            + rows[:, None] * spacing[0] * cosines[3:]
        )
        points |= {tuple(p) for p in np.round(xyz, 2).tolist()}
    return points


def _source_slice(results: CTResults, item: pydicom.Dataset) -> int:
    """Volume slice index a Source Image Sequence item names (instance, and frame if any)."""
    assert results.series is not None
    frame = item.get("ReferencedFrameNumber")
    matches = [
        k
        for k, s in enumerate(results.series.slices)
        if s.sop_instance_uid == item.ReferencedSOPInstanceUID
        and (frame is None or s.frame_number == int(frame))
    ]
    assert len(matches) == 1, (item.ReferencedSOPInstanceUID, frame)
    return matches[0]


def test_seg_attributes_and_segments(
    encoded: tuple[list[pydicom.Dataset], CTResults, bytes], tmp_path: Path
) -> None:
    sources, results, data = encoded
    ds = from_bytes(data)
    assert ds.SOPClassUID == SegmentationStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.PatientID == sources[0].PatientID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert ds.SeriesNumber == SEG_SERIES_NUMBER
    assert ds.SeriesDescription.startswith(DISCLAIMER)
    assert "AI thyroid CT lesions SEG" in ds.SeriesDescription
    assert (ds.SegmentationType, ds.ContentLabel) == ("BINARY", CONTENT_LABEL)
    assert (ds.ContentDate, ds.ContentTime) == ("20250314", "092653")
    processing = [
        e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "Thyroid AI Node"
    ]
    assert processing[0].ManufacturerModelName == "ct_lung_met_seg"
    assert processing[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert str(processing[0].ContributionDateTime).startswith("20250314092653")

    assert results.series is not None
    assert len(ds.SegmentSequence) == 2
    sides = ("24028007", "7771000")  # SCT right, left
    for item, lesion, side in zip(ds.SegmentSequence, results.lesions, sides, strict=True):
        assert item.SegmentNumber == lesion.index
        assert item.SegmentLabel == f"Lesion {lesion.index}"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "ct_lung_met_seg"
        assert algorithm.AlgorithmVersion == "0.1.0-demo"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "14799000"
        region = item.AnatomicRegionSequence[0]
        assert region.CodeValue == "39607008"
        assert region.AnatomicRegionModifierSequence[0].CodeValue == side
        assert item.TrackingID == f"Lesion {lesion.index}"
        assert item.TrackingUID == lesion_tracking_uid(
            results.study_instance_uid,
            results.series.series_instance_uid,
            "ct_lung_met_seg",
            "0.1.0-demo",
            lesion.index,
        )
    assert dciodvfy_errors(write(tmp_path, "seg.dcm", data)) == []


def test_frames_reference_the_right_source_slices(
    encoded: tuple[list[pydicom.Dataset], CTResults, bytes],
) -> None:
    sources, results, data = encoded
    ds = from_bytes(data)
    masks = ct_builders.lesion_masks()
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    seen = set()
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        segment = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        (item,) = group.DerivationImageSequence[0].SourceImageSequence
        k = _source_slice(results, item)
        assert pixels[i].any(), "empty frame"
        np.testing.assert_array_equal(pixels[i].astype(bool), masks[segment - 1][k])
        seen.add((segment, k))
    expected = {
        (s + 1, int(k)) for s, m in enumerate(masks) for k in np.flatnonzero(m.any(axis=(1, 2)))
    }
    assert seen == expected
    # only the lesions' slices are named as sources (a 300-slice study stays small)
    referenced = {
        r.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for r in series.ReferencedInstanceSequence
    }
    if len(sources) > 1:
        assert referenced == {sources[k].SOPInstanceUID for _, k in expected}
    else:
        assert referenced == {sources[0].SOPInstanceUID}


def test_segment_voxels_lie_where_the_lesions_are(
    encoded: tuple[list[pydicom.Dataset], CTResults, bytes],
) -> None:
    _, _, data = encoded
    ds = from_bytes(data)
    positions = ct_builders.voxel_positions()
    for segment, mask in enumerate(ct_builders.lesion_masks(), start=1):
        expected = {tuple(p) for p in np.round(positions[mask], 2).tolist()}
        assert _segment_points(ds, segment) == expected


def test_no_lesion_gives_no_seg() -> None:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources, lesions=())
    assert (
        encode_ct_seg(results, sources, content_datetime=CONTENT_DATETIME, software_version="1")
        is None
    )


def test_seg_is_byte_identical_and_versioned() -> None:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources)
    first, second = _encode(results, sources), _encode(results, list(reversed(sources)))
    assert first == second
    a = from_bytes(first)
    b = from_bytes(_encode(ct_builders.with_model_versions(results, "0.2.0-demo"), sources))
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SegmentSequence[0].TrackingUID != b.SegmentSequence[0].TrackingUID


def test_non_demo_seg_has_no_disclaimer() -> None:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources, seg=ct_builders.seg_model(demo=False))
    data = _encode(results, sources)
    assert DISCLAIMER.encode() not in data


def test_seg_rejects_bad_input() -> None:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources)
    one, two = results.lesions
    with pytest.raises(ValueError, match="1..N"):
        _encode(dataclasses.replace(results, lesions=(two, one)), sources)
    outside = dataclasses.replace(one, box_origin=(22, 0, 0))
    with pytest.raises(ValueError, match="outside the volume"):
        _encode(dataclasses.replace(results, lesions=(outside, two)), sources)
    with pytest.raises(ValueError, match="side"):
        up = dataclasses.replace(one, side="up")
        _encode(dataclasses.replace(results, lesions=(up, two)), sources)
    with pytest.raises(ValueError, match="no source dataset"):
        _encode(results, sources[1:])
