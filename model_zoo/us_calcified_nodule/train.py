"""Train us_calcified_nodule on B-mode phantoms and write a complete bundle (demo weights).

Recipe (paper -> demo):

* crops as at inference (:func:`~model_zoo.us_calcified_nodule.model.nodule_box` +
  :func:`~model_zoo.us_calcified_nodule.model.crop_input`): the TRUE mask's bounding rectangle
  plus the card's margin (the paper cropped hand-drawn rectangles), resized to each backbone's
  input size; computed once, before the first epoch;
* augmentation per batch (torch ops): horizontal flip, rotation +-10 degrees, scale 0.9-1.1,
  shift +-5 %, contrast x0.8-1.25, brightness +-0.05, Gaussian noise sigma <= 0.03. No vertical
  flip: it would put a macrocalcification's acoustic shadow above it;
* the paper's optimisation: cross-entropy on the 2 logits, Adam lr 1e-3, learning rate halved when
  the (training) accuracy has not improved for 5 epochs, batch 8; the paper ran 300 epochs from
  ImageNet weights, the demo a few epochs from scratch (no downloads) with narrower networks and
  smaller inputs (the card's ``us_calcified`` section records them);
* after the last epoch the BatchNorm statistics are re-estimated over the un-augmented training
  crops (:func:`recalibrate_batchnorm`): a few epochs leave the running averages behind the weights;
* phantoms: :func:`model_zoo.phantoms.us.training_set` (balanced benign / malignant; malignant =
  microcalcifications + irregular margin, benign = none or macrocalcification + smooth oval);
  held-out: another set drawn from ``seed + HOLDOUT_SEED_OFFSET``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, Final

import monai
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from model_zoo.bundle import CARD_PATH, DOCS_PATH, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.phantoms.us import USPhantom, training_set
from model_zoo.progress import ProgressFn, reporter
from model_zoo.site_training import Checkpoints, Stateful
from model_zoo.us_calcified_nodule.model import (
    BACKBONES,
    NETWORK,
    US_CALCIFIED_LABELS,
    WEIGHTS_FILES,
    USCalcifiedSpec,
    build_network,
    crop_input,
    nodule_box,
    to_network,
)

logger = logging.getLogger(__name__)

NAME: Final[str] = "us_calcified_nodule"
DEMO_VERSION: Final[str] = "0.1.0-demo"
HOLDOUT_SEED_OFFSET: Final[int] = 500_009
BATCH: Final[int] = 8
LR: Final[float] = 1e-3
PLATEAU_PATIENCE: Final[int] = 5
PLATEAU_FACTOR: Final[float] = 0.5
MALIGNANT: Final[int] = 1  # index of "malignant" in US_CALCIFIED_LABELS

#: The demo bundle's recipe, for model_zoo.demo: ``train(path, seed=..., n_train=..., epochs=...,
#: xception=networks["xception"], densenet169=networks["densenet169"], input_sizes=...)``.
DEMO_RECIPE: Final[dict[str, Any]] = {
    "seed": 40040,
    "n_train": 80,
    "epochs": 10,
    "networks": {"xception": {"width": 0.125}, "densenet169": {"init_features": 8, "growth_rate": 4}},
    "input_sizes": {"xception": 96, "densenet169": 96},
}
#: Rough build time of the demo bundle on 2 shared CPU cores (phantoms, both backbones, evaluation).
DEMO_MINUTES: Final[float] = 2.0


def phantom_crops(
    phantoms: list[USPhantom], sizes: set[int], margin: float
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Every nodule's crop at each size, and its label (1 = malignant).

    Returns
    -------
    tuple
        ``{size: (N, size, size) float32 grey in [0, 1]}`` and ``(N,)`` int64 labels.
    """
    crops: dict[int, list[torch.Tensor]] = {s: [] for s in sizes}
    labels: list[int] = []
    for ph in phantoms:
        grey = ph.image.astype(np.float32) / 255.0
        for nodule in ph.nodules:
            box = nodule_box(nodule.mask, margin)
            for s in sizes:
                crops[s].append(crop_input(grey, box, s))
            labels.append(MALIGNANT if nodule.malignant else 1 - MALIGNANT)
    return {s: torch.stack(v) for s, v in crops.items()}, torch.tensor(labels, dtype=torch.int64)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips, small rotations/scales/shifts, contrast, brightness and noise of ``(B, S, S)``
    grey crops in [0, 1] (a new tensor, clipped to [0, 1])."""
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None], x.flip(-1), x)
    angle = torch.deg2rad(uniform(-10.0, 10.0))
    scale = uniform(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin, uniform(-0.05, 0.05)], dim=1),
        torch.stack([sin, cos, uniform(-0.05, 0.05)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [b, 1, *x.shape[1:]], align_corners=False)
    x = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = (x - mean) * uniform(0.8, 1.25)[:, None, None] + mean + uniform(-0.05, 0.05)[:, None, None]
    x = x + uniform(0.0, 0.03)[:, None, None] * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)


def malignant_scores(net: nn.Module, crops: torch.Tensor, spec: USCalcifiedSpec, dev: torch.device) -> np.ndarray:
    """P(malignant) of each ``(N, S, S)`` crop (eval mode, batches of 32)."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), 32):
            logits = net(to_network(crops[i : i + 32], spec).to(dev))
            out.append(torch.softmax(logits.float(), dim=1)[:, MALIGNANT].cpu())
    return torch.cat(out).numpy()


