"""nm_graves_i131 (seed 001): the Graves' phantoms and their cure convention, the ResNet50's size,
LASSO selection, the fitted parts' safe storage, a tiny trained bundle (load, verify, predict),
and the demo bundle's accuracy when it has been built."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from model_zoo.bundle import CARD_PATH, Bundle, load_bundle, sha256_file
from model_zoo.errors import BundleError, InputRejected
from model_zoo.nm_graves_i131.model import (
    FITTED_FILE,
    RESNET_FILE,
    SELECTED_FILE,
    GravesPrediction,
    GravesResNet50,
    GravesSpec,
    NMGravesI131,
    ResNet50Spec,
    graves_spec,
)
from model_zoo.nm_graves_i131.train import augment, lasso_select, phantom_cases, train
from model_zoo.nm_thyroid_dx.preprocess import prepare
from model_zoo.phantoms.nm import nm_phantom_dataset
from model_zoo.phantoms.nm_graves import (
    CURE_AREA_CUTOFF_MM2,
    LABEL_NOISE,
    graves_case,
    graves_dataset,
    graves_phantom,
    write_graves_study,
)

TINY_NET = {"block_inplanes": [4, 4, 8, 8]}  # 32 deep features


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this module (shared CI cores); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete bundle trained in seconds (narrow ResNet50 at 64 px, 24 + 8 phantoms, 4 features)."""
    out = tmp_path_factory.mktemp("nm_graves") / "bundle"
    train(out, seed=3, n_train=24, epochs=1, resnet50=TINY_NET, input_size=64, n_features=4, n_heldout=8,
          device="cpu")
    return out


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> NMGravesI131:
    return NMGravesI131.from_bundle(load_bundle(tiny_bundle), device="cpu")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rechecksum(root: Path, rel: str) -> None:
    card = json.loads((root / CARD_PATH).read_text())
    for w in card["weights"]:
        if w["path"] == rel:
            w["sha256"] = sha256_file(root / rel)
    (root / CARD_PATH).write_text(json.dumps(card))


# --- phantoms ----------------------------------------------------------------------------------


def test_phantom_convention_and_noise() -> None:
    cases = [graves_case(s) for s in range(120)]
    for case in cases:
        assert case.image.shape == (128, 128) and case.image.dtype == np.uint16
        assert case.by_convention == (case.gland_area_mm2 < CURE_AREA_CUTOFF_MM2)
        assert case.attempt == 0
    cured = np.array([c.cured for c in cases])
    flipped = np.mean([c.noisy for c in cases])
    assert 0.35 < cured.mean() < 0.65  # the cut-off sits near the median gland
    assert flipped <= 2.5 * LABEL_NOISE
    # larger glands, fewer cures
    big = [c for c in cases if c.gland_area_mm2 > 4500]
    small = [c for c in cases if c.gland_area_mm2 < 3500]
    assert np.mean([c.cured for c in big]) < 0.2 < 0.8 < np.mean([c.cured for c in small])
    # the measured gland is the imaged one (nm.make_nm_image draws the activity first)
    bright = [np.count_nonzero(c.image > 0.2 * np.percentile(c.image, 99.5)) for c in cases]
    assert np.corrcoef(bright, [c.gland_area_mm2 for c in cases])[0, 1] > 0.95
    for case in cases[:10]:
        assert case.image[case.gland].sum() > 0.8 * case.image.sum()
        assert case.gland_area_mm2 == np.count_nonzero(case.gland)  # 1 mm pixels at matrix 128


def test_phantom_conditioned_on_the_label_is_seeded() -> None:
    for seed in range(10):
        image, label = graves_phantom(seed)
        same, again = graves_phantom(seed, label)
        assert again == label and np.array_equal(image, same)  # attempt 0 already has that label
        other, flipped = graves_phantom(seed, not label)
        assert flipped is (not label) and not np.array_equal(image, other)
    a, b = graves_case(7, True), graves_case(7, True)
    assert np.array_equal(a.image, b.image) and a.gland_area_mm2 == b.gland_area_mm2
    with pytest.raises(ValueError):
        graves_case(-1)


def test_dicom_writer(tmp_path: Path) -> None:
    path = write_graves_study(tmp_path / "in", 11, cured=False)
    ds = pydicom.dcmread(path)
    case = graves_case(11, False)
    assert ds.Modality == "NM" and ds.SOPInstanceUID == path.stem
    assert np.array_equal(ds.pixel_array, case.image)
    assert ds.PatientID.startswith("PHANTOM-GD-")
    seed003 = nm_phantom_dataset("graves", 11)
    assert {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID}.isdisjoint(
        {seed003.StudyInstanceUID, seed003.SeriesInstanceUID, seed003.SOPInstanceUID, seed003.FrameOfReferenceUID}
    )
    assert write_graves_study(tmp_path / "again", 11, cured=False).name == path.name  # a re-run, the same UIDs
    text = str(ds).lower()
    assert "cured" not in text and "graves" not in text  # the ground truth is not in the file
    prepared = prepare(ds, 128)
    assert prepared.shape == (128, 128) and prepared.frame_index == 0


