"""TID 1500 SR from NM results: content, references, determinism, validators."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from tests.encode import builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, dsrdump, from_bytes, to_bytes, write
from workers.encode import codes as thy_codes
from workers.encode.sr import SR_SERIES_NUMBER, encode_nm_sr
from workers.pipelines.results import NMResults

DISCLAIMER = "DEMO - not for clinical use"


def _encode(results: NMResults, sources: list[pydicom.Dataset]) -> bytes:
    sr = encode_nm_sr(
        results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )
    return to_bytes(sr)


def _groups(ds: pydicom.Dataset) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return list(report.get_image_measurement_groups())


def _texts(item: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept meaning, text) of every TEXT item below ``item``, depth first."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            found.append((child.ConceptNameCodeSequence[0].CodeMeaning, child.TextValue))
        found.extend(_texts(child))
    return found


def _refs(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every Referenced SOP Sequence item of IMAGE content items below ``item``."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "IMAGE":
            found.extend(child.ReferencedSOPSequence)
        found.extend(_refs(child))
    return found


def test_sr_round_trip_content(nm_source: pydicom.Dataset, tmp_path: Path) -> None:
    results = builders.results(nm_source)
    ds = from_bytes(_encode(results, [nm_source]))

    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert ds.StudyInstanceUID == nm_source.StudyInstanceUID
    assert ds.PatientID == nm_source.PatientID
    assert ds.SeriesInstanceUID != nm_source.SeriesInstanceUID
    assert ds.SeriesNumber == SR_SERIES_NUMBER
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert (ds.ContentDate, ds.ContentTime) == ("20250314", "092653")
    assert ds.InstanceCreationDate == "20250314"

    # evidence and image library point at the source series and instance
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == nm_source.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == nm_source.SOPInstanceUID
    refs = _refs(ds)
    assert refs and all(r.ReferencedSOPInstanceUID == nm_source.SOPInstanceUID for r in refs)

    diagnosis = results.diagnoses[0]
    (group,) = _groups(ds)
    assert group.finding_type == thy_codes.to_coded_concept(diagnosis.predicted.code)
    assert group.finding_sites[0].value == thy_codes.THYROID_STRUCTURE
    assert group.tracking_uid is not None and group.tracking_identifier
    (src,) = group.source_images
    assert src.referenced_sop_instance_uid == nm_source.SOPInstanceUID
    assert src.referenced_sop_class_uid == nm_source.SOPClassUID

    measurements = group.get_measurements()
    assert len(measurements) == len(diagnosis.probabilities)
    # the predicted class first (the measurement a viewer draws), then the card's order
    ordered = [diagnosis.predicted] + [p for p in diagnosis.probabilities if p != diagnosis.predicted]
    for prob, measurement in zip(ordered, measurements, strict=True):
        assert measurement.name == thy_codes.probability_concept(prob.key, prob.code)
        assert measurement.value == prob.probability  # FloatingPointValue: exact
        assert measurement.unit == hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)

    # algorithm identification on the group and on every measurement
    texts = _texts(ds)
    assert texts.count(("Algorithm Name", "nm_thyroid_dx")) == 1 + len(measurements)
    assert texts.count(("Algorithm Version", "0.1.0-demo")) == 1 + len(measurements)
    assert ("Device Observer Name", "nm_thyroid_dx 0.1.0-demo") in texts
    procedure = [
        c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == "30695-1"

    assert any(
        i.CodingSchemeDesignator == thy_codes.PRIVATE_SCHEME
        for i in ds.CodingSchemeIdentificationSequence
    )
    builders.assert_processing_equipment(ds)

    path = write(tmp_path, "sr.dcm", to_bytes(ds))
    assert dciodvfy_errors(path) == []
    dump = dsrdump(path)
    assert "Measurement Group" in dump and "Graves' disease" in dump


@pytest.mark.parametrize("demo", [True, False])
def test_demo_marking(nm_source: pydicom.Dataset, demo: bool) -> None:
    model = builders.model_info(demo=demo)
    data = _encode(builders.results(nm_source, model=model), [nm_source])
    ds = from_bytes(data)
    assert (DISCLAIMER in ds.SeriesDescription) is demo
    assert (("Disclaimer", DISCLAIMER) in _texts(ds)) is demo
    assert (DISCLAIMER.encode() in data) is demo


def test_encoding_is_byte_identical_and_versioned(nm_source: pydicom.Dataset) -> None:
    results = builders.results(nm_source)
    first, second = _encode(results, [nm_source]), _encode(results, [nm_source])
    assert first == second
    a, b = from_bytes(first), from_bytes(second)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)

    other = builders.results(nm_source, model=builders.model_info(version="0.2.0-demo"))
    c = from_bytes(_encode(other, [nm_source]))
    assert c.SeriesInstanceUID != a.SeriesInstanceUID
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_multi_frame_source_is_referenced_with_its_frame(
    nm_source_2frames: pydicom.Dataset, tmp_path: Path
) -> None:
    results = builders.results(nm_source_2frames, frame_number=2)
    data = _encode(results, [nm_source_2frames])
    (group,) = _groups(from_bytes(data))
    (src,) = group.source_images
    assert src.referenced_frame_numbers == [2]
    path = write(tmp_path, "sr_mf.dcm", data)
    assert dciodvfy_errors(path) == []
    assert "NM image,,2" in dsrdump(path)


def test_not_analysable_sr(nm_source: pydicom.Dataset, tmp_path: Path) -> None:
    reason = "no thyroid uptake region found: all frames below 2000 counts"
    data = _encode(builders.not_analysable(nm_source, reason), [nm_source])
    ds = from_bytes(data)
    assert _groups(ds) == []
    # a TID 1410 group whose region is the whole image: OHIF's RectangleROI, labelled
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(report, hd.sr.MeasurementReport)
    (group,) = report.get_planar_roi_measurement_groups()
    assert group.finding_type is None
    assert group.get_measurements() == []
    (evaluation,) = group.get_qualitative_evaluations()
    assert (evaluation.name, evaluation.value) == (
        thy_codes.ANALYSIS_RESULT,
        thy_codes.NOT_ANALYSABLE,
    )
    assert ("Reason not analysable", reason) in _texts(ds)
    assert ("Comment", f"DEMO Not analysable: {reason}"[:64].rstrip()) in _texts(ds)
    assert group.tracking_identifier == (
        "Cornerstone3DTools@^0.1.0:RectangleROI:Thyroid AI not analysable 1"
    )
    region = group.roi
    assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    rows, cols = int(nm_source.Rows), int(nm_source.Columns)
    assert region.value.tolist() == [[0, 0], [cols, 0], [cols, rows], [0, rows], [0, 0]]
    ref = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == nm_source.SOPInstanceUID
    path = write(tmp_path, "sr_na.dcm", data)
    assert dciodvfy_errors(path) == []
    assert "Not analysable" in dsrdump(path)


def test_diagnosis_and_not_analysable_share_one_document(
    nm_source: pydicom.Dataset, nm_source_2frames: pydicom.Dataset, tmp_path: Path
) -> None:
    # the second source is another study: give it the first one's study and patient
    other = nm_source_2frames.copy()
    other.StudyInstanceUID = nm_source.StudyInstanceUID
    other.PatientID, other.PatientName = nm_source.PatientID, nm_source.PatientName
    results = dataclasses.replace(
        builders.results(nm_source),
        not_analysable=builders.not_analysable(other, "frame 2 truncated").not_analysable,
    )
    data = _encode(results, [other, nm_source])
    report = hd.sr.Comprehensive3DSR.from_dataset(from_bytes(data)).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_image_measurement_groups()) == 1  # the diagnosis
    (refused,) = report.get_planar_roi_measurement_groups()  # frame 1 of the other image
    assert refused.roi is not None
    ref = refused.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedFrameNumber) == (other.SOPInstanceUID, 1)
    assert dciodvfy_errors(write(tmp_path, "sr_both.dcm", data)) == []


def test_rejects_bad_input(nm_source: pydicom.Dataset, nm_source_2frames: pydicom.Dataset) -> None:
    results = builders.results(nm_source)
    with pytest.raises(ValueError, match="no source dataset"):
        _encode(results, [nm_source_2frames])
    with pytest.raises(ValueError, match="no results"):
        _encode(NMResults(study_instance_uid=nm_source.StudyInstanceUID), [nm_source])
    bad = NMResults(
        study_instance_uid=nm_source.StudyInstanceUID,
        diagnoses=(builders.diagnosis(nm_source, probabilities=(1.2, 0.0, 0.0, 0.0)),),
    )
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        _encode(bad, [nm_source])
    mixed = dataclasses.replace(
        results,
        not_analysable=builders.not_analysable(
            nm_source, "x", model=builders.model_info(version="9")
        ).not_analysable,
    )
    with pytest.raises(ValueError, match="exactly one model"):
        _encode(mixed, [nm_source])
    with pytest.raises(ValueError, match="outside 1..2"):
        _encode(builders.results(nm_source_2frames, frame_number=3), [nm_source_2frames])


def test_non_image_source_is_named_not_referenced(
    nm_source: pydicom.Dataset, tmp_path: Path
) -> None:
    # a study may hold non-image objects (KOS, PR, an earlier SR): the pipeline reports them
    # as not analysable; the SR names them in text, since an IMAGE item cannot point at them
    earlier_sr = from_bytes(_encode(builders.results(nm_source), [nm_source]))
    rejected = builders.not_analysable(earlier_sr, "not an NM Image Storage instance")
    results = dataclasses.replace(builders.results(nm_source), not_analysable=rejected.not_analysable)
    data = _encode(results, [nm_source, earlier_sr])
    ds = from_bytes(data)
    diagnosis_group, rejected_group = _groups(ds)
    assert rejected_group.source_images == []
    assert any(earlier_sr.SOPInstanceUID in text for _, text in _texts(ds))
    assert {r.ReferencedSOPInstanceUID for r in _refs(ds)} == {nm_source.SOPInstanceUID}
    assert dciodvfy_errors(write(tmp_path, "sr_nonimage.dcm", data)) == []
    dsrdump(write(tmp_path, "sr_nonimage2.dcm", data))

    with pytest.raises(ValueError, match="no image among the sources"):
        _encode(rejected, [earlier_sr])


@pytest.mark.parametrize("predicted", [0, 2])
def test_predicted_probability_points_at_the_gradcam_peak(
    nm_source: pydicom.Dataset, predicted: int
) -> None:
    """OHIF's ArrowAnnotate: tip at the heatmap's peak, label = the group's Comment row."""
    probabilities = [0.1, 0.1, 0.1, 0.1]
    probabilities[predicted] = 0.7
    rows, cols = int(nm_source.Rows), int(nm_source.Columns)
    diagnosis = dataclasses.replace(
        builders.diagnosis(nm_source, probabilities=tuple(probabilities)),
        heatmap=builders.gaussian_heatmap(rows, cols, (0.3, 0.7)),
    )
    results = NMResults(study_instance_uid=nm_source.StudyInstanceUID, diagnoses=(diagnosis,))
    ds = from_bytes(_encode(results, [nm_source]))
    (group,) = _groups(ds)
    assert group.tracking_identifier == "Cornerstone3DTools@^0.1.0:ArrowAnnotate:Thyroid AI diagnosis 1"
    nums = [i for i in group[0].ContentSequence if i.ValueType == "NUM"]
    first = nums[0]
    assert first.ConceptNameCodeSequence[0].CodeMeaning == (
        f"Probability of {diagnosis.predicted.code.meaning}"
    )
    scoords = [i for i in first.ContentSequence if i.ValueType == "SCOORD"]
    (scoord,) = scoords
    assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
    (tip_x, tip_y), (tail_x, tail_y) = [tuple(p) for p in np.reshape(scoord.GraphicData, (2, 2))]
    peak_r, peak_c = divmod(int(diagnosis.heatmap.argmax()), cols)
    assert (tip_x, tip_y) == (peak_c + 0.5, peak_r + 0.5)
    assert tail_x > tip_x and tail_y < tip_y  # label up and to the right
    assert 0 <= tail_x <= cols and 0 <= tail_y <= rows
    (image,) = scoord.ContentSequence
    assert image.RelationshipType == "SELECTED FROM"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == nm_source.SOPInstanceUID
    assert not any(i.ValueType == "SCOORD" for n in nums[1:] for i in n.ContentSequence)
    comment = dict(_texts(group[0]))["Comment"]
    assert comment == f"DEMO {diagnosis.predicted.code.meaning} 0.70"


def test_heatmap_must_match_the_image(nm_source: pydicom.Dataset) -> None:
    diagnosis = dataclasses.replace(
        builders.diagnosis(nm_source), heatmap=builders.gaussian_heatmap(8, 8)
    )
    results = NMResults(study_instance_uid=nm_source.StudyInstanceUID, diagnoses=(diagnosis,))
    with pytest.raises(ValueError, match="heatmap shape"):
        _encode(results, [nm_source])
