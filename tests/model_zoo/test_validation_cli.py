"""`thyroid-node validate` on labelled phantom folders: the report's figures against the labels."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from model_zoo.phantoms.ct import PhantomNodule
from model_zoo.phantoms.ct_dicom import write_ct_study
from model_zoo.phantoms.nm import write_nm_study

NM_LABELS = ("graves", "subacute_thyroiditis", "thyroid_tumour", "normal")


def _validate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", "validate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_nm_report_matches_the_labels(tmp_path: Path) -> None:
    data = tmp_path / "nm"
    rows = []
    for i, label in enumerate(NM_LABELS * 3):
        path = write_nm_study(data / f"s{i}", label, seed=5300 + i)
        rows.append({"study_instance_uid": str(dcmread(path).StudyInstanceUID), "label": label})
    with open(data / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["study_instance_uid", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "report"
    done = _validate("nm_thyroid_dx", "--data", str(data), "--bundle", "demo", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    matrix = report["confusion_matrix"]
    assert sum(map(sum, matrix)) == 12 and [sum(r) for r in matrix] == [3, 3, 3, 3]  # rows: truth
    assert report["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(4)) / 12)
    assert report["accuracy"] >= 0.75  # the demo model on phantoms of unseen seeds
    html = (out / "report.html").read_text()
    assert "nm_thyroid_dx" in html and "data:image/png;base64," in html


def test_ct_report_and_bundle_comparison(tmp_path: Path) -> None:
    data = tmp_path / "ct"
    nodules = [
        (PhantomNodule((-45.0, 5.0, 10.0), 10.0, True, "right"), PhantomNodule((48.0, 12.0, -12.0), 7.0, False, "left")),
        (PhantomNodule((-40.0, 0.0, -10.0), 8.0, False, "right"), PhantomNodule((45.0, 10.0, 12.0), 12.0, True, "left")),
    ]
    rows = []
    for i, lesions in enumerate(nodules):
        study = write_ct_study(data / f"s{i}", 6200 + i, rows=192, slices=56, pixel_mm=1.0, slice_mm=1.5, nodules=lesions)
        for n in lesions:
            x, y, z = n.centre_mm
            rows.append({"study_instance_uid": study.study_instance_uid, "x_mm": x, "y_mm": y, "z_mm": z,
                         "diameter_mm": n.diameter_mm, "refractory": int(n.refractory)})
    rows.append({"study_instance_uid": rows[0]["study_instance_uid"], "x_mm": 40.0, "y_mm": -20.0, "z_mm": 30.0,
                 "diameter_mm": 6.0, "refractory": 0})  # labelled, but not in the images: missed
    with open(data / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "report"
    done = _validate("ct_lung_met_rai", "--data", str(data), "--bundle", "demo", "--compare", "demo", "--out", str(out),
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["detection"]["labelled"] == 5 and report["detection"]["found"] == 4
    assert report["detection"]["missed"] == 1
    assert report["auc"]["auc"] == pytest.approx(1.0)  # dense vs part-solid phantoms are separable
    assert report["comparison"]["p_value"] == pytest.approx(1.0)  # the same bundle against itself


def test_bad_labels_file_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "nm"
    write_nm_study(data, "graves", seed=5400)
    (data / "labels.csv").write_text("study,diagnosis\n1.2.3,graves\n")
    done = _validate("nm_thyroid_dx", "--data", str(data), "--bundle", "demo", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert done.returncode == 1 and "labels.csv" in done.stderr and "study_instance_uid" in done.stderr


def _nm_folder(root: Path, per_class: int, seed: int) -> Path:
    rows = []
    for i, label in enumerate(NM_LABELS * per_class):
        path = write_nm_study(root / f"s{i}", label, seed=seed + i)
        rows.append({"study_instance_uid": str(dcmread(path).StudyInstanceUID), "label": label})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["study_instance_uid", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_train_then_validate_then_install(tmp_path: Path) -> None:
    """A site's cycle: train on its labelled folder, validate on another, install the bundle."""
    train_dir = _nm_folder(tmp_path / "train", 5, 5500)
    test_dir = _nm_folder(tmp_path / "test", 2, 5600)
    bundle = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "dicom_node.cli"]
    done = subprocess.run([*cmd, "train", "nm_thyroid_dx", "--data", str(train_dir), "--out", str(bundle),
                           "--epochs", "1", "--version", "0.9.0-test"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[" in done.stdout and "%]" in done.stdout  # progress shown
    card = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert card["version"] == "0.9.0-test" and card["demo"] is False
    assert card["reported_performance"]["heldout_n"] == 4  # 20% of 5 studies per class, by study
    out = tmp_path / "report"
    done = _validate("nm_thyroid_dx", "--data", str(test_dir), "--bundle", str(bundle), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["version"] == "0.9.0-test" and sum(map(sum, report["confusion_matrix"])) == 8
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\n")
    done = subprocess.run([*cmd, "models", "install", str(bundle), "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "var" / "bundles" / "nm_thyroid_dx-0.9.0-test" / "configs" / "metadata.json").exists()


def test_train_refuses_an_unknown_model(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dicom_node.cli", "train", "thyroid_magic", "--data", str(tmp_path),
                           "--out", str(tmp_path / "b")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "nm_thyroid_dx" in done.stderr and "us_lvlnm" in done.stderr


def test_graves_i131_report_matches_the_labels(tmp_path: Path) -> None:
    from model_zoo.phantoms.nm_graves import graves_case, write_graves_study

    data = tmp_path / "graves"
    rows = []
    seed = 7700
    for cured in (True, False) * 5:
        while graves_case(seed, cured).noisy:  # a label the phantom's noise flipped is no ground truth
            seed += 1
        path = write_graves_study(data / f"s{seed}", seed, cured)
        rows.append({"study_instance_uid": str(dcmread(path).StudyInstanceUID), "cured": int(cured)})
        seed += 1
    with open(data / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["study_instance_uid", "cured"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "report"
    done = _validate("nm_graves_i131", "--data", str(data), "--bundle", "demo", "--compare", "demo",
                     "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    assert tn + fp == 5 and fn + tp == 5  # rows: truth
    assert report["accuracy"] == pytest.approx((tn + tp) / 10)
    assert report["accuracy"] >= 0.7 and report["auc"]["auc"] >= 0.8  # demo model, unseen phantoms
    assert report["comparison"]["p_value"] == pytest.approx(1.0)  # a bundle against itself


def test_ct_with_no_lesion_found_is_a_clear_error(tmp_path: Path) -> None:
    """Labelled lesions the model does not find: detection figures in a clear message, not a traceback."""
    data = tmp_path / "ct"
    study = write_ct_study(data / "s0", 6300, rows=192, slices=56, pixel_mm=1.0, slice_mm=1.5, nodules=())
    with open(data / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["study_instance_uid", "x_mm", "y_mm", "z_mm", "diameter_mm", "refractory"])
        writer.writeheader()
        writer.writerow({"study_instance_uid": study.study_instance_uid, "x_mm": -45.0, "y_mm": 5.0, "z_mm": 10.0,
                         "diameter_mm": 9.0, "refractory": 1})
    done = _validate("ct_lung_met_rai", "--data", str(data), "--bundle", "demo", "--out", str(tmp_path / "r"),
                     cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "no prediction" in done.stderr and '"missed": 1' in done.stderr
