"""US TID 1500 SR: nodule groups, SEG references or outlines, units, scores, validators."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon

from tests.encode import us_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, dsrdump, from_bytes, to_bytes, write
from workers.encode.seg_us import encode_us_segs, image_key
from workers.encode.sr import SR_SERIES_NUMBER
from workers.encode.sr_us import UNCALIBRATED_TEXT, encode_us_sr
from workers.pipelines.results import USResults

DISCLAIMER = "DEMO - not for clinical use"

Encoded = tuple[list[pydicom.Dataset], USResults, list[pydicom.Dataset], bytes]


def _segs(results: USResults, sources: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    segs = encode_us_segs(
        results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    return [from_bytes(to_bytes(seg)) for seg in segs]  # what a PACS would hold


def _encode(
    results: USResults, sources: list[pydicom.Dataset], segs: list[pydicom.Dataset]
) -> bytes:
    sr = encode_us_sr(
        results, sources, segs, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    return to_bytes(sr)


@pytest.fixture(scope="module")
def encoded() -> Encoded:
    sources = us_builders.study()
    results = us_builders.results(sources)
    segs = _segs(results, sources)
    return sources, results, segs, _encode(results, sources, segs)


@pytest.fixture(scope="module")
def outlined() -> Encoded:
    """The same results without SEGs: the outlines travel as polylines."""
    sources = us_builders.study()
    results = us_builders.results(sources)
    return sources, results, [], _encode(results, sources, [])


def _report(data: bytes) -> hd.sr.MeasurementReport:
    report = hd.sr.Comprehensive3DSR.from_dataset(from_bytes(data)).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _nodule_groups(data: bytes) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The nodule groups (TID 1410 with a Finding), not the verdicts on whole images."""
    groups = _report(data).get_planar_roi_measurement_groups()
    return [g for g in groups if g.finding_type is not None]


def _items(item: pydicom.Dataset, value_type: str, meaning: str) -> list[pydicom.Dataset]:
    found = []
    for child in item.get("ContentSequence", []):
        name = child.ConceptNameCodeSequence[0].CodeMeaning
        if child.ValueType == value_type and name == meaning:
            found.append(child)
        found.extend(_items(child, value_type, meaning))
    return found


def _texts(group: pydicom.Dataset, meaning: str) -> list[str]:
    return [str(i.TextValue) for i in _items(group, "TEXT", meaning)]


def _code(group: pydicom.Dataset, meaning: str) -> str:
    (item,) = _items(group, "CODE", meaning)
    return str(item.ConceptCodeSequence[0].CodeMeaning)


def test_document_and_references(encoded: Encoded) -> None:
    sources, _, segs, data = encoded
    ds = from_bytes(data)
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.PatientID == sources[0].PatientID
    assert ds.SeriesNumber == SR_SERIES_NUMBER
    assert ds.SeriesDescription.startswith(DISCLAIMER)
    assert "AI thyroid US nodules SR" in ds.SeriesDescription
    assert (ds.PreliminaryFlag, ds.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
    evidence = {
        r.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for r in series.ReferencedSOPSequence
    }
    assert evidence == {s.SOPInstanceUID for s in [*sources, *segs]}
    (procedure,) = _items(ds, "CODE", "Procedure reported")
    assert procedure.ConceptCodeSequence[0].CodeValue == "25010-0"
    library = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in _items(ds, "IMAGE", "Source")
    }
    assert library == {s.SOPInstanceUID for s in sources}
    models = {
        e.ManufacturerModelName
        for e in ds.ContributingEquipmentSequence
        if e.Manufacturer == "Thyroid AI Node"
    }
    assert models == {"us_nodule_seg", "us_calcified_nodule", "us_lvlnm"}


