"""Train nm_graves_i131 (seed 001) on a site's own labelled scintigrams (``thyroid-node train``).

The folder is the one ``thyroid-node validate nm_graves_i131`` reads
(:func:`model_zoo.validation.collect.collect_graves`): DICOM files in any layout and ``labels.csv``
with ``study_instance_uid,cured`` (``cured`` 1 or 0: cured by the first I-131 therapy), one row per
study of a Graves' patient before that therapy. Each study contributes the image validation and
serving score: its first NM image (by SOP Instance UID) that seed 003's pre-processing accepts
(:func:`model_zoo.nm_thyroid_dx.preprocess.prepare`: frame choice, counts / 99.5th percentile,
resize), so the network is trained on exactly what it sees in service.

Studies are held out by study, stratified by outcome (``--holdout``, fixed ``--seed``). With
``--folds k`` the *whole* pipeline (ResNet50 end to end, deep features, LASSO to 16, random
forest, Youden threshold) is fitted on k-1 folds of the training part and scored on the k-th:
the card's ``cross_validation`` holds each fold's AUC and accuracy (at that fold's threshold).
The bundle's pipeline is then fitted on the whole training part with the demo's recipe
(:func:`model_zoo.nm_graves_i131.train.fit_pipeline`, the demo's ResNet50 widths and input size,
:data:`~model_zoo.nm_graves_i131.train.DEMO_RECIPE`); ``--epochs`` sets the ResNet50's epochs
(default: the demo's 12). Every ResNet50 epoch is checkpointed; ``--resume`` continues an
interrupted run (the scikit-learn steps take seconds and are redone).

The LASSO's and the threshold's 5-fold cross-validation need at least 5 studies of each outcome
in every training set (after the hold-out and, with ``--folds``, in every fold's training part),
and the LASSO must keep 16 features: a few dozen studies at the very least.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset, dcmread

from model_zoo.errors import InputRejected
from model_zoo.nm_graves_i131.model import NAME, GravesSpec
from model_zoo.nm_graves_i131.train import (
    BATCH,
    DEMO_NETWORK,
    DEMO_RECIPE,
    LR,
    WEIGHT_DECAY,
    FittedPipeline,
    fit_pipeline,
    make_spec,
    write_bundle,
)
from model_zoo.nm_thyroid_dx.preprocess import prepare
from model_zoo.phantoms.nm_graves import graves_case, write_graves_study
from model_zoo.progress import ProgressFn
from model_zoo.site_training import (
    sub_report,
    Checkpoints,
    TrainingDataError,
    TrainOptions,
    json_safe,
    kfold_by_study,
    split_by_study,
    summarise_folds,
)
from model_zoo.validation.collect import ValidationDataError, read_labels, read_studies, write_labels
from model_zoo.validation.stats import auc_delong, binary_metrics

logger = logging.getLogger(__name__)

MIN_PER_CLASS = 5  # the 5-fold stratified CV of LassoCV and of the threshold
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def load_site_data(data_dir: Path, size: int) -> tuple[torch.Tensor, np.ndarray, list[str], list[Dataset]]:
    """Inputs ``(N, 1, size, size)``, outcomes ``(N,)`` (1: cured), study UIDs and the image used, one per study."""
    studies = read_studies(data_dir)
    xs, ys, uids, used = [], [], [], []
    for row in read_labels(data_dir, ("study_instance_uid", "cured")):
        uid, cured = row["study_instance_uid"].strip(), row["cured"].strip().lower()
        if cured not in _TRUE + _FALSE:
            raise ValidationDataError(f"labels.csv: cured must be 1 or 0, got {row['cured']!r}")
        if uid not in studies:
            raise ValidationDataError(f"labels.csv: study {uid} has no DICOM files in {data_dir}")
        if uid in uids:
            raise ValidationDataError(f"labels.csv: study {uid} is labelled twice")
        for ds in sorted(studies[uid], key=lambda d: str(d.SOPInstanceUID)):
            if str(ds.get("Modality", "")) != "NM":
                continue
            try:
                xs.append(prepare(ds, size).tensor)
            except InputRejected as exc:
                logger.warning("an image of study …%s refused: %s", uid[-8:], exc.reason)
                continue
            ys.append(1 if cured in _TRUE else 0)
            uids.append(uid)
            used.append(ds)
            break
        else:
            logger.warning("study …%s has no NM image the model accepts: left out", uid[-8:])
    if not xs:
        raise ValidationDataError(f"{data_dir}: no labelled study has an NM image the model accepts")
    return torch.cat(xs), np.asarray(ys, dtype=np.int64), uids, used


def _check_counts(y: np.ndarray, what: str) -> None:
    counts = np.bincount(y, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise TrainingDataError(
            f"{what}: {int(counts[1])} cured and {int(counts[0])} not cured studies; the LASSO's and the threshold's "
            f"5-fold cross-validation need at least {MIN_PER_CLASS} of each (add studies, or lower --holdout/--folds)"
        )


def _fold_figures(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    out: dict[str, float] = {"n": int(len(y))}
    out["auc"] = round(float(auc_delong(y, p).auc), 4) if 0 < y.sum() < len(y) else float("nan")
    out["accuracy"] = round(float(binary_metrics(y, p, threshold).accuracy), 4)
    return out


def train_site(opts: TrainOptions) -> Path:
    """Train the seed-001 pipeline on a labelled folder and write a bundle (``demo`` false)."""
    t0 = time.monotonic()
    dev = opts.torch_device()
    report = opts.report(NAME)
    recipe = DEMO_RECIPE
    epochs = opts.epochs if opts.epochs is not None else int(recipe["epochs"])
    if epochs < 1:
        raise TrainingDataError(f"--epochs {epochs}: at least 1")
    spec = make_spec(int(recipe["input_size"]), dict(DEMO_NETWORK["resnet50"]), int(recipe["n_features"]), None,
                     opts.seed)
    data_dir = Path(opts.data_dir)
    x, y, uids, used = load_site_data(data_dir, spec.input_size)
    train_idx, hold_idx = split_by_study(y, uids, opts.holdout, opts.seed)
    if len(hold_idx) == 0 or len(set(y[hold_idx].tolist())) < 2:
        raise TrainingDataError(f"{data_dir}: too few studies to hold {opts.holdout:.0%} of each outcome out")
    _check_counts(y[train_idx], "training part")
    report(0.02, f"{len(train_idx)} training and {len(hold_idx)} held-out studies "
                 f"({int(y.sum())} cured, {int(len(y) - y.sum())} not cured)")
    key: dict[str, Any] = {"model": NAME, "studies": uids, "labels": y.tolist(), "spec": spec.model_dump(mode="json"),
                           "epochs_resolved": epochs}
    x_tr, y_tr = x[torch.from_numpy(train_idx)], y[train_idx]
    train_uids = [uids[i] for i in train_idx]
    cv = None
    if opts.folds:
        per_fold = []
        folds = kfold_by_study(y_tr, train_uids, opts.folds, opts.seed)
        for k, (a, b) in enumerate(folds, start=1):
            _check_counts(y_tr[a], f"fold {k} training part")
            fold_report = sub_report(report, 0.02 + 0.5 * (k - 1) / len(folds), 0.5 / len(folds),
                                      f"fold {k}/{len(folds)}")
            fitted = _fit(x_tr[torch.from_numpy(a)], y_tr[a], spec, epochs, opts.seed + k, dev, fold_report,
                          opts.checkpoints(f"fold{k}", key))
            p, _ = fitted.predict(x_tr[torch.from_numpy(b)], dev)
            per_fold.append(_fold_figures(y_tr[b], p, fitted.threshold))
            report(0.02 + 0.5 * k / len(folds), f"fold {k}/{len(folds)}: {per_fold[-1]}")
        cv = json_safe(summarise_folds(per_fold))
        cv["scope"] = "the whole pipeline (ResNet50, LASSO, random forest, threshold) refitted per fold"
        report = sub_report(report, 0.52, 0.48, "final fit")
    fitted = _fit(x_tr, y_tr, spec, epochs, opts.seed, dev, report, opts.checkpoints("final", key))
    hold = torch.from_numpy(hold_idx)
    return write_bundle(
        Path(opts.out_dir), fitted, x[hold], y[hold_idx], version=opts.version, demo=False, device=dev, report=report,
        started=t0,
        intended_use=(f"Trained by the site on the studies of {data_dir.name}: probability that a first I-131 therapy "
                      "cures Graves' disease. Validate locally before use."),
        population=f"the site's labelled pre-treatment 99mTc-pertechnetate scintigrams of Graves' patients in "
                   f"{data_dir.name}",
        training_data=(
            f"{len(set(uids))} studies ({int(y.sum())} cured) from {data_dir.name}, one image each; held out by "
            f"study, stratified: {opts.holdout:.0%} (seed {opts.seed}); ResNet50 widths "
            f"{list(spec.resnet50.block_inplanes)} at {spec.input_size} px, {epochs} epochs, batch {BATCH}, Adam "
            f"one-cycle lr peak {LR}, weight decay {WEIGHT_DECAY}; LASSO to {spec.n_features} deep features; random "
            "forest; the demo recipe of model_zoo.nm_graves_i131.train"
            + (f"; {opts.folds}-fold cross-validation by study on the training part" if opts.folds else "")
        ),
        extra_performance={"training_n": int(len(train_idx)), **({"cross_validation": cv} if cv else {})},
        inference_check=used[int(hold_idx[0])],
    )


def _fit(x: torch.Tensor, y: np.ndarray, spec: GravesSpec, epochs: int, seed: int, dev: torch.device,
         report: ProgressFn, checkpoints: Checkpoints) -> FittedPipeline:
    try:
        return fit_pipeline(x, y, spec, epochs=epochs, seed=seed, device=dev, report=report, checkpoints=checkpoints)
    except RuntimeError as exc:  # LASSO keeps fewer features than the recipe asks for
        if "LASSO" in str(exc):
            raise TrainingDataError(f"{exc}: more studies are needed") from exc
        raise


def write_phantoms(out_dir: Path, n: int, seed: int) -> Path:
    """``n`` Graves' phantom studies (cured / not cured in turn) and their ``labels.csv``.

    Phantoms whose label the phantom's 5 % label noise flipped are skipped (the next seed is
    taken), so every label is the convention's truth (:mod:`model_zoo.phantoms.nm_graves`).
    """
    if n < 2:
        raise TrainingDataError(f"--n {n}: at least 2 studies")
    rows = []
    case_seed = seed
    for i in range(n):
        cured = i % 2 == 1
        for _ in range(64):  # a label is flipped with probability 0.05: 64 noisy draws in a row do not happen
            if not graves_case(case_seed, cured).noisy:
                break
            case_seed += 1
        path = write_graves_study(out_dir / f"s{i:03d}", case_seed, cured)
        rows.append({"study_instance_uid": str(dcmread(path, stop_before_pixels=True).StudyInstanceUID),
                     "cured": int(cured)})
        case_seed += 1
    return write_labels(out_dir, rows)
