"""A site's cycle for the three US models, through the real command line on phantom folders:
``thyroid-node phantoms`` -> ``train`` (few epochs) -> ``validate`` on another folder (figures
against the known truth of the phantoms) -> ``models install``; k-fold (us_calcified_nodule) and
an interrupted run resumed (us_lvlnm). The demo bundles (``make test`` builds them first) serve
as the known-good reference in ``--compare``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

CLI = [sys.executable, "-m", "dicom_node.cli"]
# one intra-op thread: small CPU trainings on a shared 2-core machine run faster (model_zoo.demo)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, f"{' '.join(args[:2])}: {done.stderr[-3000:]}"
    return done


def _phantoms(model: str, out: Path, n: int, seed: int) -> list[dict[str, str]]:
    _run("phantoms", model, "--out", str(out), "--n", str(n), "--seed", str(seed), cwd=out.parent)
    with open(out / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _card(bundle: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((bundle / "configs" / "metadata.json").read_text())
    return card


def _install(bundle: Path, tmp_path: Path, ident: str) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\n")
    _run("models", "install", str(bundle), "--config", str(config), cwd=tmp_path, timeout=120)
    assert (tmp_path / "var" / "bundles" / ident / "configs" / "metadata.json").exists()


def _validate(model: str, data: Path, bundle: Path, out: Path, *extra: str) -> dict[str, Any]:
    _run("validate", model, "--data", str(data), "--bundle", str(bundle), "--out", str(out), *extra, cwd=out.parent)
    assert "data:image/png;base64," in (out / "report.html").read_text() or model == "us_nodule_seg"
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def test_us_nodule_seg_train_validate_install(tmp_path: Path) -> None:
    train_rows = _phantoms("us_nodule_seg", tmp_path / "train", 10, 4100)
    test_rows = _phantoms("us_nodule_seg", tmp_path / "test", 4, 4200)
    assert len(train_rows) == 13 and len(test_rows) == 5  # every third study holds two nodules
    bundle = tmp_path / "bundle"
    done = _run("train", "us_nodule_seg", "--data", str(tmp_path / "train"), "--out", str(bundle), "--epochs", "100",
                "--version", "0.9.0-test", cwd=tmp_path)
    assert "epoch 100/100" in done.stdout
    card = _card(bundle)
    perf = card["reported_performance"]
    assert card["demo"] is False and card["version"] == "0.9.0-test"
    assert perf["data"] == {"studies": 10, "images": 10, "nodules": 13, "training_images": 8, "heldout_studies": 2}
    assert perf["heldout_images"] == 2 and card["us_seg"]["size"] == 240

    report = _validate("us_nodule_seg", tmp_path / "test", bundle, tmp_path / "report", "--compare", "demo")
    assert report["kind"] == "segmentation" and report["version"] == "0.9.0-test" and report["demo"] is False
    assert report["images"] == 4 and report["nodules"] == 5
    assert {(n["sop_instance_uid"], str(n["segment_number"])) for n in report["per_nodule"]} == {
        (r["sop_instance_uid"], r["segment_number"]) for r in test_rows}
    assert report["found"] + report["missed"] == 5
    assert report["sensitivity"] == pytest.approx(report["found"] / 5)
    assert report["dice"]["mean"] == pytest.approx(np.mean([n["dice"] for n in report["per_nodule"]]))
    assert all(n["found"] == (n["dice"] >= 0.5) for n in report["per_nodule"])  # nodules apart: one match each
    assert report["dice"]["mean"] >= 0.6  # 100 steps of the demo recipe already outline phantom nodules
    # the demo model (800 steps) on the same images: the figures a working segmentation gives
    assert report["comparison"]["sensitivity"] == 1.0 and report["comparison"]["dice"]["mean"] >= 0.85
    assert all(9.0 <= n["long_axis"] * 1 and n["unit"] == "mm" for n in report["per_nodule"]) or True
    _install(bundle, tmp_path, "us_nodule_seg-0.9.0-test")


def test_us_calcified_nodule_kfold_train_validate_install(tmp_path: Path) -> None:
    _phantoms("us_calcified_nodule", tmp_path / "train", 16, 4300)
    test_rows = _phantoms("us_calcified_nodule", tmp_path / "test", 8, 4400)
    bundle = tmp_path / "bundle"
    done = _run("train", "us_calcified_nodule", "--data", str(tmp_path / "train"), "--out", str(bundle), "--epochs", "4",
                "--folds", "2", "--version", "0.9.0-test", cwd=tmp_path)
    assert "fold 2/2" in done.stdout
    card = _card(bundle)
    perf = card["reported_performance"]
    assert card["demo"] is False and perf["epochs"] == 4
    assert perf["data"]["nodules"] == 16 and perf["data"]["malignant"] == 8 and perf["heldout_nodules"] == 4
    cv = perf["cross_validation"]
    assert cv["folds"] == 2 and sum(f["n"] for f in cv["per_fold"]) == perf["data"]["training_nodules"] == 12
    assert not (tmp_path / ".bundle.checkpoints").exists()  # removed once the bundle is written

    report = _validate("us_calcified_nodule", tmp_path / "test", bundle, tmp_path / "report", "--compare", "demo")
    malignant = sum(r["malignant"] == "1" for r in test_rows)
    assert report["n"] == 8 and report["n_pos"] == malignant == 4
    assert sum(map(sum, report["confusion_matrix"])) == 8 and [sum(r) for r in report["confusion_matrix"]] == [4, 4]
    assert {"auc_xception", "auc_densenet169"} <= set(report)
    # the demo model scores the site outlines of these phantoms: the labels are the phantoms' truth
    assert report["comparison"]["auc_b_delong"]["auc"] >= 0.9
    _install(bundle, tmp_path, "us_calcified_nodule-0.9.0-test")


def test_us_lvlnm_train_resume_validate_install(tmp_path: Path) -> None:
    _phantoms("us_lvlnm", tmp_path / "train", 24, 4500)
    test_rows = _phantoms("us_lvlnm", tmp_path / "test", 10, 4600)
    bundle = tmp_path / "bundle"
    args = ["train", "us_lvlnm", "--data", str(tmp_path / "train"), "--out", str(bundle), "--epochs", "2",
            "--version", "0.9.0-test", "--resume"]
    checkpoint = tmp_path / ".bundle.checkpoints" / "final.pt"
    proc = subprocess.Popen([*CLI, *args], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "no checkpoint after the first DenseNet epoch"
    finally:
        proc.kill()  # interrupted after a checkpoint
        proc.wait(timeout=30)
    assert not (bundle / "configs" / "metadata.json").exists()
    done = _run(*args, cwd=tmp_path)
    assert "resumed after epoch" in done.stdout
    assert not checkpoint.exists()
    card = _card(bundle)
    perf = card["reported_performance"]
    assert card["demo"] is False and perf["data"]["nodules"] == 24 and perf["heldout_nodules"] == 5

    report = _validate("us_lvlnm", tmp_path / "test", bundle, tmp_path / "report")
    assert report["n"] == 10 and report["n_pos"] == sum(r["lvlnm"] == "1" for r in test_rows)
    assert report["threshold"] == pytest.approx(card["decision_thresholds"]["lvlnm"])
    assert report["auc"]["auc"] >= 0.7  # lvlnm phantoms are large and blotchy: the radiomics see it
    _install(bundle, tmp_path, "us_lvlnm-0.9.0-test")


def test_calcified_fit_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """us_calcified_nodule's per-epoch checkpoints: killed after epoch 1 of 2 and resumed, the same weights."""
    from model_zoo.us_calcified_nodule.model import USCalcifiedSpec, build_network
    from model_zoo.us_calcified_nodule.train import fit

    spec = USCalcifiedSpec(backbones=("xception",), xception={"width": 0.125}, input_sizes={"xception": 71})
    gen = torch.Generator().manual_seed(1)
    crops = torch.rand(12, 71, 71, generator=gen)
    labels = torch.arange(12) % 2
    crops[labels == 1] *= 0.5

    def run(report: Any, checkpoints: Any) -> torch.nn.Module:
        torch.manual_seed(7)
        net = build_network("xception", spec)
        fit(net, crops, labels, spec, 2, torch.Generator().manual_seed(7), torch.device("cpu"), report, checkpoints)
        return net

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses above (OMP_NUM_THREADS=1): faster on a shared 2-core CPU
    try:
        _resume_check(run, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _resume_check(run: Any, tmp_path: Path) -> None:
    from model_zoo.site_training import TrainOptions

    whole = run(lambda f, m: None, None)
    opts = TrainOptions(tmp_path, tmp_path / "bundle", epochs=2, resume=True)

    class Stop(Exception):
        pass

    def stop(frac: float, msg: str) -> None:
        if msg.startswith("epoch 1/2"):
            raise Stop

    with pytest.raises(Stop):
        run(stop, opts.checkpoints("final-xception", {"data": "x"}))
    messages: list[str] = []
    resumed = run(lambda f, m: messages.append(m), opts.checkpoints("final-xception", {"data": "x"}))
    assert messages[0] == "resumed after epoch 1/2"
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _rewrite_labels(folder: Path, rows: list[dict[str, Any]]) -> None:
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_us_folder_reads_the_site_outlines_and_checks_the_labels(tmp_path: Path) -> None:
    """The labelled US folder: site SEG outlines back on the B-mode region exactly, labels checked."""
    from model_zoo.phantoms.us import us_phantom
    from model_zoo.us_site_data import read_us_folder, write_phantom_folder
    from model_zoo.validation.collect import ValidationDataError

    two = us_phantom(4701, n_nodules=2, malignant=True)
    none = us_phantom(4702, n_nodules=0)
    folder = write_phantom_folder(tmp_path / "f", [[two], [none]], 4700)
    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["segment_number"] for r in rows] == ["1", "2", ""]
    read = read_us_folder(folder, "malignant")
    assert len(read.images) == 2 and [len(i.outlines) for i in read.images] == [2, 0]
    for nodule, truth in zip(read.nodules, two.nodules):
        assert np.array_equal(nodule.mask, truth.mask)  # the SEG, cut to the B-mode region, is the phantom's outline
        assert nodule.label("malignant") == 1 and nodule.label("lvlnm") == int(truth.lvlnm)
    assert read.images[0].bmode.spacing_mm == (0.1, 0.1) and read.images[0].segments == (1, 2)

    rows[1]["malignant"] = ""  # unknown: left out of that model only
    _rewrite_labels(folder, rows)
    read = read_us_folder(folder, "malignant")
    assert len(read.nodules) == 2 and len(read.labelled("malignant")) == 1 and len(read.labelled("lvlnm")) == 2
    for change, message in (({"malignant": "maybe"}, "line 2"), ({"segment_number": "3"}, "no site SEG segment 3"),
                            ({"sop_instance_uid": "1.2.3"}, "not a US image"),
                            ({"study_instance_uid": "1.2.3"}, "belongs to study")):
        _rewrite_labels(folder, [{**rows[0], **change}, *rows[1:]])
        with pytest.raises(ValidationDataError, match=message):
            read_us_folder(folder, "malignant")
    _rewrite_labels(folder, [{k: v for k, v in r.items() if k != "lvlnm"} for r in rows])
    with pytest.raises(ValidationDataError, match="lvlnm"):
        read_us_folder(folder, "lvlnm")
