"""us_calcified_nodule (seed 004): bundle, crop, prediction, heatmap, backbone choice."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model_zoo.bundle import CARD_PATH, DOCS_PATH, Bundle, load_bundle
from model_zoo import demo as demo_module
from model_zoo.errors import BundleError, InputRejected
from model_zoo.nets.xception import Xception
from model_zoo.phantoms.us import USPhantom, training_set, us_phantom
from model_zoo.us_calcified_nodule.model import (
    USCalcifiedNodule,
    USCalcifiedSpec,
    crop_input,
    nodule_box,
    to_network,
    us_spec,
)
from model_zoo.us_calcified_nodule.train import DEMO_RECIPE, recalibrate_batchnorm, train

TINY: dict[str, dict[str, Any]] = {"xception": {"width": 0.125}, "densenet169": {"init_features": 8, "growth_rate": 4}}
TINY_SIZES = {"xception": 80, "densenet169": 64}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    """Both backbones trained for one epoch on 8 phantoms (seconds): enough to test the plumbing."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("us_calcified") / "bundle"
    train(path, seed=11, n_train=8, epochs=1, xception=TINY["xception"], densenet169=TINY["densenet169"],
          input_sizes=TINY_SIZES)
    yield load_bundle(path)
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model(tiny_bundle: Bundle) -> USCalcifiedNodule:
    return USCalcifiedNodule.from_bundle(tiny_bundle, "cpu")


@pytest.fixture(scope="module")
def phantom() -> USPhantom:
    return us_phantom(2024, malignant=True)


def _grey(ph: USPhantom) -> np.ndarray:
    return ph.image.astype(np.float32) / 255.0


def _copy(bundle: Bundle, dst: Path) -> tuple[Path, dict[str, Any]]:
    shutil.copytree(bundle.path, dst)
    return dst, json.loads((dst / CARD_PATH).read_text(encoding="utf-8"))


def test_bundle_card_and_docs(tiny_bundle: Bundle) -> None:
    card = tiny_bundle.card
    assert card.name == "us_calcified_nodule" and card.demo is True and card.network == "xception+densenet169"
    assert card.label_keys == ["benign", "malignant"]
    assert [(lab.code_value, lab.coding_scheme) for lab in card.labels] == [("30807003", "SCT"), ("21594007", "SCT")]
    assert card.decision_thresholds == {"malignant": 0.5}
    assert [w.path for w in card.weights] == ["models/xception.pt", "models/densenet169.pt"]
    spec = us_spec(card)
    assert spec.backbones == ("xception", "densenet169")
    assert spec.input_size("xception") == 80 and spec.input_size("densenet169") == 64
    assert spec.network_kwargs("xception") == TINY["xception"]
    perf = card.reported_performance
    for key in ("heldout_accuracy", "heldout_auc", "heldout_accuracy_xception", "heldout_auc_densenet169",
                "training_seconds"):
        assert key in perf
    assert perf["heldout_nodules"] == 20
    readme = (tiny_bundle.path / DOCS_PATH).read_text(encoding="utf-8")
    assert "DEMO" in readme and "Not for clinical use" in readme and "Deviations from the paper" in readme


def test_spec_defaults_are_the_papers_and_bad_sections_are_refused() -> None:
    spec = USCalcifiedSpec(backbones=("xception",))
    assert spec.input_size("xception") == 299 and spec.input_size("densenet169") == 224
    assert spec.crop_margin == 0.1 and spec.mean == (0.485, 0.456, 0.406)
    bad: dict[str, Any]
    for bad in ({"backbones": []}, {"backbones": ["nasnet"]}, {"backbones": ["xception", "xception"]},
                {"backbones": ["xception"], "input_sizes": {"xception": 64}},
                {"backbones": ["xception"], "xception": {"depth": 3}},
                {"backbones": ["xception"], "input_sizes": {"resnet": 224}}):
        with pytest.raises(ValueError):
            USCalcifiedSpec.model_validate(bad)