def heldout_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, AUC, sensitivity and specificity of scores ``p`` against labels ``y`` (1 = malignant)."""
    pred = p >= threshold
    pos, neg = y == 1, y == 0
    auc = float(roc_auc_score(y, p)) if pos.any() and neg.any() else float("nan")
    return {
        "accuracy": round(float((pred == pos).mean()), 4),
        "auc": round(auc, 4),
        "sensitivity": round(float(pred[pos].mean()), 4) if pos.any() else float("nan"),
        "specificity": round(float((~pred[neg]).mean()), 4) if neg.any() else float("nan"),
    }


def recalibrate_batchnorm(net: nn.Module, crops: torch.Tensor, spec: USCalcifiedSpec, dev: torch.device) -> None:
    """Re-estimate every BatchNorm's running mean/variance as the plain average over ``crops``
    (un-augmented), with the final weights. After a short training the exponential running averages
    lag behind weights that moved fast, which skews the eval-mode outputs (their calibration)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for i in range(0, len(crops), BATCH):
            if len(crops[i : i + BATCH]) > 1:
                net(to_network(crops[i : i + BATCH], spec).to(dev))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


def fit(
    net: nn.Module,
    crops: torch.Tensor,
    labels: torch.Tensor,
    spec: USCalcifiedSpec,
    epochs: int,
    gen: torch.Generator,
    dev: torch.device,
    on_epoch: ProgressFn,
    checkpoints: Checkpoints | None = None,
) -> list[float]:
    """The paper's optimisation on pre-computed crops; returns the training accuracy per epoch.

    With ``checkpoints``, the state after each epoch (network, optimiser, plateau schedule, the
    augmentation stream ``gen`` and torch's global stream, which dropout draws from) is saved, and
    an interrupted run resumes from it with the result of an uninterrupted one.
    """
    net.to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=PLATEAU_FACTOR,
                                                         patience=PLATEAU_PATIENCE)
    steps = math.ceil(len(crops) / BATCH)
    history: list[float] = []
    state: dict[str, Stateful] = {"net": net, "opt": opt, "plateau": plateau}
    streams = {"gen": gen, "torch": torch.default_generator}
    done = 0
    if checkpoints is not None:
        extra: dict[str, Any] = {}
        done = checkpoints.restore(state, streams, extra)
        history = [float(a) for a in extra.get("history", [])]
        if done:
            on_epoch(done / max(1, epochs), f"resumed after epoch {done}/{epochs}")
    for epoch in range(done, epochs):
        net.train()
        order = torch.randperm(len(crops), generator=gen)
        loss_sum, correct = 0.0, 0
        for s in range(steps):
            idx = order[s * BATCH : (s + 1) * BATCH]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = to_network(augment(crops[idx], gen), spec).to(dev)
            y = labels[idx].to(dev)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(dim=1) == y).sum())
        acc = correct / len(crops)
        plateau.step(acc)
        history.append(acc)
        if checkpoints is not None:
            checkpoints.save(epoch + 1, state, streams, {"history": history})
        on_epoch((epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}: loss {loss_sum / len(crops):.3f}, "
                                       f"training accuracy {acc:.3f}, lr {opt.param_groups[0]['lr']:.2g}")
    recalibrate_batchnorm(net, crops, spec, dev)
    return history