def test_nodule_groups_reference_their_segments(encoded: Encoded) -> None:
    sources, results, segs, data = encoded
    groups = _nodule_groups(data)
    assert len(groups) == len(results.nodules)
    segments = {
        str(item.TrackingUID): (seg, int(item.SegmentNumber))
        for seg in segs
        for item in seg.SegmentSequence
    }
    for group, nodule in zip(groups, results.nodules, strict=True):
        assert group.tracking_identifier == f"Cornerstone3DTools@^0.1.0:Bidirectional:Nodule {nodule.index}"
        seg, number = segments[str(group.tracking_uid)]  # the same UID as the SEG segment
        assert seg.SegmentSequence[number - 1].SegmentLabel == f"Nodule {nodule.index}"
        (frame_ref,) = _items(group[0], "IMAGE", "Referenced Segmentation Frame")
        ref = frame_ref.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        seg_frame = seg.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
        identification = (
            seg_frame
            if "SegmentIdentificationSequence" in seg_frame
            else seg.SharedFunctionalGroupsSequence[0]
        )
        assert identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber == number
        assert "ReferencedSegmentNumber" not in ref  # the frame says which segment
        (source_ref,) = _items(group[0], "IMAGE", "Source Image for Segmentation")
        source = source_ref.ReferencedSOPSequence[0]
        assert source.ReferencedSOPInstanceUID == nodule.image.source.sop_instance_uid
        assert source.get("ReferencedFrameNumber") == nodule.image.source.frame_number
        assert group.finding_type is not None and group.finding_type.value == "27925004"
        assert [s.value.value for s in group.finding_sites] == ["69748006"]


def test_sizes_units_and_scores(encoded: Encoded) -> None:
    _, results, _, data = encoded
    groups = _nodule_groups(data)
    for group, nodule in zip(groups, results.nodules, strict=True):
        values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        length, area = ("mm", "mm2") if nodule.calibrated else ("{pixels}", "{pixels}.{pixels}")
        assert values["Long Axis"] == pytest.approx((nodule.long_axis, length))
        assert values["Short Axis"] == pytest.approx((nodule.short_axis, length))
        assert values["Area"] == pytest.approx((nodule.area, area))
        assert values["Probability of malignancy"] == pytest.approx((nodule.malignancy, "1"))
        assert values["Probability of large-volume lymph node metastasis"] == pytest.approx(
            (nodule.lvlnm, "1")
        )
        names = {
            str(num.ConceptNameCodeSequence[0].CodeMeaning): _texts(num, "Algorithm Name")[0]
            for num in group[0].ContentSequence
            if num.ValueType == "NUM" and _texts(num, "Algorithm Name")
        }
        assert names["Probability of malignancy"] == "us_calcified_nodule"
        assert names["Probability of large-volume lymph node metastasis"] == "us_lvlnm"
        assert ("Long Axis" in names) == (nodule.outline_source == "model")
        item = group[0]
        assert nodule.malignancy is not None and nodule.lvlnm is not None
        malignant = nodule.malignancy >= nodule.malignancy_threshold
        assert _code(item, "Malignant") == ("Yes" if malignant else "No")
        metastasis = nodule.lvlnm >= nodule.lvlnm_threshold
        lvlnm = _code(item, "Large-volume lymph node metastasis (> 5 nodes)")
        assert lvlnm == ("Yes" if metastasis else "No")
        thresholds = _texts(item, "Decision threshold")
        assert thresholds[0].startswith("0.5: malignant") and "us_calcified_nodule" in thresholds[0]
        assert thresholds[1].startswith("0.4: large-volume") and "us_lvlnm" in thresholds[1]
        assert _texts(item, "Backbones averaged") == ["xception, densenet169"]
        assert _texts(item, "Size unit") == ([] if nodule.calibrated else [UNCALIBRATED_TEXT])
        outline = _texts(item, "Nodule outline source")[0]
        assert outline.startswith("site SEG" if nodule.outline_source == "site SEG" else "model")
        assert _texts(item, "Disclaimer") == [DISCLAIMER]
    assert [n.calibrated for n in results.nodules] == [True, True, True, False]


