"""Train us_nodule_seg on a site's own outlined ultrasound images (``thyroid-node train us_nodule_seg``).

The folder is the US folder of :mod:`model_zoo.us_site_data`: DICOM US images, the site's nodule
outlines as DICOM SEG (one segment per nodule), and ``labels.csv`` with one row per nodule
(``sop_instance_uid,segment_number,...``; the ``malignant`` / ``lvlnm`` columns are not used
here). Every image listed must have all its nodules outlined: their union is the target.

Pre-processing is the node's: the B-mode region of the frame the pipeline analyses
(:func:`model_zoo.us_image.bmode_images`), resized to the card's working size exactly as
:class:`~model_zoo.us_nodule_seg.model.USNoduleSeg` resizes it. Images are split by study
(``--holdout``, fixed seed); the UNet is trained with the demo's recipe and network
(:func:`model_zoo.us_nodule_seg.train.fit`: Dice + BCE, Adam one-cycle, the demo's
augmentation), one "epoch" being ``ceil(training images / batch)`` steps (checkpointed; the
default is as many epochs as make the demo's 800 steps). ``--folds k`` first cross-validates by
study. The held-out images are segmented as in service; per-nodule Dice, sensitivity and false
positives per image go into the card (``demo: false``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import UNet

from model_zoo.card import ModelCard
from model_zoo.phantoms.us import us_phantom
from model_zoo.progress import ProgressFn
from model_zoo.site_training import TrainOptions, kfold_by_study, split_by_study, summarise_folds, sub_report
from model_zoo.us_nodule_seg.model import USNoduleSeg, USSegSpec
from model_zoo.us_nodule_seg.train import (
    DEMO_NETWORK,
    DEMO_RECIPE,
    Case,
    evaluate_pairs,
    fit,
    prepare_pairs,
    working_spec,
    write_bundle,
)
from model_zoo.us_site_data import USImage, read_us_folder, write_phantom_folder
from model_zoo.validation.collect import ValidationDataError

logger = logging.getLogger(__name__)

BATCH, LR = 8, 3e-3  # the demo's


def _cases(images: list[USImage]) -> list[Case]:
    return [(im.bmode.pixels, list(im.outlines), im.bmode.spacing_mm) for im in images]


def train_site(opts: TrainOptions) -> Path:
    """Train the nodule UNet on a labelled US folder and write a bundle (``demo`` false)."""
    t0 = time.monotonic()
    dev = opts.torch_device()
    report = opts.report("us_nodule_seg")
    data_dir = Path(opts.data_dir)
    folder = read_us_folder(data_dir)
    images = list(folder.images)
    if not any(im.outlines for im in images):
        raise ValidationDataError(f"{data_dir}: no image with a site outline (SEG) to learn from")
    uids = [im.study_uid for im in images]
    has_nodule = [int(bool(im.outlines)) for im in images]
    train_idx, hold_idx = split_by_study(has_nodule, uids, opts.holdout, opts.seed)
    if len(hold_idx) == 0 or len(train_idx) == 0:
        raise ValidationDataError(f"{data_dir}: too few studies to hold {opts.holdout:.0%} out for evaluation")
    spec = working_spec(DEMO_NETWORK, int(DEMO_RECIPE["size"]))
    training = [images[i] for i in train_idx]
    held = [images[i] for i in hold_idx]
    steps = math.ceil(len(training) / BATCH)
    epochs = opts.epochs if opts.epochs is not None else max(1, round(DEMO_RECIPE["iterations"] / steps))
    key: dict[str, Any] = {"model": "us_nodule_seg", "images": [f"{im.sop_uid}/{im.bmode.region}" for im in images],
                           "nodules": [len(im.outlines) for im in images], "size": spec.size}
    x, y, v = prepare_pairs([(im.bmode.pixels, im.truth) for im in training], spec)
    t_data = time.monotonic() - t0
    n_nodules = sum(len(im.outlines) for im in images)
    report(0.05, f"{len(training)} training and {len(held)} held-out images ({n_nodules} outlined nodules, "
                 f"{len(set(uids))} studies), working size {tuple(x.shape[-2:])}; {epochs} epochs of {steps} steps")

    cv = None
    span = (0.1, 0.75)
    if opts.folds:
        per_fold = []
        folds = kfold_by_study(np.ones(len(training), int), [im.study_uid for im in training], opts.folds, opts.seed)
        for k, (a, b) in enumerate(folds, start=1):
            sub = sub_report(report, 0.05 + 0.4 * (k - 1) / len(folds), 0.4 / len(folds), f"fold {k}/{len(folds)}")
            part = [training[i] for i in a]
            fx, fy, fv = prepare_pairs([(im.bmode.pixels, im.truth) for im in part], spec)
            fsteps = math.ceil(len(part) / BATCH)
            net = fit(fx, fy, fv, spec, seed=opts.seed + k, iterations=epochs * fsteps, batch=BATCH, lr=LR, device=dev,
                      report=sub, checkpoints=opts.checkpoints(f"fold{k}", key), steps_per_checkpoint=fsteps)
            perf = evaluate_pairs(_as_model(net, spec, dev), _cases([training[i] for i in b]))
            per_fold.append({"mean_dice": perf["heldout_mean_dice"], "sensitivity": perf["heldout_sensitivity"],
                             "false_positives_per_image": perf["heldout_false_positives_per_image"],
                             "n": perf["heldout_nodules"]})
            report(0.05 + 0.4 * k / len(folds), f"fold {k}/{len(folds)}: mean Dice {perf['heldout_mean_dice']:.3f}, "
                                                f"sensitivity {perf['heldout_sensitivity']:.3f}")
        cv = summarise_folds(per_fold)
        span = (0.45, 0.45)
    final_report = sub_report(report, span[0], span[1], "final fit") if opts.folds else report
    net = fit(x, y, v, spec, seed=opts.seed, iterations=epochs * steps, batch=BATCH, lr=LR, device=dev,
              report=final_report, checkpoints=opts.checkpoints("final", key), steps_per_checkpoint=steps,
              span=(0.0, 1.0) if opts.folds else span)
    t_train = time.monotonic() - t0 - t_data
    return write_bundle(
        Path(opts.out_dir), net, spec, _cases(held), version=opts.version, demo=False, device=dev, report=report,
        started=t0, seconds_data=t_data, seconds_train=t_train,
        intended_use=f"Trained by the site on the outlined ultrasound images of {data_dir.name}; validate locally "
                     "before use.",
        population=f"the site's thyroid B-mode images with nodule outlines (DICOM SEG) in {data_dir.name}",
        training_data=(
            f"{len(images)} B-mode regions of {len(set(uids))} studies ({n_nodules} outlined nodules) from "
            f"{data_dir.name}; held out by study: {opts.holdout:.0%} (seed {opts.seed}), {len(held)} images; "
            f"{epochs} epochs of {steps} steps of {BATCH} augmented images (the demo recipe of "
            f"model_zoo.us_nodule_seg.train: Dice + BCE, Adam one-cycle peak {LR})"
            + (f"; {opts.folds}-fold cross-validation by study on the training part" if opts.folds else "")
        ),
        extra_performance={"data": {"studies": len(set(uids)), "images": len(images), "nodules": n_nodules,
                                    "training_images": len(training), "heldout_studies": len({uids[i] for i in hold_idx})},
                           **({"cross_validation": cv} if cv else {})},
    )


def _as_model(net: UNet, spec: USSegSpec, dev: torch.device) -> USNoduleSeg:
    """A trained UNet wrapped as in service (for the folds' evaluation)."""
    from model_zoo.card import InputSpec, WeightsFile
    from model_zoo.us_nodule_seg.model import NETWORK, NODULE, US_SEG_LABELS

    card = ModelCard.model_validate({
        **ModelCard(name="us_nodule_seg", version="0.0.0-fold", title="fold", demo=False, intended_use="fold",
                    population="fold", modality="US", network=NETWORK, input=InputSpec(size=spec.size, channels=1,
                    normalisation="fold"), labels=list(US_SEG_LABELS), decision_thresholds={NODULE: 0.5},
                    weights=[WeightsFile(path="none", sha256="0" * 64)], training_data="fold",
                    reported_performance={}).model_dump(mode="json"),
        "us_seg": spec.model_dump(mode="json")})
    net.eval()
    return USNoduleSeg(net, card, dev)


def write_phantoms(out_dir: Path, n: int, seed: int) -> Path:
    """``n`` phantom studies, one image each (every third with two nodules), site SEGs, labels.csv."""
    studies = [[us_phantom(seed + i, n_nodules=2 if i % 3 == 2 else 1)] for i in range(n)]
    return write_phantom_folder(Path(out_dir), studies, seed)

