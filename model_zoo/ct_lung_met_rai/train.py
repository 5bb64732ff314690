"""Train ct_lung_met_rai on CT phantoms and write a complete bundle (demo weights).

Recipe (paper -> demo):

* pre-processing as the paper: 1 mm isotropic volumes (phantoms are generated directly at 1 mm),
  HU window [-1000, 400] scaled to [0, 1];
* segmentation: the paper trained an SE V-Net with Dice loss, Adam, lr 0.01, 320 epochs. The demo
  trains a lighter SE V-Net (the card's ``ct.se_vnet``: fewer channels, 3x3x3 kernels) on small
  patches (48^3 in the demo recipe), two thirds centred near a nodule, one third anywhere in the chest, with Dice + binary
  cross-entropy (the cross-entropy term keeps the small-patch training stable), Adam one-cycle
  lr peak 3e-3, a few hundred iterations: what fits a few CPU minutes;
* classifier: the paper's 3D SE-ResNet shape (narrower for the demo: the card's
  ``ct.se_resnet3d``) on (1, 32, 48, 48) patches centred on each nodule (jittered by up to
  2 mm, random flips), binary cross-entropy, Adam one-cycle lr peak 3e-3, batch 8;
* phantom labels: RAI-refractory nodules are solid, iodine-avid ones less dense (a phantom
  convention of :mod:`model_zoo.phantoms.ct`, not biology);
* seeds: training phantoms ``default_rng([seed, 1, i])``, held-out ``default_rng([seed, 2, i])``;
  the phantom studies of the tests use other seeds.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from sklearn.metrics import roc_auc_score

from model_zoo.bundle import CARD_PATH, DOCS_PATH, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.ct_lung_met_rai.labels import CT_LABELS
from model_zoo.ct_lung_met_rai.model import CTSpec, extract_patch, normalise
from model_zoo.nets.se_resnet3d import SEResNet3d
from model_zoo.nets.se_vnet import SEVNet
from model_zoo.phantoms.ct import ChestPhantom, chest_phantom
from model_zoo.progress import ProgressFn, reporter
from model_zoo.site_training import Checkpoints, Stateful, one_cycle

logger = logging.getLogger(__name__)

NAME = "ct_lung_met_rai"
DEMO_VERSION = "0.1.0-demo"
SEG_FILE = "models/se_vnet.pt"
CLS_FILE = "models/se_resnet3d.pt"
PHANTOM_SHAPE = (96, 176, 208)  # 1 mm: a small chest, lungs fill most of it
SEG_LR, SEG_BATCH = 3e-3, 2
CLS_LR, CLS_BATCH = 3e-3, 8


def _phantom(seed: int, split: int, i: int, nodules: int = 6) -> ChestPhantom:
    rng = np.random.default_rng([seed, split, i])
    return chest_phantom(rng, shape=PHANTOM_SHAPE, spacing=(1.0, 1.0, 1.0), nodules=nodules,
                         diameter_range=(3.0, 20.0))


def _nodule_centres(ph: ChestPhantom) -> list[np.ndarray]:
    inv = np.linalg.inv(ph.affine)
    return [(inv @ np.array([*n.centre_mm, 1.0]))[:3] for n in ph.nodules]


def _seg_batch(
    phantoms: Sequence[tuple[np.ndarray, np.ndarray, list[np.ndarray]]], rng: np.random.Generator, batch: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(batch):
        x, y, centres = phantoms[int(rng.integers(len(phantoms)))]
        if centres and rng.random() < 2 / 3:
            c = centres[int(rng.integers(len(centres)))] + rng.uniform(-size / 3, size / 3, 3)
        else:
            c = np.array([rng.uniform(size / 2, s - size / 2) for s in x.shape])
        patch_x = extract_patch(x, c, (size,) * 3, fill=0.0)
        patch_y = extract_patch(y, c, (size,) * 3, fill=0.0)
        for axis in (1, 2):  # left-right and front-back flips keep a chest a chest
            if rng.random() < 0.5:
                patch_x, patch_y = np.flip(patch_x, axis), np.flip(patch_y, axis)
        xs.append(patch_x.copy())
        ys.append(patch_y.copy())
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def _cls_patches(
    phantoms: list[ChestPhantom], spec: CTSpec, rng: np.random.Generator, copies: int
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for ph in phantoms:
        norm = normalise(ph.hu, spec.hu_window)
        for nodule, centre in zip(ph.nodules, _nodule_centres(ph)):
            for _ in range(copies):
                c = centre + rng.uniform(-2.0, 2.0, 3)
                p = extract_patch(norm, c, spec.patch, fill=0.0)
                for axis in (1, 2):
                    if rng.random() < 0.5:
                        p = np.flip(p, axis)
                xs.append(p.copy())
                ys.append(1.0 if nodule.refractory else 0.0)
    return torch.from_numpy(np.stack(xs))[:, None], torch.tensor(ys, dtype=torch.float32)[:, None]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def _evaluate_seg(net: SEVNet, phantoms: list[ChestPhantom], spec: CTSpec, dev: torch.device) -> dict[str, float]:
    """Per-nodule detection and Dice on held-out 1 mm phantoms (sliding window over the whole volume)."""
    from monai.inferers import sliding_window_inference

    found = total = 0
    dices: list[float] = []
    net.eval()
    for ph in phantoms:
        x = torch.from_numpy(normalise(ph.hu, spec.hu_window))[None, None]
        with torch.no_grad():
            logits = sliding_window_inference(x, (spec.window,) * 3, 1, net, overlap=spec.overlap, mode="gaussian",
                                              sw_device=dev, device="cpu")
        assert isinstance(logits, torch.Tensor)
        pred = (torch.sigmoid(logits)[0, 0].numpy() >= spec.seg_threshold)
        for i, nodule in enumerate(ph.nodules, start=1):
            truth = ph.labels == i
            if nodule.diameter_mm < 5.0:
                continue
            total += 1
            d = _dice(pred & _near(truth), truth)  # this nodule's neighbourhood only
            if d > 0.1:
                found += 1
            dices.append(d)
    return {
        "heldout_sensitivity_ge5mm": round(found / total, 4) if total else 0.0,
        "heldout_mean_dice_ge5mm": round(float(np.mean(dices)), 4) if dices else 0.0,
        "heldout_nodules_ge5mm": total,
    }


def _near(truth: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(truth, iterations=3)


def _evaluate_cls(net: SEResNet3d, x: torch.Tensor, y: torch.Tensor, threshold: float, dev: torch.device) -> dict[str, float]:
    net.eval()
    with torch.no_grad():
        p = torch.cat([torch.sigmoid(net(x[i : i + 16].to(dev))).cpu() for i in range(0, len(x), 16)])[:, 0].numpy()
    t = y[:, 0].numpy()
    acc = float(((p >= threshold) == (t >= 0.5)).mean())
    auc = float(roc_auc_score(t, p)) if 0 < t.sum() < len(t) else float("nan")
    return {"heldout_accuracy": round(acc, 4), "heldout_auc": round(auc, 4), "heldout_lesions": int(len(t))}


def _readme(card: ModelCard, spec: CTSpec) -> str:
    perf = card.reported_performance
    rebuild = (f"""Rebuild with `python -m model_zoo.demo {card.name}`. A site's own weights: a bundle of the same
