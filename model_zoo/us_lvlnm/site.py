"""Train us_lvlnm on a site's outlined nodules with known nodal status (``thyroid-node train us_lvlnm``).

The folder is the US folder of :mod:`model_zoo.us_site_data`: DICOM US images, the site's nodule
outlines as DICOM SEG, and ``labels.csv`` with one row per nodule
(``sop_instance_uid,segment_number,...,lvlnm``; ``lvlnm`` 1 when more than 5 lymph nodes were
metastatic, 0 otherwise, empty when unknown: left out). The paper's cohort is papillary
carcinomas; benign nodules labelled ``lvlnm`` 0 are taken as negatives, as the demo does.

Pre-processing is the node's (:meth:`~model_zoo.us_lvlnm.model.USLVLNM.predict`): the B-mode region
of the frame the pipeline analyses, the site's outline, the region's pixel spacing for the
radiomics. Nodules are split by study (``--holdout``, stratified, fixed seed); the demo's recipe
(:func:`model_zoo.us_lvlnm.train.fit_parts`: DenseNet121 fine-tuned with per-epoch checkpoints,
PCA, pyradiomics, LASSO, MLP, Youden threshold) is fitted on the training part, after an optional
k-fold cross-validation by study (``--folds``), and scored on the held-out part; the card
(``demo: false``) records the data, the split and the held-out figures.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.demo import DEMO_NETWORKS, DEMO_RECIPES
from model_zoo.progress import ProgressFn
from model_zoo.site_training import TrainOptions, kfold_by_study, split_by_study, summarise_folds, sub_report
from model_zoo.us_lvlnm.radiomics import LIGHT_PARAMS
from model_zoo.us_lvlnm.train import Nodule, _metrics, fit_parts, score, write_bundle
from model_zoo.us_site_data import read_us_folder, write_phantom_folder
from model_zoo.validation.collect import ValidationDataError
from model_zoo.validation.stats import auc_delong

logger = logging.getLogger(__name__)


def train_site(opts: TrainOptions) -> Path:
    """Fit the DenseNet121 + radiomics + LASSO + MLP model on a labelled US folder (``demo`` false)."""
    t0 = time.monotonic()
    dev = opts.torch_device()
    report = opts.report("us_lvlnm")
    data_dir = Path(opts.data_dir)
    labelled = read_us_folder(data_dir, "lvlnm").labelled("lvlnm")
    nodules: list[Nodule] = [(n.image.bmode.pixels, n.mask, n.image.bmode.spacing_mm, int(n.label("lvlnm") or 0))
                             for n in labelled]
    y = np.array([n[3] for n in nodules], dtype=np.int64)
    uids = [n.image.study_uid for n in labelled]
    if len(set(y.tolist())) < 2:
        raise ValidationDataError(f"{data_dir}: training needs nodules with lvlnm 1 and with lvlnm 0")
    train_idx, hold_idx = split_by_study(y, uids, opts.holdout, opts.seed)
    if len(hold_idx) == 0 or len(train_idx) == 0:
        raise ValidationDataError(f"{data_dir}: too few studies to hold {opts.holdout:.0%} out for evaluation")
    recipe = DEMO_RECIPES["us_lvlnm"]
    epochs = opts.epochs if opts.epochs is not None else int(recipe["densenet_epochs"])
    params: dict[str, Any] = {"densenet121": dict(DEMO_NETWORKS["us_lvlnm"]["densenet121"]),
                              "radiomics_params": LIGHT_PARAMS, "input_size": int(recipe["input_size"])}
    key: dict[str, Any] = {"model": "us_lvlnm", "nodules": [f"{n.image.sop_uid}/{n.segment_number}" for n in labelled],
                           "labels": y.tolist(), **{k: v for k, v in params.items() if k != "radiomics_params"}}
    training = [nodules[i] for i in train_idx]
    held = [nodules[i] for i in hold_idx]
    report(0.05, f"{len(training)} training and {len(held)} held-out nodules ({int(y.sum())} lvlnm) from "
                 f"{len(set(uids))} studies")
    cv = None
    span_start = 0.05
    try:
        if opts.folds:
            per_fold = []
            folds = kfold_by_study(y[train_idx], [uids[i] for i in train_idx], opts.folds, opts.seed)
            for k, (a, b) in enumerate(folds, start=1):
                sub = sub_report(report, 0.05 + 0.45 * (k - 1) / len(folds), 0.45 / len(folds), f"fold {k}/{len(folds)}")
                fold = fit_parts([training[i] for i in a], seed=opts.seed + k, densenet_epochs=epochs, device=dev,
                                 report=sub, checkpoints=opts.checkpoints(f"fold{k}", key), **params)
                p, _ = score(fold, [training[i] for i in b], dev)
                yb = y[train_idx][b]
                auc = float(auc_delong(yb, p).auc) if 0 < yb.sum() < len(yb) else float("nan")
                acc = float(np.mean((p >= fold.threshold) == (yb == 1)))
                per_fold.append({"auc": round(auc, 4), "accuracy": round(acc, 4), "n": int(len(b))})
                report(0.05 + 0.45 * k / len(folds), f"fold {k}/{len(folds)}: AUC {auc:.3f}, accuracy {acc:.3f}")
            cv = summarise_folds(per_fold)
            span_start = 0.5
        final_report = sub_report(report, span_start, 0.4, "final fit")
        fitted = fit_parts(training, seed=opts.seed, densenet_epochs=epochs, device=dev, report=final_report,
                           checkpoints=opts.checkpoints("final", key), **params)
    except ValueError as exc:  # too few nodules of a class for the 5-fold LASSO / MLP
        raise ValidationDataError(f"{data_dir}: {exc}") from exc
    p_ho, dl_ho = score(fitted, held, dev)
    y_ho = y[hold_idx]
    perf = _metrics(y_ho, p_ho, fitted.threshold, "heldout")
    perf["heldout_densenet_alone_auc"] = round(float(auc_delong(y_ho, dl_ho).auc), 4)
    perf["data"] = {"studies": len(set(uids)), "nodules": len(nodules), "lvlnm": int(y.sum()),
                    "training_nodules": len(training), "heldout_studies": len({uids[i] for i in hold_idx})}
    if cv:
        perf["cross_validation"] = cv
    report(0.95, f"held-out AUC {perf['heldout_auc']} ({len(held)} nodules), threshold {fitted.threshold:.3f}")
    out = write_bundle(
        Path(opts.out_dir), fitted, perf, held[0], float(p_ho[0]), version=opts.version, demo=False, device=dev,
        started=t0, densenet_epochs=epochs,
        intended_use=f"Trained by the site on the outlined nodules of {data_dir.name} with their nodal status; "
                     "validate locally before use.",
        population=f"the site's thyroid nodules on B-mode ultrasound in {data_dir.name} (outlines: site SEG), "
                   "labelled by the number of metastatic lymph nodes at surgery",
        training_data=(
            f"{len(nodules)} nodules ({int(y.sum())} lvlnm) of {len(set(uids))} studies from {data_dir.name}; held out "
            f"by study, stratified: {opts.holdout:.0%} (seed {opts.seed}), {len(held)} nodules; site outlines; "
            f"DenseNet121 {epochs} epochs (the demo recipe of model_zoo.us_lvlnm.train), light radiomics set, "
            "LASSO 5-fold CV, MLP"
            + (f"; {opts.folds}-fold cross-validation by study on the training part" if opts.folds else "")
        ),
    )
    report(1.0, f"bundle written in {time.monotonic() - t0:.0f} s")
    return out


def write_phantoms(out_dir: Path, n: int, seed: int) -> Path:
    """``n`` phantom studies of one nodule each, the demo's mix (3/4 carcinomas, half of them lvlnm; 1/4 benign)."""
    from model_zoo.phantoms.us import training_set

    n_benign = int(round(0.25 * n))
    phantoms = training_set(seed, n - n_benign, malignant=True)
    if n_benign:
        phantoms += training_set(seed + 2, n_benign, malignant=False)
    return write_phantom_folder(Path(out_dir), [[ph] for ph in phantoms], seed)
