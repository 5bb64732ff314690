"""Seed 001 (cure after I-131 therapy) in the NM SR: its own group per image, two models named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.encode import builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, dsrdump, from_bytes, to_bytes, write
from workers.encode import codes as thy_codes
from workers.encode.sr import encode_nm_sr
from workers.pipelines.results import GravesOutcome, ModelInfo, NMResults

DISCLAIMER = "DEMO - not for clinical use"


def graves_model(*, demo: bool = True, version: str = "0.1.0-demo") -> ModelInfo:
    return ModelInfo(
        name="nm_graves_i131",
        version=version,
        title="Cure after a first I-131 therapy (ResNet50 + LASSO + RF)",
        weights_sha256="1a" * 32,
        demo=demo,
    )


def outcome(
    ds: pydicom.Dataset,
    *,
    probability: float = 0.8125,
    threshold: float = 0.375,
    frame_number: int | None = None,
    model: ModelInfo | None = None,
) -> GravesOutcome:
    return GravesOutcome(
        source=builders.source_image(ds, frame_number),
        model=model or graves_model(),
        probability_cured=probability,
        threshold=threshold,
        heatmap=builders.gaussian_heatmap(int(ds.Rows), int(ds.Columns), (0.5, 0.45)),
        frame_choice="anterior view",
        resnet_probability=0.7,
    )


def with_graves(ds: pydicom.Dataset, *graves: GravesOutcome) -> NMResults:
    return dataclasses.replace(builders.results(ds), graves=graves)


def _encode(results: NMResults, sources: list[pydicom.Dataset]) -> pydicom.Dataset:
    sr = encode_nm_sr(results, sources, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION)
    return from_bytes(to_bytes(sr))


def _groups(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The TID 1501 containers under Imaging Measurements, in order."""
    (measurements,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements.ContentSequence)