layout with `demo: false` (and its own `ct.se_vnet` configuration, e.g. the paper-size network).""" if card.demo else
               f"Site weights (`demo: false`); retrain with `thyroid-node train {card.name}` "
               "(`model_zoo/ct_lung_met_rai/site.py`) and validate locally before clinical use.")
    return f"""# {card.title} ({card.ident})

**{card.intended_use}**

- Modality: {card.modality}. Population: {card.population}
- Pre-processing: resampled to {spec.spacing_mm} mm isotropic; HU window {list(spec.hu_window)} scaled to [0, 1].
- Segmentation: SE V-Net (`model_zoo.nets.se_vnet.SEVNet({spec.se_vnet})`), sliding window
  {spec.window}^3, overlap {spec.overlap}, Gaussian blending, over the lung fields' bounding box;
  lesions = 26-connected components of p >= {spec.seg_threshold}, at least {spec.min_lesion_mm3} mm3.
- Classifier: 3D SE-ResNet (`SEResNet3d({spec.se_resnet3d})`; the paper's stem 64 and stages
  64-128-256-512 when empty; SE reduction 4; FC -> 1 logit) on a
  {tuple(spec.patch)} patch at 1 mm centred on each lesion; probability of RAI-refractory status =
  sigmoid(logit); decision threshold {card.decision_thresholds.get('refractory')}. 3D Grad-CAM on the last stage.
