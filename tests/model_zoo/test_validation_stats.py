"""Validation statistics: DeLong against a plain O(m * n) version, sklearn, a hand example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from model_zoo.validation.stats import (
    GAO2024_TABLE2_BANDS_MM,
    auc_delong,
    binary_metrics,
    delong_test,
    metrics_by_band,
    multiclass_metrics,
    youden_threshold,
)

Z95 = 1.959963984540054


def naive_delong(y: np.ndarray, *score_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong 1988 straight from the definitions: psi for every (positive, negative) pair."""
    y = np.asarray(y, dtype=bool)
    v10s, v01s, aucs = [], [], []
    for s in score_sets:
        x, yy = s[y], s[~y]
        psi = (x[:, None] > yy[None, :]) + 0.5 * (x[:, None] == yy[None, :])
        v10s.append(psi.mean(axis=1))  # placement of each positive among the negatives
        v01s.append(psi.mean(axis=0))  # placement of each negative among the positives
        aucs.append(psi.mean())
    s10 = np.atleast_2d(np.cov(np.vstack(v10s)))  # ddof=1
    s01 = np.atleast_2d(np.cov(np.vstack(v01s)))
    return np.array(aucs), s10 / int(y.sum()) + s01 / int((~y).sum())


@pytest.fixture
def tied_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """70 cases, two correlated score sets rounded to 1 decimal (many ties)."""
    rng = np.random.default_rng(7)
    y = rng.random(70) < 0.4
    common = rng.normal(size=70)
    a = np.round(0.8 * y + common + 0.5 * rng.normal(size=70), 1)
    b = np.round(0.4 * y + common + 0.5 * rng.normal(size=70), 1)
    assert len(np.unique(a)) < 60  # ties are really there
    return y.astype(int), a, b


def test_auc_equals_sklearn_and_variance_equals_naive(tied_data: tuple) -> None:
    y, a, _ = tied_data
    result = auc_delong(y, a)
    aucs, cov = naive_delong(y, a)
    assert result.auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.variance == pytest.approx(cov[0, 0], rel=1e-10)
    se = math.sqrt(cov[0, 0])
    assert result.ci_low == pytest.approx(max(0.0, aucs[0] - Z95 * se), rel=1e-9)
    assert result.ci_high == pytest.approx(min(1.0, aucs[0] + Z95 * se), rel=1e-9)
    assert (result.n_pos, result.n_neg) == (int(y.sum()), int(len(y) - y.sum()))


def test_paired_test_matches_naive_covariance(tied_data: tuple) -> None:
    y, a, b = tied_data
    aucs, cov = naive_delong(y, a, b)
    assert abs(cov[0, 1]) > 1e-4  # the covariance term matters here
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    t = delong_test(y, a, b)
    assert (t.auc_a, t.auc_b) == pytest.approx(tuple(aucs), abs=1e-12)
    assert t.difference == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert t.z == pytest.approx((aucs[0] - aucs[1]) / math.sqrt(var_diff), rel=1e-9)
    assert t.ci_high - t.ci_low == pytest.approx(2 * Z95 * math.sqrt(var_diff), rel=1e-9)
    assert t.p_value == pytest.approx(math.erfc(abs(t.z) / math.sqrt(2)), rel=1e-6)


def test_worked_example_by_hand() -> None:
    # Positives X = 0.9, 0.6, 0.4; negatives Y = 0.7, 0.4, 0.1. psi (rows X, columns Y):
    #   0.9: 1   1   1    -> V10 = 3/3 = 1
    #   0.6: 0   1   1    -> V10 = 2/3
    #   0.4: 0  1/2  1    -> V10 = 1.5/3 = 1/2
    #   V01 per Y: 0.7 -> 1/3, 0.4 -> 2.5/3 = 5/6, 0.1 -> 1
    # AUC = 6.5 / 9 = 13/18. In 18ths V10 = 18, 12, 9 (mean 13): deviations 5, -1, -4,
    # S10 = (25 + 1 + 16) / 324 / 2 = 7/108. V01 = 6, 15, 18: deviations -7, 2, 5,
    # S01 = (49 + 4 + 25) / 324 / 2 = 13/108. Var = S10/3 + S01/3 = 20/324 = 5/81.
    # CI: 13/18 +/- 1.96 * sqrt(5)/9 = 0.2353 .. 1.2092, the upper end clipped to 1.
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.6, 0.4, 0.7, 0.4, 0.1]
    r = auc_delong(y, s)
    assert r.auc == pytest.approx(13 / 18)
    assert r.variance == pytest.approx(5 / 81)
    assert r.ci_low == pytest.approx(13 / 18 - Z95 * math.sqrt(5) / 9)
    assert r.ci_high == 1.0
    logit = auc_delong(y, s, ci_method="logit")
    assert 0.0 < logit.ci_low < 13 / 18 < logit.ci_high < 1.0
    centre = math.log(13 / 5)  # logit(13/18)
    half = Z95 * (math.sqrt(5) / 9) / (13 / 18 * 5 / 18)
    assert logit.ci_high == pytest.approx(1 / (1 + math.exp(-(centre + half))))


def test_paired_test_identical_and_clearly_better() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 200)
    shared = rng.normal(size=400)
    good = 1.5 * y + shared + 0.5 * rng.normal(size=400)
    weak = 0.3 * y + shared + 0.5 * rng.normal(size=400)
    same = delong_test(y, good, good)
    assert same.z == 0.0 and same.p_value == 1.0 and same.difference == 0.0
    better = delong_test(y, good, weak)
    assert better.difference > 0.2 and better.p_value < 1e-6
    assert better.ci_low > 0.0
    assert delong_test(y, weak, good).z == pytest.approx(-better.z)


