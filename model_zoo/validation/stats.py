"""Validation statistics as the papers report them: AUC, threshold metrics, per class, per band.

Conventions, shared by every function here:

* a case is called positive when ``score >= threshold`` (as :func:`sklearn.metrics.roc_curve`
  and :func:`youden_threshold` count it);
* a ratio whose denominator is zero (0/0: no positive case for the sensitivity, no positive call
  for the PPV...) is NaN, never 0 or 1, so that a small validation set cannot hide it;
* invalid input (empty, length mismatch, NaN scores, a single class where an AUC needs two)
  raises ValueError with the reason.

The AUC and the DeLong test live in :mod:`model_zoo.validation.delong` and are re-exported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, roc_curve

from model_zoo.validation.delong import (
    AUCResult,
    DeLongTest,
    as_binary_labels,
    as_scores,
    auc_delong,
    delong_test,
    require_both_classes,
)

__all__ = [
    "AUCResult", "BandMetrics", "BinaryMetrics", "ClassMetrics", "DeLongTest",
    "DEFAULT_BANDS_MM", "GAO2024_TABLE2_BANDS_MM", "MulticlassMetrics", "auc_delong",
    "binary_metrics", "delong_test", "metrics_by_band", "multiclass_metrics", "youden_threshold",
]

logger = logging.getLogger(__name__)

Bands = tuple[tuple[float, float], ...]
DEFAULT_BANDS_MM: Final[Bands] = ((0.0, 4.0), (4.0, 10.0), (10.0, math.inf))
# Seed 000's Table 2 (<= 4, 5, 6, 7, 8, 9, >= 10 mm), for diameters rounded to whole mm.
GAO2024_TABLE2_BANDS_MM: Final[Bands] = (
    (0.0, 4.5), (4.5, 5.5), (5.5, 6.5), (6.5, 7.5), (7.5, 8.5), (8.5, 9.5), (9.5, math.inf),
)


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics at one threshold; ratios with a zero denominator are NaN.

    ``threshold`` is NaN for one-vs-rest metrics of a multiclass model (decision = argmax).
    """

    accuracy: float
    sensitivity: float  # tp / (tp + fn), recall
    specificity: float  # tn / (tn + fp)
    ppv: float  # tp / (tp + fp), precision
    npv: float  # tn / (tn + fn)
    f1: float  # 2 tp / (2 tp + fp + fn)
    tp: int
    fp: int
    tn: int
    fn: int
    threshold: float


@dataclass(frozen=True)
class ClassMetrics:
    """One class of a multiclass model, one-vs-rest; ``auc`` is None unless both sides occur."""

    label: Hashable
    metrics: BinaryMetrics
    auc: AUCResult | None


@dataclass(frozen=True)
class MulticlassMetrics:
    """Per-class (one-vs-rest) and macro-averaged metrics of a k-class model.

    Macro averages are unweighted means over the classes where the metric is defined (NaN when
    none is). ``confusion[i, j]`` counts cases of true ``labels[i]`` predicted as ``labels[j]``.
    """

    labels: tuple[Hashable, ...]
    per_class: dict[Hashable, ClassMetrics]
    confusion: npt.NDArray[np.int64] = field(repr=False, compare=False)
    accuracy: float
    macro_sensitivity: float
    macro_specificity: float
    macro_ppv: float
    macro_npv: float
    macro_f1: float
    macro_auc: float


@dataclass(frozen=True)
class BandMetrics:
    """Results for the cases with ``low_mm <= size < high_mm``.

    ``auc`` is None unless both classes occur in the band; ``metrics`` is None for an empty band.
    """

    low_mm: float
    high_mm: float
    n: int
    n_pos: int
    n_neg: int
    auc: AUCResult | None
    metrics: BinaryMetrics | None


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def _from_counts(tp: int, fp: int, tn: int, fn: int, threshold: float) -> BinaryMetrics:
    return BinaryMetrics(
        accuracy=_ratio(tp + tn, tp + fp + tn + fn),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        tp=tp, fp=fp, tn=tn, fn=fn, threshold=threshold,
    )


def _counts(
    truth: npt.NDArray[np.bool_], called: npt.NDArray[np.bool_]
) -> tuple[int, int, int, int]:
    tp = int(np.sum(truth & called))
    fp = int(np.sum(~truth & called))
    tn = int(np.sum(~truth & ~called))
    return tp, fp, tn, int(truth.size - tp - fp - tn)


def binary_metrics(
    y_true: npt.ArrayLike, probabilities: npt.ArrayLike, threshold: float = 0.5
) -> BinaryMetrics:
    """Accuracy, sensitivity, specificity, PPV, NPV and F1 of ``probabilities >= threshold``.

    A single class is allowed (the undefined ratios come out NaN).

    Raises
    ------
    ValueError
        Empty input, length mismatch, NaN (or infinite) probabilities, NaN threshold, labels
        other than 0/1.
    """
    y = as_binary_labels(y_true)
    p = as_scores(probabilities, y.size, "probabilities")
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    return _from_counts(*_counts(y, p >= threshold), threshold=float(threshold))


