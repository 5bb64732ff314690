"""Train the 2D nodule UNet on B-mode phantoms and write a bundle (the demo weights, or a site's own run).

Recipe:

* phantoms from :func:`model_zoo.phantoms.us.training_set` (balanced benign / malignant, a third
  of them with two nodules), each resized once to the working size (the same
  :func:`~model_zoo.us_nodule_seg.model.resize_pad` as inference); the nodule masks are resized
  with the same anti-aliased bilinear filter, so the targets are soft area fractions and the
  network learns the outline to sub-pixel accuracy;
* augmentation per batch on the working images: left-right flip, a small affine (rotation
  +-10 degrees, scale 0.85-1.2, shift +-8 %), gamma 0.7-1.5, Gaussian noise, a blur, and now and
  then a black band at the bottom or right (the padding of regions of another aspect ratio);
* loss Dice (over the batch) + binary cross-entropy, Adam with a one-cycle learning rate;
* held out: phantoms of another seed, segmented by :class:`~model_zoo.us_nodule_seg.model.USNoduleSeg`
  exactly as in service; per nodule Dice, sensitivity (Dice >= 0.5) and false positives per image
  go into the card's ``reported_performance``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any, Final

import monai
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.nets import UNet

from model_zoo.bundle import CARD_PATH, DOCS_PATH, Bundle, sha256_file
from model_zoo.card import InputSpec, ModelCard, WeightsFile
from model_zoo.phantoms.us import USPhantom, training_set
from model_zoo.progress import ProgressFn, reporter
from model_zoo.site_training import Checkpoints, Stateful
from model_zoo.us_nodule_seg.model import (
    NETWORK,
    NODULE,
    US_SEG_LABELS,
    USNoduleSeg,
    USSegSpec,
    normalise,
    resize_pad,
)

logger = logging.getLogger(__name__)

NAME: Final[str] = "us_nodule_seg"
DEMO_VERSION: Final[str] = "0.1.0-demo"
WEIGHTS_FILE: Final[str] = "models/unet.pt"
# The demo: a thin 5-level UNet (no residual units) at 160 px; about 70 CPU-seconds on one thread.
# demo.py: DEMO_RECIPES["us_nodule_seg"] = DEMO_RECIPE, DEMO_NETWORKS["us_nodule_seg"] = {"network": DEMO_NETWORK}.
DEMO_NETWORK: Final[dict[str, Any]] = {"channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2],
                                       "num_res_units": 0, "norm": "batch"}
DEMO_RECIPE: Final[dict[str, int]] = {"seed": 40400, "n_train": 48, "iterations": 800, "size": 240}
DEMO_MINUTES: Final[float] = 1.5
HOLDOUT_SEED_OFFSET: Final[int] = 1_000_003  # held-out phantoms: another seed
MATCH_DICE: Final[float] = 0.5  # a nodule counts as found when its best prediction reaches this Dice

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, soft masks, valid (n, 1, h, w)


def phantoms(seed: int, n: int) -> list[USPhantom]:
    """``n`` phantoms of ``seed``: two thirds with one nodule, one third with two."""
    n2 = n // 3
    return training_set(seed, n - n2, n_nodules=1) + (training_set(seed + 1, n2, n_nodules=2) if n2 else [])


def prepare(items: list[USPhantom], spec: USSegSpec) -> Batch:
    """Images in [0, 1], soft nodule masks and valid-pixel masks at the working size, stacked."""
    pairs = []
    for ph in items:
        truth = np.zeros(ph.image.shape, dtype=bool)
        for nodule in ph.nodules:
            truth |= nodule.mask
        pairs.append((ph.image.astype(np.float32) / 255.0, truth))
    return prepare_pairs(pairs, spec)


def prepare_pairs(pairs: list[tuple[np.ndarray, np.ndarray]], spec: USSegSpec) -> Batch:
    """(B-mode region float32 in [0, 1], bool nodule mask) pairs -> working-size images, soft masks, valid masks.

    Regions of other shapes than the first are padded (bottom, right; not valid) to the largest
    working shape, as :func:`resize_pad` pads every region to the UNet's multiple.
    """
    xs, ys, vs = [], [], []
    for image, mask in pairs:
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        truth = torch.from_numpy(np.asarray(mask, dtype=np.float32))
        both, (hr, wr) = resize_pad(torch.stack([img, truth])[None], spec.size, spec.pad_multiple)
        valid = torch.zeros_like(both[:, :1])
        valid[..., :hr, :wr] = 1.0
        xs.append(both[:, :1])
        ys.append(both[:, 1:].clamp(0.0, 1.0))
        vs.append(valid)
    hp, wp = max(int(x.shape[-2]) for x in xs), max(int(x.shape[-1]) for x in xs)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, wp - int(t.shape[-1]), 0, hp - int(t.shape[-2])))

    return torch.cat([pad(x) for x in xs]), torch.cat([pad(y) for y in ys]), torch.cat([pad(v) for v in vs])


def augment(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> Batch:
    """Random flips, affine, gamma, blur, noise and padding bands on a working-size batch."""
    n = x.shape[0]

    def u(lo: float, hi: float, size: int = n) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=gen)

    flip = torch.rand(n, generator=gen) < 0.5
    x, y, v = (torch.where(flip[:, None, None, None], t.flip(-1), t) for t in (x, y, v))
    angle = torch.deg2rad(u(-10.0, 10.0))
    scale = u(0.85, 1.2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u(-0.08, 0.08)], 1), torch.stack([sin, cos, u(-0.08, 0.08)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    stack = F.grid_sample(torch.cat([x, y, v], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x, y, v = stack[:, :1], stack[:, 1:2], (stack[:, 2:3] > 0.5).float()
    x = x.clamp(0.0, 1.0) ** u(0.7, 1.5)[:, None, None, None]
    blur = torch.rand(n, generator=gen) < 0.3
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :])[None, None])
        x = torch.where(blur[:, None, None, None], smooth, x)
    x = x + u(0.0, 0.04)[:, None, None, None] * torch.randn(x.shape, generator=gen)
    band = torch.rand(n, generator=gen) < 0.25
    h, w = x.shape[-2:]
    for i in torch.nonzero(band)[:, 0].tolist():  # a region of another aspect ratio: black padding
        if float(torch.rand(1, generator=gen)) < 0.5:
            cut = h - int(float(u(0.05, 0.3, 1)) * h)
            x[i, :, cut:], y[i, :, cut:], v[i, :, cut:] = 0.0, 0.0, 0.0
        else:
            cut = w - int(float(u(0.05, 0.3, 1)) * w)
            x[i, :, :, cut:], y[i, :, :, cut:], v[i, :, :, cut:] = 0.0, 0.0, 0.0
    x = x * v
    return x, y.clamp(0.0, 1.0), v


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def evaluate(model: USNoduleSeg, items: list[USPhantom]) -> dict[str, float]:
    """Per-nodule Dice, sensitivity and false positives per image of ``model`` on phantoms."""
    return evaluate_pairs(model, [(ph.image.astype(np.float32) / 255.0, [n.mask for n in ph.nodules],
                                   (ph.spacing_mm, ph.spacing_mm)) for ph in items])


Case = tuple[np.ndarray, list[np.ndarray], tuple[float, float] | None]  # region, nodule masks, spacing


def evaluate_pairs(model: USNoduleSeg, cases: list[Case]) -> dict[str, float]:
    """Per-nodule Dice, sensitivity (Dice >= MATCH_DICE) and false positives per image on B-mode regions."""
    dices: list[float] = []
    false_pos = 0
    for image, masks, spacing in cases:
        found = model.segment(image, spacing)
        used = [False] * len(found)
        for truth in masks:
            scores = [_dice(f.mask, truth) for f in found]
            best = int(np.argmax(scores)) if scores else -1
            dices.append(scores[best] if best >= 0 else 0.0)
            if best >= 0 and scores[best] >= MATCH_DICE:
                used[best] = True
        false_pos += sum(not u for u in used)
    d = np.asarray(dices)
    return {
        "heldout_mean_dice": round(float(d.mean()), 4) if len(d) else 0.0,
        "heldout_min_dice": round(float(d.min()), 4) if len(d) else 0.0,
        "heldout_sensitivity": round(float((d >= MATCH_DICE).mean()), 4) if len(d) else 0.0,
        "heldout_false_positives_per_image": round(false_pos / max(1, len(cases)), 4),
        "heldout_images": len(cases),
        "heldout_nodules": int(len(d)),
    }


def train_step(net: UNet, opt: torch.optim.Optimizer, batch: Batch, loss_fn: DiceLoss) -> float:
    """One optimisation step on a batch (images already normalised); the loss before the step."""
    x, y, _ = batch
    logits = net(x)
    loss = loss_fn(logits, y) + F.binary_cross_entropy_with_logits(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _readme(card: ModelCard, spec: USSegSpec) -> str:
    perf = {k: v for k, v in card.reported_performance.items() if k.startswith("heldout")}
    return f"""# {card.title} ({card.ident})

