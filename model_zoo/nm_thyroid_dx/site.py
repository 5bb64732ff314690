"""Train nm_thyroid_dx on a site's own labelled scintigrams (``thyroid-node train``).

The folder is the one :mod:`model_zoo.validation.collect` reads (DICOM files and ``labels.csv``
with ``study_instance_uid,label``). Every image goes through the node's own pre-processing
(:func:`model_zoo.nm_thyroid_dx.preprocess.prepare`: frame choice, rescale, normalisation), so
the network is trained on exactly what it will see in service. Studies are split by study into
training and held-out sets (stratified by class, fixed seed); training then follows the demo's
recipe (:func:`model_zoo.nm_thyroid_dx.train.fit_and_write`) and writes a bundle whose card
records the data, the split and the held-out confusion matrix.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from pydicom import dcmread

from model_zoo.errors import InputRejected
from model_zoo.nm_thyroid_dx.labels import NM_THYROID_LABELS
from model_zoo.nm_thyroid_dx.preprocess import prepare
from model_zoo.demo import DEMO_RECIPES
from model_zoo.nm_thyroid_dx.train import evaluate, fit, fit_and_write
from model_zoo.phantoms.nm import write_nm_study
from model_zoo.progress import ProgressFn
from model_zoo.site_training import TrainOptions, kfold_by_study, split_by_study, summarise_folds, sub_report
from model_zoo.validation.collect import ValidationDataError, read_labels, read_studies, write_labels

logger = logging.getLogger(__name__)


def load_site_data(data_dir: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Inputs ``(N, 1, size, size)``, class indices ``(N,)`` and study UIDs of a labelled folder."""
    keys = [label.key for label in NM_THYROID_LABELS]
    studies = read_studies(data_dir)
    xs, ys, uids = [], [], []
    for row in read_labels(data_dir, ("study_instance_uid", "label")):
        uid, label = row["study_instance_uid"].strip(), row["label"].strip()
        if label not in keys:
            raise ValidationDataError(f"labels.csv: label {label!r} is not one of {keys}")
        if uid not in studies:
            raise ValidationDataError(f"labels.csv: study {uid} has no DICOM files in {data_dir}")
        for ds in studies[uid]:
            try:
                xs.append(prepare(ds, size).tensor)
            except InputRejected as exc:
                logger.warning("an image of study …%s left out: %s", uid[-8:], exc.reason)
                continue
            ys.append(keys.index(label))
            uids.append(uid)
    if len(set(ys)) < 2:
        raise ValidationDataError(f"{data_dir}: training needs images of at least two classes")
    return torch.cat(xs), torch.tensor(ys, dtype=torch.long), uids


def train_site(opts: TrainOptions) -> Path:
    """Train on a labelled folder and write a bundle (not a demo bundle: ``demo`` false)."""
    t0 = time.monotonic()
    dev = opts.torch_device()
    report = opts.report("nm_thyroid_dx")
    input_size = DEMO_RECIPES["nm_thyroid_dx"]["input_size"]
    epochs = opts.epochs if opts.epochs is not None else DEMO_RECIPES["nm_thyroid_dx"]["epochs"]

    data_dir = Path(opts.data_dir)
    x, y, uids = load_site_data(data_dir, input_size)
    train_idx, hold_idx = split_by_study(y, uids, opts.holdout, opts.seed)
    if len(hold_idx) == 0 or len(train_idx) == 0:
        raise ValidationDataError(f"{data_dir}: too few studies to hold {opts.holdout:.0%} out for evaluation")
    report(0.02, f"{len(train_idx)} training and {len(hold_idx)} held-out images from {len(set(uids))} studies")
    key = {"model": "nm_thyroid_dx", "studies": sorted(set(uids)), "labels": y.tolist(), "input_size": input_size}
    cv = None
    if opts.folds:
        per_fold = []
        train_uids = [uids[i] for i in train_idx]
        folds = kfold_by_study(y[train_idx].numpy(), train_uids, opts.folds, opts.seed)
        for k, (a, b) in enumerate(folds, start=1):
            fold_report = sub_report(report, 0.02 + 0.4 * (k - 1) / len(folds), 0.4 / len(folds), f"fold {k}/{len(folds)}")
            net = fit(x[train_idx][a], y[train_idx][a], epochs=epochs, seed=opts.seed + k, device=dev,
                      report=fold_report, checkpoints=opts.checkpoints(f"fold{k}", key))
            cm = evaluate(net, x[train_idx][b], y[train_idx][b], dev)
            per_fold.append({"accuracy": round(float(np.trace(cm) / cm.sum()), 4), "n": int(cm.sum())})
            report(0.02 + 0.4 * k / len(folds), f"fold {k}/{len(folds)}: accuracy {per_fold[-1]['accuracy']:.3f}")
        cv = summarise_folds(per_fold)
        report = sub_report(report, 0.42, 0.58, "final fit")
    return fit_and_write(
        Path(opts.out_dir), x[train_idx], y[train_idx], x[hold_idx], y[hold_idx], epochs=epochs, seed=opts.seed,
        input_size=input_size, device=dev, report=report, started=t0, version=opts.version, demo=False,
        intended_use=f"Trained by the site on the studies of {data_dir.name}; validate locally before use.",
        population=f"the site's labelled 99mTc-pertechnetate planar thyroid scintigrams in {data_dir.name}",
        training_data=(
            f"{len(set(uids))} studies ({len(x)} images) from {data_dir.name}; held out by study, stratified: "
            f"{opts.holdout:.0%} (seed {opts.seed}); {epochs} epochs, the demo recipe of model_zoo.nm_thyroid_dx.train"
            + (f"; {opts.folds}-fold cross-validation by study on the training part" if opts.folds else "")
        ),
        checkpoints=opts.checkpoints("final", key), cross_validation=cv,
    )


def write_phantoms(out_dir: Path, n: int, seed: int) -> Path:
    """``n`` phantom studies (classes in turn) and their ``labels.csv``."""
    keys = [label.key for label in NM_THYROID_LABELS]
    rows = []
    for i in range(n):
        label = keys[i % len(keys)]
        path = write_nm_study(out_dir / f"s{i:03d}", label, seed=seed + i)
        rows.append({"study_instance_uid": str(dcmread(path, stop_before_pixels=True).StudyInstanceUID), "label": label})
    return write_labels(out_dir, rows)