def test_card_without_or_with_an_invalid_section_is_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    path, raw = _copy(tiny_bundle, tmp_path / "b")
    section = raw.pop("us_calcified")
    (path / CARD_PATH).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(BundleError, match="no 'us_calcified' section"):
        USCalcifiedNodule.from_bundle(load_bundle(path), "cpu")
    raw["us_calcified"] = section | {"input_sizes": {"xception": 40, "densenet169": 64}}
    (path / CARD_PATH).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(BundleError, match="input_sizes.xception"):
        USCalcifiedNodule.from_bundle(load_bundle(path), "cpu")


def test_weights_of_another_width_are_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    path, raw = _copy(tiny_bundle, tmp_path / "b")
    raw["us_calcified"]["xception"] = {"width": 0.25}
    (path / CARD_PATH).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(BundleError, match="cannot load models/xception.pt"):
        USCalcifiedNodule.from_bundle(load_bundle(path), "cpu")


def test_nodule_box_margin_and_clipping() -> None:
    mask = np.zeros((100, 120), dtype=bool)
    mask[10:30, 50:90] = True  # 20 rows x 40 columns
    assert nodule_box(mask, 0.1) == (8, 46, 32, 94)
    assert nodule_box(mask, 0.0) == (10, 50, 30, 90)
    corner = np.zeros((100, 120), dtype=bool)
    corner[90:, 100:] = True
    assert nodule_box(corner, 0.25) == (88, 95, 100, 120)
    with pytest.raises(InputRejected, match="empty"):
        nodule_box(np.zeros((10, 10), dtype=bool), 0.1)


def test_crop_is_resized_to_a_square_without_keeping_the_aspect() -> None:
    image = np.tile(np.linspace(0.0, 1.0, 200, dtype=np.float32), (100, 1))
    crop = crop_input(image, (10, 20, 30, 180), 64)
    assert crop.shape == (64, 64) and crop.dtype == torch.float32
    assert float(crop.min()) >= 0.0 and float(crop.max()) <= 1.0
    # columns 20..179 of a left-to-right ramp stretched over 64 columns: still a ramp, rows equal
    assert torch.all(crop[:, 1:] >= crop[:, :-1]) and torch.allclose(crop[0], crop[-1])


def test_predict_shapes_heatmap_and_box(model: USCalcifiedNodule, phantom: USPhantom) -> None:
    mask = phantom.nodules[0].mask
    res = model.predict(_grey(phantom), mask)
    assert res.backbones == ("xception", "densenet169")
    assert set(res.per_backbone) == {"xception", "densenet169"}
    assert 0.0 <= res.probability <= 1.0
    assert res.probability == pytest.approx(np.mean(list(res.per_backbone.values())))
    rows, cols = np.nonzero(mask)
    r0, c0, r1, c1 = res.box
    assert res.box == nodule_box(mask, 0.1)
    assert r0 < rows.min() and c0 < cols.min() and r1 > rows.max() + 1 and c1 > cols.max() + 1
    assert res.heatmap.shape == (r1 - r0, c1 - c0) and res.heatmap.dtype == np.float32
    assert float(res.heatmap.min()) >= 0.0 and float(res.heatmap.max()) <= 1.0


def test_box_is_clipped_at_the_image_edge(model: USCalcifiedNodule) -> None:
    grey = np.random.default_rng(0).random((120, 160), dtype=np.float32)
    mask = np.zeros((120, 160), dtype=bool)
    mask[:40, 100:] = True
    res = model.predict(grey, mask)
    assert res.box == (0, 94, 44, 160)
    assert res.heatmap.shape == (44, 66)


def test_backbone_selection(model: USCalcifiedNodule, phantom: USPhantom) -> None:
    grey, mask = _grey(phantom), phantom.nodules[0].mask
    both = model.predict(grey, mask)
    for name in ("xception", "densenet169"):
        one = model.predict(grey, mask, backbones=[name])
        assert one.backbones == (name,) and set(one.per_backbone) == {name}
        assert one.probability == pytest.approx(both.per_backbone[name], abs=1e-6)
        assert one.box == both.box
    # order and repeats of the request do not matter: the bundle's order
    assert model.predict(grey, mask, backbones=["densenet169", "xception", "xception"]).backbones == both.backbones