# --- the network --------------------------------------------------------------------------------


def _torchvision_resnet50_params(in_channels: int = 3, classes: int = 1000) -> int:
    """Closed-form parameter count of torchvision's resnet50 (bottleneck v1.5, bias-free convolutions)."""
    total = in_channels * 64 * 7 * 7 + 2 * 64  # stem conv + BN
    c = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            total += c * planes + 2 * planes + 9 * planes * planes + 2 * planes + planes * 4 * planes + 8 * planes
            if b == 0:
                total += c * 4 * planes + 8 * planes  # 1x1 shortcut + BN
            c = 4 * planes
    return total + 2048 * classes + classes


def test_paper_resnet50_has_torchvisions_parameters_without_fc() -> None:
    assert _torchvision_resnet50_params() == 25_557_032
    paper = GravesResNet50(ResNet50Spec(), in_channels=3)
    backbone = sum(p.numel() for p in paper.backbone.parameters())
    assert backbone == 25_557_032 - 2_049_000 == 23_508_032
    one = GravesResNet50(ResNet50Spec(), in_channels=1)
    assert sum(p.numel() for p in one.backbone.parameters()) == 23_508_032 - 2 * 64 * 7 * 7
    assert ResNet50Spec().features == 2048 and paper.fc.in_features == 2048
    # MONAI's default puts a bias in the 1x1 shortcut convolutions: 256 + 512 + 1024 + 2048 more
    from monai.networks.nets.resnet import ResNet

    monai_default = ResNet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], spatial_dims=2, n_input_channels=3,
                           conv1_t_size=7, conv1_t_stride=2, feed_forward=False)
    assert sum(p.numel() for p in monai_default.parameters()) == 23_508_032 + 3_840


