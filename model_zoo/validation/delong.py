"""ROC AUC with DeLong's variance, and DeLong's paired test of two correlated AUCs.

DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845, computed with the fast
algorithm of Sun & Xu (2014), IEEE Signal Process Lett 21:1389-1393: the structural components
("placements") come from midranks instead of the O(m * n) comparison of every positive with
every negative.

With ``m`` positives ``X`` and ``n`` negatives ``Y`` and ``psi(x, y) = 1, 1/2, 0`` for
``x > y, x == y, x < y``:

* ``V10(X_i) = mean_j psi(X_i, Y_j)`` and ``V01(Y_j) = mean_i psi(X_i, Y_j)``; the AUC is the
  mean of either (it equals the Mann-Whitney statistic, ties counted one half);
* ``S10`` and ``S01`` are the sample covariance matrices (``ddof=1``) of the placements over the
  score sets; ``Var(AUC) = S10 / m + S01 / n`` (a matrix when several score sets share the cases).

The 95% CI is normal on the AUC scale clipped to [0, 1] by default, as pROC's ``ci.auc`` with
``method="delong"`` reports it (what most papers quote); ``ci_method="logit"`` builds the interval
on ``logit(AUC)`` with the delta method instead (``se / (AUC * (1 - AUC))``), which stays inside
(0, 1) and behaves better near 1 on small sets.

Labels are 0/1 or booleans, 1 = positive; a higher score means "more likely positive".
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import norm, rankdata

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
CIMethod = Literal["normal", "logit"]


@dataclass(frozen=True)
class AUCResult:
    """ROC AUC with DeLong's variance and its confidence interval.

    ``variance`` (and so the CI) is NaN when a class has a single case: a sample covariance of
    one placement is undefined.
    """

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class DeLongTest:
    """DeLong's paired test of ``auc_a - auc_b`` on the same cases (two-sided).

    ``ci_low``/``ci_high`` bound the difference (normal, clipped to [-1, 1]).
    """

    auc_a: float
    auc_b: float
    difference: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def as_binary_labels(y_true: npt.ArrayLike) -> BoolArray:
    """Check and convert binary ground truth (0/1 or booleans, 1-D, not empty).

    Raises
    ------
    ValueError
        Empty, not 1-D, or a value other than 0/1 (NaN included).
    """
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("empty input: y_true holds no cases")
    if y.dtype == np.bool_:
        return y
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y_true must hold 0/1 or booleans, got dtype {y.dtype}") from exc
    if not np.all((yf == 0.0) | (yf == 1.0)):
        raise ValueError("y_true must hold only 0 and 1 (or booleans); found other values or NaN")
    return yf == 1.0


def as_scores(scores: npt.ArrayLike, n: int, name: str = "scores") -> FloatArray:
    """Check and convert scores: 1-D floats, ``n`` of them, all finite (no NaN, no infinity)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"length mismatch: {n} labels but {s.shape[0]} {name}")
    if np.isnan(s).any():
        raise ValueError(f"{name} contain NaN ({int(np.isnan(s).sum())} of {n})")
    if np.isinf(s).any():
        raise ValueError(f"{name} contain infinite values ({int(np.isinf(s).sum())} of {n})")
    return s


def require_both_classes(y: BoolArray) -> tuple[int, int]:
    """Return ``(n_pos, n_neg)``; raise ValueError unless both classes are present."""
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC AUC needs both classes: got {n_pos} positive and {n_neg} negative cases"
        )
    return n_pos, n_neg


def _covariance(placements: FloatArray) -> FloatArray:
    """Sample covariance (``ddof=1``) of the rows of a (k, cases) array; NaN for one case."""
    k, count = placements.shape
    if count < 2:
        return np.full((k, k), np.nan)
    centred = placements - placements.mean(axis=1, keepdims=True)
    cov: FloatArray = centred @ centred.T / (count - 1)
    return cov


