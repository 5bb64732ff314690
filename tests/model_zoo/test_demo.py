"""ensure_demo_bundle's caching, locking and atomic publication, with a stand-in builder."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import model_zoo.demo as demo
from model_zoo.bundle import load_bundle, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.errors import BundleError
from model_zoo.nm_thyroid_dx.labels import NM_THYROID_LABELS


def _fake_build(calls: list[Path]) -> demo.ProgressFn:
    def build(name: str, tmp: Path, progress: demo.ProgressFn | None) -> None:
        calls.append(tmp)
        for sub in ("models", "configs", "docs"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "docs" / "README.md").write_text("# fake\n")
        (tmp / "models" / "model.pt").write_bytes(b"fake weights")
        card = ModelCard(
            name=name, version="0.1.0-demo", title="fake", demo=True, intended_use="tests",
            population="none", modality="NM", input=InputSpec(size=64, channels=1, normalisation="n"),
            labels=list(NM_THYROID_LABELS), decision_thresholds={},
            weights=[WeightsFile(path="models/model.pt", sha256=sha256_file(tmp / "models" / "model.pt"))],
            training_data="none", reported_performance={},
        )
        (tmp / "configs" / "metadata.json").write_text(json.dumps(card.model_dump(mode="json")))
        if progress is not None:
            progress(1.0, "done")

    return build  # type: ignore[return-value]


def test_cache_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("THYROID_NODE_CACHE", str(tmp_path))
    assert demo.cache_root() == tmp_path
    monkeypatch.delenv("THYROID_NODE_CACHE")
    assert demo.cache_root() == Path.home() / ".cache" / "thyroid-node"


def test_built_once_cached_and_rebuilt_when_tampered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(demo, "_build", _fake_build(calls))
    path = demo.ensure_demo_bundle("nm_thyroid_dx", root=tmp_path)
    assert path == tmp_path / "bundles" / "nm_thyroid_dx-demo"
    assert (load_bundle(path).card.model_extra or {})["demo_recipe"] == demo.demo_recipe("nm_thyroid_dx")
    assert demo.ensure_demo_bundle("nm_thyroid_dx", root=tmp_path) == path
    assert len(calls) == 1
    (path / "models" / "model.pt").write_bytes(b"tampered")
    demo.ensure_demo_bundle("nm_thyroid_dx", root=tmp_path)
    assert len(calls) == 2
    load_bundle(path)
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == [".nm_thyroid_dx-demo.lock", "nm_thyroid_dx-demo"]


def test_concurrent_callers_build_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(demo, "_build", _fake_build(calls))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(demo.ensure_demo_bundle("nm_thyroid_dx", root=tmp_path)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 4


def test_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(BundleError):
        demo.ensure_demo_bundle("us_nothing", root=tmp_path)