**{card.intended_use}**

- Modality: {card.modality}. Population: {card.population}
- Input: the B-mode region of one image (float in [0, 1]), resized so that its longer side is
  {spec.size} px (aspect kept), padded to a multiple of {spec.pad_multiple}; intensities `{spec.normalisation}`.
- Network: MONAI `UNet(spatial_dims=2, in_channels=1, out_channels=1, **{json.dumps(spec.unet)})`;
  sigmoid probability of "nodule"{", averaged with the left-right flipped pass" if spec.flip_tta else ""}.
- Output: the probability map mapped back onto the region's pixels (bilinear), thresholded at
  {card.decision_thresholds[NODULE]}; nodules = 8-connected components of at least {spec.min_area_mm2} mm²
  ({spec.min_area_px} pixels when the image is uncalibrated), holes filled, largest first, at most {spec.max_nodules}.
- Training data: {card.training_data}
- Held-out phantom figures: {json.dumps(perf)}. A nodule counts as found when its best predicted
  component reaches Dice {MATCH_DICE}; a false positive is a component matched to no nodule.
  Phantom figures say nothing about patients.
- Known limits: trained on one image geometry (the phantoms' region and pixel size, scale
  augmentation 0.85-1.2), so other depths / zooms segment less well; two nodules closer than a
  working pixel or two may merge; a nodule inside another's posterior acoustic shadow is not seen.