def test_not_analysable_and_no_nodule_groups() -> None:
    """Verdicts on whole images: TID 1410 over the region searched (or the whole image)."""
    sources = us_builders.study()
    rgb, cine, mono, doppler = sources
    results = us_builders.results(sources, nodules=(1, 2))  # nothing on the clip and mono image
    data = _encode(results, sources, _segs(results, sources))
    groups = _report(data).get_planar_roi_measurement_groups()
    assert _report(data).get_image_measurement_groups() == []
    verdicts = [g for g in groups if g.finding_type is None]
    names = [str(g.tracking_identifier) for g in verdicts]
    assert names == [
        f"Cornerstone3DTools@^0.1.0:RectangleROI:{n}"
        for n in ("No thyroid nodule 1", "No thyroid nodule 2", "Thyroid AI not analysable 1")
    ]
    empty_clip, empty_mono, refused = (g[0] for g in verdicts)
    assert _code(empty_clip, "AI analysis result") == "No thyroid nodule found"
    assert _texts(empty_clip, "Comment") == ["DEMO No thyroid nodule found"]
    images = {image_key(i): i for i in results.images}
    for item, ds in ((empty_clip, cine), (empty_mono, mono)):
        (region,) = _items(item, "SCOORD", "Image Region")
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        image = next(i for k, i in images.items() if k[0] == ds.SOPInstanceUID)
        row0, col0, row1, col1 = image.region  # the B-mode region searched
        assert np.reshape(region.GraphicData, (-1, 2)).tolist() == [
            [col0, row0], [col1, row0], [col1, row1], [col0, row1], [col0, row0]
        ]
    (region,) = _items(empty_clip, "SCOORD", "Image Region")
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber == us_builders.CINE_FRAME
    assert _code(refused, "AI analysis result") == "Not analysable"
    assert _texts(refused, "Reason not analysable") == ["no B-mode region: colour Doppler only"]
    (region,) = _items(refused, "SCOORD", "Image Region")
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == doppler.SOPInstanceUID
    assert np.reshape(region.GraphicData, (-1, 2))[2].tolist() == [doppler.Columns, doppler.Rows]
    assert len(groups) - len(verdicts) == 2


def test_without_seg_the_outline_is_a_polyline(outlined: Encoded) -> None:
    _, results, _, data = outlined
    groups = _nodule_groups(data)
    rows, cols = np.mgrid[0 : us_builders.ROWS, 0 : us_builders.COLUMNS]
    centres = np.column_stack([cols.ravel() + 0.5, rows.ravel() + 0.5])  # (column, row)
    for group, nodule in zip(groups, results.nodules, strict=True):
        (scoord,) = _items(group[0], "SCOORD", "Image Region")
        assert scoord.GraphicType == "POLYLINE"
        points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
        np.testing.assert_array_equal(points[0], points[-1])  # closed
        inside = Polygon(points).contains_points(centres).reshape(rows.shape)
        np.testing.assert_array_equal(inside, us_builders.nodule_mask(nodule.index))
        ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == nodule.image.source.sop_instance_uid
        assert ref.get("ReferencedFrameNumber") == nodule.image.source.frame_number
        assert not _items(group[0], "IMAGE", "Referenced Segmentation Frame")


