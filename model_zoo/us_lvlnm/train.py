"""Train us_lvlnm on B-mode phantoms and write a complete bundle (demo weights).

Recipe (paper -> demo):

* cohort: the paper's, papillary carcinomas (:func:`model_zoo.phantoms.us.training_set` with
  ``malignant=True``: 50 % lvlnm), plus a share of benign nodules (``benign_share``, 25 % by
  default) as negatives: the node may meet any nodule, and a model that never saw a benign one
  calls most of them lvlnm (they are larger and less homogeneous than small carcinomas). One nodule
  per image; the phantoms' true outlines stand for the paper's hand-drawn ROIs. Training phantoms
  from ``seed`` (benign: ``seed + 2``), held-out ones from ``seed + 1`` (benign: ``seed + 3``);
* DL branch: DenseNet121 (the card's ``us_lvlnm.densenet121`` widths; the demo's is narrow) with
  the paper-family head, fine-tuned on the crops (:func:`~model_zoo.us_lvlnm.model.crop_resized`)
  with cross-entropy, Adam (lr 1e-3, weight decay 1e-4, cosine decay), batch 16, and the paper's
  augmentation: scale, rotation, shear (affine), translation, contrast, brightness, Gaussian noise.
  No ImageNet initialisation (nothing is downloaded);
* deep features: the 512 penultimate activations (eval mode) -> PCA to 128 components, or
  ``n_train - 1`` when fewer images than that (a PCA cannot have more components than samples - 1);
* radiomics: :mod:`.radiomics` with the given parameters, on every image;
* standardise (StandardScaler), LASSO with 5-fold stratified CV (:class:`sklearn.linear_model.LassoCV`
  on the 0/1 label, the lambda of minimum CV error, as the paper); the non-zero features ranked by
  |coefficient| and capped at :data:`MAX_SELECTED` (the paper kept 7 radiomics + 3 DL), keeping at
  least one of each kind when LASSO kept one;
* MLP (:class:`sklearn.neural_network.MLPClassifier`, one hidden layer of 32, L-BFGS, L2 1e-2,
  ``random_state=seed``) on the selected standardised features;
* decision threshold: Youden's J on 5-fold out-of-fold MLP probabilities of the training set
  (:func:`model_zoo.validation.stats.youden_midpoint`);
* reported: AUC (DeLong 95 % CI), accuracy, sensitivity, specificity, PPV, NPV on the held-out
  phantoms (same mix), the AUC on their carcinomas only (the paper's population), the share of
  held-out benign nodules called lvlnm, and the fine-tuned DenseNet's own held-out AUC (the
  paper's "DL alone").
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from scipy import ndimage
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.linear_model import LassoCV, lasso_path
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from model_zoo.bundle import CARD_PATH, DOCS_PATH, load_bundle, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.nets.densenet2d import INPUT_SIZE, PENULTIMATE_FEATURES, DenseNetClassifier, densenet_classifier
from model_zoo.phantoms.us import USPhantom, training_set
from model_zoo.progress import ProgressFn, reporter
from model_zoo.site_training import Checkpoints, Stateful
from model_zoo.us_lvlnm.model import (
    DENSENET_FILE,
    DL_PREFIX,
    FITTED_FILE,
    LVLNM_LABELS,
    NAME,
    SELECTED_FILE,
    FittedParts,
    LVLNMSpec,
    USLVLNM,
    crop_resized,
    deep_features,
    dl_names,
    finite_or_nan,
    normalise_input,
    save_fitted,
    standardise,
)
from model_zoo.us_lvlnm.radiomics import LIGHT_PARAMS, RadiomicsExtractor
from model_zoo.validation.stats import auc_delong, binary_metrics, youden_midpoint

logger = logging.getLogger(__name__)

DEMO_VERSION: Final[str] = "0.1.0-demo"
MAX_SELECTED: Final[int] = 10
# The demo: narrow DenseNet121 at the paper's 224 px, 3 epochs, the light radiomics set, 120 + 40 phantoms.
DEMO_RECIPE: Final[dict[str, Any]] = {
    "seed": 20020,
    "n_train": 120,
    "densenet_epochs": 3,
    "input_size": INPUT_SIZE,
    "densenet121": {"init_features": 16, "growth_rate": 8},
    "radiomics_params": LIGHT_PARAMS,
}
DEMO_MINUTES: Final[float] = 1.5  # 2 CPU cores


Nodule = tuple[np.ndarray, np.ndarray, tuple[float, float] | None, int]  # bmode [0, 1], mask, spacing (None: uncalibrated), label


def reader_outline(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The exact outline as a reader or a segmentation network draws it: two times in three
    smoothed (Gaussian, sigma 1.5-4 px) and cut at 0.4-0.55, which fills the margin's small
    lobulations and shifts the edge by a pixel or two; else unchanged.

    Training on outlines of this kind keeps the radiomics (shape above all) features from
    telling the exact phantom outline from the node's own segmentation: trained on exact outlines
    only, the model scored benign nodules outlined by ``us_nodule_seg`` as LVLNM."""
    if rng.random() < 1.0 / 3.0:
        return mask
    soft = ndimage.gaussian_filter(mask.astype(np.float32), float(rng.uniform(1.5, 4.0)))
    smoothed = soft >= float(rng.uniform(0.4, 0.55))
    return smoothed if smoothed.any() else mask


