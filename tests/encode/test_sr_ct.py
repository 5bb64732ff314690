"""CT TID 1500 SR: lesion groups, SEG references, tracking UIDs, values, validators."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from tests.encode import ct_builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, dsrdump, from_bytes, to_bytes, write
from workers.encode import codes as thy_codes
from workers.encode.seg import encode_ct_seg
from workers.encode.sr import SR_SERIES_NUMBER
from workers.encode.sr_ct import encode_ct_sr
from workers.pipelines.results import CTResults

DISCLAIMER = "DEMO - not for clinical use"
KINDS = ("single-frame", "enhanced")


def _sources(kind: str) -> list[pydicom.Dataset]:
    return ct_builders.ct_series() if kind == "single-frame" else [ct_builders.enhanced_ct()]


def _seg(results: CTResults, sources: list[pydicom.Dataset]) -> pydicom.Dataset | None:
    return encode_ct_seg(
        results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )


def _encode(
    results: CTResults, sources: list[pydicom.Dataset], seg: pydicom.Dataset | None
) -> bytes:
    sr = encode_ct_sr(
        results, sources, seg, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    return to_bytes(sr)


@pytest.fixture(scope="module", params=KINDS)
def encoded(
    request: pytest.FixtureRequest,
) -> tuple[list[pydicom.Dataset], CTResults, pydicom.Dataset, bytes]:
    sources = _sources(request.param)
    results = ct_builders.results(sources)
    seg = _seg(results, sources)
    assert seg is not None
    seg = from_bytes(to_bytes(seg))  # what a PACS would hold
    return sources, results, seg, _encode(results, sources, seg)


def _content(ds: pydicom.Dataset) -> hd.sr.MeasurementReport:
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _texts(item: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept meaning, text) of every TEXT item below ``item``, depth first."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            found.append((child.ConceptNameCodeSequence[0].CodeMeaning, child.TextValue))
        found.extend(_texts(child))
    return found


def _items(item: pydicom.Dataset, value_type: str, meaning: str) -> list[pydicom.Dataset]:
    found = []
    for child in item.get("ContentSequence", []):
        name = child.ConceptNameCodeSequence[0].CodeMeaning
        if child.ValueType == value_type and name == meaning:
            found.append(child)
        found.extend(_items(child, value_type, meaning))
    return found


def _pixel_spacing(sources: list[pydicom.Dataset], sop_uid: str) -> list[float]:
    ds = next(d for d in sources if d.SOPInstanceUID == sop_uid)
    if "PixelSpacing" in ds:
        return [float(v) for v in ds.PixelSpacing]
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    return [float(v) for v in measures.PixelSpacing]


def test_sr_lesion_groups(
    encoded: tuple[list[pydicom.Dataset], CTResults, pydicom.Dataset, bytes], tmp_path: Path
) -> None:
    sources, results, seg, data = encoded
    ds = from_bytes(data)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.PatientID == sources[0].PatientID
    assert ds.SeriesNumber == SR_SERIES_NUMBER
    assert "AI thyroid CT lesions SR" in ds.SeriesDescription
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    procedure = [
        c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == "24627-2"
    models = {
        e.ManufacturerModelName
        for e in ds.ContributingEquipmentSequence
        if e.Manufacturer == "Thyroid AI Node"
    }
    assert {"ct_lung_met_seg", "ct_lung_met_rai"} <= models

    report = _content(ds)
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(results.lesions) == 2
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert results.series is not None
    for group, lesion in zip(groups, results.lesions, strict=True):
        # the same lesion in SEG and SR
        assert group.tracking_identifier == f"Cornerstone3DTools@^0.1.0:Bidirectional:Lesion {lesion.index}"
        assert group.tracking_uid == segments[lesion.index].TrackingUID
        ref = group.referenced_segment
        assert ref is not None
        segment_item = _items(group[0], "IMAGE", "Referenced Segment")[0].ReferencedSOPSequence[0]
        assert segment_item.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert segment_item.ReferencedSOPClassUID == seg.SOPClassUID
        assert segment_item.ReferencedSegmentNumber == lesion.index
        assert "ReferencedFrameNumber" not in segment_item
        # source images for segmentation: the lesion's slices (frames)
        expected = {
            (results.series.slices[k].sop_instance_uid, results.series.slices[k].frame_number)
            for k in range(lesion.box_origin[0], lesion.box_origin[0] + lesion.mask.shape[0])
            if lesion.mask[k - lesion.box_origin[0]].any()
        }
        referenced: set[tuple[str, int | None]] = set()
        for item in _items(group[0], "IMAGE", "Source Image for Segmentation"):
            sop = item.ReferencedSOPSequence[0]
            frames = sop.get("ReferencedFrameNumber")
            if frames is None:
                referenced.add((sop.ReferencedSOPInstanceUID, None))
            else:
                values = frames if isinstance(frames, pydicom.multival.MultiValue) else [frames]
                referenced |= {(sop.ReferencedSOPInstanceUID, int(f)) for f in values}
        assert referenced == expected

        assert group.finding_type == thy_codes.METASTATIC_NEOPLASM
        (site,) = group.finding_sites
        assert site.value == thy_codes.LUNG
        assert site.laterality == (thy_codes.RIGHT if lesion.side == "right" else thy_codes.LEFT)

        long_axis, short_axis, diameter, volume, probability = group.get_measurements()
        # the in-plane axes (OHIF's Bidirectional tool) on the axial slice through the centre
        assert (long_axis.name.meaning, short_axis.name.meaning) == ("Long Axis", "Short Axis")
        assert long_axis.unit == short_axis.unit == thy_codes.MILLIMETER
        assert 0 < short_axis.value <= long_axis.value <= lesion.diameter_mm + 1.0
        k = lesion.centre_slice
        centre = results.series.slices[k]
        spacing = [float(v) for v in _pixel_spacing(sources, centre.sop_instance_uid)]
        lines = []
        for num in (long_axis, short_axis):
            (scoord,) = _items(num[0], "SCOORD", "Path")
            assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
            (image,) = scoord.ContentSequence
            assert image.RelationshipType == "SELECTED FROM"
            ref = image.ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == centre.sop_instance_uid
            assert ref.get("ReferencedFrameNumber") == centre.frame_number
            (x0, y0), (x1, y1) = np.reshape(scoord.GraphicData, (2, 2))
            mm = float(np.hypot((x1 - x0) * spacing[1], (y1 - y0) * spacing[0]))
            assert mm == pytest.approx(num.value, abs=0.01)
            lines.append(np.array([(x1 - x0) * spacing[1], (y1 - y0) * spacing[0]]))
        cosine = float(lines[0] @ lines[1]) / float(np.hypot(*lines[0]) * np.hypot(*lines[1]))
        assert abs(cosine) < 1e-3  # perpendicular (end points are rounded to 0.001 pixel)
        assert (diameter.name, diameter.value) == (thy_codes.DIAMETER, lesion.diameter_mm)
        assert diameter.unit == hd.sr.CodedConcept.from_code(codes.UCUM.Millimeter)
        assert diameter.derivation == thy_codes.MAXIMUM
        assert (volume.name, volume.value) == (thy_codes.VOLUME, lesion.volume_mm3)
        assert volume.unit == hd.sr.CodedConcept.from_code(codes.UCUM.CubicMillimeter)
        assert (probability.name, probability.value) == (
            thy_codes.PROBABILITY_RAI_REFRACTORY,
            lesion.probability,
        )
        assert probability.unit == hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)
        algorithms = [t for m, t in _texts(group[0]) if m == "Algorithm Name"]
        assert algorithms == ["ct_lung_met_seg"] * 5 + ["ct_lung_met_rai"]

        (evaluation,) = group.get_qualitative_evaluations(name=thy_codes.RAI_REFRACTORY)
        assert evaluation.value == (thy_codes.YES if lesion.refractory else thy_codes.NO)
        texts = dict(_texts(group[0]))
        assert texts["Decision threshold"].startswith("0.5:")
        assert texts["Series selection"] == results.series.choice
        assert texts["Disclaimer"] == DISCLAIMER
        assert texts["Comment"] == f"DEMO Lesion {lesion.index}"
        assert texts["Plane of the axes"].startswith(f"long and short axis in axial slice {k + 1} of")
    decisions = [g.get_qualitative_evaluations(name=thy_codes.RAI_REFRACTORY)[0] for g in groups]
    assert [d.value for d in decisions] == [thy_codes.YES, thy_codes.NO]

    # Image Library: the slices holding a lesion; evidence: every slice of the series and the SEG
    library = {
        r.ReferencedSOPInstanceUID
        for item in _items(ds, "IMAGE", "Source")
        for r in item.ReferencedSOPSequence
    }
    lesion_slices = {
        results.series.slices[lesion.box_origin[0] + dk].sop_instance_uid
        for lesion in results.lesions
        for dk in range(lesion.mask.shape[0])
        if lesion.mask[dk].any()
    }
    assert library == lesion_slices
    evidence = {
        r.ReferencedSOPInstanceUID
        for e in ds.CurrentRequestedProcedureEvidenceSequence
        for series in e.ReferencedSeriesSequence
        for r in series.ReferencedSOPSequence
    }
    assert evidence == {s.SOPInstanceUID for s in sources} | {seg.SOPInstanceUID}

    path = write(tmp_path, "sr_ct.dcm", data)
    assert dciodvfy_errors(path) == []
    dump = dsrdump(path)
    assert "Referenced Segment" in dump and "RAI-refractory" in dump


def test_sr_is_byte_identical_and_versioned() -> None:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources)
    seg = _seg(results, sources)
    first, second = _encode(results, sources, seg), _encode(results, list(reversed(sources)), seg)
    assert first == second
    # a new model version gives a new document (the Enhanced CT keeps this test quick)
    enhanced = [ct_builders.enhanced_ct()]
    uids = []
    base = ct_builders.results(enhanced)
    for res in (base, ct_builders.with_model_versions(base, "0.2.0-demo")):
        ds = from_bytes(_encode(res, enhanced, _seg(res, enhanced)))
        uids.append((ds.SeriesInstanceUID, ds.SOPInstanceUID))
    assert uids[0][0] != uids[1][0] and uids[0][1] != uids[1][1]


def test_sr_without_demo_models_has_no_disclaimer() -> None:
    sources = [ct_builders.enhanced_ct()]
    results = ct_builders.results(
        sources, seg=ct_builders.seg_model(demo=False), cls=ct_builders.cls_model(demo=False)
    )
    data = _encode(results, sources, _seg(results, sources))
    assert DISCLAIMER.encode() not in data
    assert "Disclaimer" not in dict(_texts(from_bytes(data)))


@pytest.mark.parametrize("kind", KINDS)
def test_no_lesion_sr(kind: str, tmp_path: Path) -> None:
    sources = _sources(kind)
    results = ct_builders.results(sources, lesions=())
    assert _seg(results, sources) is None
    data = _encode(results, sources, None)
    ds = from_bytes(data)
    report = _content(ds)
    assert report.get_volumetric_roi_measurement_groups() == []
    (group,) = report.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == thy_codes.ANALYSIS_RESULT
    assert evaluation.value == thy_codes.NO_LESION_FOUND
    assert group.finding_sites[0].value == thy_codes.LUNG
    assert ("Disclaimer", DISCLAIMER) in _texts(ds)
    path = write(tmp_path, "sr_none.dcm", data)
    assert dciodvfy_errors(path) == []
    assert "No lung lesion found" in dsrdump(path)


def test_not_analysable_sr(tmp_path: Path) -> None:
    sources = ct_builders.ct_series()
    reason = "no axial series with slices of 5 mm or thinner"
    data = _encode(ct_builders.not_analysable(sources, reason), sources, None)
    ds = from_bytes(data)
    (group,) = _content(ds).get_planar_roi_measurement_groups()  # the image refused, outlined
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == thy_codes.ANALYSIS_RESULT
    assert evaluation.value == thy_codes.NOT_ANALYSABLE
    assert group.finding_sites[0].value == thy_codes.LUNG
    assert ("Reason not analysable", reason) in _texts(ds)
    assert group.roi is not None
    ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
    path = write(tmp_path, "sr_na.dcm", data)
    assert dciodvfy_errors(path) == []
    assert "Not analysable" in dsrdump(path)


def test_sr_rejects_bad_input() -> None:
    sources = ct_builders.ct_series()
    results = ct_builders.results(sources)
    seg = _seg(results, sources)
    with pytest.raises(ValueError, match="needs their SEG"):
        _encode(results, sources, None)
    other = ct_builders.with_model_versions(results, "9")
    with pytest.raises(ValueError, match="is not lesion 1"):
        _encode(results, sources, _seg(other, sources))
    bad = dataclasses.replace(results.lesions[0], probability=1.5)
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        _encode(dataclasses.replace(results, lesions=(bad, results.lesions[1])), sources, seg)
    with pytest.raises(ValueError, match="no results"):
        _encode(dataclasses.replace(results, series=None, lesions=()), sources, None)
    with pytest.raises(ValueError, match="no source dataset"):
        _encode(results, sources[:-1], seg)
