"""Seed 001's Grad-CAM secondary capture: its own UIDs and series, legend, references, dciodvfy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from tests.encode import builders
from tests.encode.builders import CONTENT_DATETIME, SOFTWARE_VERSION
from tests.encode.dicom_tools import dciodvfy_errors, from_bytes, to_bytes, write
from tests.encode.test_sr_graves import graves_model, outcome
from workers.encode.heatmap_render import LONG_SIDE
from workers.encode.sc import SC_GRAVES_SERIES_NUMBER, SC_SERIES_NUMBER, encode_graves_sc, encode_heatmap_sc
from workers.pipelines.results import GravesOutcome

DISCLAIMER = "DEMO - not for clinical use"


def _encode(result: GravesOutcome, source: pydicom.Dataset) -> pydicom.Dataset:
    sc = encode_graves_sc(result, source, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION)
    return from_bytes(to_bytes(sc))


def test_graves_sc_round_trip(nm_source: pydicom.Dataset, tmp_path: Path) -> None:
    ds = _encode(outcome(nm_source), nm_source)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.StudyInstanceUID == nm_source.StudyInstanceUID and ds.PatientID == nm_source.PatientID
    assert ds.SeriesNumber == SC_GRAVES_SERIES_NUMBER != SC_SERIES_NUMBER
    assert ds.SeriesDescription.startswith(DISCLAIMER) and "I-131" in ds.SeriesDescription
    assert ds.ManufacturerModelName == "nm_graves_i131"
    assert "nm_graves_i131" in ds.DerivationDescription
    (ref,) = ds.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == nm_source.SOPInstanceUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    (equipment,) = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "Thyroid AI Node"]
    assert equipment.ManufacturerModelName == "nm_graves_i131"
    assert equipment.ContributionDateTime.startswith("20250314092653")
    pixels = ds.pixel_array
    assert pixels.shape[1] == LONG_SIDE and pixels.shape[0] > LONG_SIDE
    assert tuple(pixels[2, 2]) == (200, 0, 0)  # the red DEMO band
    assert dciodvfy_errors(write(tmp_path, "sc_graves.dcm", to_bytes(ds))) == []


def test_uids_distinct_from_seed_003_and_deterministic(nm_source: pydicom.Dataset) -> None:
    graves = _encode(outcome(nm_source), nm_source)
    again = _encode(outcome(nm_source), nm_source)
    dx = from_bytes(to_bytes(encode_heatmap_sc(
        builders.diagnosis(nm_source), nm_source, content_datetime=CONTENT_DATETIME, software_version=SOFTWARE_VERSION
    )))
    assert to_bytes(graves) == to_bytes(again)
    assert graves.SOPInstanceUID != dx.SOPInstanceUID and graves.SeriesInstanceUID != dx.SeriesInstanceUID
    newer = _encode(outcome(nm_source, model=graves_model(version="0.2.0")), nm_source)
    assert newer.SOPInstanceUID != graves.SOPInstanceUID


def test_legend_tells_the_decision(nm_source: pydicom.Dataset) -> None:
    clinical = graves_model(demo=False, version="1.0.0")
    cured = _encode(outcome(nm_source, probability=0.9, model=clinical), nm_source).pixel_array
    not_cured = _encode(outcome(nm_source, probability=0.1, model=clinical), nm_source).pixel_array
    assert tuple(cured[2, 2]) != (200, 0, 0)  # no DEMO band
    # same frame and heatmap: the picture is identical, the legend below differs
    assert np.array_equal(cured[:LONG_SIDE], not_cured[:LONG_SIDE])
    assert not np.array_equal(cured[LONG_SIDE:], not_cured[LONG_SIDE:])
    hot = cured[LONG_SIDE // 2, round(0.45 * LONG_SIDE)].astype(int)
    assert hot[0] > hot[2] + 60  # heatmap blended in red where it peaks


def test_multi_frame_and_bad_input(nm_source: pydicom.Dataset, nm_source_2frames: pydicom.Dataset, tmp_path: Path) -> None:
    ds = _encode(outcome(nm_source_2frames, frame_number=2), nm_source_2frames)
    assert ds.SourceImageSequence[0].ReferencedFrameNumber == 2 and ds.InstanceNumber == 2
    assert dciodvfy_errors(write(tmp_path, "sc_graves_mf.dcm", to_bytes(ds))) == []
    good = outcome(nm_source)
    with pytest.raises(ValueError, match="heatmap shape"):
        _encode(dataclasses.replace(good, heatmap=np.zeros((64, 64), np.float32)), nm_source)
    with pytest.raises(ValueError, match="NaN"):
        _encode(dataclasses.replace(good, heatmap=np.full((128, 128), np.nan, np.float32)), nm_source)
    with pytest.raises(ValueError, match="names none"):
        _encode(outcome(nm_source_2frames), nm_source_2frames)
    with pytest.raises(ValueError, match="no source dataset"):
        _encode(good, nm_source_2frames)