def _nodules(phantoms: list[USPhantom], seed: int) -> list[Nodule]:
    rng = np.random.default_rng([seed, 2002])
    out: list[Nodule] = []
    for ph in phantoms:
        nodule = ph.nodules[0]
        bmode = ph.image.astype(np.float32) / np.float32(255.0)
        out.append((bmode, reader_outline(nodule.mask, rng), (ph.spacing_mm, ph.spacing_mm), int(nodule.lvlnm)))
    return out


def cohort(seed: int, n: int, benign_share: float) -> tuple[list[Nodule], np.ndarray]:
    """``n`` one-nodule phantoms: carcinomas (50 % lvlnm) from ``seed``, then
    ``round(benign_share * n)`` benign nodules from ``seed + 2``; and a mask of the carcinomas."""
    n_benign = int(round(benign_share * n))
    nodules = _nodules(training_set(seed, n - n_benign, malignant=True), seed)
    if n_benign:
        nodules += _nodules(training_set(seed + 2, n_benign, malignant=False), seed + 2)
    return nodules, np.arange(n) < n - n_benign


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random scale, rotation, shear, translation, contrast, brightness and noise of ``(N, 1, S, S)``
    crops in [0, 1] (the paper's list)."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle, scale, shear = u(-math.pi / 12, math.pi / 12), u(0.85, 1.15), u(-0.1, 0.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear, u(-0.05, 0.05)], dim=1),
        torch.stack([sin, cos, u(-0.05, 0.05)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * u(0.75, 1.3).view(n, 1, 1, 1) + u(-0.05, 0.05).view(n, 1, 1, 1)
    y = y + torch.randn(y.shape, generator=gen) * u(0.0, 0.04).view(n, 1, 1, 1)
    return y.clamp(0.0, 1.0)


def _fine_tune(
    net: DenseNetClassifier, crops: torch.Tensor, labels: torch.Tensor, spec: LVLNMSpec, epochs: int,
    seed: int, dev: torch.device, report: ProgressFn, checkpoints: Checkpoints | None = None,
) -> None:
    """Fine-tune the DenseNet (checkpointed after every epoch when ``checkpoints`` is given: network,
    optimiser, schedule, the augmentation stream and torch's global one, so a resumed run ends
    where an uninterrupted one does)."""
    lr, batch = 1e-3, 16
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(crops) / batch)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps * epochs))
    state: dict[str, Stateful] = {"net": net, "opt": opt, "sched": sched}
    streams = {"gen": gen, "torch": torch.default_generator}
    done = checkpoints.restore(state, streams) if checkpoints is not None else 0
    if done:
        report(0.15 + 0.35 * done / epochs, f"resumed after epoch {done}/{epochs}")
    for epoch in range(done, epochs):
        net.train()
        order = torch.randperm(len(crops), generator=gen)
        total = 0.0
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            x = normalise_input(augment(crops[idx], gen), spec).to(dev)
            loss = F.cross_entropy(net(x), labels[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if checkpoints is not None:
            checkpoints.save(epoch + 1, state, streams)
        report(0.15 + 0.35 * (epoch + 1) / epochs, f"DenseNet121 epoch {epoch + 1}/{epochs}: loss {total / len(crops):.3f}")


def select_features(coef: np.ndarray, names: list[str], cap: int = MAX_SELECTED) -> list[int]:
    """Indices of the non-zero LASSO coefficients by decreasing |coefficient|, at most ``cap``,
    with at least one deep and one radiomics feature when LASSO kept one of that kind."""
    nonzero = np.flatnonzero(coef)
    ranked = [int(i) for i in nonzero[np.argsort(-np.abs(coef[nonzero]), kind="stable")]]
    chosen = ranked[:cap]
    for deep in (True, False):
        of_kind = [i for i in ranked if names[i].startswith(DL_PREFIX) == deep]
        if of_kind and not any(names[i].startswith(DL_PREFIX) == deep for i in chosen):
            # replace the weakest feature of the over-represented kind
            chosen[-1] = of_kind[0]
    return chosen


def _lasso(z: np.ndarray, y: np.ndarray, names: list[str], seed: int) -> tuple[list[int], float]:
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    lasso = LassoCV(cv=cv, max_iter=20000, random_state=seed).fit(z, y.astype(np.float64))
    coef = np.asarray(lasso.coef_)
    if not np.any(coef):  # minimum-CV lambda kept nothing: the path's first lambda that keeps one
        logger.warning("LASSO at the CV-optimal lambda %.4g kept no feature; taking the path's first", lasso.alpha_)
        _, coefs, _ = lasso_path(z, y.astype(np.float64), alphas=lasso.alphas_, max_iter=20000)
        first = next(k for k in range(coefs.shape[1]) if np.any(coefs[:, k]))
        coef = coefs[:, first]
    return select_features(coef, names), float(lasso.alpha_)


def _metrics(y: np.ndarray, p: np.ndarray, threshold: float, prefix: str) -> dict[str, Any]:
    auc = auc_delong(y, p)
    m = binary_metrics(y, p, threshold)
    return {
        f"{prefix}_auc": round(auc.auc, 4),
        f"{prefix}_auc_ci95": [round(auc.ci_low, 4), round(auc.ci_high, 4)],
        f"{prefix}_accuracy": round(m.accuracy, 4),
        f"{prefix}_sensitivity": round(m.sensitivity, 4),
        f"{prefix}_specificity": round(m.specificity, 4),
        f"{prefix}_ppv": round(m.ppv, 4),
        f"{prefix}_npv": round(m.npv, 4),
        f"{prefix}_nodules": int(len(y)),
    }


def _readme(card: ModelCard, spec: LVLNMSpec, selected: list[str], epochs: int) -> str:
    perf = card.reported_performance
    image_types = spec.radiomics.get("imageType", {})
    images = ", ".join(f"{k} {v}" if v else k for k, v in image_types.items())
    pca_note = " (fewer training images than 128)" if spec.pca_components < 128 else ""
    held = {k: v for k, v in perf.items() if k.startswith("heldout")}
    return f"""# {card.title} ({card.ident})

**{card.intended_use}**

- Modality: {card.modality}. Population: {card.population}
- Input: the B-mode image, the nodule's outline and the pixel spacing. Crop = the outline's bounding
  rectangle grown by {spec.crop_margin:.0%} of its height/width on each side, resized to
  {spec.input_size} x {spec.input_size} (aspect not kept, as the paper), grey -> 3 channels, ImageNet mean/std.
- DL branch: DenseNet121 (`model_zoo.nets.densenet2d.densenet_classifier("densenet121", **{spec.densenet121})`)
  fine-tuned on the task; its 512 penultimate fully connected activations -> PCA to {spec.pca_components}.
- Radiomics branch: pyradiomics ({spec.radiomics_features} features; parameters in the card's
  `{NAME}.radiomics`), 2-D, spacing in mm (pixels when uncalibrated).
- Combined: StandardScaler, LASSO (5-fold CV) -> {len(selected)} features ({spec.selected_radiomics}
  radiomics + {spec.selected_dl} DL): {", ".join(selected)}; MLP -> probability of LVLNM
  (> 5 metastatic lymph nodes); decision threshold {card.decision_thresholds.get("lvlnm")} (Youden's J on
  5-fold out-of-fold training probabilities, midway in the gap below the lowest maximiser).
- Training data: {card.training_data}
- Held-out phantom figures: {json.dumps(held)}. Phantom figures say nothing about patients. The
  paper reported (its own, unpublished weights) AUC 0.839 internal and 0.789 external.

## Demo deviations from the paper

DEMO weights trained on synthetic phantoms, not for clinical use. Radiomics image types here:
{images} ({spec.radiomics_features} features; the paper extracted 1,357 from original and filtered
images, `PAPER_PARAMS` in `model_zoo.us_lvlnm.radiomics` gives 1,311 in 2-D). DenseNet121 widths
`{spec.densenet121}` (the paper's: init_features 64, growth_rate 32) at {spec.input_size} px, trained from
scratch (no ImageNet download) for {epochs} epoch(s); PCA to {spec.pca_components} components{pca_note}.
The phantoms' exact outlines stand for hand-drawn ROIs. Shape features of uncalibrated images
are in pixels, unlike every training image.

## Files

- `configs/metadata.json`: this card (`model_zoo.card.ModelCard` plus the `{NAME}` section typed by
  `model_zoo.us_lvlnm.model.LVLNMSpec`).
- `{DENSENET_FILE}`: PyTorch state dict. `{FITTED_FILE}`: PCA, StandardScaler and MLP (skops, loaded
  only with an explicit list of trusted types). `{SELECTED_FILE}`: feature names and the selected
  ones. All sha256-checked from the card.

Rebuild with `python -m model_zoo.demo {card.name}`.
"""


def train(
    out_dir: Path,
    *,
    seed: int,
    n_train: int,
    densenet_epochs: int,
    densenet121: dict[str, Any],
    radiomics_params: dict[str, Any],
    input_size: int = INPUT_SIZE,
    n_heldout: int | None = None,
    benign_share: float = 0.25,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Train the DenseNet, PCA, LASSO selection and MLP on phantoms; write a bundle in ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Bundle root to write.
    seed : int
        Seeds the phantoms (training ``seed``, held-out ``seed + 1``; their benign nodules ``+ 2``), torch
        and scikit-learn.
    n_train : int
        Training images (one nodule each); at least 20.
    densenet_epochs : int
        Fine-tuning epochs of the DenseNet121.
    densenet121 : dict
        ``densenet_classifier("densenet121", **densenet121)`` keyword arguments (written to the card).
    radiomics_params : dict
        pyradiomics parameters (:data:`~model_zoo.us_lvlnm.radiomics.LIGHT_PARAMS` or ``PAPER_PARAMS``).
    input_size : int
        DenseNet input side (the paper: 224).
    n_heldout : int, optional
        Held-out images; ``max(20, n_train // 3)`` when omitted.
    benign_share : float
        Share of benign nodules (negatives) in both sets; the rest are carcinomas, 50 % lvlnm.
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    progress : callable, optional
        ``progress(fraction_done, message)``.
    """
    if n_train < 20:
        raise ValueError(f"n_train must be at least 20 (5-fold CV of both classes), got {n_train}")
    if not 0.0 <= benign_share <= 0.5:
        raise ValueError(f"benign_share must lie in [0, 0.5], got {benign_share}")
    t0 = time.monotonic()
    report = reporter(NAME, progress)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_held = n_heldout if n_heldout is not None else max(20, n_train // 3)
    train_set, _ = cohort(seed, n_train, benign_share)
    held_set, held_ptc = cohort(seed + 1, n_held, benign_share)
    y_tr = np.array([n[3] for n in train_set])
    y_ho = np.array([n[3] for n in held_set])
    report(0.1, f"{n_train} training and {n_held} held-out phantoms ({int(y_tr.sum())} / {int(y_ho.sum())} lvlnm, "
                f"{benign_share:.0%} benign)")
    fitted = fit_parts(train_set, seed=seed, densenet_epochs=densenet_epochs, densenet121=densenet121,
                       radiomics_params=radiomics_params, input_size=input_size, device=dev, report=report)
    p_ho, dl_ho = score(fitted, held_set, dev)
    perf = _metrics(y_ho, p_ho, fitted.threshold, "heldout")
    perf["heldout_carcinoma_auc"] = round(float(auc_delong(y_ho[held_ptc], p_ho[held_ptc]).auc), 4)
    if not held_ptc.all():
        perf["heldout_benign_called_lvlnm"] = round(float(np.mean(p_ho[~held_ptc] >= fitted.threshold)), 4)
    dl_alone = float(auc_delong(y_ho, dl_ho).auc)
    report(0.9, f"LASSO lambda {fitted.alpha:.4g}: {len(fitted.selected)} features "
                f"({len(fitted.selected) - fitted.n_dl} radiomics + {fitted.n_dl} DL); held-out AUC {perf['heldout_auc']}; "
                f"DenseNet alone {dl_alone:.3f}")
    write_bundle(
        Path(out_dir), fitted, {**perf, "heldout_densenet_alone_auc": round(dl_alone, 4)}, held_set[0], float(p_ho[0]),
        version=DEMO_VERSION, demo=True, device=dev, started=t0, densenet_epochs=densenet_epochs,
        intended_use=("DEMO weights trained on synthetic B-mode phantoms only, to exercise the node end to end. "
                      "Not for clinical use; not a medical device."),
        population=("synthetic thyroid B-mode phantoms (model_zoo.phantoms.us) of carcinomas, with benign nodules as "
                    "negatives; no patients. The paper's population: papillary thyroid carcinomas before surgery"),
        training_data=(
            f"{n_train} phantom images, {1 - benign_share:.0%} carcinomas (training_set(seed={seed}, malignant=True), "
            f"50 % lvlnm) and {benign_share:.0%} benign nodules (seed {seed + 2}); true outlines; DenseNet121 "
            f"{densenet_epochs} epochs, batch 16, Adam lr 1e-3 cosine, augmented; held-out: {n_held} phantoms of the "
            f"same mix from seeds {seed + 1} and {seed + 3}"
        ),
    )
    report(1.0, f"bundle written in {time.monotonic() - t0:.0f} s")


@dataclass(frozen=True)
class Fitted:
    """Everything :func:`fit_parts` fitted, and what the card reports about it."""

    net: DenseNetClassifier
    parts: FittedParts
    spec: LVLNMSpec
    threshold: float
    alpha: float
    n_dl: int
    training_cv_auc: float
    radiomics_seconds: float

    @property
    def selected(self) -> tuple[str, ...]:
        return self.parts.selected


def fit_parts(
    train_set: list[Nodule],
    *,
    seed: int,
    densenet_epochs: int,
    densenet121: dict[str, Any],
    radiomics_params: dict[str, Any],
    input_size: int,
    device: torch.device,
    report: ProgressFn,
    checkpoints: Checkpoints | None = None,
) -> Fitted:
    """The recipe on ``(bmode, mask, spacing, label)`` nodules: DenseNet121 fine-tuned, PCA, radiomics,
    StandardScaler, LASSO selection, MLP and its Youden threshold (shared by the demo and site training)."""
    dev = device
    torch.manual_seed(seed)
    y_tr = np.array([n[3] for n in train_set])
    if len(train_set) < 10 or min(int(y_tr.sum()), int(len(y_tr) - y_tr.sum())) < 5:
        raise ValueError(f"need at least 5 nodules of each class to fit (5-fold CV), got {int(y_tr.sum())} positive "
                         f"of {len(y_tr)}")
    n_pcs = min(128, len(train_set) - 1)
    extractor = RadiomicsExtractor(radiomics_params)
    draft = LVLNMSpec(densenet121=densenet121, input_size=input_size, pca_components=n_pcs,
                      radiomics=extractor.params, radiomics_features=1, selected_dl=0, selected_radiomics=0)
    crops_tr = torch.cat([crop_resized(b, m, draft) for b, m, _, _ in train_set])
    net = densenet_classifier("densenet121", **densenet121).to(dev)
    _fine_tune(net, crops_tr, torch.from_numpy(y_tr), draft, densenet_epochs, seed, dev, report, checkpoints)
    deep_tr = deep_features(net, normalise_input(crops_tr, draft), dev)
    pca = PCA(n_components=n_pcs, svd_solver="full", random_state=seed).fit(deep_tr)
    report(0.55, f"deep features: {PENULTIMATE_FEATURES} -> PCA {n_pcs}")

    # -- radiomics ---------------------------------------------------------------------------
    t_rad = time.monotonic()
    rad_tr = [extractor.extract(b, m, s) for b, m, s, _ in train_set]
    rad_seconds = (time.monotonic() - t_rad) / len(train_set)
    rad_names = list(rad_tr[0])
    if any(list(r) != rad_names for r in rad_tr):
        raise RuntimeError("pyradiomics returned different feature sets for different nodules")
    report(0.8, f"{len(rad_names)} radiomics features per nodule, {rad_seconds:.2f} s each")

    # -- selection and classifier ----------------------------------------------------------
    names = dl_names(n_pcs) + rad_names
    x_tr = np.hstack([pca.transform(deep_tr), np.array([[r[k] for k in rad_names] for r in rad_tr])])
    scaler = StandardScaler().fit(finite_or_nan(x_tr))
    z_tr = standardise(scaler, x_tr)
    chosen, alpha = _lasso(z_tr, y_tr, names, seed)
    selected = [names[i] for i in chosen]
    n_dl = sum(s.startswith(DL_PREFIX) for s in selected)

    def mlp() -> MLPClassifier:
        return MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", alpha=1e-2, max_iter=2000, random_state=seed)

    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    oof = cross_val_predict(mlp(), z_tr[:, chosen], y_tr, cv=cv, method="predict_proba")[:, 1]
    threshold = youden_midpoint(y_tr, oof)
    clf = mlp().fit(z_tr[:, chosen], y_tr)
    spec = draft.model_copy(update={"radiomics_features": len(rad_names), "selected_dl": n_dl,
                                    "selected_radiomics": len(selected) - n_dl})
    return Fitted(net, FittedParts(pca, scaler, clf, tuple(names), tuple(selected)), spec, float(threshold), alpha,
                  n_dl, float(auc_delong(y_tr, oof).auc), rad_seconds)


def score(fitted: Fitted, nodules: list[Nodule], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """P(LVLNM) of each nodule by the combined model, and by the fine-tuned DenseNet alone (its softmax)."""
    dev = device
    spec, parts = fitted.spec, fitted.parts
    crops = torch.cat([crop_resized(b, m, spec) for b, m, _, _ in nodules])
    deep = deep_features(fitted.net, normalise_input(crops, spec), dev)
    with torch.inference_mode():
        logits = torch.cat([fitted.net(normalise_input(crops[i : i + 32], spec).to(dev)).float().cpu()
                            for i in range(0, len(crops), 32)])
    extractor = RadiomicsExtractor(spec.radiomics)
    rad_names = list(parts.feature_names[spec.pca_components:])
    rad = [extractor.extract(b, m, s) for b, m, s, _ in nodules]
    x = np.hstack([parts.pca.transform(deep), np.array([[r[k] for k in rad_names] for r in rad])])
    index = {name: i for i, name in enumerate(parts.feature_names)}
    chosen = [index[name] for name in parts.selected]
    p = parts.mlp.predict_proba(standardise(parts.scaler, x)[:, chosen])[:, 1]
    return np.asarray(p, dtype=np.float64), torch.softmax(logits, 1)[:, 1].numpy().astype(np.float64)


def write_bundle(
    out_dir: Path,
    fitted: Fitted,
    perf: dict[str, Any],
    check: Nodule,
    check_probability: float,
    *,
    version: str,
    demo: bool,
    device: torch.device,
    started: float,
    densenet_epochs: int,
    intended_use: str,
    population: str,
    training_data: str,
) -> Path:
    """Write the bundle, then check that the inference path gives ``check_probability`` on ``check``."""
    dev, t0, spec = device, started, fitted.spec
    selected = list(fitted.selected)
    for sub in ("models", "configs", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in fitted.net.state_dict().items()}, out_dir / DENSENET_FILE)
    save_fitted(out_dir, fitted.parts)
    seconds = time.monotonic() - t0
    import radiomics
    import sklearn
    import skops

    card = ModelCard(
        name=NAME,
        version=version,
        title="Large-volume lymph node metastasis from a thyroid nodule's B-mode image: DenseNet121 + radiomics "
              "+ LASSO + MLP (Ni et al. 2024 architecture)",
        demo=demo,
        intended_use=intended_use,
        population=population,
        modality="US",
        network="densenet121+radiomics+mlp",
        input=InputSpec(size=spec.input_size, channels=3, normalisation="[0, 1] crop, ImageNet mean/std per channel"),
        labels=list(LVLNM_LABELS),
        decision_thresholds={"lvlnm": round(fitted.threshold, 6)},
        weights=[WeightsFile(path=p, sha256=sha256_file(out_dir / p)) for p in (DENSENET_FILE, FITTED_FILE, SELECTED_FILE)],
        training_data=training_data,
        reported_performance={
            **perf,
            "training_cv_auc": round(fitted.training_cv_auc, 4),
            "threshold_rule": "Youden's J on 5-fold out-of-fold training probabilities, midway in the gap below",
            "lasso_alpha": round(fitted.alpha, 6),
            "radiomics_seconds_per_nodule": round(fitted.radiomics_seconds, 3),
            "training_seconds": round(seconds, 1),
            "training_device": f"{dev.type} ({platform.machine()})",
        },
    )
    metadata = card.model_dump(mode="json") | {
        NAME: spec.model_dump(mode="json"),
        "task": "probability of large-volume (> 5 nodes) lymph node metastasis of a papillary carcinoma nodule",
        "pytorch_version": torch.__version__.split("+")[0],
        "sklearn_version": sklearn.__version__,
        "pyradiomics_version": str(radiomics.__version__),
        "skops_version": skops.__version__,
        "numpy_version": np.__version__,
    }
    (out_dir / CARD_PATH).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (out_dir / DOCS_PATH).write_text(_readme(card, spec, selected, densenet_epochs), encoding="utf-8")

    # the inference path must give the training path's probability (no train/serve skew)
    model = USLVLNM.from_bundle(load_bundle(out_dir), device=dev.type)
    b, m, s, _ = check
    p_infer = model.predict(b, m, s).probability
    if abs(p_infer - check_probability) > (1e-4 if dev.type == "cpu" else 2e-2):  # fp16 autocast on CUDA
        raise RuntimeError(f"inference path gives {p_infer:.6f}, training path {check_probability:.6f} on the same nodule")
    return out_dir
