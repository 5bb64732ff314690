"""Decision curve against its closed form; the validation report against the stats functions."""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix

from model_zoo.validation.decision import DEFAULT_THRESHOLDS, decision_curve
from model_zoo.validation.report import binary_report, multiclass_report, write_report
from model_zoo.validation.stats import (
    auc_delong,
    binary_metrics,
    delong_test,
    metrics_by_band,
    multiclass_metrics,
)

IMG_TAG = '<img src="data:image/png;base64,'


def closed_form(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Net benefit of the model and of treating all, straight from the definitions."""
    n = y.size
    odds = t / (1.0 - t)
    called = p[None, :] >= t[:, None]
    tp = (called & y[None, :]).sum(axis=1)
    fp = (called & ~y[None, :]).sum(axis=1)
    prevalence = y.mean()
    return tp / n - fp / n * odds, prevalence - (1.0 - prevalence) * odds


def strict_loads(text: str) -> Any:
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def same(a: float | None, b: float) -> bool:
    """A report value (None for NaN) equals a stats value."""
    return (a is None and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


@pytest.fixture(scope="module")
def binary_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """120 lesions: truth, two correlated models (rounded: ties; some exactly 0 and 1), sizes."""
    rng = np.random.default_rng(11)
    y = rng.random(120) < 0.35
    p = np.clip(np.round(0.35 + 0.3 * y + 0.25 * rng.standard_normal(120), 2), 0.0, 1.0)
    p_b = np.clip(np.round(p + 0.2 * rng.standard_normal(120), 2), 0.0, 1.0)
    sizes = rng.uniform(2.0, 20.0, 120)
    return y, p, p_b, sizes


@pytest.fixture(scope="module")
def report(binary_data: tuple[np.ndarray, ...]) -> dict[str, Any]:
    y, p, p_b, sizes = binary_data
    return binary_report("ct_lung_met_rai", "0.1.0-demo", y.astype(int), p, 0.5, sizes_mm=sizes,
                         compare=("ct_lung_met_rai 0.0.9", p_b), demo=True)


# ----------------------------------------------------------------------------- decision curve
def test_decision_curve_matches_the_closed_form(binary_data: tuple[np.ndarray, ...]) -> None:
    y, p, _, _ = binary_data
    assert (p == 0.0).any() and (p == 1.0).any()  # dcurves nudges these: must not matter
    curve = decision_curve(y, p)
    model, treat_all = closed_form(y, p, DEFAULT_THRESHOLDS)
    np.testing.assert_allclose(curve.thresholds, DEFAULT_THRESHOLDS)
    np.testing.assert_allclose(curve.net_benefit_model, model, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.net_benefit_all, treat_all, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.net_benefit_none, 0.0, atol=1e-15)


def test_decision_curve_hand_example() -> None:
    # 5 cases, y = 1 1 0 0 0 (prevalence 0.4), p = .9 .4 .6 .2 .1
    # pt = 0.25, odds 1/3: treated .9 .4 .6 -> TP 2, FP 1: NB = 2/5 - 1/5 * 1/3 = 1/3;
    #                       treat all: 0.4 - 0.6 * 1/3 = 0.2
    # pt = 0.5,  odds 1:   treated .9 .6 -> TP 1, FP 1: NB = 1/5 - 1/5 = 0; all: 0.4 - 0.6 = -0.2
    curve = decision_curve([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.2, 0.1], thresholds=[0.25, 0.5])
    np.testing.assert_allclose(curve.net_benefit_model, [1 / 3, 0.0], atol=1e-12)
    np.testing.assert_allclose(curve.net_benefit_all, [0.2, -0.2], atol=1e-12)
    np.testing.assert_allclose(curve.net_benefit_none, [0.0, 0.0], atol=1e-15)


@pytest.mark.parametrize(
    ("y", "p", "t", "message"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], [0.5], "both classes"),
        ([0, 1, 1], [0.1, 0.2, 1.3], [0.5], r"\[0, 1\]"),
        ([0, 1, 1], [0.1, 0.2, 0.3], [0.0, 0.5], "strictly between"),
        ([0, 1, 1], [0.1, 0.2, 0.3], [1.0], "strictly between"),
        ([0, 1], [0.1, 0.2, 0.3], [0.5], "length mismatch"),
    ],
)
def test_decision_curve_rejects_bad_input(
    y: list[int], p: list[float], t: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decision_curve(y, p, thresholds=t)


# ----------------------------------------------------------------------------- binary report
def test_binary_report_equals_the_stats_functions(
    report: dict[str, Any], binary_data: tuple[np.ndarray, ...]
) -> None:
    y, p, p_b, sizes = binary_data
    auc = asdict(auc_delong(y, p))
    assert all(same(report["auc"][k], v) for k, v in auc.items())
    m = binary_metrics(y, p, 0.5)
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn",
                "fn"):
        assert same(report[key], getattr(m, key)), key
    assert report["confusion_matrix"] == confusion_matrix(y, p >= 0.5).tolist()
    low, high = report["ci"]["sensitivity"]
    ci = binomtest(m.tp, m.tp + m.fn).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high)) and low < m.sensitivity < high
    curve = decision_curve(y, p)
    assert report["decision_curve"]["net_benefit_model"] == pytest.approx(curve.net_benefit_model)
    bands = metrics_by_band(y, p, sizes, threshold=0.5)
    assert [b["n"] for b in report["size_bands"]] == [b.n for b in bands]
    assert [b["auc"]["auc"] for b in report["size_bands"]] == pytest.approx(
        [b.auc.auc for b in bands if b.auc is not None])
    test = asdict(delong_test(y, p, p_b))
    comparison = report["comparison"]
    assert all(same(comparison[k], v) for k, v in test.items())
    assert 0.0 < comparison["p_value"] <= 1.0 and comparison["name_b"] == "ct_lung_met_rai 0.0.9"


def test_undefined_values_are_null_in_json_and_na_in_html(tmp_path: Path) -> None:
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    p = np.array([0.3, 0.1, 0.45, 0.2, 0.4, 0.35, 0.05, 0.15])
    sizes = np.array([12.0, 3.0, 11.0, 6.0, 5.0, 15.0, 7.0, 2.0])  # (0, 4): negatives only
    r = binary_report("m", "1", y, p, 0.9, sizes_mm=sizes)  # nothing called positive
    assert r["ppv"] is None and r["ci"]["ppv"] == [None, None] and r["sensitivity"] == 0.0
    assert r["size_bands"][0]["auc"] is None and r["size_bands"][2]["high_mm"] is None
    json_path, html_path = write_report(r, tmp_path)
    text = json_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert strict_loads(text) == r
    assert "n/a" in html_path.read_text()


def test_single_class_report_has_notes_instead_of_curves(tmp_path: Path) -> None:
    r = binary_report("m", "1", [0, 0, 0], [0.2, 0.7, 0.1], 0.5, compare=("b", [0.1, 0.2, 0.3]))
    assert r["auc"] is None and r["roc"] is None and r["decision_curve"] is None
    assert r["specificity"] == pytest.approx(2 / 3) and r["notes"]
    assert "p_value" not in r["comparison"] and "DeLong" in r["comparison"]["note"]
    _, html_path = write_report(r, tmp_path)
    assert IMG_TAG not in html_path.read_text()


def test_report_files_are_self_contained(report: dict[str, Any], tmp_path: Path) -> None:
    json_path, html_path = write_report({**report, "detection": {"labelled": 5, "found": 4}},
                                        tmp_path / "out")
    assert (json_path.name, html_path.name) == ("report.json", "report.html")
    loaded = strict_loads(json_path.read_text())
    assert loaded["comparison"]["p_value"] == report["comparison"]["p_value"]
    html = html_path.read_text()
    assert html.count(IMG_TAG) == 2
    for encoded in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    assert "ct_lung_met_rai" in html and "0.1.0-demo" in html and "Phantom/demo" in html
    assert "http://" not in html and "https://" not in html
    assert "DeLong paired test" in html and "p-value" in html and "labelled" in html


def test_html_escapes_text(tmp_path: Path) -> None:
    r = binary_report("<script>x</script>", "1 & 2", [0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], 0.5)
    _, html_path = write_report(r, tmp_path)
    html = html_path.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "1 &amp; 2" in html
    assert "Phantom/demo" not in html


def test_write_report_rejects_an_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        write_report({"kind": "survival"}, tmp_path)


# ----------------------------------------------------------------------------- multiclass
def test_multiclass_report_shapes_and_values(tmp_path: Path) -> None:
    labels = ["graves", "subacute_thyroiditis", "thyroid_tumour", "normal", "other"]
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 60)  # "other" never occurs
    prob = rng.dirichlet(np.ones(5), 60) + 0.8 * np.eye(5)[truth] * (rng.random(60) < 0.7)[:, None]
    y = [labels[i] for i in truth]
    r = multiclass_report("nm_thyroid_dx", "0.1.0", y, prob, labels)
    mc = multiclass_metrics(y, prob, labels)
    assert r["labels"] == labels and len(r["per_class"]) == 5
    assert np.array(r["confusion_matrix"]).shape == (5, 5)
    assert r["confusion_matrix"] == mc.confusion.tolist()
    assert r["class_counts"] == [int((truth == j).sum()) for j in range(5)]
    assert r["accuracy"] == pytest.approx(mc.accuracy)
    assert r["macro"]["auc"] == pytest.approx(mc.macro_auc)
    for j, entry in enumerate(r["per_class"][:4]):
        expected = mc.per_class[labels[j]]
        assert entry["auc"]["auc"] == pytest.approx(expected.auc.auc)  # type: ignore[union-attr]
        assert entry["auc"]["ci_low"] < entry["auc"]["auc"] < entry["auc"]["ci_high"]
        assert entry["sensitivity"] == pytest.approx(expected.metrics.sensitivity)
    absent = r["per_class"][4]
    assert absent["auc"] is None and absent["sensitivity"] is None and absent["n"] == 0
    assert any("other" in note for note in r["notes"])
    json_path, html_path = write_report(r, tmp_path)
    assert strict_loads(json_path.read_text()) == r
    html = html_path.read_text()
    assert html.count(IMG_TAG) == 1 and "subacute_thyroiditis" in html and "https://" not in html


# ----------------------------------------------------------------------------- segmentation
def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return np.asarray((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2)


def test_nodules_match_one_to_one_by_dice() -> None:
    from model_zoo.validation.collect import match_nodules

    shape = (80, 120)
    a, b = _disc(shape, (40, 30), 12), _disc(shape, (40, 90), 12)
    shifted = _disc(shape, (40, 33), 12)  # a, moved by 3 pixels
    merged = a | b  # one prediction over both nodules: Dice 2|a| / 3|a| = 2/3 with each
    far = _disc(shape, (10, 60), 5)  # over no nodule
    best, matched, unmatched = match_nodules([a, b], [shifted, far], 0.5)
    expected = 2 * int((a & shifted).sum()) / (int(a.sum()) + int(shifted.sum()))
    assert best == [pytest.approx(expected), 0.0] and 0.5 < expected < 1.0
    assert matched == [True, False] and unmatched == 1
    best, matched, unmatched = match_nodules([a, b], [merged], 0.5)
    assert best == [pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert matched.count(True) == 1 and unmatched == 0  # a merged prediction finds one nodule, not two
    assert match_nodules([a], [], 0.5) == ([0.0], [False], 0)
    assert match_nodules([], [far], 0.5) == ([], [], 1)


def test_segmentation_report_figures_and_html(tmp_path: Path) -> None:
    from model_zoo.validation.report import segmentation_report

    nodules = [
        {"sop_instance_uid": "1.2.3.1", "segment_number": 1, "dice": 0.9, "found": True, "long_axis": 12.0, "unit": "mm"},
        {"sop_instance_uid": "1.2.3.1", "segment_number": 2, "dice": 0.7, "found": True, "long_axis": 6.0, "unit": "mm"},
        {"sop_instance_uid": "1.2.3.2", "segment_number": 1, "dice": 0.2, "found": False, "long_axis": 4.0, "unit": "mm"},
        {"sop_instance_uid": "1.2.3.3", "segment_number": 1, "dice": 0.0, "found": False, "long_axis": 8.0, "unit": "mm"},
    ]
    r = segmentation_report("us_nodule_seg", "1.0", nodules, images=5, false_positives=3, match_dice=0.5, studies=4)
    assert (r["kind"], r["nodules"], r["found"], r["missed"], r["images"]) == ("segmentation", 4, 2, 2, 5)
    assert r["sensitivity"] == 0.5 and r["false_positives_per_image"] == pytest.approx(0.6)
    interval = binomtest(2, 4).proportion_ci(0.95, method="wilson")
    assert r["ci"]["sensitivity"] == pytest.approx([interval.low, interval.high])
    d = r["dice"]
    assert d["mean"] == pytest.approx(0.45) and d["median"] == pytest.approx(0.45)
    assert d["sd"] == pytest.approx(float(np.std([0.9, 0.7, 0.2, 0.0], ddof=1)))
    assert (d["min"], d["max"], d["mean_found"]) == (0.0, 0.9, pytest.approx(0.8))
    json_path, html_path = write_report(r, tmp_path)
    assert json.loads(json_path.read_text())["per_nodule"][2]["dice"] == 0.2
    html = html_path.read_text()
    assert "Detection sensitivity" in html and "0.450 (" in html and "Additional information" not in html
    empty = segmentation_report("us_nodule_seg", "1.0", [], images=2, false_positives=1, match_dice=0.5)
    assert empty["sensitivity"] is None and empty["dice"]["mean"] is None and empty["notes"]
    write_report(empty, tmp_path / "empty")