## Files

- `configs/metadata.json`: this card (`model_zoo.card.ModelCard`, plus the `us_seg` section typed by
  `model_zoo.us_nodule_seg.model.USSegSpec`).
- `{WEIGHTS_FILE}`: PyTorch state dict; sha256 in the card.

Rebuild with `python -m model_zoo.demo {card.name}`. A site's own weights: a bundle of the same layout
with `demo: false`, trained on its own outlined images (e.g. the site-size `us_seg.unet`, channels
16-32-64-128-256).
"""


def train(
    out_dir: Path,
    *,
    seed: int,
    n_train: int,
    iterations: int,
    network: dict[str, Any],
    size: int,
    batch: int = 8,
    lr: float = 3e-3,
    n_holdout: int = 12,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Train the nodule UNet on phantoms and write a complete bundle into ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Bundle root to write (created if needed).
    seed : int
        Seeds the phantoms, the initialisation and the augmentation.
    n_train : int
        Training phantoms (a third with two nodules).
    iterations : int
        Optimisation steps of ``batch`` images.
    network : dict
        MONAI ``UNet`` keyword arguments (channels, strides, num_res_units, norm...), written to the
        card's ``us_seg.unet``.
    size : int
        Longer side of the working image.
    batch, lr : int, float
        Batch size and the one-cycle peak learning rate.
    n_holdout : int
        Held-out phantoms (another seed) for the reported figures.
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    progress : callable, optional
        ``progress(fraction_done, message)``.

    Returns
    -------
    pathlib.Path
        ``out_dir``, a bundle valid for :func:`model_zoo.bundle.load_bundle`.
    """
    t0 = time.monotonic()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = reporter(NAME, progress)
    spec = working_spec(network, size)

    items = phantoms(seed, n_train)
    shape, spacing = items[0].image.shape, items[0].spacing_mm
    train_x, train_y, train_v = prepare(items, spec)
    del items
    holdout = phantoms(seed + HOLDOUT_SEED_OFFSET, n_holdout)
    t_data = time.monotonic() - t0
    report(0.15, f"{n_train} training and {n_holdout} held-out phantoms, working size {tuple(train_x.shape[-2:])}, "
                 f"in {t_data:.0f} s")

    net = fit(train_x, train_y, train_v, spec, seed=seed, iterations=iterations, batch=batch, lr=lr, device=dev,
              report=report)
    t_train = time.monotonic() - t0 - t_data
    cases: list[Case] = [(ph.image.astype(np.float32) / 255.0, [n.mask for n in ph.nodules],
                          (ph.spacing_mm, ph.spacing_mm)) for ph in holdout]
    return write_bundle(
        Path(out_dir), net, spec, cases, version=DEMO_VERSION, demo=True, device=dev, report=report,
        started=t0, seconds_data=t_data, seconds_train=t_train,
        intended_use=(
            "DEMO weights trained on synthetic B-mode phantoms only, to find the nodule that the US "
            "classifiers (seeds 004 and 002) crop, end to end. Not for clinical use; not a medical device."
        ),
        population="synthetic transverse thyroid B-mode phantoms with 1-2 hypoechoic nodules of 5-25 mm "
        "(model_zoo.phantoms.us); no patients",
        training_data=(
            f"{n_train} phantoms {shape[0]}x{shape[1]} at {spacing} mm (a third with two nodules; seed {seed}); "
            f"{iterations} iterations of {batch} augmented images at {tuple(train_x.shape[-2:])}, "
            f"Dice + BCE on soft masks, Adam one-cycle peak {lr}; "
            f"held out: {n_holdout} phantoms of seed {seed + HOLDOUT_SEED_OFFSET}"
        ),
    )


