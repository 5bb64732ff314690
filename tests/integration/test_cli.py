"""The command line a site uses to try the node on its own files (no broker, no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from model_zoo.phantoms.nm import write_nm_study
from tests.integration.sr_read import findings, numeric_values, referenced_sop_instances
from tests.peers import dciodvfy_errors


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_check_config_names_the_failing_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("completeness: {quiet_period_s: -1}\n")
    proc = _cli("check-config", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "completeness.quiet_period_s" in proc.stderr


def test_route_dry_run(tmp_path: Path) -> None:
    write_nm_study(tmp_path / "in", "normal", seed=7001)
    proc = _cli("route", "--dry-run", str(tmp_path / "in"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rule nm-thyroid -> pipeline nm_thyroid_dx on queue nm" in proc.stdout


def test_replay_writes_valid_outputs_with_the_phantom_class(tmp_path: Path) -> None:
    from model_zoo.bundle import load_bundle
    from model_zoo.demo import ensure_demo_bundle

    codes = {lb.key: lb.code_value for lb in load_bundle(ensure_demo_bundle("nm_thyroid_dx")).card.labels}
    src = write_nm_study(tmp_path / "in", "graves", seed=7002)
    proc = _cli("replay", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    outputs = sorted((tmp_path / "out").glob("*.dcm"))
    # seed 003's SR and heatmap, and (on defaults, the image being Graves') seed 001's heatmap
    assert len(outputs) == 3
    by_modality: dict[str, list[Path]] = {}
    for p in outputs:
        by_modality.setdefault(str(dcmread(p).Modality), []).append(p)
    assert len(by_modality["OT"]) == 2
    sr = dcmread(by_modality["SR"][0])
    assert findings(sr) == [codes["graves"]]
    assert "Probability of cure after I-131 therapy" in numeric_values(sr)
    assert dcmread(src).SOPInstanceUID in referenced_sop_instances(sr)
    for path in outputs:
        assert dciodvfy_errors(path) == []


def test_models_verify_install_and_refuse_tampered(tmp_path: Path) -> None:
    import shutil

    from model_zoo.demo import ensure_demo_bundle

    demo = ensure_demo_bundle("nm_thyroid_dx")
    cfg = tmp_path / "node.yaml"
    cfg.write_text("data_dir: var\nmodels: {nm_thyroid_dx: demo}\n")
    listed = _cli("models", "list", "--config", str(cfg), cwd=tmp_path)
    assert listed.returncode == 0 and "OK   nm_thyroid_dx: 0.1.0-demo  DEMO" in listed.stdout
    installed = _cli("models", "install", str(demo), "--config", str(cfg), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    target = tmp_path / "var" / "bundles" / "nm_thyroid_dx-0.1.0-demo"
    assert (target / "models" / "model.pt").is_file()
    again = _cli("models", "install", str(demo), "--config", str(cfg), cwd=tmp_path)
    assert again.returncode == 1 and "already installed" in again.stderr

    tampered = tmp_path / "tampered"
    shutil.copytree(demo, tampered)
    with open(tampered / "models" / "model.pt", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    bad = _cli("models", "verify", str(tampered), "--config", str(cfg), cwd=tmp_path)
    assert bad.returncode == 1 and "models/model.pt sha256 mismatch" in bad.stdout
    refused = _cli("models", "install", str(tampered), "--config", str(cfg), "--force", cwd=tmp_path)
    assert refused.returncode == 1 and "sha256 mismatch" in refused.stderr
