"""us_lvlnm (seed 002): radiomics against closed forms, the fitted parts' safe storage, a tiny
trained bundle (load, verify, predict), and the demo bundle's AUC when it has been built."""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from model_zoo.bundle import CARD_PATH, Bundle, load_bundle, sha256_file
from model_zoo.errors import BundleError, InputRejected
from model_zoo.phantoms.us import training_set, us_phantom
from model_zoo.us_lvlnm.model import (
    DL_PREFIX,
    FITTED_FILE,
    SELECTED_FILE,
    FittedParts,
    LVLNMResult,
    USLVLNM,
    crop_box,
    dl_names,
    finite_or_nan,
    load_fitted,
    lvlnm_spec,
    save_fitted,
    standardise,
)
from model_zoo.us_lvlnm.radiomics import LIGHT_PARAMS, RadiomicsExtractor
from model_zoo.us_lvlnm.train import augment, cohort, select_features, train
from model_zoo.validation.stats import youden_midpoint
from model_zoo.validation.stats import auc_delong

TINY_NET = {"init_features": 8, "growth_rate": 4}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this module: on shared CI cores, OpenMP threads spinning against
    other jobs made the tiny training 5x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete bundle trained in seconds (tiny DenseNet at 64 px, 20 + 10 phantoms)."""
    out = tmp_path_factory.mktemp("us_lvlnm") / "bundle"
    train(out, seed=7, n_train=20, densenet_epochs=1, densenet121=TINY_NET, radiomics_params=LIGHT_PARAMS,
          input_size=64, n_heldout=10, device="cpu")
    return out


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> USLVLNM:
    return USLVLNM.from_bundle(load_bundle(tiny_bundle), device="cpu")


@pytest.fixture(scope="module")
def extractor() -> RadiomicsExtractor:
    return RadiomicsExtractor(LIGHT_PARAMS)


def _case(seed: int, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    ph = us_phantom(seed, malignant=True, **kw)  # type: ignore[arg-type]
    return ph.image.astype(np.float32) / 255.0, ph.nodules[0].mask


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rechecksum(root: Path, rel: str) -> None:
    card = json.loads((root / CARD_PATH).read_text())
    for w in card["weights"]:
        if w["path"] == rel:
            w["sha256"] = sha256_file(root / rel)
    (root / CARD_PATH).write_text(json.dumps(card))


# --- radiomics: closed forms ---------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [(0.5, 0.25), (0.1, 0.1)])
def test_square_shape_features_in_mm(extractor: RadiomicsExtractor, spacing: tuple[float, float]) -> None:
    n = 20
    img = np.full((64, 80), 0.4, np.float32)
    mask = np.zeros(img.shape, bool)
    mask[10 : 10 + n, 20 : 20 + n] = True
    f = extractor.extract(img, mask, spacing)
    sr, sc = spacing
    assert f["original_shape2D_PixelSurface"] == pytest.approx(n * n * sr * sc)
    # marching squares cuts each corner by a right triangle of legs sr/2 and sc/2
    assert f["original_shape2D_MeshSurface"] == pytest.approx(n * n * sr * sc - sr * sc / 2)
    assert f["original_shape2D_Perimeter"] == pytest.approx(2 * (n - 1) * (sr + sc) + 4 * math.hypot(sr / 2, sc / 2))
    # a constant image: its grey level (0.4 * 255) and no spread
    assert f["original_firstorder_Mean"] == pytest.approx(0.4 * 255, rel=1e-5)
    assert f["original_firstorder_Variance"] == pytest.approx(0.0, abs=1e-6)


def test_radiomics_names_order_and_uncalibrated_pixels(extractor: RadiomicsExtractor) -> None:
    bmode, mask = _case(301)
    mm = extractor.extract(bmode, mask, (0.1, 0.1))
    px = extractor.extract(bmode, mask, None)
    assert len(mm) == 195 and list(mm) == list(px)
    assert not any(k.startswith("diagnostics") for k in mm)
    assert any(k.startswith("log-sigma-1-0-mm") for k in mm)
    assert px["original_shape2D_PixelSurface"] == pytest.approx(int(mask.sum()))
    assert mm["original_shape2D_PixelSurface"] == pytest.approx(int(mask.sum()) * 0.01)
    assert mm == extractor.extract(bmode, mask, (0.1, 0.1))  # deterministic


def test_radiomics_rejects_bad_input(extractor: RadiomicsExtractor) -> None:
    img = np.zeros((32, 32), np.float32)
    tiny = np.zeros((32, 32), bool)
    tiny[5:7, 5:7] = True
    with pytest.raises(InputRejected, match="too small"):
        extractor.extract(img, tiny, None)
    with pytest.raises(InputRejected, match="shape"):
        extractor.extract(img, tiny[:, :10], None)
    with pytest.raises(ValueError, match="pyradiomics refused"):
        RadiomicsExtractor({"imageType": {"NoSuchFilter": {}}})


# --- helpers of the model and the training -------------------------------------------------------


def test_crop_box_margin_and_clipping() -> None:
    mask = np.zeros((100, 100), bool)
    mask[20:40, 30:80] = True
    assert crop_box(mask, 0.1) == (18, 25, 42, 85)
    mask[:, :] = False
    mask[0:10, 95:100] = True
    assert crop_box(mask, 0.6) == (0, 92, 16, 100)
    with pytest.raises(InputRejected, match="empty"):
        crop_box(np.zeros((5, 5), bool), 0.1)


def test_select_features_caps_and_keeps_both_kinds() -> None:
    names = dl_names(3) + [f"rad_{i}" for i in range(12)]
    coef = np.zeros(len(names))
    coef[3:15] = np.linspace(2.0, 1.0, 12)  # 12 radiomics, all stronger than the deep one
    coef[1] = -0.5
    chosen = select_features(coef, names)
    assert len(chosen) == 10
    assert [names[i] for i in chosen[:9]] == [f"rad_{i}" for i in range(9)]
    assert names[chosen[-1]] == f"{DL_PREFIX}001"
    only_rad = coef.copy()
    only_rad[:3] = 0.0
    assert all(not names[i].startswith(DL_PREFIX) for i in select_features(only_rad, names))
    assert select_features(np.zeros(len(names)), names) == []


def test_youden_midpoint() -> None:
    separable = youden_midpoint(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.9, 0.95]))
    assert separable == pytest.approx(0.55)
    # J = 0.5 at 0.8 and at 0.3: the lowest maximiser (0.3), midway to the next score below (0.1)
    assert youden_midpoint(np.array([0, 1, 0, 1]), np.array([0.1, 0.3, 0.5, 0.8])) == pytest.approx(0.2)


def test_cohort_mix() -> None:
    nodules, carcinoma = cohort(3, 8, 0.25)
    assert len(nodules) == 8 and carcinoma.tolist() == [True] * 6 + [False] * 2
    assert [n[3] for n in nodules[6:]] == [0, 0] and sum(n[3] for n in nodules[:6]) == 3
    bmode, mask, spacing, _ = nodules[0]
    assert bmode.dtype == np.float32 and 0.0 <= bmode.min() and bmode.max() <= 1.0
    assert mask.dtype == bool and mask.shape == bmode.shape and spacing == (0.1, 0.1)


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    x = torch.rand(4, 1, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_standardise_treats_undefined_features_as_the_training_mean() -> None:
    x = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0]])
    scaler = StandardScaler().fit(finite_or_nan(x))
    z = standardise(scaler, np.array([[3.0, np.inf], [5.0, np.nan], [1.0, 3.0]]))
    assert np.allclose(z[:, 0], [0.0, math.sqrt(1.5), -math.sqrt(1.5)])
    assert z[0, 1] == 0.0 and z[1, 1] == 0.0 and z[2, 1] == pytest.approx(0.0)


def test_skops_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    deep = rng.normal(size=(30, 512))
    pca = PCA(4, random_state=0).fit(deep)
    names = dl_names(4) + ["original_firstorder_Mean"]
    x = np.hstack([pca.transform(deep), rng.normal(size=(30, 1))])
    y = np.arange(30) % 2
    scaler = StandardScaler().fit(x)
    mlp = MLPClassifier((8,), solver="lbfgs", max_iter=200, random_state=0).fit(scaler.transform(x)[:, [0, 4]], y)
    (tmp_path / "models").mkdir()
    save_fitted(tmp_path, FittedParts(pca, scaler, mlp, tuple(names), (names[0], names[4])))
    back = load_fitted(tmp_path, "test")
    assert back.feature_names == tuple(names) and back.selected == (names[0], names[4])
    assert np.allclose(back.pca.transform(deep), pca.transform(deep), rtol=1e-12, atol=1e-12)
    z = scaler.transform(x)[:, [0, 4]]
    assert np.array_equal(back.scaler.transform(x)[:, [0, 4]], z)
    assert np.array_equal(back.mlp.predict_proba(z), mlp.predict_proba(z))


def test_skops_file_with_an_unexpected_type_is_refused(tmp_path: Path) -> None:
    import skops.io as sio

    (tmp_path / "models").mkdir()
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    sio.dump({"pca": PCA(2).fit(rng.normal(size=(20, 512))), "scaler": StandardScaler().fit(x),
              "mlp": LogisticRegression().fit(x, y)}, tmp_path / FITTED_FILE)
    (tmp_path / SELECTED_FILE).write_text(json.dumps({"feature_names": ["a"], "selected": ["a"]}))
    with pytest.raises(BundleError, match="LogisticRegression"):
        load_fitted(tmp_path, "test")


# --- the tiny trained bundle --------------------------------------------------------------------


def test_tiny_bundle_card(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    card = bundle.card
    assert card.name == "us_lvlnm" and card.demo and card.modality == "US"
    assert card.label_keys == ["no_lvlnm", "lvlnm"]
    assert 0.0 <= card.decision_thresholds["lvlnm"] <= 1.0
    assert [w.path for w in card.weights] == ["models/densenet121.pt", FITTED_FILE, SELECTED_FILE]
    spec = lvlnm_spec(card)
    assert spec.pca_components == 19 and spec.input_size == 64 and spec.radiomics_features == 195
    assert 1 <= spec.selected_dl + spec.selected_radiomics <= 10
    assert spec.radiomics == LIGHT_PARAMS
    perf = card.reported_performance
    assert 0.0 <= perf["heldout_auc"] <= 1.0 and perf["heldout_nodules"] == 10 and perf["training_seconds"] > 0
    assert 0.0 <= perf["heldout_carcinoma_auc"] <= 1.0 and 0.0 <= perf["heldout_benign_called_lvlnm"] <= 1.0
    assert "DEMO" in (tiny_bundle / "docs" / "README.md").read_text()


def test_predict_on_a_phantom(model: USLVLNM) -> None:
    bmode, mask = _case(302, lvlnm=True)
    result = model.predict(bmode, mask, (0.1, 0.1))
    assert isinstance(result, LVLNMResult)
    assert 0.0 <= result.probability <= 1.0
    assert list(result.features) == list(model.parts.selected)
    assert all(math.isfinite(v) for v in result.features.values())
    assert result.dl_features + result.radiomics_features == len(model.parts.selected)
    assert result.dl_features == sum(n.startswith(DL_PREFIX) for n in model.parts.selected)


def test_predict_is_deterministic_and_thread_safe(model: USLVLNM, tiny_bundle: Path) -> None:
    bmode, mask = _case(303)
    first = model.predict(bmode, mask, (0.1, 0.1))
    assert model.predict(bmode, mask, (0.1, 0.1)) == first
    again = USLVLNM.from_bundle(load_bundle(tiny_bundle), device="cpu")
    assert again.predict(bmode, mask, (0.1, 0.1)).probability == first.probability
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(model.predict(bmode, mask, (0.1, 0.1)).probability))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [first.probability] * 2


def test_predict_uncalibrated(model: USLVLNM) -> None:
    bmode, mask = _case(304)
    result = model.predict(bmode, mask, None)
    assert 0.0 <= result.probability <= 1.0
    calibrated = model.predict(bmode, mask, (0.1, 0.1))
    for name, value in result.features.items():
        if name == "original_shape2D_PixelSurface":  # pixels, not mm2
            assert value == pytest.approx(calibrated.features[name] * 100)


def test_predict_rejects_bad_input(model: USLVLNM) -> None:
    bmode, mask = _case(305)
    with pytest.raises(InputRejected, match="empty"):
        model.predict(bmode, np.zeros_like(mask), (0.1, 0.1))
    with pytest.raises(InputRejected):
        model.predict(bmode, mask[:, :-1], (0.1, 0.1))


def test_corrupted_fitted_file_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bundle, tmp_path / "b")
    blob = bytearray((root / FITTED_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (root / FITTED_FILE).write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=f"{FITTED_FILE} sha256 mismatch"):
        load_bundle(root)
    _rechecksum(root, FITTED_FILE)  # a matching checksum does not make garbage loadable
    (root / FITTED_FILE).write_bytes(b"not a skops file")
    _rechecksum(root, FITTED_FILE)
    with pytest.raises(BundleError, match=FITTED_FILE):
        USLVLNM.from_bundle(load_bundle(root), device="cpu")


def test_inconsistent_selection_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bundle, tmp_path / "b")
    names = json.loads((root / SELECTED_FILE).read_text())
    names["selected"] = names["selected"][:-1] if len(names["selected"]) > 1 else names["feature_names"][:2]
    (root / SELECTED_FILE).write_text(json.dumps(names))
    _rechecksum(root, SELECTED_FILE)
    with pytest.raises(BundleError, match="MLP has"):
        USLVLNM.from_bundle(load_bundle(root), device="cpu")


def test_card_section_is_required(tiny_bundle: Path, tmp_path: Path) -> None:
    root = _copy(tiny_bundle, tmp_path / "b")
    card = json.loads((root / CARD_PATH).read_text())
    card["us_lvlnm"]["crop_margin"] = -1
    (root / CARD_PATH).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="crop_margin"):
        USLVLNM.from_bundle(load_bundle(root), device="cpu")
    del card["us_lvlnm"]
    (root / CARD_PATH).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="no 'us_lvlnm' section"):
        USLVLNM.from_bundle(load_bundle(root), device="cpu")


# --- the demo bundle, when built -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Bundle:
    from model_zoo.demo import ensure_demo_bundle

    bundle = load_bundle(ensure_demo_bundle("us_lvlnm"))  # cached, or built (about 1 min)
    return bundle


def test_demo_bundle_auc_on_fresh_phantoms(demo: Bundle) -> None:
    model = USLVLNM.from_bundle(demo, device="cpu")
    phantoms = training_set(90210, 30, malignant=True)
    y = np.array([ph.nodules[0].lvlnm for ph in phantoms], dtype=int)
    p = np.array([model.predict(ph.image.astype(np.float32) / 255.0, ph.nodules[0].mask,
                                (ph.spacing_mm, ph.spacing_mm)).probability for ph in phantoms])
    assert auc_delong(y, p).auc >= 0.8
