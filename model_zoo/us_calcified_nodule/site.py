"""Train us_calcified_nodule on a site's outlined, pathology-labelled nodules (``thyroid-node train``).

The folder is the US folder of :mod:`model_zoo.us_site_data`: DICOM US images, the site's nodule
outlines as DICOM SEG, and ``labels.csv`` with one row per nodule
(``sop_instance_uid,segment_number,malignant,...``); nodules whose ``malignant`` is empty are
left out.

Pre-processing is the node's (:meth:`~model_zoo.us_calcified_nodule.model.USCalcifiedNodule.predict`):
the B-mode region of the frame the pipeline analyses, the outline's bounding rectangle plus the
card's margin (:func:`~model_zoo.us_calcified_nodule.model.nodule_box`), resized to each
backbone's input size (:func:`~model_zoo.us_calcified_nodule.model.crop_input`). Nodules are split
by study (``--holdout``, stratified, fixed seed); both backbones are trained with the demo's recipe
and networks (:func:`model_zoo.us_calcified_nodule.train.fit_backbones`: the paper's optimisation,
checkpointed per epoch), after an optional k-fold cross-validation by study (``--folds``). The
card (``demo: false``) records the data, the split and the held-out figures.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_zoo.phantoms.us import training_set
from model_zoo.progress import ProgressFn
from model_zoo.site_training import Checkpoints, TrainOptions, kfold_by_study, split_by_study, summarise_folds, sub_report
from model_zoo.us_calcified_nodule.model import BACKBONES, USCalcifiedSpec, crop_input, nodule_box
from model_zoo.us_calcified_nodule.train import BATCH, DEMO_RECIPE, LR, fit_backbones, write_bundle
from model_zoo.us_site_data import USNodule, read_us_folder, write_phantom_folder
from model_zoo.validation.collect import ValidationDataError

logger = logging.getLogger(__name__)


def crops(nodules: list[USNodule], spec: USCalcifiedSpec) -> dict[int, torch.Tensor]:
    """Each nodule's crop at every backbone's input size, as the model crops it in service."""
    sizes = sorted({spec.input_size(b) for b in spec.backbones})
    out: dict[int, list[torch.Tensor]] = {s: [] for s in sizes}
    for nodule in nodules:
        grey = np.asarray(nodule.image.bmode.pixels, dtype=np.float32)
        box = nodule_box(nodule.mask, spec.crop_margin)
        for s in sizes:
            out[s].append(crop_input(grey, box, s))
    return {s: torch.stack(v) for s, v in out.items()}


def _take(x: dict[int, torch.Tensor], idx: np.ndarray) -> dict[int, torch.Tensor]:
    index = torch.as_tensor(idx, dtype=torch.long)
    return {s: t[index] for s, t in x.items()}


def train_site(opts: TrainOptions) -> Path:
    """Train both backbones on a labelled US folder and write a bundle (``demo`` false)."""
    t0 = time.monotonic()
    dev = opts.torch_device()
    report = opts.report("us_calcified_nodule")
    data_dir = Path(opts.data_dir)
    nodules = read_us_folder(data_dir, "malignant").labelled("malignant")
    y = np.array([n.label("malignant") for n in nodules], dtype=np.int64)
    if len(set(y.tolist())) < 2:
        raise ValidationDataError(f"{data_dir}: training needs benign and malignant nodules (malignant 0 and 1)")
    uids = [n.image.study_uid for n in nodules]
    train_idx, hold_idx = split_by_study(y, uids, opts.holdout, opts.seed)
    if len(hold_idx) == 0 or len(train_idx) == 0:
        raise ValidationDataError(f"{data_dir}: too few studies to hold {opts.holdout:.0%} out for evaluation")
    networks = DEMO_RECIPE["networks"]
    spec = USCalcifiedSpec(backbones=BACKBONES, xception=dict(networks["xception"]),
                           densenet169=dict(networks["densenet169"]), input_sizes=dict(DEMO_RECIPE["input_sizes"]))
    epochs = opts.epochs if opts.epochs is not None else int(DEMO_RECIPE["epochs"])
    x = crops(nodules, spec)
    labels = torch.from_numpy(y)
    t_data = time.monotonic() - t0
    report(0.05, f"{len(train_idx)} training and {len(hold_idx)} held-out nodules ({int(y.sum())} malignant) from "
                 f"{len(set(uids))} studies; crops ready in {t_data:.0f} s")
    key: dict[str, Any] = {"model": "us_calcified_nodule", "nodules": [f"{n.image.sop_uid}/{n.segment_number}" for n in nodules],
                           "labels": y.tolist(), "spec": spec.model_dump(mode="json")}
    x_tr, y_tr = _take(x, train_idx), labels[train_idx]
    cv = None
    span = (0.1, 0.85)
    if opts.folds:
        per_fold = []
        folds = kfold_by_study(y[train_idx], [uids[i] for i in train_idx], opts.folds, opts.seed)
        for k, (a, b) in enumerate(folds, start=1):
            sub = sub_report(report, 0.05 + 0.45 * (k - 1) / len(folds), 0.45 / len(folds), f"fold {k}/{len(folds)}")
            torch.manual_seed(opts.seed + k)
            gen = torch.Generator().manual_seed(opts.seed + k)

            def fold_stage(backbone: str, _k: int = k) -> Checkpoints:
                return opts.checkpoints(f"fold{_k}-{backbone}", key)

            _, perf = fit_backbones(spec, _take(x_tr, a), y_tr[a], _take(x_tr, b), y_tr[b], epochs=epochs, gen=gen,
                                    dev=dev, report=sub, checkpoints=fold_stage, span=(0.0, 1.0))
            per_fold.append({"auc": perf["heldout_auc"], "accuracy": perf["heldout_accuracy"],
                             "sensitivity": perf["heldout_sensitivity"], "specificity": perf["heldout_specificity"],
                             "n": int(len(b))})
            report(0.05 + 0.45 * k / len(folds), f"fold {k}/{len(folds)}: AUC {perf['heldout_auc']}, "
                                                 f"accuracy {perf['heldout_accuracy']}")
        cv = summarise_folds(per_fold)
        span = (0.5, 0.45)
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    nets, perf = fit_backbones(spec, x_tr, y_tr, _take(x, hold_idx), labels[hold_idx], epochs=epochs, gen=gen, dev=dev,
                               report=report, checkpoints=lambda backbone: opts.checkpoints(f"final-{backbone}", key),
                               span=span)
    seconds = time.monotonic() - t0
    perf.update({
        "epochs": epochs, "training_seconds": round(seconds, 1),
        "training_device": f"{dev.type} ({torch.get_num_threads()} threads)",
        "data": {"studies": len(set(uids)), "nodules": len(nodules), "malignant": int(y.sum()),
                 "training_nodules": int(len(train_idx)), "heldout_studies": len({uids[i] for i in hold_idx})},
        **({"cross_validation": cv} if cv else {}),
    })
    report(0.96, "held-out: " + ", ".join(f"{k} {v}" for k, v in perf.items() if k.startswith("heldout")))
    out = write_bundle(
        Path(opts.out_dir), nets, spec, perf, version=opts.version, demo=False,
        intended_use=f"Trained by the site on the outlined, pathology-labelled nodules of {data_dir.name}; "
                     "validate locally before use.",
        population=f"the site's calcified thyroid nodules on B-mode ultrasound in {data_dir.name} (outlines: site SEG)",
        training_data=(
            f"{len(nodules)} nodules ({int(y.sum())} malignant) of {len(set(uids))} studies from {data_dir.name}; "
            f"held out by study, stratified: {opts.holdout:.0%} (seed {opts.seed}), {len(hold_idx)} nodules; "
            f"crops of the site outline's box + {spec.crop_margin:.0%}; {epochs} epochs per backbone, batch {BATCH}, "
            f"Adam lr {LR} (the demo recipe of model_zoo.us_calcified_nodule.train)"
            + (f"; {opts.folds}-fold cross-validation by study on the training part" if opts.folds else "")
        ),
    )
    report(1.0, f"bundle written in {time.monotonic() - t0:.0f} s")
    return out


def write_phantoms(out_dir: Path, n: int, seed: int) -> Path:
    """``n`` phantom studies of one nodule each, benign and malignant in turn, site SEGs, labels.csv."""
    return write_phantom_folder(Path(out_dir), [[ph] for ph in training_set(seed, n)], seed)
