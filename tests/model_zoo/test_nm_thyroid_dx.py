"""End to end on the cached demo bundle (built once into the shared cache)."""

from __future__ import annotations

import numpy as np
import pytest

from model_zoo.bundle import Bundle
from model_zoo.errors import InputRejected
from model_zoo.nm_thyroid_dx import NMThyroidDx
from model_zoo.phantoms import NM_LABELS, nm_phantom_dataset

HELD_OUT_SEEDS = range(900_001, 900_006)  # nm_phantom_dataset seeds; training used other streams


@pytest.fixture(scope="module")
def model(demo_bundle: Bundle) -> NMThyroidDx:
    return NMThyroidDx.from_bundle(demo_bundle, device="cpu")


def test_demo_card(demo_bundle: Bundle) -> None:
    card = demo_bundle.card
    assert card.demo and card.version == "0.1.0-demo" and "not for clinical use" in card.intended_use.lower()
    assert card.input.size == 128
    assert card.reported_performance["heldout_phantom_accuracy"] >= 0.95


def test_classifies_held_out_phantoms(model: NMThyroidDx) -> None:
    correct, wrong = 0, []
    for label in NM_LABELS:
        for seed in HELD_OUT_SEEDS:
            pred = model.predict(nm_phantom_dataset(label, seed))
            if pred.label == label:
                correct += 1
            else:
                wrong.append((label, seed, pred.label))
    assert correct >= 19, wrong


def test_prediction_fields(model: NMThyroidDx) -> None:
    ds = nm_phantom_dataset("thyroid_tumour", 900_100, frames=2)
    pred = model.predict(ds)
    assert pred.frame_index == 0 and "anterior" in pred.frame_choice
    assert list(pred.probabilities) == list(NM_LABELS)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.label == max(pred.probabilities, key=pred.probabilities.__getitem__)
    assert pred.heatmap.shape == (128, 128) and pred.heatmap.dtype == np.float32
    assert 0.0 <= pred.heatmap.min() and pred.heatmap.max() <= 1.0
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.net.modules())
    assert hooks == 0


def test_heatmap_follows_the_source_matrix(model: NMThyroidDx) -> None:
    pred = model.predict(nm_phantom_dataset("graves", 900_200, matrix=256))
    assert pred.heatmap.shape == (256, 256)


def test_rejects_non_nm(model: NMThyroidDx) -> None:
    ds = nm_phantom_dataset("normal", 900_300)
    ds.Modality = "US"
    with pytest.raises(InputRejected):
        model.predict(ds)