def test_unknown_or_absent_backbone_is_refused(model: USCalcifiedNodule, tiny_bundle: Bundle, tmp_path: Path,
                                               phantom: USPhantom) -> None:
    grey, mask = _grey(phantom), phantom.nodules[0].mask
    with pytest.raises(BundleError, match="nasnet"):
        model.predict(grey, mask, backbones=["nasnet"])
    with pytest.raises(BundleError, match="no backbone requested"):
        model.predict(grey, mask, backbones=[])
    path, raw = _copy(tiny_bundle, tmp_path / "b")
    raw["us_calcified"]["backbones"] = ["xception"]
    raw["weights"] = raw["weights"][:1]
    (path / "models" / "densenet169.pt").unlink()
    (path / CARD_PATH).write_text(json.dumps(raw), encoding="utf-8")
    only = USCalcifiedNodule.from_bundle(load_bundle(path), "cpu")
    assert only.backbones == ("xception",)
    assert only.predict(grey, mask).backbones == ("xception",)
    with pytest.raises(BundleError, match="densenet169"):
        only.predict(grey, mask, backbones=["densenet169"])


def test_card_listing_a_backbone_without_weights_is_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    path, raw = _copy(tiny_bundle, tmp_path / "b")
    raw["weights"] = raw["weights"][:1]
    (path / CARD_PATH).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(BundleError, match="densenet169"):
        USCalcifiedNodule.from_bundle(load_bundle(path), "cpu")


def test_bad_inputs(model: USCalcifiedNodule, phantom: USPhantom) -> None:
    grey, mask = _grey(phantom), phantom.nodules[0].mask
    with pytest.raises(InputRejected, match="empty"):
        model.predict(grey, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        model.predict(grey, mask[:-1])
    with pytest.raises(ValueError, match="float"):
        model.predict(phantom.image, mask)


def test_prediction_is_deterministic_and_thread_safe(model: USCalcifiedNodule, tiny_bundle: Bundle) -> None:
    phantoms = training_set(77, 2)
    expected = [model.predict(_grey(ph), ph.nodules[0].mask) for ph in phantoms]
    again = USCalcifiedNodule.from_bundle(tiny_bundle, "cpu").predict(_grey(phantoms[0]), phantoms[0].nodules[0].mask)
    assert again.probability == expected[0].probability
    assert np.array_equal(again.heatmap, expected[0].heatmap)
    results: dict[int, float] = {}

    def work(i: int) -> None:
        ph = phantoms[i % 2]
        results[i] = model.predict(_grey(ph), ph.nodules[0].mask).probability

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == [expected[i % 2].probability for i in range(4)]
    assert sum(len(m._forward_hooks) for net in model.nets.values() for m in net.modules()) == 0


def test_demo_recipe_shape() -> None:
    assert set(DEMO_RECIPE) >= {"seed", "n_train", "epochs", "networks", "input_sizes"}
    assert set(DEMO_RECIPE["networks"]) == {"xception", "densenet169"}
    USCalcifiedSpec(backbones=("xception", "densenet169"), input_sizes=DEMO_RECIPE["input_sizes"],
                    **DEMO_RECIPE["networks"])


def test_demo_bundle_accuracy_on_fresh_phantoms() -> None:
    """The demo bundle (cached, or built: about 1 min) must classify fresh phantoms."""
    bundle = load_bundle(demo_module.ensure_demo_bundle("us_calcified_nodule"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        demo = USCalcifiedNodule.from_bundle(bundle, "cpu")
        phantoms = training_set(918_273, 20)
        right = sum(
            (demo.predict(_grey(ph), ph.nodules[0].mask).probability >= demo.threshold) == ph.nodules[0].malignant
            for ph in phantoms
        )
    finally:
        torch.set_num_threads(previous)
    assert right / len(phantoms) >= 0.85


def test_batchnorm_recalibration_averages_over_the_training_crops() -> None:
    torch.manual_seed(0)
    net = Xception(width=0.125)
    spec = USCalcifiedSpec(backbones=("xception",), input_sizes={"xception": 80}, xception={"width": 0.125})
    crops = torch.rand(16, 80, 80)
    stem = dict(net.named_modules())["features.entry_conv1"]
    assert isinstance(stem, torch.nn.Sequential)
    conv, bn = stem[0], stem[1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.running_mean is not None
    recalibrate_batchnorm(net, crops, spec, torch.device("cpu"))
    assert not net.training and bn.momentum == 0.1
    with torch.no_grad():
        conv_out = conv(to_network(crops, spec))
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