- Training data: {card.training_data}
- Held-out {"phantom " if card.demo else ""}figures: {json.dumps({k: v for k, v in perf.items() if k.startswith('heldout')})}.
  {"Phantom figures say nothing about patients." if card.demo else "Held out by study."} The paper reported (its own, unpublished weights):
  segmentation validation Dice 0.821; classifier internal AUC 0.879, external AUC 0.713.

## Files

- `configs/metadata.json`: this card (`model_zoo.card.ModelCard`, plus the `ct` section typed by
  `model_zoo.ct_lung_met_rai.model.CTSpec`).
- `{SEG_FILE}`, `{CLS_FILE}`: PyTorch state dicts; sha256 in the card.

{rebuild}
"""


def train(
    out_dir: Path,
    *,
    seed: int,
    n_phantoms: int,
    seg_iterations: int,
    seg_patch: int,
    cls_epochs: int,
    se_vnet: dict[str, Any],
    se_resnet3d: dict[str, Any],
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Train both networks on 1 mm chest phantoms and write a bundle into ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Bundle root to write.
    seed : int
        Seeds phantoms, initialisation and sampling.
    n_phantoms : int
        Training phantoms (6 nodules each); ``max(2, n_phantoms // 8)`` held out.
    seg_iterations, seg_patch : int
        SE V-Net iterations (batch 2) and patch side.
    cls_epochs : int
        Classifier epochs over the training nodules (2 jittered copies each).
    se_vnet, se_resnet3d : dict
        SEVNet and SEResNet3d keyword arguments, written to the card.
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    progress : callable, optional
        ``progress(fraction_done, message)``.
    """
    t0 = time.monotonic()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    report = reporter(NAME, progress)

    spec = CTSpec(se_vnet=se_vnet, se_resnet3d=se_resnet3d)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0])
    train_ph = [_phantom(seed, 1, i) for i in range(n_phantoms)]
    hold_ph = [_phantom(seed, 2, i) for i in range(max(2, n_phantoms // 8))]
    seg_data = [
        (normalise(ph.hu, spec.hu_window), (ph.labels > 0).astype(np.float32), _nodule_centres(ph)) for ph in train_ph
    ]
    report(0.03, f"{len(train_ph)} training and {len(hold_ph)} held-out 1 mm chest phantoms ready")

    # -- SE V-Net ------------------------------------------------------------------------------
    seg = SEVNet(**se_vnet).to(dev)
    fit_segmenter(seg, seg_data, rng, iterations=seg_iterations, patch=seg_patch, device=dev, report=report)
    seg_perf = _evaluate_seg(seg, hold_ph, spec, dev)
    report(0.65, f"SE V-Net held-out: {seg_perf}")

    # -- 3D SE-ResNet --------------------------------------------------------------------------
    x_tr, y_tr = _cls_patches(train_ph, spec, rng, copies=2)
    x_ho, y_ho = _cls_patches(hold_ph, spec, rng, copies=1)
    clf = SEResNet3d(**se_resnet3d).to(dev)
    fit_classifier(clf, x_tr, y_tr, epochs=cls_epochs, seed=seed, device=dev, report=report)
    threshold = 0.5
    cls_perf = _evaluate_cls(clf, x_ho, y_ho, threshold, dev)
    report(0.97, f"SE-ResNet held-out: {cls_perf}")
    seconds = time.monotonic() - t0
    write_bundle(
        Path(out_dir), seg, clf, spec, threshold=threshold, version=DEMO_VERSION, demo=True,
        intended_use=(
            "Demo weights trained on synthetic chest CT phantoms only, to exercise the node end to end. "
            "Not for clinical use; not a medical device."
        ),
        population="synthetic non-contrast chest CT phantoms with spherical lung nodules (model_zoo.phantoms.ct); no patients",
        training_data=(
            f"{n_phantoms} chest phantoms {PHANTOM_SHAPE} at 1 mm with 6 nodules of 3-20 mm each (seed {seed}); "
            f"SE V-Net {seg_iterations} iterations of 2 x {seg_patch}^3 patches, Dice + BCE, Adam one-cycle peak {SEG_LR}; "
            f"SE-ResNet {cls_epochs} epochs of 2 jittered copies per nodule, batch {CLS_BATCH}, BCE, Adam one-cycle peak {CLS_LR}; held-out: {len(hold_ph)} phantoms from disjoint seeds"
        ),
        performance={
            **seg_perf,
            **cls_perf,
            "training_seconds": round(seconds, 1),
            "training_device": f"{dev.type} ({platform.machine()})",
        },
    )
    report(1.0, f"bundle written in {seconds:.0f} s")
    return Path(out_dir)


def fit_segmenter(
    seg: SEVNet,
    data: Sequence[tuple[np.ndarray, np.ndarray, list[np.ndarray]]],
    rng: np.random.Generator,
    *,
    iterations: int,
    patch: int,
    device: torch.device,
    report: ProgressFn,
    span: tuple[float, float] = (0.05, 0.55),
    checkpoints: Checkpoints | None = None,
    block: int | None = None,
) -> None:
    """Train the SE V-Net on ``(image [0, 1], mask, lesion centres)`` volumes (the module's recipe).

    Batches of 2 ``patch``^3 patches, two thirds centred near a lesion, drawn from ``rng``. With
    ``checkpoints``, the state (network, optimiser, schedule, ``rng`` and torch's global generator)
    is saved every ``block`` iterations (an "epoch" of the V-Net) and an interrupted run resumes
    from the last one: the same batches, hence the same network, as an uninterrupted run.
    """
    dice = DiceLoss(sigmoid=True)
    opt = torch.optim.Adam(seg.parameters(), lr=SEG_LR)
    sched = one_cycle(opt, SEG_LR, max(1, iterations), 0.1)
    block = max(1, block or iterations)
    state: dict[str, Stateful] = {"seg": seg, "opt": opt, "sched": sched}
    gens = {"torch": torch.default_generator}
    extra: dict[str, Any] = {}
    done = min(iterations, block * checkpoints.restore(state, gens, extra)) if checkpoints is not None else 0
    if done:
        rng.bit_generator.state = extra["rng"]
        report(span[0] + span[1] * done / iterations, f"SE V-Net resumed after iteration {done}/{iterations}")
    seg.train()
    running = float(extra.get("running", 0.0))
    for it in range(done, iterations):
        xb, yb = _seg_batch(data, rng, SEG_BATCH, patch)
        xb, yb = xb.to(device), yb.to(device)
        logits = seg(xb)
        loss = dice(logits, yb) + F.binary_cross_entropy_with_logits(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.9 * running + 0.1 * float(loss.detach()) if it else float(loss.detach())
        if checkpoints is not None and ((it + 1) % block == 0 or it + 1 == iterations):
            checkpoints.save(-(-(it + 1) // block), state, gens, {"rng": rng.bit_generator.state, "running": running})
        if (it + 1) % max(1, iterations // 10) == 0:
            report(span[0] + span[1] * (it + 1) / iterations,
                   f"SE V-Net iteration {it + 1}/{iterations}: loss {running:.3f}")


def fit_classifier(
    clf: SEResNet3d,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    report: ProgressFn,
    span: tuple[float, float] = (0.65, 0.3),
    checkpoints: Checkpoints | None = None,
) -> None:
    """Train the 3D SE-ResNet on patches ``(N, 1, 32, 48, 48)`` and labels ``(N, 1)`` (the module's recipe).

    With ``checkpoints``, every epoch is saved and an interrupted run resumes from the last one.
    """
    opt = torch.optim.Adam(clf.parameters(), lr=CLS_LR, weight_decay=1e-4)
    steps = math.ceil(len(x_tr) / CLS_BATCH)
    sched = one_cycle(opt, CLS_LR, max(1, steps * epochs), 0.2)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Stateful] = {"clf": clf, "opt": opt, "sched": sched}
    gens = {"gen": gen, "torch": torch.default_generator}
    done = checkpoints.restore(state, gens) if checkpoints is not None else 0
    if done:
        report(span[0] + span[1] * done / epochs, f"SE-ResNet resumed after epoch {done}/{epochs}")
    for epoch in range(done, epochs):
        clf.train()
        order = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for b in range(steps):
            idx = order[b * CLS_BATCH : (b + 1) * CLS_BATCH]
            logits = clf(x_tr[idx].to(device))
            loss = F.binary_cross_entropy_with_logits(logits, y_tr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if checkpoints is not None:
            checkpoints.save(epoch + 1, state, gens)
        report(span[0] + span[1] * (epoch + 1) / epochs,
               f"SE-ResNet epoch {epoch + 1}/{epochs}: loss {total / len(x_tr):.3f}")


def write_bundle(
    out_dir: Path,
    seg: SEVNet,
    clf: SEResNet3d,
    spec: CTSpec,
    *,
    threshold: float,
    version: str,
    demo: bool,
    intended_use: str,
    population: str,
    training_data: str,
    performance: dict[str, Any],
) -> Path:
    """Write both networks' weights, the card (with its ``ct`` section) and the README into ``out_dir``."""
    out_dir = Path(out_dir)
    for sub in ("models", "configs", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in seg.state_dict().items()}, out_dir / SEG_FILE)
    torch.save({k: v.detach().cpu() for k, v in clf.state_dict().items()}, out_dir / CLS_FILE)
    card = ModelCard(
        name=NAME,
        version=version,
        title="DTC lung metastases: SE V-Net segmentation + 3D SE-ResNet RAI-refractory classifier (Gao et al. 2024 architecture)",
        demo=demo,
        intended_use=intended_use,
        population=population,
        modality="CT",
        network="se_vnet+se_resnet3d",
        input=InputSpec(size=spec.window, channels=1, normalisation=f"HU window {list(spec.hu_window)} -> [0, 1] at {spec.spacing_mm} mm"),
        labels=list(CT_LABELS),
        decision_thresholds={"refractory": threshold},
        weights=[
            WeightsFile(path=SEG_FILE, sha256=sha256_file(out_dir / SEG_FILE)),
            WeightsFile(path=CLS_FILE, sha256=sha256_file(out_dir / CLS_FILE)),
        ],
        training_data=training_data,
        reported_performance=performance,
    )
    metadata = card.model_dump(mode="json") | {
        "ct": spec.model_dump(mode="json"),
        "task": "segmentation of lung metastases and per-lesion RAI-refractory classification on chest CT",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
    }
    (out_dir / CARD_PATH).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (out_dir / DOCS_PATH).write_text(_readme(card, spec), encoding="utf-8")
    return out_dir
