"""Training a zoo model on a site's labelled studies (``thyroid-node train MODEL --data DIR``).

Every trainable model has a module ``model_zoo.<name>.site`` with two functions:

* ``train_site(opts: TrainOptions) -> Path``: read the labelled folder (DICOM files and
  ``labels.csv``, the layout ``thyroid-node validate`` reads, docs/validation.md), run every
  input through the node's own pre-processing, hold studies out, optionally cross-validate,
  fit with the demo's recipe (the same fit code the phantom demo uses) and write a bundle
  whose card (``demo: false``) records the data, the split and the held-out figures;
* ``write_phantoms(out_dir: Path, n: int, seed: int) -> Path``: a labelled folder of phantom
  studies in that same layout (``thyroid-node phantoms MODEL``), so that the whole cycle
  train -> validate -> install can be run, and is tested, on data with known truth.

What the trainers share lives here: the options, the split by study, k-fold by study
(scikit-learn's ``StratifiedGroupKFold``), resumable per-epoch checkpoints and the device.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import torch

from model_zoo.errors import ModelZooError
from model_zoo.progress import ProgressFn, reporter

logger = logging.getLogger(__name__)

#: zoo key -> module with ``train_site`` and ``write_phantoms``
TRAINERS: Final[dict[str, str]] = {
    "nm_thyroid_dx": "model_zoo.nm_thyroid_dx.site",
    "nm_graves_i131": "model_zoo.nm_graves_i131.site",
    "ct_lung_met_rai": "model_zoo.ct_lung_met_rai.site",
    "us_nodule_seg": "model_zoo.us_nodule_seg.site",
    "us_calcified_nodule": "model_zoo.us_calcified_nodule.site",
    "us_lvlnm": "model_zoo.us_lvlnm.site",
}


class TrainingDataError(ModelZooError):
    """The training folder, its labels or the options cannot be used (the message says why)."""


@dataclass(frozen=True)
class TrainOptions:
    """What ``thyroid-node train`` passes to a model's ``train_site``.

    ``epochs`` ``None`` means the model's default (its demo recipe). ``folds`` >= 2 runs k-fold
    cross-validation by study on the training part first and records each fold's figures in the
    card; the bundle's network is then fitted on the whole training part. ``resume`` continues
    an interrupted run from its last checkpoint (``<out>.checkpoints/``) when the data and the
    options are the same.
    """

    data_dir: Path
    out_dir: Path
    version: str = "1.0.0-site"
    epochs: int | None = None
    seed: int = 0
    holdout: float = 0.2
    folds: int = 0
    resume: bool = False
    device: str | None = None
    progress: ProgressFn | None = field(default=None, compare=False)

    def torch_device(self) -> torch.device:
        """CUDA when present (or as asked), else the CPU."""
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def report(self, name: str) -> ProgressFn:
        return reporter(name, self.progress)

    @property
    def checkpoint_dir(self) -> Path:
        out = Path(self.out_dir)
        return out.parent / f".{out.name}.checkpoints"

    def checkpoints(self, stage: str, key: Mapping[str, Any]) -> Checkpoints:
        """The checkpoint of one training stage (``"fold2"``, ``"final"``...) of this run.

        ``key`` describes what makes two runs the same (the data, the hyper-parameters): a
        checkpoint written under another key is never resumed from.
        """
        full = {"stage": stage, "seed": self.seed, "epochs": self.epochs, "holdout": self.holdout,
                "folds": self.folds, **key}
        return Checkpoints(self.checkpoint_dir, stage, full, resume=self.resume)

    def finished(self) -> None:
        """The bundle is written: the checkpoints of this run are no longer needed."""
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


class Checkpoints:
    """Resumable training of one stage: written atomically after every epoch.

    ``restore`` loads the latest state into the given objects (networks, optimisers,
    schedulers: anything with ``state_dict``/``load_state_dict``), torch generators and torch's
    global random stream, and returns the number of epochs already done (0 when there is
    nothing to resume). A resumed run then continues exactly as the uninterrupted one would.
    """

    def __init__(self, directory: Path, stage: str, key: Mapping[str, Any], *, resume: bool) -> None:
        self.path = directory / f"{stage}.pt"
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        self.resume = resume

    def restore(self, objects: Mapping[str, Stateful], generators: Mapping[str, torch.Generator] | None = None,
                extra: dict[str, Any] | None = None) -> int:
        if not self.resume or not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("key") != self.key:
            logger.warning("checkpoint %s was written for other data or options: starting this stage afresh",
                           self.path.name)
            return 0
        for name, obj in objects.items():
            obj.load_state_dict(state["objects"][name])
        for name, gen in (generators or {}).items():
            gen.set_state(state["generators"][name])
        torch.set_rng_state(state["torch_rng"])  # dropout and other draws from the global stream
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if extra is not None:
            extra.update(state.get("extra", {}))
        logger.info("resumed %s after epoch %d", self.path.stem, state["epoch"])
        return int(state["epoch"])

    def save(self, epoch: int, objects: Mapping[str, Stateful], generators: Mapping[str, torch.Generator] | None = None,
             extra: Mapping[str, Any] | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"key": self.key, "epoch": epoch,
                 "objects": {name: obj.state_dict() for name, obj in objects.items()},
                 "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                 "extra": dict(extra or {})}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def split_by_study(y: Sequence[int] | np.ndarray | torch.Tensor, studies: Sequence[str], holdout: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out indices: whole studies, stratified by class, ``holdout`` of each class held out.

    A study's class is the largest label among its items (a study with one positive lesion is
    a positive study).
    """
    labels = np.asarray(y.tolist() if isinstance(y, torch.Tensor) else y).astype(int)
    rng = np.random.default_rng(seed)
    study_class: dict[str, int] = {}
    for uid, cls in zip(studies, labels.tolist()):
        study_class[uid] = max(cls, study_class.get(uid, cls))
    held: set[str] = set()
    for cls in sorted(set(study_class.values())):
        members = sorted(u for u, c in study_class.items() if c == cls)
        rng.shuffle(members)
        held |= set(members[: int(round(holdout * len(members)))])
    idx = np.arange(len(studies))
    mask = np.array([u in held for u in studies], dtype=bool)
    return idx[~mask], idx[mask]


