"""Train nm_graves_i131 on Graves' phantoms and write a complete bundle (demo weights).

Recipe (paper -> demo):

* data: :func:`model_zoo.phantoms.nm_graves.graves_case` (cure by gland size with 5 % label
  noise), balanced: training phantom ``i`` is ``graves_case(seed * 10_000 + i, cured=i % 2 == 1)``,
  held-out ones ``seed * 10_000 + 5_000 + i`` (disjoint). The paper: 121 patients, 8:2 split;
* input: seed 003's normalisation (:func:`model_zoo.nm_thyroid_dx.preprocess.normalise`, the
  function serving uses) at ``input_size``;
* ResNet50 (:class:`~model_zoo.nm_graves_i131.model.GravesResNet50`, the card's widths; the
  demo's are 1/8 of the paper's) trained end to end from scratch (nothing is downloaded):
  cross-entropy, Adam (weight decay 1e-4) with a one-cycle learning rate peaking at 2e-3, batch
  16; augmentation: left-right flip, rotation up to 10 degrees, translation up to 6 % of the
  field, intensity x0.85-1.15. No scaling: in these phantoms the gland's size is the outcome's
  signal. Then exact batch-norm statistics over the training images (after a few hundred steps
  at a high learning rate the running averages lag the weights);
* deep features: the global-pool output (eval mode), standardised (StandardScaler);
* LASSO: :class:`sklearn.linear_model.LassoCV` on the 0/1 label with 5-fold stratified CV (the
  lambda of minimum CV error, on a grid from lambda_max to lambda_max / 100); the non-zero
  coefficients ranked by |coefficient|, the top ``n_features`` kept (16, as the paper). When
  fewer than ``n_features`` are non-zero at that lambda, the first lambda along the path (towards
  weaker penalties) with enough is used, and it is recorded;
* random forest: :class:`sklearn.ensemble.RandomForestClassifier` (:data:`RANDOM_FOREST`,
  ``random_state=seed``) on the selected standardised features;
* decision threshold: Youden's J on 5-fold out-of-fold forest probabilities of the training set,
  midway in the gap below the lowest maximiser (:func:`model_zoo.validation.stats.youden_midpoint`);
* reported on the held-out phantoms: the forest's AUC (DeLong 95 % CI), accuracy, sensitivity,
  specificity, PPV, NPV at the threshold; the ResNet's own AUC (the paper's "ResNet50") and the
  DeLong test between the two.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LassoCV, lasso_path
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.preprocessing import StandardScaler

from model_zoo.bundle import CARD_PATH, DOCS_PATH, load_bundle, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.nm_graves_i131.model import (
    FITTED_FILE,
    GRAVES_LABELS,
    NAME,
    NETWORK,
    RESNET_FILE,
    SELECTED_FILE,
    FittedParts,
    GravesResNet50,
    GravesSpec,
    NMGravesI131,
    ResNet50Spec,
    forward_features,
    save_fitted,
)
from model_zoo.nm_thyroid_dx.preprocess import NORMALISATION, normalise
from model_zoo.phantoms.nm_graves import CURE_AREA_CUTOFF_MM2, LABEL_NOISE, GravesPhantom, graves_case, graves_dataset
from model_zoo.progress import ProgressFn, reporter
from model_zoo.site_training import Checkpoints, Stateful, one_cycle
from model_zoo.validation.stats import youden_midpoint
from model_zoo.validation.stats import auc_delong, binary_metrics, delong_test

logger = logging.getLogger(__name__)

DEMO_VERSION: Final[str] = "0.1.0-demo"
LR, WEIGHT_DECAY, BATCH = 2e-3, 1e-4, 16
RANDOM_FOREST: Final[dict[str, Any]] = {"n_estimators": 100, "min_samples_leaf": 2, "max_features": "sqrt"}
SEED_STRIDE: Final[int] = 10_000  # phantom seeds: seed * 10_000 + i (training), + 5_000 + i (held out)
HELDOUT_OFFSET: Final[int] = 5_000
# LASSO's lambda grid runs from lambda_max down to lambda_max / 100 (scikit-learn's default, / 1000, spends
# 20x the time in weak penalties that never converge on collinear deep features and are never chosen).
LASSO_EPS: Final[float] = 1e-2
# The demo (model_zoo.demo wires these): ResNet50 at 1/8 of the paper's widths, 128 px, 120 + 40 phantoms.
DEMO_RECIPE: Final[dict[str, Any]] = {"seed": 20010, "n_train": 120, "epochs": 12, "input_size": 128, "n_features": 16}
DEMO_NETWORK: Final[dict[str, Any]] = {"resnet50": {"block_inplanes": [8, 16, 32, 64]}}
DEMO_MINUTES: Final[float] = 0.5  # 2 CPU cores, one torch thread: about 20-45 s


def phantom_cases(seed: int, n: int, heldout: bool) -> list[GravesPhantom]:
    """``n`` balanced phantoms (odd ``i`` cured) of the training or the held-out set."""
    base = seed * SEED_STRIDE + (HELDOUT_OFFSET if heldout else 0)
    return [graves_case(base + i, cured=i % 2 == 1) for i in range(n)]


def to_inputs(cases: list[GravesPhantom], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Network inputs ``(N, 1, size, size)`` and labels ``(N,)`` (1: cured)."""
    x = torch.cat([normalise(case.image, size) for case in cases])
    return x, np.array([int(case.cured) for case in cases], dtype=np.int64)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random left-right flip, rotation (up to 10 degrees), translation (up to 6 %) and intensity
    scale (x0.85-1.15) of ``(N, 1, S, S)`` inputs in [0, 1]; no scaling (size is the signal)."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    angle = u(-math.pi / 18, math.pi / 18)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos, -sin, u(-0.06, 0.06)], dim=1),
        torch.stack([sin, cos, u(-0.06, 0.06)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (y * u(0.85, 1.15).view(n, 1, 1, 1)).clamp_(0.0, 1.0)


@torch.no_grad()
def recalibrate_bn(net: GravesResNet50, x: torch.Tensor, device: torch.device) -> None:
    """Recompute batch-norm running statistics over ``x`` (cumulative average, no augmentation)."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    for i in range(0, len(x), 32):
        net.features(x[i : i + 32].to(device))
    for bn in bns:
        bn.momentum = 0.1
    net.eval()


def fit_resnet(
    net: GravesResNet50, x: torch.Tensor, y: np.ndarray, epochs: int, seed: int, device: torch.device,
    report: ProgressFn, checkpoints: Checkpoints | None = None,
) -> None:
    """Train ``net`` end to end on cured / not cured (see the module's recipe), then recalibrate BN.

    With ``checkpoints``, the network, optimiser, schedule and random stream are saved after every
    epoch and an interrupted run resumes from the last one (the result is that of an uninterrupted run).
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(y)
    steps = math.ceil(len(x) / BATCH)
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = one_cycle(opt, LR, max(1, epochs * steps), 0.2)
    state: dict[str, Stateful] = {"net": net, "opt": opt, "sched": sched}
    done = checkpoints.restore(state, {"gen": gen}) if checkpoints is not None else 0
    if done:
        report(0.05 + 0.7 * done / max(1, epochs), f"ResNet50 resumed after epoch {done}/{epochs}")
    for epoch in range(done, epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        loss_sum, correct = 0.0, 0
        for b in range(steps):
            idx = order[b * BATCH : (b + 1) * BATCH]
            xb, yb = augment(x[idx], gen).to(device), labels[idx].to(device)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
        if checkpoints is not None:
            checkpoints.save(epoch + 1, state, {"gen": gen})
        report(0.05 + 0.7 * (epoch + 1) / epochs,
               f"ResNet50 epoch {epoch + 1}/{epochs}: loss {loss_sum / len(x):.3f}, accuracy {correct / len(x):.3f}")
    recalibrate_bn(net, x, device)


def lasso_select(z: np.ndarray, y: np.ndarray, n_features: int, seed: int) -> tuple[list[int], dict[str, Any]]:
    """The ``n_features`` columns of ``z`` with the largest |LASSO coefficient| (see the recipe).

    Returns
    -------
    tuple
        Column indices by decreasing |coefficient|, and the record for ``selected_features.json``
        (``alpha``, ``cv_alpha``, ``nonzero``, ``coefficients`` of the selected columns).
    """
    target = y.astype(np.float64)
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    lasso = LassoCV(eps=LASSO_EPS, cv=cv, max_iter=20000, random_state=seed).fit(z, target)
    alpha, coef = float(lasso.alpha_), np.asarray(lasso.coef_, dtype=np.float64)
    if np.count_nonzero(coef) < n_features:
        alphas, coefs, _ = lasso_path(z, target, alphas=lasso.alphas_, max_iter=20000)  # same grid
        order = np.argsort(-alphas)  # strongest penalty first
        weaker = [k for k in order if alphas[k] <= alpha]
        enough = [k for k in weaker if np.count_nonzero(coefs[:, k]) >= n_features]
        if not enough:
            raise RuntimeError(
                f"LASSO keeps at most {int(max(np.count_nonzero(coefs[:, k]) for k in order))} of "
                f"{z.shape[1]} features on its path, fewer than the {n_features} asked for"
            )
        logger.info("LASSO at the CV lambda %.4g kept %d features; lambda %.4g keeps %d",
                    alpha, np.count_nonzero(coef), alphas[enough[0]], np.count_nonzero(coefs[:, enough[0]]))
        alpha, coef = float(alphas[enough[0]]), np.asarray(coefs[:, enough[0]], dtype=np.float64)
    nonzero = np.flatnonzero(coef)
    ranked = [int(i) for i in nonzero[np.argsort(-np.abs(coef[nonzero]), kind="stable")]][:n_features]
    record = {
        "method": "LassoCV on the 0/1 label, 5-fold stratified CV, lambda grid down to lambda_max / 100; "
                  "top features by |coefficient|",
        "cv_alpha": round(float(lasso.alpha_), 8),
        "alpha": round(alpha, 8),
        "nonzero": int(len(nonzero)),
        "coefficients": [round(float(coef[i]), 8) for i in ranked],
    }
    return ranked, record


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
    }


def _readme(card: ModelCard, spec: GravesSpec, epochs: int, record: dict[str, Any]) -> str:
    perf = card.reported_performance
    held = {k: v for k, v in perf.items() if k.startswith("heldout")}
    widths = list(spec.resnet50.block_inplanes)
    rows = "\n".join(f"| {x.key} | {x.coding_scheme} {x.code_value} | {x.code_meaning} |" for x in card.labels)
    banner = ("DEMO weights trained on phantoms, not for clinical use." if card.demo else
              "Site weights (`demo: false`): validate them locally (`thyroid-node validate`) before clinical use.")
    held_line = (f"- Held-out phantom figures: {json.dumps(held)}. Phantom figures say nothing about patients."
                 if card.demo else f"- Held-out figures (studies held out by study): {json.dumps(held)}.")
    outcome = (f"""- The outcome is a phantom convention (`model_zoo.phantoms.nm_graves`): cured when the anterior gland
  area is below {CURE_AREA_CUTOFF_MM2:.0f} mm², labels flipped with probability {LABEL_NOISE}. The
  augmentation has no scaling because size is the signal there.
""" if card.demo else """- The augmentation has no scaling (the demo's recipe: in its phantoms the gland's size is the signal).
""")
    rebuild = (f"Rebuild with `python -m model_zoo.demo {card.name}`." if card.demo else
               f"Retrain with `thyroid-node train {card.name}` (`model_zoo/nm_graves_i131/site.py`).")
    return f"""# {card.title} ({card.ident})

**{card.intended_use}**

{banner}

- Modality: {card.modality}. Population: {card.population}
- Input: {card.input.size} x {card.input.size}, {card.input.channels} channel; {card.input.normalisation}.
  Frame choice as seed 003 (`model_zoo.nm_thyroid_dx.preprocess.prepare`).
- ResNet50: MONAI `ResNet`, bottleneck blocks {list(spec.resnet50.layers)}, block_inplanes {widths}, 7x7
  stride-2 stem, 1x1 shortcut convolutions without bias (`bias_downsample=False`), global average pool
  ({spec.resnet50.features} features) -> FC -> not cured / cured. Trained end to end; Grad-CAM of the
  "cured" logit on `backbone.layer4`.
- Deep features -> StandardScaler -> LASSO ({record["method"]}; lambda {record["alpha"]},
  {record["nonzero"]} non-zero) -> {spec.n_features} features -> random forest
  `{spec.random_forest}` -> P(cured). Decision threshold {card.decision_thresholds.get("cured")}:
  {perf.get("threshold_rule")}.
- Training data: {card.training_data}
{held_line} The paper
  reported (its own, unpublished weights) ResNet50 AUC 0.828 train / 0.806 validation and a random forest on
  16 deep features with test AUC 0.924.

## {"Demo deviations" if card.demo else "Deviations"} from the paper

- Widths {widths} (the paper's ResNet50: [64, 128, 256, 512], 2,048 pooled features) at {spec.input_size} px
  (the paper does not give its input size), trained from scratch (no ImageNet download) for {epochs} epochs
  with a one-cycle learning rate and batch-norm recalibration; the paper's optimiser settings are not
  published.
{outcome}- Which LASSO the paper ran is not stated: here LassoCV on the 0/1 label (as seed 002); the random
  forest's settings are not stated either (scikit-learn's, with the arguments above).

## Labels (output order)

| key | code | meaning |
|---|---|---|
{rows}

Private 99THYAI codes: no SNOMED CT concept for the outcome could be confirmed offline (see
`model_zoo/nm_graves_i131/model.py`).

## Files

- `configs/metadata.json`: this card (`model_zoo.card.ModelCard` plus the `nm_graves` section typed by
  `model_zoo.nm_graves_i131.model.GravesSpec`).
- `{RESNET_FILE}`: PyTorch state dict of `GravesResNet50`. `{FITTED_FILE}`: StandardScaler and random forest
  (skops, loaded only with an explicit list of trusted types). `{SELECTED_FILE}`: the selected columns and
  the LASSO record. All sha256-checked from the card.

{rebuild}
"""


def train(
    out_dir: Path,
    *,
    seed: int,
    n_train: int,
    epochs: int,
    resnet50: dict[str, Any],
    input_size: int,
    n_features: int = 16,
    n_heldout: int | None = None,
    random_forest: dict[str, Any] | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Train the ResNet50, LASSO selection and random forest on phantoms; write a bundle.

    Parameters
    ----------
    out_dir : pathlib.Path
        Bundle root to write (created; existing files overwritten).
    seed : int
        Seeds the phantoms (see :func:`phantom_cases`), torch and scikit-learn.
    n_train : int
        Training phantoms (balanced), 20 to 5,000.
    epochs : int
        ResNet50 epochs.
    resnet50 : dict
        :class:`~model_zoo.nm_graves_i131.model.ResNet50Spec` fields (``block_inplanes``...); empty: the paper's.
    input_size : int
        Network input side; written to the card, where it drives pre-processing.
    n_features : int
        LASSO-selected deep features fed to the forest (the paper: 16).
    n_heldout : int, optional
        Held-out phantoms (balanced); ``max(20, n_train // 3)`` when omitted.
    random_forest : dict, optional
        ``RandomForestClassifier`` arguments; :data:`RANDOM_FOREST` when omitted (``random_state`` is ``seed``).
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    progress : callable, optional
        ``progress(fraction_done, message)``.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    n_held = n_heldout if n_heldout is not None else max(20, n_train // 3)
    if not 20 <= n_train <= HELDOUT_OFFSET or not 4 <= n_held <= SEED_STRIDE - HELDOUT_OFFSET:
        raise ValueError(f"need 20 <= n_train <= {HELDOUT_OFFSET} and 4 <= n_heldout <= 5000, got {n_train}, {n_held}")
    t0 = time.monotonic()
    report = reporter(NAME, progress)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = make_spec(input_size, resnet50, n_features, random_forest, seed)
    train_cases, held_cases = phantom_cases(seed, n_train, False), phantom_cases(seed, n_held, True)
    x_tr, y_tr = to_inputs(train_cases, input_size)
    x_ho, y_ho = to_inputs(held_cases, input_size)
    noisy = sum(c.noisy for c in held_cases)
    report(0.05, f"{n_train} training and {n_held} held-out phantoms ({noisy} held-out labels flipped by noise)")
    fitted = fit_pipeline(x_tr, y_tr, spec, epochs=epochs, seed=seed, device=dev, report=report)
    ds, _ = graves_dataset(held_cases[0].seed, held_cases[0].cured)
    return write_bundle(
        out_dir, fitted, x_ho, y_ho, version=DEMO_VERSION, demo=True, device=dev, report=report, started=t0,
        intended_use=("DEMO weights trained on synthetic scintigraphy phantoms only, to exercise the node end to "
                      "end. Not for clinical use; not a medical device."),
        population=("synthetic Graves' disease 99mTc-pertechnetate planar thyroid phantoms (model_zoo.phantoms."
                    "nm_graves); no patients. The paper's population: Graves' disease before a first I-131 therapy"),
        training_data=(
            f"{n_train} balanced Graves' phantoms (graves_case(seed {seed} * 10000 + i)), cured when the gland "
            f"area < {CURE_AREA_CUTOFF_MM2:.0f} mm2 with {LABEL_NOISE:.0%} label noise; ResNet50 {epochs} epochs, "
            f"batch {BATCH}, Adam one-cycle lr peak {LR}, weight decay {WEIGHT_DECAY}, flip/rotation/translation/"
            f"intensity augmentation; held-out: {n_held} balanced phantoms from disjoint seeds"
        ),
        extra_performance={"heldout_noisy_labels": int(noisy)},
        inference_check=ds,
    )


def make_spec(input_size: int, resnet50: dict[str, Any], n_features: int, random_forest: dict[str, Any] | None,
              seed: int) -> GravesSpec:
    """The card's ``nm_graves`` section (``random_state`` of the forest is ``seed``)."""
    rf_kwargs = {**(RANDOM_FOREST if random_forest is None else random_forest), "random_state": seed}
    return GravesSpec(input_size=input_size, resnet50=ResNet50Spec.model_validate(resnet50), n_features=n_features,
                      random_forest=rf_kwargs)


@dataclass
class FittedPipeline:
    """The whole seed-001 pipeline fitted on one training set: ResNet50, scaler, LASSO columns, forest."""

    spec: GravesSpec
    epochs: int
    net: GravesResNet50
    scaler: StandardScaler
    chosen: list[int]
    record: dict[str, Any]
    forest: RandomForestClassifier
    threshold: float  # Youden's J on the out-of-fold training probabilities
    training_cv_auc: float  # AUC of those out-of-fold probabilities

    def predict(self, x: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """P(cured) of the forest and of the ResNet50 alone, for inputs ``(N, 1, S, S)``."""
        feats, p_resnet = forward_features(self.net, x, device)
        z = self.scaler.transform(feats)
        return self.forest.predict_proba(z[:, self.chosen])[:, 1], p_resnet


def fit_pipeline(
    x: torch.Tensor, y: np.ndarray, spec: GravesSpec, *, epochs: int, seed: int, device: torch.device,
    report: ProgressFn, checkpoints: Checkpoints | None = None,
) -> FittedPipeline:
    """ResNet50 end to end, then deep features, LASSO selection, threshold and random forest.

    The recipe of the module's docstring, shared by the phantom demo (:func:`train`) and a site's
    own studies (:mod:`model_zoo.nm_graves_i131.site`). ``checkpoints`` makes the ResNet50's
    epochs resumable (the scikit-learn steps take seconds and are simply redone).
    """
    torch.manual_seed(seed)
    net = GravesResNet50(spec.resnet50).to(device)
    fit_resnet(net, x, y, epochs, seed, device, report, checkpoints)
    feats, _ = forward_features(net, x, device)
    report(0.8, f"ResNet50 trained; {feats.shape[1]} deep features")
    scaler = StandardScaler().fit(feats)
    z = scaler.transform(feats)
    chosen, record = lasso_select(z, y, spec.n_features, seed)
    rf_kwargs = dict(spec.random_forest)
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    oof = cross_val_predict(RandomForestClassifier(**rf_kwargs), z[:, chosen], y, cv=cv,
                            method="predict_proba")[:, 1]
    threshold = youden_midpoint(y, oof)
    forest = RandomForestClassifier(**rf_kwargs).fit(z[:, chosen], y)
    report(0.85, f"LASSO kept {record['nonzero']} non-zero, {len(chosen)} used; forest fitted")
    return FittedPipeline(spec, epochs, net, scaler, chosen, record, forest, threshold,
                          float(auc_delong(y, oof).auc))


def write_bundle(
    out_dir: Path,
    fitted: FittedPipeline,
    x_ho: torch.Tensor,
    y_ho: np.ndarray,
    *,
    version: str,
    demo: bool,
    device: torch.device,
    report: ProgressFn,
    started: float,
    intended_use: str,
    population: str,
    training_data: str,
    extra_performance: dict[str, Any] | None = None,
    inference_check: Dataset | None = None,
) -> Path:
    """Evaluate ``fitted`` on the held-out inputs and write the bundle (card, weights, README).

    ``inference_check``: the DICOM dataset of held-out input 0; the bundle is loaded back and must
    give, through the serving path (DICOM -> prepare -> ...), the probability the training path gave.
    """
    dev, t0, spec = device, started, fitted.spec
    p_ho, resnet_ho = fitted.predict(x_ho, dev)
    perf = _metrics(y_ho, p_ho, fitted.threshold, "heldout")
    resnet = _metrics(y_ho, resnet_ho, 0.5, "heldout_resnet")
    versus = delong_test(y_ho, p_ho, resnet_ho)
    report(0.9, f"held-out: forest AUC {perf['heldout_auc']}, ResNet50 alone AUC {resnet['heldout_resnet_auc']}")

    out = Path(out_dir)
    for sub in ("models", "configs", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in fitted.net.state_dict().items()}, out / RESNET_FILE)
    save_fitted(out, FittedParts(fitted.scaler, fitted.forest, tuple(fitted.chosen), fitted.record))
    seconds = time.monotonic() - t0
    import sklearn
    import skops

    card = ModelCard(
        name=NAME,
        version=version,
        title="Cure after a first I-131 therapy of Graves' disease from 99mTc-pertechnetate scintigraphy: "
              "ResNet50 + LASSO-selected deep features + random forest (seed 001 architecture)",
        demo=demo,
        intended_use=intended_use,
        population=population,
        modality="NM",
        network=NETWORK,
        input=InputSpec(size=spec.input_size, channels=1, normalisation=NORMALISATION),
        labels=list(GRAVES_LABELS),
        decision_thresholds={"cured": round(fitted.threshold, 6)},
        weights=[WeightsFile(path=p, sha256=sha256_file(out / p)) for p in (RESNET_FILE, FITTED_FILE, SELECTED_FILE)],
        training_data=training_data,
        reported_performance={
            **perf,
            "heldout_n": int(len(y_ho)),
            **(extra_performance or {}),
            **{k: v for k, v in resnet.items() if k in ("heldout_resnet_auc", "heldout_resnet_auc_ci95",
                                                         "heldout_resnet_accuracy")},
            "heldout_forest_vs_resnet_delong_p": round(versus.p_value, 4),
            "training_cv_auc": round(fitted.training_cv_auc, 4),
            "threshold_rule": "Youden's J on 5-fold out-of-fold training probabilities, midway in the gap below",
            "lasso_alpha": fitted.record["alpha"],
            "lasso_nonzero": fitted.record["nonzero"],
            "training_seconds": round(seconds, 1),
            "training_device": f"{dev.type} ({platform.machine()})",
        },
    )
    metadata = card.model_dump(mode="json") | {
        "nm_graves": spec.model_dump(mode="json"),
        "task": "probability that a first I-131 therapy cures Graves' disease, from the pre-treatment scintigram",
        "pytorch_version": torch.__version__.split("+")[0],
        "sklearn_version": sklearn.__version__,
        "skops_version": skops.__version__,
        "numpy_version": np.__version__,
    }
    (out / CARD_PATH).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (out / DOCS_PATH).write_text(_readme(card, spec, fitted.epochs, fitted.record), encoding="utf-8")

    if inference_check is not None:  # the serving path (DICOM -> prepare -> ...) must give the training path's
        model = NMGravesI131.from_bundle(load_bundle(out), device=dev.type)
        p_infer = model.predict(inference_check).probability_cured
        if abs(p_infer - float(p_ho[0])) > (1e-6 if dev.type == "cpu" else 5e-2):  # fp16 autocast on CUDA
            raise RuntimeError(f"inference path gives {p_infer:.6f}, training path {p_ho[0]:.6f} on the same image")
    report(1.0, f"bundle written in {time.monotonic() - t0:.0f} s")
    return out
