from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_zoo.bundle import CARD_PATH, load_bundle, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.errors import BundleError
from model_zoo.nm_thyroid_dx.labels import NM_THYROID_LABELS


def _write_bundle(root: Path, payload: bytes = b"weights") -> Path:
    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("# test\n")
    weights = root / "models" / "model.pt"
    weights.write_bytes(payload)
    card = ModelCard(
        name="nm_thyroid_dx",
        version="0.1.0-demo",
        title="t",
        demo=True,
        intended_use="tests only",
        population="none",
        modality="NM",
        input=InputSpec(size=64, channels=1, normalisation="n"),
        labels=list(NM_THYROID_LABELS),
        decision_thresholds={"graves": 0.5},
        weights=[WeightsFile(path="models/model.pt", sha256=sha256_file(weights))],
        training_data="none",
        reported_performance={},
    )
    (root / CARD_PATH).write_text(json.dumps(card.model_dump(mode="json")))
    return root


def test_valid_bundle_loads(tmp_path: Path) -> None:
    bundle = load_bundle(_write_bundle(tmp_path / "b"))
    assert bundle.card.ident == "nm_thyroid_dx 0.1.0-demo"
    assert bundle.card.label_keys == ["graves", "subacute_thyroiditis", "thyroid_tumour", "normal"]
    assert bundle.weights_path() == tmp_path / "b" / "models" / "model.pt"


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "b")
    (root / "models" / "model.pt").write_bytes(b"weightz")
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    msg = str(info.value)
    assert "nm_thyroid_dx 0.1.0-demo" in msg and "models/model.pt" in msg and "sha256" in msg


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "b")
    (root / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match="models/model.pt missing"):
        load_bundle(root)


@pytest.mark.parametrize("field", ["intended_use", "weights", "labels", "input"])
def test_card_missing_a_field_is_refused_naming_it(tmp_path: Path, field: str) -> None:
    root = _write_bundle(tmp_path / "b")
    raw = json.loads((root / CARD_PATH).read_text())
    del raw[field]
    (root / CARD_PATH).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=field):
        load_bundle(root)


def test_card_rejects_bad_values(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "b")
    raw = json.loads((root / CARD_PATH).read_text())
    raw["decision_thresholds"] = {"goitre": 0.5}
    raw["weights"][0]["path"] = "../outside.pt"
    (root / CARD_PATH).write_text(json.dumps(raw))
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    assert "weights.0.path" in str(info.value)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="metadata.json not found"):
        load_bundle(tmp_path / "empty")
