"""Train nm_thyroid_dx on phantoms and write a complete bundle (demo weights).

Recipe (paper -> demo):

* loss: cross-entropy (as the paper); optimiser: Adam, weight decay 1e-4 (as the paper);
* learning rate: the paper's 2.5e-5 over 200 epochs does not fit a 3-minute CPU budget, so the
  demo uses a one-cycle schedule peaking at 1e-3, batch 16 (paper: 12), a few epochs;
* speed-ups that leave the served network unchanged: a training-only linear head on the 512
  backbone features (deep supervision; the paper's head with dropout 0.8 alone teaches the
  backbone slowly), then exact batch-norm statistics, then the paper's head refitted on frozen
  features (cheap: many epochs over cached features). Only ``ScintiResNet34`` is saved;
* augmentation: left-right flip (the four classes do not depend on side: a nodule or a silent
  lobe may sit in either lobe, and the gland is near-symmetric), shifts up to 1/16 of the field,
  intensity scaling x0.85-1.15 after normalisation. No up-down flip or rotation: the anatomy
  (salivary glands above, chest below) keeps its orientation on every camera;
* seeds: training phantoms use ``default_rng([seed, 1, class, i])``, held-out ones
  ``default_rng([seed, 2, class, i])``; :func:`model_zoo.phantoms.nm.nm_phantom_dataset` uses
  ``default_rng([seed, class])``, so phantom studies never repeat a training image.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
import torch.nn.functional as F

from model_zoo.bundle import CARD_PATH, DOCS_PATH, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.nets.scinti_resnet34 import FEATURES, ScintiResNet34
from model_zoo.nm_thyroid_dx.labels import NM_THYROID_LABELS
from model_zoo.nm_thyroid_dx.preprocess import NORMALISATION, normalise
from model_zoo.phantoms.nm import make_nm_image
from model_zoo.progress import ProgressFn, reporter
from model_zoo.site_training import Checkpoints, Stateful

logger = logging.getLogger(__name__)

NAME = "nm_thyroid_dx"
DEMO_VERSION = "0.1.0-demo"
WEIGHTS = "models/model.pt"
LR, WEIGHT_DECAY, BATCH = 1e-3, 1e-4, 16


def phantom_set(n_per_class: int, seed: int, split: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantom inputs ``(N, 1, size, size)`` and labels ``(N,)`` for one split (1 train, 2 held-out)."""
    xs, ys = [], []
    for cls, label in enumerate(NM_THYROID_LABELS):
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, split, cls, i])
            xs.append(normalise(make_nm_image(label.key, rng), size))
            ys.append(cls)
    return torch.cat(xs), torch.tensor(ys, dtype=torch.long)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random left-right flip, shift (zero padded) and intensity scale, per image."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, h // 16)
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    for i in range(b):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    scale = 0.85 + 0.3 * torch.rand(b, 1, 1, 1, generator=gen)
    return (out * scale).clamp_(0.0, 1.0)


@torch.no_grad()
def evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> np.ndarray:
    """Confusion matrix ``(n_classes, n_classes)``, rows = truth."""
    net.eval()
    n = len(NM_THYROID_LABELS)
    cm = np.zeros((n, n), dtype=np.int64)
    for i in range(0, len(x), 32):
        pred = net(x[i : i + 32].to(device)).argmax(1).cpu()
        for t, p in zip(y[i : i + 32].tolist(), pred.tolist()):
            cm[t, p] += 1
    return cm


@torch.no_grad()
def recalibrate_bn(net: ScintiResNet34, x: torch.Tensor, device: torch.device) -> None:
    """Recompute batch-norm running statistics over ``x`` (cumulative average, no augmentation).

    After a few hundred steps at a high learning rate the exponential running averages lag the
    weights; exact statistics make eval mode match what the network learned.
    """
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