@pytest.mark.parametrize("which", ["encoded", "outlined"])
def test_sr_passes_dciodvfy_and_dsrdump(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _, _, _, data = request.getfixturevalue(which)
    path = write(tmp_path, "sr.dcm", data)
    assert dciodvfy_errors(path) == []
    text = dsrdump(path)
    assert "Nodule 4" in text and "{pixels}" in text


def test_sr_is_byte_identical_and_versioned(encoded: Encoded) -> None:
    sources, results, segs, data = encoded
    assert _encode(results, list(reversed(sources)), segs) == data
    newer = us_builders.with_model_versions(results, "0.2.0-demo")
    other = from_bytes(_encode(newer, sources, _segs(newer, sources)))
    ds = from_bytes(data)
    assert other.SeriesInstanceUID != ds.SeriesInstanceUID
    assert other.SOPInstanceUID != ds.SOPInstanceUID


def test_scores_not_run_are_left_out() -> None:
    sources = us_builders.study()
    base = us_builders.results(sources, nodules=(1,), not_analysable=False)
    nodule = dataclasses.replace(base.nodules[0], lvlnm=None)
    results = dataclasses.replace(base, lvlnm_model=None, nodules=(nodule,))
    data = _encode(results, sources, [])
    (group,) = _nodule_groups(data)
    names = {m.name.meaning for m in group.get_measurements()}
    assert "Probability of malignancy" in names
    assert "Probability of large-volume lymph node metastasis" not in names
    assert b"us_lvlnm" not in data


def test_sr_rejects_bad_input() -> None:
    sources = us_builders.study()
    results = us_builders.results(sources)
    segs = _segs(results, sources)
    one, two, three, four = results.nodules
    with pytest.raises(ValueError, match="no segment of the given SEGs is nodule 3"):
        _encode(results, sources, [segs[0], segs[2]])
    with pytest.raises(ValueError, match="no nodule"):
        _encode(us_builders.results(sources, nodules=()), sources, segs)
    high = dataclasses.replace(one, malignancy=1.5)
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        _encode(dataclasses.replace(results, nodules=(high, two, three, four)), sources, [])
    with pytest.raises(ValueError, match="no LVLNM model"):
        _encode(dataclasses.replace(results, lvlnm_model=None), sources, [])
    flat = dataclasses.replace(one, short_axis=0.0)
    with pytest.raises(ValueError, match="Short Axis"):
        _encode(dataclasses.replace(results, nodules=(flat, two, three, four)), sources, [])
    wrong = dataclasses.replace(one, long_axis=one.long_axis * 2)
    with pytest.raises(ValueError, match="differs from its mask"):
        _encode(dataclasses.replace(results, nodules=(wrong, two, three, four)), sources, [])
    with pytest.raises(ValueError, match="no results"):
        _encode(dataclasses.replace(results, images=(), nodules=(), not_analysable=()), sources, [])


@pytest.mark.parametrize("with_segs", [True, False])
def test_axes_are_drawn_where_they_were_measured(
    encoded: Encoded, outlined: Encoded, with_segs: bool
) -> None:
    """OHIF's Bidirectional tool: the first NUM is the long axis, both axes carry end points."""
    _, results, _, data = encoded if with_segs else outlined
    groups = _nodule_groups(data)
    for group, nodule in zip(groups, results.nodules, strict=True):
        assert _texts(group[0], "Comment") == [f"DEMO Nodule {nodule.index}"]
        nums = [i for i in group[0].ContentSequence if i.ValueType == "NUM"]
        assert [n.ConceptNameCodeSequence[0].CodeMeaning for n in nums[:2]] == [
            "Long Axis",
            "Short Axis",
        ]
        spacing = nodule.image.spacing_mm if nodule.calibrated else None
        sy, sx = spacing or (1.0, 1.0)
        vectors = []
        for num, expected in zip(nums[:2], (nodule.long_axis, nodule.short_axis), strict=True):
            (scoord,) = [i for i in num.ContentSequence if i.ValueType == "SCOORD"]
            assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
            (image,) = scoord.ContentSequence
            assert image.RelationshipType == "SELECTED FROM"
            ref = image.ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == nodule.image.source.sop_instance_uid
            assert ref.get("ReferencedFrameNumber") == nodule.image.source.frame_number
            (x0, y0), (x1, y1) = np.reshape(scoord.GraphicData, (2, 2))
            assert float(np.hypot((x1 - x0) * sx, (y1 - y0) * sy)) == pytest.approx(expected, abs=0.02)
            # both ends lie on the nodule's box (within a pixel)
            r0, c0, r1, c1 = nodule.box
            for x, y in ((x0, y0), (x1, y1)):
                assert c0 - 1 <= x <= c1 + 1 and r0 - 1 <= y <= r1 + 1
            vectors.append(np.array([(x1 - x0) * sx, (y1 - y0) * sy]))
        cosine = float(vectors[0] @ vectors[1]) / float(np.hypot(*vectors[0]) * np.hypot(*vectors[1]))
        assert abs(cosine) < 1e-3
        # no other measurement has a SCOORD: one drawing (and one label) per nodule
        assert not any(i.ValueType == "SCOORD" for n in nums[2:] for i in n.get("ContentSequence", []))