def _readme(card: ModelCard, spec: USCalcifiedSpec, perf: dict[str, Any]) -> str:
    nets = {b: spec.network_kwargs(b) for b in spec.backbones}
    held = {k: v for k, v in perf.items() if k.startswith("heldout")}
    return f"""# {card.title} ({card.ident})

**{card.intended_use}**

- Modality: {card.modality}. Population: {card.population}
- Input: the nodule mask's bounding rectangle plus {spec.crop_margin:.0%} of its height/width on each
  side (clipped to the B-mode region), resized to {', '.join(f'{b} {spec.input_size(b)}' for b in spec.backbones)}
  pixels square (aspect not kept, as the paper), grey replicated to 3 channels, normalised with
  mean {list(spec.mean)} and std {list(spec.std)}.
- Networks: {', '.join(spec.backbones)} (`model_zoo.nets.xception.Xception`,
  `model_zoo.nets.densenet2d.densenet_classifier`), arguments {json.dumps(nets)}; the paper's head
  FC 1024 -> 512 -> 512 -> 2 with dropout 0.5; softmax. P(malignant) is the mean over the backbones
  the node runs; decision threshold {card.decision_thresholds.get('malignant')}. Grad-CAM of the
  malignant logit on each network's last convolutional block, averaged.
- Training data: {card.training_data}
- Held-out phantom figures: {json.dumps(held)}. Phantom figures say nothing about patients. The paper
  (its own, unpublished weights) reported on its external test set: Xception AUC 0.970 (accuracy
  0.929), DenseNet169 AUC 0.959 (accuracy 0.906).

## Deviations from the paper (Chen et al. 2023)

- No ImageNet initialisation (nothing is downloaded): trained from scratch.
- Narrower networks and smaller inputs than 299 / 224 so that the demo trains in CPU minutes
  (a site's bundle: empty `xception` / `densenet169` arguments and `input_sizes` 299 / 224 give
  the paper's networks).
- {perf.get('epochs')} epochs instead of 300; no 3-fold cross-validation; no "mixing" augmentation and no
  vertical flip; the learning-rate plateau watches the training accuracy; BatchNorm statistics are
  re-estimated over the training crops after the last epoch.
- Crops come from the phantom's true outline (the paper's came from radiologists' rectangles);
  at inference the outline comes from the node's segmentation or a site's ROI.
- The node averages the backbones it runs; the paper reported each network alone.

## Files

- `configs/metadata.json`: this card (`model_zoo.card.ModelCard`, plus the `us_calcified` section
  typed by `model_zoo.us_calcified_nodule.model.USCalcifiedSpec`).
- {', '.join(f'`{WEIGHTS_FILES[b]}`' for b in spec.backbones)}: PyTorch state dicts; sha256 in the card.

Rebuild with `python -m model_zoo.demo {card.name}`. A site's own weights: a bundle of the same
layout with `demo: false`.
"""