def test_binary_metrics_against_sklearn() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, size=200)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    m = binary_metrics(y, p, threshold=0.45)
    pred = (p >= 0.45).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (m.tp, m.fp, m.tn, m.fn) == (tp, fp, tn, fn)
    assert m.accuracy == pytest.approx(accuracy_score(y, pred))
    assert m.sensitivity == pytest.approx(recall_score(y, pred))
    assert m.specificity == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m.ppv == pytest.approx(precision_score(y, pred))
    assert m.npv == pytest.approx(precision_score(y, pred, pos_label=0))
    assert m.f1 == pytest.approx(f1_score(y, pred))
    assert m.threshold == 0.45


def test_zero_over_zero_is_nan() -> None:
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.5)
    assert math.isnan(m.sensitivity) and math.isnan(m.ppv) and math.isnan(m.f1)
    assert m.specificity == 1.0 and m.npv == 1.0 and m.accuracy == 1.0


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([], [], "empty"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
        ([0, 1, 1], [0.1, 0.2], "length mismatch"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "NaN"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "only 0 and 1"),
    ],
)
def test_auc_rejects_bad_input(y: list, s: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auc_delong(y, s)
    with pytest.raises(ValueError):
        delong_test(y, s, s)


def test_single_case_in_a_class_gives_nan_variance() -> None:
    r = auc_delong([1, 0, 0, 0], [0.9, 0.1, 0.5, 0.95])
    assert r.auc == pytest.approx(2 / 3)
    assert math.isnan(r.variance) and math.isnan(r.ci_low) and math.isnan(r.ci_high)


def test_multiclass_against_sklearn() -> None:
    rng = np.random.default_rng(5)
    labels = ["graves", "subacute_thyroiditis", "thyroid_tumour", "normal"]
    truth = rng.integers(0, 4, size=120)
    logits = rng.normal(size=(120, 4)) + 1.5 * np.eye(4)[truth]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = [labels[i] for i in truth]
    r = multiclass_metrics(y, prob, labels)
    pred = prob.argmax(axis=1)
    np.testing.assert_array_equal(r.confusion, confusion_matrix(truth, pred, labels=range(4)))
    assert r.accuracy == pytest.approx(accuracy_score(truth, pred))
    assert r.macro_f1 == pytest.approx(f1_score(truth, pred, average="macro"))
    recalls = recall_score(truth, pred, average=None)
    for j, label in enumerate(labels):
        c = r.per_class[label]
        assert c.metrics.sensitivity == pytest.approx(recalls[j])
        assert c.auc is not None
        assert c.auc.auc == pytest.approx(roc_auc_score(truth == j, prob[:, j]))
    ovr = roc_auc_score(truth, prob, multi_class="ovr", average="macro")
    assert r.macro_auc == pytest.approx(ovr)
    with pytest.raises(ValueError, match="not in labels"):
        multiclass_metrics(["graves", "other"], prob[:2], labels)


def test_metrics_by_band() -> None:
    rng = np.random.default_rng(9)
    sizes = np.array([1.0, 3.9, 4.0, 9.9, 10.0, 25.0] * 20)
    y = rng.integers(0, 2, size=sizes.size)
    y[sizes >= 10] = 1  # the top band has a single class: no AUC there
    p = np.clip(0.4 * y + 0.6 * rng.random(sizes.size), 0, 1)
    small, middle, large = metrics_by_band(y, p, sizes, threshold=0.5)
    assert (small.n, middle.n, large.n) == (40, 40, 40)  # 4.0 in the middle, 10.0 in the top
    inside = (sizes >= 4) & (sizes < 10)
    assert middle.auc is not None
    assert middle.auc.auc == pytest.approx(roc_auc_score(y[inside], p[inside]))
    assert middle.metrics == binary_metrics(y[inside], p[inside], 0.5)
    assert large.auc is None and large.n_neg == 0 and large.metrics is not None
    paper = metrics_by_band(y, p, sizes, bands=GAO2024_TABLE2_BANDS_MM)
    assert paper[0].n == 60 and paper[-1].n == 60  # 9.9 mm rounds to 10 mm
    assert paper[1].n == 0 and paper[1].metrics is None and paper[1].auc is None
    with pytest.raises(ValueError, match="sizes_mm contain NaN"):
        metrics_by_band(y, p, np.where(sizes > 20, np.nan, sizes))


def test_youden_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=150)
    s = np.round(y + rng.normal(size=150), 1)
    best_t, best_j = math.nan, -math.inf
    for t in np.sort(np.unique(s))[::-1]:  # highest first, so ties keep the highest
        called = s >= t
        j = called[y == 1].mean() + (~called[y == 0]).mean() - 1
        if j > best_j + 1e-12:
            best_t, best_j = t, j
    assert youden_threshold(y, s) == best_t
    # J = 1/2 at 0.8 and at 0.35: the higher threshold wins.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8]) == 0.7


def test_youden_midpoint_sits_in_the_gap_below_the_best_threshold() -> None:
    from model_zoo.validation.stats import youden_midpoint, youden_threshold

    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.9, 0.95])
    assert youden_threshold(y, p) == pytest.approx(0.9)
    assert youden_midpoint(y, p) == pytest.approx(0.55)  # same calls, the widest margin
    with pytest.raises(ValueError):
        youden_midpoint(np.array([1, 1]), np.array([0.2, 0.3]))