def kfold_by_study(y: Sequence[int] | np.ndarray, studies: Sequence[str], k: int,
                   seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs; a study's items stay in one fold, classes stratified."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(y).astype(int)
    n_studies = len(set(studies))
    if k < 2 or k > n_studies:
        raise TrainingDataError(f"--folds {k}: needs 2 <= folds <= the number of training studies ({n_studies})")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = [(np.asarray(a), np.asarray(b)) for a, b in splitter.split(np.zeros(len(labels)), labels, list(studies))]
    for i, (_, val) in enumerate(folds):
        if len(set(labels[val].tolist())) < 2:
            logger.warning("fold %d of %d holds one class only: its AUC is undefined", i + 1, k)
    return folds


def sub_report(report: ProgressFn, start: float, span: float, prefix: str) -> ProgressFn:
    """Progress of one part of a run (a fold, the final fit), mapped onto ``[start, start + span]``."""
    return lambda frac, msg: report(start + span * frac, f"{prefix}: {msg}")


def summarise_folds(per_fold: list[dict[str, float]]) -> dict[str, Any]:
    """Per-fold figures and their mean and standard deviation, for the card."""
    keys = sorted({key for fold in per_fold for key in fold if key != "n"})
    summary: dict[str, Any] = {"folds": len(per_fold), "per_fold": per_fold}
    for key in keys:
        values = np.array([fold[key] for fold in per_fold if key in fold and fold[key] == fold[key]], dtype=float)
        if len(values):
            summary[f"{key}_mean"] = round(float(values.mean()), 4)
            summary[f"{key}_sd"] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4)
    return summary


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, total: int,
              pct_start: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule over ``total`` steps; ``pct_start`` nudged where ``pct_start * total``
    is exactly 1 (torch's warm-up phase would then span zero steps and divide by zero: small site
    runs hit it, e.g. 10 iterations at 0.1, 5 at 0.2). Other totals get torch's schedule unchanged."""
    if abs(pct_start * total - 1.0) < 1e-9:
        pct_start = 1.5 / total
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct_start)


def json_safe(value: Any) -> Any:
    """NaN (an undefined figure, e.g. the AUC of a fold of one class) -> None, recursively: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _module(name: str) -> Any:
    if name not in TRAINERS:
        raise TrainingDataError(f"no site training for {name!r}; known: {', '.join(TRAINERS)}")
    return importlib.import_module(TRAINERS[name])


def train(name: str, opts: TrainOptions) -> Path:
    """Train zoo model ``name`` on ``opts.data_dir`` into the bundle ``opts.out_dir``."""
    if not 0.0 < opts.holdout < 1.0:
        raise TrainingDataError(f"--holdout {opts.holdout}: must be between 0 and 1")
    if opts.folds == 1 or opts.folds < 0:
        raise TrainingDataError(f"--folds {opts.folds}: 0 (no cross-validation) or at least 2")
    out: Path = _module(name).train_site(opts)
    opts.finished()
    return out


def write_phantoms(name: str, out_dir: Path, n: int, seed: int) -> Path:
    """A labelled phantom folder for model ``name`` in the layout ``train`` and ``validate`` read."""
    folder: Path = _module(name).write_phantoms(Path(out_dir), n, seed)
    return folder