def train(
    out_dir: Path,
    *,
    seed: int,
    n_train: int,
    epochs: int,
    xception: dict[str, Any],
    densenet169: dict[str, Any],
    input_sizes: dict[str, int] | None = None,
    progress: ProgressFn | None = None,
    num_threads: int | None = None,
) -> None:
    """Train both backbones on B-mode phantoms and write a bundle into ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Bundle root to write (created if missing).
    seed : int
        Seeds the phantoms, initialisation, shuffling and augmentation.
    n_train : int
        Training phantoms (one nodule each, half malignant); ``max(20, n_train // 2)`` more from
        ``seed + HOLDOUT_SEED_OFFSET`` are held out.
    epochs : int
        Epochs per backbone.
    xception, densenet169 : dict
        :class:`~model_zoo.nets.xception.Xception` and
        :func:`~model_zoo.nets.densenet2d.densenet_classifier` keyword arguments (``width``;
        ``init_features``, ``growth_rate``), written to the card.
    input_sizes : dict, optional
        Square input side per backbone; the paper's 299 / 224 when omitted.
    progress : callable, optional
        ``progress(fraction_done, message)``.
    num_threads : int, optional
        CPU threads for torch during this call only (restored afterwards); ``None`` leaves torch's
        setting alone. On a CPU shared with other jobs, 1 is several times faster than 2: OpenMP
        workers spin-waiting for a busy core stall every small operation.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        _train(Path(out_dir), seed=seed, n_train=n_train, epochs=epochs, xception=xception,
               densenet169=densenet169, input_sizes=input_sizes, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _train(
    out_dir: Path,
    *,
    seed: int,
    n_train: int,
    epochs: int,
    xception: dict[str, Any],
    densenet169: dict[str, Any],
    input_sizes: dict[str, int] | None,
    progress: ProgressFn | None,
) -> None:
    t0 = time.monotonic()
    report = reporter(NAME, progress)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = USCalcifiedSpec(backbones=BACKBONES, xception=dict(xception), densenet169=dict(densenet169),
                           **({"input_sizes": dict(input_sizes)} if input_sizes else {}))
    n_hold = max(20, n_train // 2)
    train_ph = training_set(seed, n_train)
    hold_ph = training_set(seed + HOLDOUT_SEED_OFFSET, n_hold)
    sizes = {spec.input_size(b) for b in spec.backbones}
    x_tr, y_tr = phantom_crops(train_ph, sizes, spec.crop_margin)
    x_ho, y_ho = phantom_crops(hold_ph, sizes, spec.crop_margin)
    t_data = time.monotonic() - t0
    report(0.1, f"{len(y_tr)} training and {len(y_ho)} held-out nodule crops ready in {t_data:.0f} s")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    nets, perf = fit_backbones(spec, x_tr, y_tr, x_ho, y_ho, epochs=epochs, gen=gen, dev=dev, report=report)
    seconds = time.monotonic() - t0
    perf.update({"epochs": epochs, "training_seconds": round(seconds, 1), "phantom_seconds": round(t_data, 1),
                 "training_device": f"{dev.type} ({platform.machine()}, {torch.get_num_threads()} threads)"})
    report(0.96, "held-out: " + ", ".join(f"{k} {v}" for k, v in perf.items() if k.startswith("heldout")))
    write_bundle(
        out_dir, nets, spec, perf, version=DEMO_VERSION, demo=True,
        intended_use=(
            "DEMO weights trained on synthetic B-mode thyroid phantoms only, to exercise the node end to end. "
            "Not for clinical use; not a medical device."
        ),
        population="synthetic B-mode thyroid phantoms with one nodule each (model_zoo.phantoms.us); no patients",
        training_data=(
            f"{n_train} B-mode phantoms (model_zoo.phantoms.us.training_set, seed {seed}), half malignant "
            f"(microcalcifications, irregular margin) and half benign (none or macrocalcification, smooth oval); "
            f"crops of the true outline's box + {spec.crop_margin:.0%} margin; {epochs} epochs per backbone, batch {BATCH}, "
            f"cross-entropy, Adam lr {LR} halved after a {PLATEAU_PATIENCE}-epoch accuracy plateau; flips, rotation, "
            f"scale, shift, contrast, noise; held-out: {n_hold} phantoms of seed {seed + HOLDOUT_SEED_OFFSET}"
        ),
    )
    report(1.0, f"bundle written in {seconds:.0f} s")


def fit_backbones(
    spec: USCalcifiedSpec,
    x_tr: dict[int, torch.Tensor],
    y_tr: torch.Tensor,
    x_ho: dict[int, torch.Tensor],
    y_ho: torch.Tensor,
    *,
    epochs: int,
    gen: torch.Generator,
    dev: torch.device,
    report: ProgressFn,
    checkpoints: Callable[[str], Checkpoints] | None = None,
    span: tuple[float, float] = (0.1, 0.85),
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Build and train each backbone in turn on its crops, score the held-out crops.

    Returns the networks and the held-out figures: per backbone (``heldout_auc_xception``...) and
    of their mean probability (``heldout_auc``...), at threshold 0.5. Shared by the demo and site
    training; ``checkpoints(backbone)`` gives each backbone's checkpoint stage.
    """
    threshold = 0.5
    perf: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    nets: dict[str, nn.Module] = {}
    share = span[1] / len(spec.backbones)
    for i, backbone in enumerate(spec.backbones):
        t1 = time.monotonic()
        net = build_network(backbone, spec)
        size = spec.input_size(backbone)
        start = span[0] + i * share

        def on_epoch(frac: float, msg: str, _b: str = backbone, _start: float = start) -> None:
            report(_start + share * frac, f"{_b} {msg}")

        fit(net, x_tr[size], y_tr, spec, epochs, gen, dev, on_epoch,
            checkpoints(backbone) if checkpoints is not None else None)
        scores[backbone] = malignant_scores(net, x_ho[size], spec, dev)
        for key, value in heldout_metrics(scores[backbone], y_ho.numpy(), threshold).items():
            perf[f"heldout_{key}_{backbone}"] = value
        perf[f"training_seconds_{backbone}"] = round(time.monotonic() - t1, 1)
        nets[backbone] = net
    mean = np.mean([scores[b] for b in spec.backbones], axis=0)
    perf.update({f"heldout_{k}": v for k, v in heldout_metrics(mean, y_ho.numpy(), threshold).items()})
    perf["heldout_nodules"] = int(len(y_ho))
    return nets, perf