def _rows(group: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    """Concept code value -> content item, for the group's direct children."""
    return {str(i.ConceptNameCodeSequence[0].CodeValue): i for i in group.ContentSequence}


def _texts(item: pydicom.Dataset) -> list[str]:
    """Every TEXT value below ``item``, depth first."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            found.append(str(child.TextValue))
        found.extend(_texts(child))
    return found


def _device_observer_name(ds: pydicom.Dataset) -> str:
    (name,) = [i.TextValue for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121013"]
    return str(name)


def _algorithm_name(item: pydicom.Dataset) -> str:
    rows = _rows(item)
    return str(rows["111001"].TextValue)  # (111001, DCM, "Algorithm Name")


@pytest.mark.parametrize("probability, cured", [(0.8125, True), (0.375, True), (0.2, False)])
def test_graves_group_content(nm_source: pydicom.Dataset, tmp_path: Path, probability: float, cured: bool) -> None:
    ds = _encode(with_graves(nm_source, outcome(nm_source, probability=probability)), [nm_source])
    dx_group, graves_group = _groups(ds)
    rows = _rows(graves_group)
    assert rows["112039"].TextValue == "Cornerstone3DTools@^0.1.0:ArrowAnnotate:Thyroid AI I-131 outcome 1"  # Tracking Identifier
    assert rows["112040"].UID != _rows(dx_group)["112040"].UID  # its own tracking UID
    num = rows[thy_codes.PROBABILITY_I131_CURE.value]
    assert num.ConceptNameCodeSequence[0].CodeMeaning == "Probability of cure after I-131 therapy"
    assert num.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99THYAI"
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(probability)
    assert num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "1"
    # the measurement carries seed 001's Algorithm Identification (name and version)
    (algo,) = [i for i in num.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111001"]
    assert algo.TextValue == "nm_graves_i131"
    versions = [i.TextValue for i in num.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111003"]
    assert versions == ["0.1.0-demo"]
    assert _algorithm_name(graves_group) == "nm_graves_i131"
    assert _algorithm_name(dx_group) == "nm_thyroid_dx"
    decision = rows[thy_codes.I131_CURE.value].ConceptCodeSequence[0]
    assert (decision.CodeValue, decision.CodingSchemeDesignator) == (("373066001" if cured else "373067005"), "SCT")
    assert rows[thy_codes.DECISION_THRESHOLD.value].TextValue.startswith("0.375 ")
    assert rows[thy_codes.DISCLAIMER.value].TextValue == DISCLAIMER
    (image,) = [i for i in graves_group.ContentSequence if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == nm_source.SOPInstanceUID
    # seed 003's group is unchanged: four class probabilities, no I-131 row
    assert thy_codes.PROBABILITY_I131_CURE.value not in _rows(dx_group)
    # both arrows (OHIF ArrowAnnotate) point at their own Grad-CAM peak from opposite sides,
    # so that their labels (drawn at the tails) cannot cover each other
    assert rows["121106"].TextValue == f"DEMO I-131 cure {probability:.2f}: {'yes' if cured else 'no'}"
    (graves_arrow,) = [i for i in num.ContentSequence if i.ValueType == "SCOORD"]
    dx_num = next(i for i in dx_group.ContentSequence if i.ValueType == "NUM")
    (dx_arrow,) = [i for i in dx_num.ContentSequence if i.ValueType == "SCOORD"]
    (gx, gy), (gtx, gty) = np.reshape(graves_arrow.GraphicData, (2, 2))
    (dx, dy), (dtx, dty) = np.reshape(dx_arrow.GraphicData, (2, 2))
    assert gty > gy and dty < dy
    cols = int(nm_source.Columns)
    heat = outcome(nm_source, probability=probability).heatmap
    peak_r, peak_c = divmod(int(heat.argmax()), cols)
    assert (gx, gy) == (peak_c + 0.5, peak_r + 0.5)

    path = write(tmp_path, "sr_graves.dcm", to_bytes(ds))
    assert dciodvfy_errors(path) == []
    dump = dsrdump(path)
    assert "Probability of cure after I-131 therapy" in dump and "nm_graves_i131" in dump


def test_both_models_named(nm_source: pydicom.Dataset) -> None:
    alone = _encode(builders.results(nm_source), [nm_source])
    both = _encode(with_graves(nm_source, outcome(nm_source)), [nm_source])
    # contributing equipment: one item per model (plus highdicom's own)
    ours = [e for e in both.ContributingEquipmentSequence if e.Manufacturer == "Thyroid AI Node"]
    assert [e.ManufacturerModelName for e in ours] == ["nm_thyroid_dx", "nm_graves_i131"]
    assert "Cure after a first I-131 therapy" in ours[1].ContributionDescription
    assert "version 0.1.0-demo" in ours[1].ContributionDescription
    # the device observer names both models; without seed 001 the document is seed 003's alone
    assert _device_observer_name(both) == "nm_thyroid_dx+nm_graves_i131 0.1.0-demo"
    assert _device_observer_name(alone) == "nm_thyroid_dx 0.1.0-demo"
    assert "nm_graves_i131" not in _texts(alone)
    assert both.ManufacturerModelName == "nm_thyroid_dx+nm_graves_i131"
    assert alone.ManufacturerModelName == "nm_thyroid_dx"
    assert both.SOPInstanceUID != alone.SOPInstanceUID and both.SeriesInstanceUID != alone.SeriesInstanceUID
    assert both.SeriesDescription.startswith(DISCLAIMER)


def test_demo_marking_follows_either_model(nm_source: pydicom.Dataset) -> None:
    clinical = dataclasses.replace(
        builders.results(nm_source, model=builders.model_info(demo=False, version="1.0.0")),
        graves=(outcome(nm_source, model=graves_model(demo=False, version="1.0.0")),),
    )
    ds = _encode(clinical, [nm_source])
    assert DISCLAIMER not in ds.SeriesDescription and DISCLAIMER not in _texts(ds)
    mixed = dataclasses.replace(clinical, graves=(outcome(nm_source),))
    ds = _encode(mixed, [nm_source])
    assert ds.SeriesDescription.startswith(DISCLAIMER)
    dx_group, graves_group = _groups(ds)
    assert thy_codes.DISCLAIMER.value in _rows(graves_group)
    assert thy_codes.DISCLAIMER.value not in _rows(dx_group)


def test_deterministic(nm_source: pydicom.Dataset) -> None:
    results = with_graves(nm_source, outcome(nm_source))
    first = to_bytes(encode_nm_sr(results, [nm_source], content_datetime=CONTENT_DATETIME, software_version="1"))
    second = to_bytes(encode_nm_sr(results, [nm_source], content_datetime=CONTENT_DATETIME, software_version="1"))
    assert first == second


def test_multi_frame_and_two_images(
    nm_source: pydicom.Dataset, nm_source_2frames: pydicom.Dataset, tmp_path: Path
) -> None:
    # a second image of the same study (the two-frame one, moved into nm_source's study)
    other = nm_source_2frames.copy()
    other.StudyInstanceUID = nm_source.StudyInstanceUID
    results = NMResults(
        nm_source.StudyInstanceUID,
        diagnoses=(builders.diagnosis(nm_source), builders.diagnosis(other, frame_number=2)),
        graves=(outcome(other, frame_number=2, probability=0.1),),
    )
    ds = _encode(results, [nm_source, other])
    groups = _groups(ds)
    assert [_algorithm_name(g) for g in groups] == ["nm_thyroid_dx", "nm_thyroid_dx", "nm_graves_i131"]
    (image,) = [i for i in groups[2].ContentSequence if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert int(image.ReferencedSOPSequence[0].ReferencedFrameNumber) == 2
    assert dciodvfy_errors(write(tmp_path, "sr_graves_2.dcm", to_bytes(ds))) == []


def test_rejects_bad_graves_input(nm_source: pydicom.Dataset, nm_source_2frames: pydicom.Dataset) -> None:
    def encode(results: NMResults) -> None:
        encode_nm_sr(results, [nm_source, nm_source_2frames], content_datetime=CONTENT_DATETIME,
                     software_version=SOFTWARE_VERSION)

    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        encode(with_graves(nm_source, outcome(nm_source, probability=1.5)))
    with pytest.raises(ValueError, match="threshold"):
        encode(with_graves(nm_source, outcome(nm_source, threshold=float("nan"))))
    with pytest.raises(ValueError, match="without a diagnosis"):
        encode(with_graves(nm_source, outcome(nm_source_2frames, frame_number=1)))
    with pytest.raises(ValueError, match="two seed-001 outcomes"):
        encode(with_graves(nm_source, outcome(nm_source), outcome(nm_source, probability=0.1)))
    with pytest.raises(ValueError, match="models"):
        encode(with_graves(nm_source, outcome(nm_source), outcome(nm_source, model=graves_model(version="2"))))