def test_network_shapes_and_state_dict_round_trip() -> None:
    spec = ResNet50Spec.model_validate(TINY_NET)
    net = GravesResNet50(spec).eval()
    x = torch.rand(2, 1, 64, 64)
    assert net.features(x).shape == (2, 32) and net(x).shape == (2, 2)
    again = GravesResNet50(spec).eval()
    again.load_state_dict(net.state_dict())
    assert torch.equal(again(x), net(x))
    with pytest.raises(ValueError):
        ResNet50Spec(block_inplanes=(0, 4, 8, 8))


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown RandomForestClassifier"):
        GravesSpec(input_size=64, random_forest={"n_jobs": 4})
    with pytest.raises(ValueError, match="exceeds"):
        GravesSpec(input_size=64, resnet50=ResNet50Spec.model_validate(TINY_NET), n_features=33)


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    x = torch.rand(4, 1, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and not torch.equal(a, x)


def test_lasso_select_ranks_informative_features_first() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    z = rng.normal(size=(80, 30))
    z[:, 7] += 2.0 * y
    z[:, 3] -= 1.0 * y
    z = StandardScaler().fit_transform(z)
    chosen, record = lasso_select(z, y, 2, seed=0)
    assert chosen == [7, 3] and record["nonzero"] >= 2
    many, record = lasso_select(z, y, 12, seed=0)  # more than the CV lambda keeps: walk the path
    assert len(many) == 12 == len(set(many)) and many[:2] == [7, 3] and record["alpha"] <= record["cv_alpha"]
    assert all(abs(a) >= abs(b) for a, b in zip(record["coefficients"], record["coefficients"][1:]))


def test_training_sets_are_balanced_and_disjoint() -> None:
    train_cases, held = phantom_cases(5, 6, False), phantom_cases(5, 4, True)
    assert [c.cured for c in train_cases] == [False, True] * 3
    assert not {c.seed for c in train_cases} & {c.seed for c in held}


# --- the tiny trained bundle --------------------------------------------------------------------


def test_tiny_bundle_card(tiny_bundle: Path) -> None:
    card = load_bundle(tiny_bundle).card
    assert card.name == "nm_graves_i131" and card.demo and card.modality == "NM"
    assert card.network == "monai_resnet50+lasso+rf" and card.input.size == 64 and card.input.channels == 1
    assert card.label_keys == ["not_cured", "cured"]
    assert {lab.coding_scheme for lab in card.labels} == {"99THYAI"}
    assert all(len(lab.code_value) <= 16 for lab in card.labels)  # SH
    assert 0.0 <= card.decision_thresholds["cured"] <= 1.0
    assert [w.path for w in card.weights] == [RESNET_FILE, FITTED_FILE, SELECTED_FILE]
    spec = graves_spec(card)
    assert spec.n_features == 4 and spec.resnet50.block_inplanes == (4, 4, 8, 8) and spec.input_size == 64
    assert spec.random_forest["random_state"] == 3
    perf = card.reported_performance
    assert 0.0 <= perf["heldout_auc"] <= 1.0 and 0.0 <= perf["heldout_resnet_auc"] <= 1.0
    assert perf["heldout_n"] == 8 and perf["training_seconds"] > 0
    readme = (tiny_bundle / "docs" / "README.md").read_text()
    assert "DEMO weights trained on phantoms, not for clinical use" in readme


def test_selected_feature_count(model: NMGravesI131, tiny_bundle: Path) -> None:
    record = json.loads((tiny_bundle / SELECTED_FILE).read_text())
    assert len(model.parts.selected) == 4 == len(record["selected"]) == len(record["names"])
    assert int(model.parts.forest.n_features_in_) == 4 and int(model.parts.scaler.n_features_in_) == 32


def test_predict_on_a_phantom_dicom(model: NMGravesI131) -> None:
    ds, _ = graves_dataset(21, cured=True, matrix=96)
    pred = model.predict(ds)
    assert isinstance(pred, GravesPrediction)
    assert 0.0 <= pred.probability_cured <= 1.0 and 0.0 <= pred.resnet_probability <= 1.0
    assert pred.heatmap.shape == (96, 96) and pred.heatmap.dtype == np.float32
    assert float(pred.heatmap.min()) >= 0.0 and float(pred.heatmap.max()) <= 1.0
    assert pred.frame_index == 0 and pred.frame_choice == "single frame"
    assert pred.threshold == model.threshold and pred.selected_features == 4
    assert pred.cured == (pred.probability_cured >= pred.threshold)
    modules = list(model.net.modules())
    assert all(not m._forward_hooks and not m._backward_hooks for m in modules)  # CAM hooks removed


def test_predict_is_deterministic_and_thread_safe(model: NMGravesI131, tiny_bundle: Path) -> None:
    ds, _ = graves_dataset(22, cured=False)
    first = model.predict(ds)
    second = model.predict(ds)
    assert (second.probability_cured, second.resnet_probability) == (first.probability_cured, first.resnet_probability)
    assert np.array_equal(second.heatmap, first.heatmap)
    again = NMGravesI131.from_bundle(load_bundle(tiny_bundle), device="cpu").predict(ds)
    assert again.probability_cured == first.probability_cured and again.resnet_probability == first.resnet_probability
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(model.predict(ds).resnet_probability)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [first.resnet_probability] * 2


def test_predict_rejects_non_nm(model: NMGravesI131) -> None:
    ds, _ = graves_dataset(23)
    ds.Modality = "CT"
    with pytest.raises(InputRejected, match="not NM"):
        model.predict(ds)


def test_tampered_fitted_file_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bundle, tmp_path / "b")
    blob = bytearray((root / FITTED_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (root / FITTED_FILE).write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=f"{FITTED_FILE} sha256 mismatch"):
        load_bundle(root)
    (root / FITTED_FILE).write_bytes(b"not a skops file")
    _rechecksum(root, FITTED_FILE)  # a matching checksum does not make garbage loadable
    with pytest.raises(BundleError, match=FITTED_FILE):
        NMGravesI131.from_bundle(load_bundle(root), device="cpu")


def test_untrusted_type_in_fitted_file_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    import skops.io as sio

    root = _copy(tiny_bundle, tmp_path / "b")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 4)), np.arange(20) % 2
    sio.dump({"scaler": StandardScaler().fit(rng.normal(size=(20, 32))), "forest": LogisticRegression().fit(x, y)},
             root / FITTED_FILE)
    _rechecksum(root, FITTED_FILE)
    with pytest.raises(BundleError, match="LogisticRegression"):
        NMGravesI131.from_bundle(load_bundle(root), device="cpu")


def test_inconsistent_selection_and_card_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bundle, tmp_path / "b")
    record = json.loads((root / SELECTED_FILE).read_text())
    record["selected"] = record["selected"][:-1]
    (root / SELECTED_FILE).write_text(json.dumps(record))
    _rechecksum(root, SELECTED_FILE)
    with pytest.raises(BundleError, match="forest has 4 inputs, 3 features selected"):
        NMGravesI131.from_bundle(load_bundle(root), device="cpu")
    root = _copy(tiny_bundle, tmp_path / "c")
    card = json.loads((root / CARD_PATH).read_text())
    card["nm_graves"]["resnet50"]["block_inplanes"] = [4, 4, 8, 16]
    (root / CARD_PATH).write_text(json.dumps(card))
    with pytest.raises(BundleError, match=RESNET_FILE):
        NMGravesI131.from_bundle(load_bundle(root), device="cpu")
    del card["nm_graves"]
    (root / CARD_PATH).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="no 'nm_graves' section"):
        NMGravesI131.from_bundle(load_bundle(root), device="cpu")


# --- the demo bundle, when built -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Bundle:
    from model_zoo.demo import ensure_demo_bundle

    bundle = load_bundle(ensure_demo_bundle("nm_graves_i131"))  # cached, or built (about 30 s)
    return bundle


def test_demo_bundle_accuracy_on_fresh_phantoms(demo: Bundle) -> None:
    model = NMGravesI131.from_bundle(demo, device="cpu")
    correct = 0
    for i in range(20):
        ds, case = graves_dataset(9_000_000 + i, cured=i % 2 == 1)
        correct += int(model.predict(ds).cured == case.cured)
    assert correct / 20 >= 0.8