def refit_head(
    net: ScintiResNet34,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    device: torch.device,
    views: int = 2,
    epochs: int = 60,
) -> None:
    """Train the paper's head (dropout 0.8 and all) on frozen backbone features.

    The head's heavy dropout makes it the slowest part to converge; on cached 512-d features
    (``views`` augmented copies of the training set) many epochs cost about a second.
    """
    net.eval()
    with torch.no_grad():
        feats = torch.cat(
            [net.features((x if v == 0 else augment(x, gen)).to(device)) for v in range(views)]
        )
    labels = y.repeat(views).to(device)
    net.head.train()
    opt = torch.optim.Adam(net.head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(epochs):
        order = torch.randperm(len(feats), generator=gen).to(device)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(net.head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()


def _readme(card: ModelCard) -> str:
    perf = card.reported_performance
    rows = "\n".join(
        f"| {lab.key} | {lab.coding_scheme} {lab.code_value} | {lab.code_meaning} |" for lab in card.labels
    )
    return f"""# {card.title} ({card.ident})

**{card.intended_use}**

- Modality: {card.modality}. Population: {card.population}
- Network: ResNet-34 backbone (MONAI `ResNet`, basic blocks [3, 4, 6, 3], 7x7 stride-2 stem) and
  the head of Zhao et al. 2023 (FC 512-256, LeakyReLU, dropout 0.8, FC 256-128, LeakyReLU,
  FC 128-4, softmax). Grad-CAM layer: `backbone.layer4`.
- Input: {card.input.size} x {card.input.size}, {card.input.channels} channel; {card.input.normalisation}.
- Training data: {card.training_data}
- Held-out phantom accuracy: {perf.get("heldout_phantom_accuracy")} on {perf.get("heldout_n")} images.
  Phantom accuracy says nothing about patients. The paper reported accuracy 0.961 internal,
  0.931 external on real scintigrams with its own (unpublished) weights.

## Labels (output order)

| key | code | meaning |
|---|---|---|
{rows}

SCT codes were checked against DICOM's SNOMED CT subset or a SNOMED CT browser; subacute
thyroiditis carries a private 99THYAI code because no SNOMED CT code could be confirmed offline
(see `model_zoo/nm_thyroid_dx/labels.py`).

## Files

- `configs/metadata.json`: this card (typed by `model_zoo.card.ModelCard`).
- `{WEIGHTS}`: PyTorch state dict of `model_zoo.nets.ScintiResNet34`; sha256 in the card.

Rebuild with `python -m model_zoo.demo {card.name}`. Replace with a site's own weights by
writing a bundle of the same layout with `demo: false`.
"""


def train(
    out_dir: Path,
    *,
    n_per_class: int,
    epochs: int,
    seed: int,
    input_size: int,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Train on phantoms and write a bundle into ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Bundle root to write (created; existing files overwritten).
    n_per_class : int
        Training phantoms per class; ``max(8, n_per_class // 4)`` held-out phantoms per class.
    epochs : int
    seed : int
        Seeds phantoms, initialisation, shuffling and augmentation.
    input_size : int
        Network input side; written to the card, where it drives preprocessing.
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    progress : callable, optional
        ``progress(fraction_done, message)``.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    t0 = time.monotonic()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    report = reporter(NAME, progress)

    x_train, y_train = phantom_set(n_per_class, seed, 1, input_size)
    n_hold = max(8, n_per_class // 4)
    x_hold, y_hold = phantom_set(n_hold, seed, 2, input_size)
    report(0.02, f"{len(x_train)} training and {len(x_hold)} held-out phantoms ready")
    return fit_and_write(
        out_dir, x_train, y_train, x_hold, y_hold, epochs=epochs, seed=seed, input_size=input_size, device=dev,
        report=report, started=t0, version=DEMO_VERSION, demo=True,
        intended_use=(
            "Demo weights trained on synthetic phantoms only, to exercise the node end to end. "
            "Not for clinical use; not a medical device."
        ),
        population="synthetic 99mTc-pertechnetate planar thyroid phantoms (model_zoo.phantoms.nm); no patients",
        training_data=(
            f"{n_per_class} phantoms per class (matrix 128, seed {seed}), {epochs} epochs, cross-entropy, "
            f"Adam one-cycle lr peak {LR}, weight decay {WEIGHT_DECAY}, batch {BATCH}, training-only "
            "auxiliary linear head, batch-norm recalibration, head refit on frozen features; held-out: "
            f"{n_hold} per class from disjoint seeds"
        ),
    )


def fit(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    report: ProgressFn,
    checkpoints: Checkpoints | None = None,
    span: tuple[float, float] = (0.05, 0.85),
) -> ScintiResNet34:
    """The demo recipe on prepared inputs: epochs with the auxiliary head, BN statistics, head refit.

    With ``checkpoints``, the state after each epoch is saved and an interrupted run resumes
    from it (same network, optimiser, schedule and random stream as an uninterrupted run).
    """
    dev = device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = ScintiResNet34(n_classes=len(NM_THYROID_LABELS)).to(dev)
    aux = torch.nn.Linear(FEATURES, len(NM_THYROID_LABELS)).to(dev)  # training-only shortcut head
    opt = torch.optim.Adam([*net.parameters(), *aux.parameters()], lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x_train) / BATCH)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=total, pct_start=0.15)
    state: dict[str, Stateful] = {"net": net, "aux": aux, "opt": opt, "sched": sched}
    done = checkpoints.restore(state, {"gen": gen}) if checkpoints is not None else 0
    if done:
        report(span[0], f"resumed after epoch {done}/{epochs}")
    step = done * steps_per_epoch
    for epoch in range(done, epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * BATCH : (b + 1) * BATCH]
            xb = augment(x_train[idx], gen).to(dev)
            yb = y_train[idx].to(dev)
            feats = net.features(xb)
            logits = net.head(feats)
            loss = F.cross_entropy(logits, yb) + F.cross_entropy(aux(feats), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        if checkpoints is not None:
            checkpoints.save(epoch + 1, state, {"gen": gen})
        report(
            span[0] + span[1] * step / total,
            f"epoch {epoch + 1}/{epochs}: loss {loss_sum / len(x_train):.3f}, "
            f"train accuracy {correct / len(x_train):.3f}",
        )
    recalibrate_bn(net, x_train, dev)
    refit_head(net, x_train, y_train, gen, dev)
    return net


def fit_and_write(
    out_dir: Path,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_hold: torch.Tensor,
    y_hold: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    input_size: int,
    device: torch.device,
    report: ProgressFn,
    started: float,
    version: str,
    demo: bool,
    intended_use: str,
    population: str,
    training_data: str,
    checkpoints: Checkpoints | None = None,
    cross_validation: dict[str, Any] | None = None,
) -> Path:
    """Train the network on prepared inputs, evaluate it on the held-out ones, write the bundle.

    Shared by the phantom demo (:func:`train`) and a site's own data
    (:mod:`model_zoo.nm_thyroid_dx.site`); the card records who trained it on what.
    """
    dev, t0 = device, started
    net = fit(x_train, y_train, epochs=epochs, seed=seed, device=dev, report=report, checkpoints=checkpoints)
    report(0.92, "batch-norm statistics recomputed, head refitted on frozen features")

    cm = evaluate(net, x_hold, y_hold, dev)
    acc = float(np.trace(cm) / cm.sum())
    seconds = time.monotonic() - t0
    report(0.97, f"held-out phantom accuracy {acc:.3f} ({int(np.trace(cm))}/{int(cm.sum())})")

    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights)
    keys = [lab.key for lab in NM_THYROID_LABELS]
    card = ModelCard(
        name=NAME,
        version=version,
        title="Thyroid scintigraphy 4-class classifier (ResNet-34, Zhao et al. 2023 architecture)",
        demo=demo,
        intended_use=intended_use,
        population=population,
        modality="NM",
        input=InputSpec(size=input_size, channels=1, normalisation=NORMALISATION),
        labels=list(NM_THYROID_LABELS),
        decision_thresholds={k: 0.5 for k in keys},
        weights=[WeightsFile(path=WEIGHTS, sha256=sha256_file(weights))],
        training_data=training_data,
        reported_performance={
            "heldout_phantom_accuracy": round(acc, 4),
            "heldout_n": int(cm.sum()),
            "confusion_matrix": {"labels": keys, "rows_truth_cols_predicted": cm.tolist()},
            "training_seconds": round(seconds, 1),
            "training_device": f"{dev.type} ({platform.machine()})",
            **({"cross_validation": cross_validation} if cross_validation else {}),
        },
    )
    metadata = card.model_dump(mode="json") | {  # MONAI bundle metadata keys, kept as card extras
        "task": "4-class classification of planar thyroid scintigraphy",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
    }
    (out_dir / CARD_PATH).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (out_dir / DOCS_PATH).write_text(_readme(card), encoding="utf-8")
    report(1.0, f"bundle written in {seconds:.0f} s")
    return out_dir