def working_spec(network: dict[str, Any], size: int) -> USSegSpec:
    """The card's ``us_seg`` section for a UNet of ``network`` at working size ``size``."""
    stride = int(math.prod(int(s) for s in network.get("strides", [2])))
    return USSegSpec(unet=dict(network), size=size, pad_multiple=max(16, stride))


def fit(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    train_v: torch.Tensor,
    spec: USSegSpec,
    *,
    seed: int,
    iterations: int,
    batch: int,
    lr: float,
    device: torch.device,
    report: ProgressFn,
    checkpoints: Checkpoints | None = None,
    steps_per_checkpoint: int = 0,
    span: tuple[float, float] = (0.15, 0.7),
) -> UNet:
    """The recipe's optimisation on prepared working-size batches (shared by the demo and site training).

    Each step draws ``batch`` images with replacement, augments them, normalises over the valid
    pixels and takes one Adam step (one-cycle learning rate). With ``checkpoints``, the state
    (network, optimiser, schedule, random stream, running loss) is saved every
    ``steps_per_checkpoint`` steps (an "epoch") and an interrupted run resumes from it with the
    same result as an uninterrupted one.
    """
    dev = device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = UNet(**spec.unet_kwargs()).to(dev)
    loss_fn = DiceLoss(sigmoid=True, batch=True)  # over the batch: per-image Dice merged close nodules
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, iterations), pct_start=0.15)
    state: dict[str, Stateful] = {"net": net, "opt": opt, "sched": sched}
    running = 0.0
    start = 0
    if checkpoints is not None and steps_per_checkpoint > 0:
        extra: dict[str, Any] = {}
        done = checkpoints.restore(state, {"gen": gen}, extra)
        if done:
            start = min(iterations, done * steps_per_checkpoint)
            running = float(extra.get("running", 0.0))
            report(span[0], f"resumed after epoch {done}/{math.ceil(iterations / steps_per_checkpoint)}")
    net.train()
    for it in range(start, iterations):
        idx = torch.randint(len(train_x), (batch,), generator=gen)
        x, y, v = augment(train_x[idx], train_y[idx], train_v[idx], gen)
        x = normalise(x, v, spec.normalisation)
        loss = train_step(net, opt, (x.to(dev), y.to(dev), v), loss_fn)
        sched.step()
        running = 0.9 * running + 0.1 * loss if it else loss
        if (it + 1) % max(1, iterations // 10) == 0:
            report(span[0] + span[1] * (it + 1) / iterations, f"iteration {it + 1}/{iterations}: loss {running:.3f}")
        if checkpoints is not None and steps_per_checkpoint > 0 and ((it + 1) % steps_per_checkpoint == 0
                                                                     or it + 1 == iterations):
            epoch = math.ceil((it + 1) / steps_per_checkpoint)
            checkpoints.save(epoch, state, {"gen": gen}, {"running": running})
            report(span[0] + span[1] * (it + 1) / iterations,
                   f"epoch {epoch}/{math.ceil(iterations / steps_per_checkpoint)}: loss {running:.3f}")
    return net


def write_bundle(
    out_dir: Path,
    net: UNet,
    spec: USSegSpec,
    holdout: list[Case],
    *,
    version: str,
    demo: bool,
    device: torch.device,
    report: ProgressFn,
    started: float,
    seconds_data: float,
    seconds_train: float,
    intended_use: str,
    population: str,
    training_data: str,
    extra_performance: dict[str, Any] | None = None,
) -> Path:
    """Save the network, evaluate it on the held-out regions as in service, write card and README."""
    dev, t0, t_data, t_train = device, started, seconds_data, seconds_train
    size = spec.size
    for sub in ("models", "configs", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    torch.save({k: t.detach().cpu() for k, t in net.state_dict().items()}, out_dir / WEIGHTS_FILE)
    card = ModelCard(
        name=NAME,
        version=version,
        title="Thyroid nodule segmentation on B-mode ultrasound (2D MONAI UNet)",
        demo=demo,
        intended_use=intended_use,
        population=population,
        modality="US",
        network=NETWORK,
        input=InputSpec(size=size, channels=1, normalisation=(
            f"B-mode region in [0, 1], longer side {size} px, {spec.normalisation} over the region")),
        labels=list(US_SEG_LABELS),
        decision_thresholds={NODULE: 0.5},
        weights=[WeightsFile(path=WEIGHTS_FILE, sha256=sha256_file(out_dir / WEIGHTS_FILE))],
        training_data=training_data,
        reported_performance={},
    )
    metadata = card.model_dump(mode="json") | {"us_seg": spec.model_dump(mode="json")}
    model = USNoduleSeg.from_bundle(Bundle(out_dir, ModelCard.model_validate(metadata)), str(dev))
    perf = evaluate_pairs(model, holdout)
    seconds = time.monotonic() - t0
    report(0.97, f"held-out: {perf}")
    metadata["reported_performance"] = {
        **perf,
        **(extra_performance or {}),
        "training_seconds": round(seconds, 1),
        "training_seconds_split": {"data": round(t_data, 1), "optimise": round(t_train, 1),
                                   "evaluate": round(seconds - t_data - t_train, 1)},
        "training_device": f"{dev.type} ({platform.machine()}, {torch.get_num_threads()} threads)",
    }
    metadata |= {
        "task": "segmentation of thyroid nodules on 2D B-mode ultrasound",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
    }
    final = ModelCard.model_validate(metadata)
    (out_dir / CARD_PATH).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (out_dir / DOCS_PATH).write_text(_readme(final, spec), encoding="utf-8")
    report(1.0, f"bundle written in {seconds:.0f} s")
    return out_dir