def delong_covariance(y: BoolArray, scores: FloatArray) -> tuple[FloatArray, FloatArray]:
    """AUCs and their DeLong covariance matrix for k score sets on the same cases.

    Parameters
    ----------
    y : ndarray of bool, shape (n_cases,)
        Ground truth (both classes present; checked by the callers).
    scores : ndarray of float, shape (k, n_cases)
        One row per model.

    Returns
    -------
    aucs : ndarray, shape (k,)
    covariance : ndarray, shape (k, k)
        ``S10 / m + S01 / n``; NaN where a class has a single case.
    """
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    # Midranks (ties share the mean rank): over all cases, within positives, within negatives.
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    aucs: FloatArray = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outscores
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that outscore it
    return aucs, _covariance(v10) / m + _covariance(v01) / n


def _interval(
    centre: float, variance: float, confidence: float, method: CIMethod, bound: float
) -> tuple[float, float]:
    """CI for an AUC (``bound`` 0) or a difference of AUCs (``bound`` -1)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if math.isnan(variance):
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + confidence / 2.0))
    se = math.sqrt(max(variance, 0.0))
    if method == "logit":
        if centre <= 0.0 or centre >= 1.0:
            return centre, centre  # degenerate: a perfect (or perfectly wrong) ranking
        half = z * se / (centre * (1.0 - centre))
        logit = math.log(centre / (1.0 - centre))
        return 1.0 / (1.0 + math.exp(-(logit - half))), 1.0 / (1.0 + math.exp(-(logit + half)))
    if method != "normal":
        raise ValueError(f"ci_method must be 'normal' or 'logit', got {method!r}")
    return max(bound, centre - z * se), min(1.0, centre + z * se)


def auc_delong(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    ci_method: CIMethod = "normal",
) -> AUCResult:
    """ROC AUC with DeLong's variance and confidence interval.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        0/1 or booleans, 1 = positive.
    scores : array_like, shape (n,)
        Higher = more likely positive (probabilities, logits...).
    confidence : float
        Coverage of the interval, 0.95 by default.
    ci_method : {"normal", "logit"}
        ``"normal"``: AUC +/- z * se clipped to [0, 1] (pROC's default); ``"logit"``: on the
        logit scale, back-transformed.

    Returns
    -------
    AUCResult

    Raises
    ------
    ValueError
        Empty input, length mismatch, NaN or infinite scores, labels other than 0/1, a single
        class.
    """
    y = as_binary_labels(y_true)
    s = as_scores(scores, y.size)
    n_pos, n_neg = require_both_classes(y)
    aucs, cov = delong_covariance(y, s[np.newaxis, :])
    auc, variance = float(aucs[0]), float(cov[0, 0])
    low, high = _interval(auc, variance, confidence, ci_method, 0.0)
    return AUCResult(auc, variance, low, high, n_pos, n_neg)


def delong_test(
    y_true: npt.ArrayLike,
    scores_a: npt.ArrayLike,
    scores_b: npt.ArrayLike,
    *,
    confidence: float = 0.95,
) -> DeLongTest:
    """DeLong's test of two correlated ROC AUCs (two models, or two bundle versions, same cases).

    ``z = (AUC_a - AUC_b) / sqrt(Var_a + Var_b - 2 Cov_ab)``, two-sided p from the normal law.
    Identical score sets give ``z = 0`` and ``p = 1``.

    Raises
    ------
    ValueError
        As :func:`auc_delong`, and when a class has a single case (the variance is undefined).
    """
    y = as_binary_labels(y_true)
    a = as_scores(scores_a, y.size, "scores_a")
    b = as_scores(scores_b, y.size, "scores_b")
    n_pos, n_neg = require_both_classes(y)
    if min(n_pos, n_neg) < 2:
        raise ValueError(f"DeLong test needs >= 2 cases per class, got {n_pos} and {n_neg}")
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    difference = float(aucs[0] - aucs[1])
    var_diff = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    # A zero variance of the difference (identical rankings) on float noise may come out as
    # a tiny negative number: both mean "no evidence of a difference" when the AUCs agree.
    if var_diff <= 1e-15:
        z = 0.0 if abs(difference) <= 1e-12 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(var_diff)
    p_value = float(min(1.0, 2.0 * norm.sf(abs(z))))
    low, high = _interval(difference, max(var_diff, 0.0), confidence, "normal", -1.0)
    logger.debug("DeLong test: n_pos=%d n_neg=%d z=%.3f p=%.4g", n_pos, n_neg, z, p_value)
    return DeLongTest(float(aucs[0]), float(aucs[1]), difference, z, p_value, low, high)
