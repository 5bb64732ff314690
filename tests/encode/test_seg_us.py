"""US nodule SEGs: one per image, segments, frame references, pixels, determinism, dciodvfy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage

from tests.encode import us_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, from_bytes, to_bytes, write
from workers.encode.seg_us import (
    CONTENT_LABEL,
    SEG_SERIES_NUMBER,
    SITE_OUTLINE_DESCRIPTION,
    encode_us_segs,
)
from workers.encode.uids import lesion_tracking_uid
from workers.pipelines.results import USResults

DISCLAIMER = "DEMO - not for clinical use"


def _encode(results: USResults, sources: list[pydicom.Dataset]) -> list[bytes]:
    segs = encode_us_segs(
        results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    return [to_bytes(seg) for seg in segs]


@pytest.fixture(scope="module")
def encoded() -> tuple[list[pydicom.Dataset], USResults, list[bytes]]:
    sources = us_builders.study()
    results = us_builders.results(sources)
    return sources, results, _encode(results, sources)


def test_one_seg_per_image_with_nodules(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]],
) -> None:
    sources, results, data = encoded
    rgb, cine, mono, _ = sources
    segs = [from_bytes(d) for d in data]
    assert len(segs) == 3  # rgb (nodules 1, 2), cine frame 3 (nodule 3), mono (nodule 4)
    assert len({s.SeriesInstanceUID for s in segs}) == 1
    assert len({s.SOPInstanceUID for s in segs}) == 3
    assert [s.InstanceNumber for s in segs] == [1, 2, 3]
    for seg in segs:
        assert seg.SOPClassUID == SegmentationStorage
        assert seg.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert seg.StudyInstanceUID == rgb.StudyInstanceUID
        assert seg.PatientID == rgb.PatientID
        assert seg.SeriesNumber == SEG_SERIES_NUMBER
        assert seg.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
        assert seg.SeriesDescription.startswith(DISCLAIMER)
        assert "AI thyroid US nodules SEG" in seg.SeriesDescription
        assert (seg.SegmentationType, seg.ContentLabel) == ("BINARY", CONTENT_LABEL)
        assert "FrameOfReferenceUID" not in seg  # B-mode sources have none
        assert (seg.ContentDate, seg.ContentTime) == ("20250314", "092653")
    labels = [[item.SegmentLabel for item in s.SegmentSequence] for s in segs]
    assert labels == [["Nodule 1", "Nodule 2"], ["Nodule 3"], ["Nodule 4"]]
    referenced = [s.SourceImageSequence[0].ReferencedSOPInstanceUID for s in segs]
    assert referenced == [rgb.SOPInstanceUID, cine.SOPInstanceUID, mono.SOPInstanceUID]


def test_segment_descriptions(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]],
) -> None:
    _, results, data = encoded
    items = [item for d in data for item in from_bytes(d).SegmentSequence]
    assert [int(i.SegmentNumber) for i in items] == [1, 2, 1, 1]  # 1..k within each SEG
    for item, nodule in zip(items, results.nodules, strict=True):
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
        assert item.AnatomicRegionSequence[0].CodeValue == "69748006"
        assert item.TrackingID == f"Nodule {nodule.index}"
        assert item.TrackingUID == lesion_tracking_uid(
            results.study_instance_uid,
            nodule.image.source.series_instance_uid,
            "us_nodule_seg",
            "0.1.0-demo",
            nodule.index,
        )
        if nodule.outline_source == "site SEG":
            assert item.SegmentAlgorithmType == "MANUAL"
            assert "SegmentationAlgorithmIdentificationSequence" not in item
            assert item.SegmentDescription == SITE_OUTLINE_DESCRIPTION
        else:
            assert item.SegmentAlgorithmType == "AUTOMATIC"
            algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
            assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
                "us_nodule_seg",
                "0.1.0-demo",
            )
    assert [n.outline_source for n in results.nodules].count("site SEG") == 1


def test_frames_reference_the_source_frame(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]],
) -> None:
    sources, _, data = encoded
    rgb, cine, mono, _ = sources
    expected = [
        (rgb, None),
        (cine, us_builders.CINE_FRAME),
        (mono, None),
    ]
    for raw, (source, frame) in zip(data, expected, strict=True):
        seg = from_bytes(raw)
        items = [seg.SourceImageSequence[0]] + [
            group.DerivationImageSequence[0].SourceImageSequence[0]
            for group in seg.PerFrameFunctionalGroupsSequence
        ]
        for item in items:
            assert item.ReferencedSOPClassUID == source.SOPClassUID
            assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
            assert item.get("ReferencedFrameNumber") == frame
        (series,) = seg.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        (instance,) = series.ReferencedInstanceSequence
        assert instance.ReferencedSOPClassUID == source.SOPClassUID
        assert "ReferencedFrameNumber" not in instance
    # the single-frame stand-in highdicom was given leaves no trace in the clip's SEG
    assert us_builders.US_IMAGE_STORAGE.encode() not in data[1]
    assert sources[1].SOPClassUID == us_builders.US_MULTIFRAME_IMAGE_STORAGE  # source untouched


def test_segment_pixels_are_the_nodule_masks(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]], tmp_path: Path
) -> None:
    sources, _, data = encoded
    rgb, cine, mono, _ = sources
    paths = [write(tmp_path, f"seg{i}.dcm", d) for i, d in enumerate(data)]
    first, clip, grey = (hd.seg.segread(p) for p in paths)
    pixels = first.get_pixels_by_source_instance([rgb.SOPInstanceUID], segment_numbers=[1, 2])
    assert pixels.shape == (1, us_builders.ROWS, us_builders.COLUMNS, 2)
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), us_builders.nodule_mask(1))
    np.testing.assert_array_equal(pixels[0, ..., 1].astype(bool), us_builders.nodule_mask(2))
    pixels = clip.get_pixels_by_source_frame(
        cine.SOPInstanceUID, source_frame_numbers=[us_builders.CINE_FRAME]
    )
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), us_builders.nodule_mask(3))
    for other in (1, 2):  # no frame of the SEG lies on another frame of the clip
        assert not clip.get_pixels_by_source_frame(
            cine.SOPInstanceUID, source_frame_numbers=[other]
        ).any()
    pixels = grey.get_pixels_by_source_instance([mono.SOPInstanceUID])
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), us_builders.nodule_mask(4))


def test_segs_pass_dciodvfy(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]], tmp_path: Path
) -> None:
    _, _, data = encoded
    for i, raw in enumerate(data):
        assert dciodvfy_errors(write(tmp_path, f"seg{i}.dcm", raw)) == []


def test_sources_pass_dciodvfy(tmp_path: Path) -> None:
    for i, ds in enumerate(us_builders.study()):
        assert dciodvfy_errors(write(tmp_path, f"us{i}.dcm", to_bytes(ds))) == []


def test_no_nodule_gives_no_seg() -> None:
    sources = us_builders.study()
    results = us_builders.results(sources, nodules=())
    assert encode_us_segs(
        results, sources, content_datetime=CONTENT_DATETIME, software_version="1"
    ) == []


def test_segs_are_byte_identical_and_versioned(
    encoded: tuple[list[pydicom.Dataset], USResults, list[bytes]],
) -> None:
    sources, results, data = encoded
    assert _encode(results, list(reversed(sources))) == data
    other = _encode(us_builders.with_model_versions(results, "0.2.0-demo"), sources)
    a, b = from_bytes(data[0]), from_bytes(other[0])
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SegmentSequence[0].TrackingUID != b.SegmentSequence[0].TrackingUID


def test_non_demo_seg_has_no_disclaimer() -> None:
    sources = us_builders.study()
    results = us_builders.results(
        sources,
        nodules=(1,),
        seg=us_builders.seg_model(demo=False),
        malignancy=us_builders.malignancy_model(demo=False),
        lvlnm=us_builders.lvlnm_model(demo=False),
    )
    (data,) = _encode(results, sources)
    assert DISCLAIMER.encode() not in data


def test_seg_rejects_bad_input() -> None:
    sources = us_builders.study()
    results = us_builders.results(sources)
    one, two, three, four = results.nodules
    with pytest.raises(ValueError, match="1..N"):
        _encode(dataclasses.replace(results, nodules=(two, one, three, four)), sources)
    outside = dataclasses.replace(one, box=(100, 0, 100 + one.mask.shape[0], one.mask.shape[1]))
    with pytest.raises(ValueError, match="outside the frame"):
        _encode(dataclasses.replace(results, nodules=(outside, two, three, four)), sources)
    misshapen = dataclasses.replace(one, mask=one.mask[1:])
    with pytest.raises(ValueError, match="box's shape"):
        _encode(dataclasses.replace(results, nodules=(misshapen, two, three, four)), sources)
    unknown = dataclasses.replace(one, outline_source="radiologist")
    with pytest.raises(ValueError, match="outline source"):
        _encode(dataclasses.replace(results, nodules=(unknown, two, three, four)), sources)
    with pytest.raises(ValueError, match="no source dataset"):
        _encode(results, sources[1:])
    no_frame = dataclasses.replace(
        three.image, source=dataclasses.replace(three.image.source, frame_number=None)
    )
    wrong = dataclasses.replace(
        results,
        images=(results.images[0], no_frame, results.images[2]),
        nodules=(one, two, dataclasses.replace(three, image=no_frame), four),
    )
    with pytest.raises(ValueError, match="frames but the results name none"):
        _encode(wrong, sources)