def write_bundle(
    out_dir: Path,
    nets: dict[str, nn.Module],
    spec: USCalcifiedSpec,
    perf: dict[str, Any],
    *,
    version: str,
    demo: bool,
    intended_use: str,
    population: str,
    training_data: str,
) -> Path:
    """Save the networks and write the card (``reported_performance`` = ``perf``) and README."""
    threshold = 0.5
    for sub in ("models", "configs", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    weights = []
    for name, net in nets.items():
        path = WEIGHTS_FILES[name]
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out_dir / path)
        weights.append(WeightsFile(path=path, sha256=sha256_file(out_dir / path)))
    sizes_text = ", ".join(f"{b} {spec.input_size(b)}" for b in spec.backbones)
    card = ModelCard(
        name=NAME,
        version=version,
        title="Calcified thyroid nodule, benign vs malignant: Xception + DenseNet169 (Chen et al. 2023 architecture)",
        demo=demo,
        intended_use=intended_use,
        population=population,
        modality="US",
        network=NETWORK,
        input=InputSpec(size=spec.input_size(spec.backbones[0]), channels=3,
                        normalisation=f"nodule box crop resized to {sizes_text}; grey [0, 1] x3, ImageNet mean/std"),
        labels=list(US_CALCIFIED_LABELS),
        decision_thresholds={"malignant": threshold},
        weights=weights,
        training_data=training_data,
        reported_performance=perf,
    )
    metadata = card.model_dump(mode="json") | {
        "us_calcified": spec.model_dump(mode="json"),
        "task": "benign vs malignant classification of a calcified thyroid nodule on B-mode ultrasound",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
    }
    (out_dir / CARD_PATH).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (out_dir / DOCS_PATH).write_text(_readme(card, spec, perf), encoding="utf-8")
    return out_dir
