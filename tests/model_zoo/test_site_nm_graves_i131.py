"""Site training of nm_graves_i131 (seed 001) through the real CLI, on labelled phantom folders:
phantoms -> train -> validate -> models install; k-fold cross-validation; resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "dicom_node.cli"]
# one intra-op thread: small-batch CPU training on shared 2-core machines (as the demo builds), and
# bit-identical results between runs
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EPOCHS = "3"
TRAIN_N, TEST_N = 56, 10  # 56: 44 training studies, so that each of 3 folds trains on ~29 (LASSO keeps 16)


def _cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def _card(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("graves_site")
    for name, n, seed in (("train", TRAIN_N, 7000), ("test", TEST_N, 8000)):
        done = _cli("phantoms", "nm_graves_i131", "--out", str(root / name), "--n", str(n), "--seed", str(seed),
                    cwd=root, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return root / "train", root / "test"


@pytest.fixture(scope="module")
def trained(folders: tuple[Path, Path]) -> Path:
    """The bundle of an uninterrupted run (also the reference for the resumed one)."""
    train_dir, _ = folders
    bundle = train_dir.parent / "bundle"
    done = _cli("train", "nm_graves_i131", "--data", str(train_dir), "--out", str(bundle), "--epochs", EPOCHS,
                "--version", "0.9.0-test", cwd=train_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[" in done.stdout and "%]" in done.stdout and f"ResNet50 epoch {EPOCHS}/{EPOCHS}" in done.stdout
    assert not (train_dir.parent / ".bundle.checkpoints").exists()  # removed once the bundle is written
    return bundle


def test_phantom_folder_is_balanced(folders: tuple[Path, Path]) -> None:
    with open(folders[1] / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["cured"]) for r in rows] == [0, 1] * (TEST_N // 2)
    assert len({r["study_instance_uid"] for r in rows}) == TEST_N
    assert len([p for p in folders[1].rglob("*.dcm")]) == TEST_N


def test_train_then_validate_then_install(folders: tuple[Path, Path], trained: Path, tmp_path: Path) -> None:
    """A site's cycle: train on its labelled folder, validate on another, install the bundle."""
    card = _card(trained)
    perf = card["reported_performance"]
    assert card["version"] == "0.9.0-test" and card["demo"] is False and card["name"] == "nm_graves_i131"
    assert perf["heldout_n"] == 12 and perf["training_n"] == 44  # round(20% of 28) per outcome, by study
    assert perf["lasso_nonzero"] >= card["nm_graves"]["n_features"] == 16
    assert 0.0 < card["decision_thresholds"]["cured"] < 1.0
    assert "cross_validation" not in perf

    out = tmp_path / "report"
    done = _cli("validate", "nm_graves_i131", "--data", str(folders[1]), "--bundle", str(trained), "--out", str(out),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["version"] == "0.9.0-test"
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    assert tn + fp == TEST_N // 2 and fn + tp == TEST_N // 2  # rows: truth; every study scored
    assert report["accuracy"] == pytest.approx((tn + tp) / TEST_N)
    # gland size decides the phantoms' outcome: even 3 epochs on 44 studies rank unseen ones well
    assert report["auc"]["auc"] >= 0.75

    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\n")
    done = _cli("models", "install", str(trained), "--config", str(config), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    installed = tmp_path / "var" / "bundles" / "nm_graves_i131-0.9.0-test"
    assert _card(installed)["weights"] == card["weights"]


def test_kfold_cross_validation_is_in_the_card(folders: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    done = _cli("train", "nm_graves_i131", "--data", str(folders[0]), "--out", str(bundle), "--epochs", "1",
                "--folds", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cv = _card(bundle)["reported_performance"]["cross_validation"]
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    assert sum(fold["n"] for fold in cv["per_fold"]) == 44  # the training part, each study in one fold
    for fold in cv["per_fold"]:
        assert 0.0 <= fold["accuracy"] <= 1.0 and 0.0 <= fold["auc"] <= 1.0
    assert cv["auc_mean"] == pytest.approx(sum(f["auc"] for f in cv["per_fold"]) / 3, abs=1e-4)
    assert "fold 3/3" in done.stdout


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no {path.name} after {seconds:.0f} s"
        time.sleep(0.02)


def _start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    out, err = cwd / f"out-{time.monotonic_ns()}.txt", cwd / f"err-{time.monotonic_ns()}.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=ENV, stdout=fo, stderr=fe, text=True)
    return proc, out, err


def test_resume_continues_from_the_checkpoint(folders: tuple[Path, Path], trained: Path, tmp_path: Path) -> None:
    """Killed after its first epoch, a run resumed with --resume continues (and ends where an
    uninterrupted run ends); with a changed dataset the checkpoint is not used."""
    train_dir = folders[0]
    bundle = tmp_path / "bundle"
    ckpt = tmp_path / ".bundle.checkpoints" / "final.pt"
    args = ["train", "nm_graves_i131", "--data", str(train_dir), "--out", str(bundle), "--epochs", EPOCHS,
            "--version", "0.9.0-test"]
    proc, _, _ = _start(args, tmp_path)
    try:
        _wait_for(ckpt, proc, 300)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (bundle / "configs" / "metadata.json").exists()
    saved = tmp_path / "saved-checkpoints"
    shutil.copytree(ckpt.parent, saved)

    done = _cli(*args, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = [line for line in done.stdout.splitlines() if "ResNet50 resumed after epoch" in line]
    assert len(resumed) == 1, done.stdout[-3000:]
    n = int(resumed[0].split("after epoch ")[1].split("/")[0])
    assert 1 <= n <= int(EPOCHS)
    for epoch in range(1, int(EPOCHS) + 1):  # epochs up to n not trained again, the others trained
        assert (f"ResNet50 epoch {epoch}/{EPOCHS}:" in done.stdout) == (epoch > n)
    # the same network, optimiser, schedule and random stream as the uninterrupted run
    assert (bundle / "models" / "resnet50.pt").read_bytes() == (trained / "models" / "resnet50.pt").read_bytes()
    assert _card(bundle)["reported_performance"]["heldout_auc"] == _card(trained)["reported_performance"]["heldout_auc"]

    changed = tmp_path / "changed"
    shutil.copytree(train_dir, changed)
    with open(changed / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["cured"] = str(1 - int(rows[0]["cured"]))  # one study relabelled
    with open(changed / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    shutil.copytree(saved, ckpt.parent)
    args[args.index(str(train_dir))] = str(changed)
    proc, out, err = _start([*args, "--resume"], tmp_path)
    try:
        deadline = time.monotonic() + 300
        while f"ResNet50 epoch 1/{EPOCHS}:" not in out.read_text():  # trained from its first epoch
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "no first epoch"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert "resumed" not in out.read_text()
    assert "starting this stage afresh" in err.read_text()
