"""What every site trainer shares: the split and k-fold by study, resumable checkpoints, the options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo.nm_thyroid_dx.train import fit
from model_zoo.site_training import (
    TRAINERS,
    TrainingDataError,
    TrainOptions,
    kfold_by_study,
    split_by_study,
    summarise_folds,
    train,
)


def _studies(n_studies: int, per_study: int, n_classes: int) -> tuple[list[str], list[int]]:
    uids = [f"1.2.{i}" for i in range(n_studies) for _ in range(per_study)]
    labels = [i % n_classes for i in range(n_studies) for _ in range(per_study)]
    return uids, labels


def test_split_keeps_studies_whole_and_stratifies() -> None:
    uids, labels = _studies(20, 3, 4)
    train_idx, hold_idx = split_by_study(labels, uids, 0.2, seed=1)
    assert {uids[i] for i in train_idx}.isdisjoint({uids[i] for i in hold_idx})
    assert len(train_idx) + len(hold_idx) == len(uids)
    held_classes = [labels[i] for i in hold_idx]
    assert sorted(set(held_classes)) == [0, 1, 2, 3] and len(hold_idx) == 4 * 3  # one study (3 images) per class
    again = split_by_study(labels, uids, 0.2, seed=1)
    assert np.array_equal(again[1], hold_idx)  # fixed seed: the same split
    assert not np.array_equal(split_by_study(labels, uids, 0.2, seed=2)[1], hold_idx)


def test_a_study_with_one_positive_lesion_is_a_positive_study() -> None:
    uids = ["a", "a", "b", "b", "c", "d"]
    labels = [0, 1, 0, 0, 1, 0]
    _, hold = split_by_study(labels, uids, 0.5, seed=0)
    held = {uids[i] for i in hold}
    assert len(held & {"a", "c"}) == 1 and len(held & {"b", "d"}) == 1


def test_kfold_by_study_covers_every_item_once() -> None:
    uids, labels = _studies(12, 2, 2)
    folds = kfold_by_study(labels, uids, 3, seed=0)
    assert len(folds) == 3
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen.tolist()) == list(range(len(uids)))
    for tr, val in folds:
        assert {uids[i] for i in tr}.isdisjoint({uids[i] for i in val})
        assert set(np.asarray(labels)[val].tolist()) == {0, 1}
    with pytest.raises(TrainingDataError, match="folds"):
        kfold_by_study(labels, uids, 13, seed=0)


def test_fold_summary() -> None:
    s = summarise_folds([{"accuracy": 0.5, "n": 4}, {"accuracy": 1.0, "n": 4}])
    assert s["folds"] == 2 and s["accuracy_mean"] == 0.75 and s["accuracy_sd"] == pytest.approx(0.3536, abs=1e-4)
    assert "n_mean" not in s


def test_every_zoo_model_has_a_trainer() -> None:
    from workers.models import LOADERS

    assert set(TRAINERS) == set(LOADERS)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="holdout"):
        train("nm_thyroid_dx", TrainOptions(tmp_path, tmp_path / "b", holdout=1.5))
    with pytest.raises(TrainingDataError, match="folds"):
        train("nm_thyroid_dx", TrainOptions(tmp_path, tmp_path / "b", folds=1))
    with pytest.raises(TrainingDataError, match="no site training"):
        train("nope", TrainOptions(tmp_path, tmp_path / "b"))


class _Interrupted(Exception):
    pass


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, 1, 64, 64, generator=gen)
    y = torch.arange(12) % 4
    x[y == 1] += 1.0
    return x, y


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Killed after epoch 1 of 2, then resumed: the same weights as a run never interrupted."""
    x, y = _data()
    opts = TrainOptions(tmp_path, tmp_path / "bundle", epochs=2, seed=5, resume=True)
    key = {"data": "synthetic"}
    quiet = lambda frac, msg: None  # noqa: E731
    whole = fit(x, y, epochs=2, seed=5, device=torch.device("cpu"), report=quiet)

    def stop_after_first_epoch(frac: float, msg: str) -> None:
        if msg.startswith("epoch 1/2"):
            raise _Interrupted

    with pytest.raises(_Interrupted):
        fit(x, y, epochs=2, seed=5, device=torch.device("cpu"), report=stop_after_first_epoch,
            checkpoints=opts.checkpoints("final", key))
    assert (opts.checkpoint_dir / "final.pt").exists()
    messages: list[str] = []
    resumed = fit(x, y, epochs=2, seed=5, device=torch.device("cpu"), report=lambda f, m: messages.append(m),
                  checkpoints=opts.checkpoints("final", key))
    assert messages[0] == "resumed after epoch 1/2" and not any(m.startswith("epoch 1/2") for m in messages)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # other data: the checkpoint is not used
    messages.clear()
    fit(x[:8], y[:8], epochs=1, seed=5, device=torch.device("cpu"), report=lambda f, m: messages.append(m),
        checkpoints=opts.checkpoints("final", {"data": "other"}))
    assert not any(m.startswith("resumed") for m in messages)
    opts.finished()
    assert not opts.checkpoint_dir.exists()
