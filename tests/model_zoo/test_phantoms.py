from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model_zoo.phantoms import NM_LABELS, make_nm_image, nm_phantom_dataset, write_nm_study


def _gland_stats(label: str, seeds: range) -> tuple[float, float]:
    """Mean gland area (pixels over half the 99.5th percentile) and gland/background ratio."""
    areas, ratios = [], []
    for s in seeds:
        img = make_nm_image(label, np.random.default_rng(s)).astype(np.float64)
        peak = np.percentile(img, 99.5)
        areas.append(float((img > 0.5 * peak).sum()))
        ratios.append(peak / max(1.0, float(np.median(img[img > 0]))))
    return float(np.mean(areas)), float(np.mean(ratios))


@pytest.mark.parametrize("label", NM_LABELS)
def test_image_shape_dtype_determinism(label: str) -> None:
    a = make_nm_image(label, np.random.default_rng(7))
    b = make_nm_image(label, np.random.default_rng(7))
    c = make_nm_image(label, np.random.default_rng(8))
    assert a.shape == (128, 128) and a.dtype == np.uint16
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.max() > 0
    assert make_nm_image(label, np.random.default_rng(7), matrix=64).shape == (64, 64)


def test_unknown_label() -> None:
    with pytest.raises(ValueError):
        make_nm_image("goitre", np.random.default_rng(0))


def test_class_patterns() -> None:
    seeds = range(12)
    graves_area, graves_ratio = _gland_stats("graves", seeds)
    normal_area, normal_ratio = _gland_stats("normal", seeds)
    _, subacute_ratio = _gland_stats("subacute_thyroiditis", seeds)
    assert graves_area > 1.5 * normal_area  # enlarged gland
    assert graves_ratio > 2 * normal_ratio  # intense uptake against a faint background
    assert subacute_ratio < normal_ratio / 2  # reduced uptake: gland barely above background


def test_dataset_is_deterministic_and_carries_no_label() -> None:
    a = nm_phantom_dataset("graves", 11)
    b = nm_phantom_dataset("graves", 11)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID
    assert a.PixelData == b.PixelData
    assert nm_phantom_dataset("normal", 11).SOPInstanceUID != a.SOPInstanceUID
    multi = nm_phantom_dataset("graves", 11, frames=2)
    assert multi.StudyInstanceUID == a.StudyInstanceUID and multi.SOPInstanceUID != a.SOPInstanceUID
    assert a.PatientID.startswith("PHANTOM-") and str(a.PatientName).startswith("PHANTOM^")
    text = str(a).lower()
    assert "graves" not in text
    assert a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.20" and a.Modality == "NM"
    assert a.pixel_array.shape == (128, 128)


def test_given_uids_and_identity_are_used() -> None:
    ds = nm_phantom_dataset(
        "normal", 3, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5", patient_id="X1", patient_name="TEST^ONE",
    )
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == ("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert ds.PatientID == "X1" and str(ds.PatientName) == "TEST^ONE"


@pytest.mark.parametrize("kw", [{}, {"frames": 2}, {"frames": 4}, {"frames": 3, "dynamic": True}])
def test_written_file_reads_back_and_passes_dciodvfy(tmp_path: Path, kw: dict[str, object]) -> None:
    path = write_nm_study(tmp_path, "thyroid_tumour", 5, **kw)
    ds = pydicom.dcmread(path)
    assert path.name == f"{ds.SOPInstanceUID}.dcm"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert int(ds.NumberOfFrames) == kw.get("frames", 1)
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy not installed (make peers installs dicom3tools)")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
