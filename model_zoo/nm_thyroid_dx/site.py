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

from model_zoo.errors import InputRejected
from model_zoo.nm_thyroid_dx.labels import NM_THYROID_LABELS
from model_zoo.nm_thyroid_dx.preprocess import prepare
from model_zoo.nm_thyroid_dx.train import fit_and_write
from model_zoo.progress import ProgressFn, reporter
from model_zoo.validation.collect import ValidationDataError, read_labels, read_studies

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


def split_by_study(y: torch.Tensor, uids: list[str], holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out indices: whole studies, stratified by class, ``holdout`` of each class held out."""
    rng = np.random.default_rng(seed)
    study_class = {u: int(c) for u, c in zip(uids, y.tolist())}
    held: set[str] = set()
    for cls in sorted(set(study_class.values())):
        members = sorted(u for u, c in study_class.items() if c == cls)
        rng.shuffle(members)
        held |= set(members[: int(round(holdout * len(members)))])
    idx = np.arange(len(uids))
    mask = np.array([u in held for u in uids])
    return idx[~mask], idx[mask]


def train_site(
    data_dir: Path,
    out_dir: Path,
    *,
    version: str,
    epochs: int = 6,
    seed: int = 0,
    input_size: int = 128,
    holdout: float = 0.2,
    device: str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Train on a labelled folder and write a bundle (not a demo bundle: ``demo`` false)."""
    t0 = time.monotonic()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    report = reporter("nm_thyroid_dx", progress)

    x, y, uids = load_site_data(Path(data_dir), input_size)
    train_idx, hold_idx = split_by_study(y, uids, holdout, seed)
    if len(hold_idx) == 0 or len(train_idx) == 0:
        raise ValidationDataError(f"{data_dir}: too few studies to hold {holdout:.0%} out for evaluation")
    report(0.02, f"{len(train_idx)} training and {len(hold_idx)} held-out images from {len(set(uids))} studies")
    return fit_and_write(
        Path(out_dir), x[train_idx], y[train_idx], x[hold_idx], y[hold_idx], epochs=epochs, seed=seed,
        input_size=input_size, device=dev, report=report, started=t0, version=version, demo=False,
        intended_use=f"Trained by the site on the studies of {Path(data_dir).name}; validate locally before use.",
        population=f"the site's labelled 99mTc-pertechnetate planar thyroid scintigrams in {Path(data_dir).name}",
        training_data=(
            f"{len(set(uids))} studies ({len(x)} images) from {Path(data_dir).name}; held out by study, stratified: "
            f"{holdout:.0%} (seed {seed}); {epochs} epochs, the demo recipe of model_zoo.nm_thyroid_dx.train"
        ),
    )