def _nanmean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def multiclass_metrics(
    y_true: Sequence[Hashable] | npt.ArrayLike,
    probabilities: npt.ArrayLike,
    labels: Sequence[Hashable],
) -> MulticlassMetrics:
    """One-vs-rest metrics per class, macro averages and the confusion matrix of a k-class model.

    The predicted class is the argmax of each row (the first label wins a tie); each class's AUC
    uses its own column as the score, with DeLong's CI, as the 4-class NM paper reports per class.

    Parameters
    ----------
    y_true : sequence, shape (n,)
        True labels, each one of ``labels``.
    probabilities : array_like, shape (n, k)
        Column ``j`` scores ``labels[j]`` (need not sum to 1).
    labels : sequence of k >= 2 distinct labels

    Raises
    ------
    ValueError
        Empty input, shape or length mismatch, NaN or infinity, an unknown or duplicated label.
    """
    label_tuple = tuple(labels)
    index = {label: j for j, label in enumerate(label_tuple)}
    if len(index) != len(label_tuple) or len(label_tuple) < 2:
        raise ValueError(f"labels must be >= 2 distinct values, got {label_tuple!r}")
    truth_values = list(np.asarray(y_true, dtype=object).ravel())
    if not truth_values:
        raise ValueError("empty input: y_true holds no cases")
    unknown = {v for v in truth_values if v not in index}
    if unknown:
        raise ValueError(f"y_true holds labels not in labels: {sorted(map(str, unknown))}")
    truth = np.array([index[v] for v in truth_values], dtype=np.int64)
    prob = np.asarray(probabilities, dtype=np.float64)
    if prob.shape != (truth.size, len(label_tuple)):
        raise ValueError(
            f"probabilities must have shape ({truth.size}, {len(label_tuple)}), got {prob.shape}"
        )
    if not np.isfinite(prob).all():
        raise ValueError("probabilities contain NaN or infinite values")
    predicted = prob.argmax(axis=1)
    confusion = confusion_matrix(truth, predicted, labels=np.arange(len(label_tuple)))
    per_class: dict[Hashable, ClassMetrics] = {}
    for j, label in enumerate(label_tuple):
        is_j = truth == j
        counts = _counts(is_j, predicted == j)
        auc = auc_delong(is_j, prob[:, j]) if 0 < is_j.sum() < is_j.size else None
        per_class[label] = ClassMetrics(label, _from_counts(*counts, threshold=math.nan), auc)
    rows = [c.metrics for c in per_class.values()]
    return MulticlassMetrics(
        labels=label_tuple,
        per_class=per_class,
        confusion=confusion.astype(np.int64),
        accuracy=float(np.trace(confusion) / truth.size),
        macro_sensitivity=_nanmean([r.sensitivity for r in rows]),
        macro_specificity=_nanmean([r.specificity for r in rows]),
        macro_ppv=_nanmean([r.ppv for r in rows]),
        macro_npv=_nanmean([r.npv for r in rows]),
        macro_f1=_nanmean([r.f1 for r in rows]),
        macro_auc=_nanmean([c.auc.auc if c.auc else math.nan for c in per_class.values()]),
    )


def metrics_by_band(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    sizes_mm: npt.ArrayLike,
    bands: Sequence[tuple[float, float]] = DEFAULT_BANDS_MM,
    threshold: float = 0.5,
) -> tuple[BandMetrics, ...]:
    """AUC (DeLong CI) and threshold metrics per lesion size band, as seed 000's Table 2.

    A band holds the cases with ``low <= size < high`` (so 4 mm falls in (4, 10), 10 mm in
    (10, inf)); cases outside every band count in none, overlapping bands are allowed. To follow
    the paper's "<= 4 mm ... >= 10 mm" on diameters rounded to whole mm, pass
    :data:`GAO2024_TABLE2_BANDS_MM`.

    Raises
    ------
    ValueError
        As :func:`binary_metrics`; NaN, infinite or negative sizes; a band with ``low >= high``.
    """
    y = as_binary_labels(y_true)
    p = as_scores(probabilities, y.size, "probabilities")
    sizes = as_scores(sizes_mm, y.size, "sizes_mm")
    if (sizes < 0).any():
        raise ValueError("sizes_mm must be >= 0")
    results = []
    for low, high in bands:
        if not low < high:
            raise ValueError(f"band ({low}, {high}) is empty or NaN: need low < high")
        inside = (sizes >= low) & (sizes < high)
        y_band, p_band = y[inside], p[inside]
        n_pos = int(y_band.sum())
        n_neg = int(y_band.size - n_pos)
        auc = auc_delong(y_band, p_band) if n_pos and n_neg else None
        metrics = binary_metrics(y_band, p_band, threshold) if y_band.size else None
        results.append(
            BandMetrics(float(low), float(high), int(y_band.size), n_pos, n_neg, auc, metrics)
        )
    logger.debug("size bands: %s", [(b.low_mm, b.high_mm, b.n) for b in results])
    return tuple(results)


def youden_threshold(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Returns an observed score ``t``: call positive when ``score >= t`` (as :func:`binary_metrics`
    does). Among equal maxima, the highest threshold (the fewest positive calls) wins.

    Raises
    ------
    ValueError
        As :func:`model_zoo.validation.delong.auc_delong` (both classes are needed).
    """
    y = as_binary_labels(y_true)
    s = as_scores(scores, y.size)
    require_both_classes(y)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # Index 0 is roc_curve's "nothing called positive" point at +inf: J = 0 there; skip it.
    best = int(np.argmax(tpr[1:] - fpr[1:])) + 1
    return float(thresholds[best])


def youden_midpoint(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """A threshold of maximal Youden's J, placed midway between the lowest J-maximising score and
    the next lower score (the same calls on these scores, the widest margin below): with separable
    out-of-fold scores :func:`youden_threshold`'s rule would sit on the weakest positive.

    Raises
    ------
    ValueError
        As :func:`youden_threshold`.
    """
    y = as_binary_labels(y_true)
    p = as_scores(scores, y.size)
    require_both_classes(y)
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    j = tpr[1:] - fpr[1:]
    t_lo = float(thresholds[1:][np.isclose(j, j.max(), rtol=0.0, atol=1e-12)].min())
    below = p[p < t_lo]
    return (t_lo + float(below.max())) / 2.0 if below.size else t_lo
