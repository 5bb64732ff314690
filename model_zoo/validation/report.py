"""A site's local validation report of a zoo model: ``report.json`` and a self-contained HTML.

:func:`binary_report` and :func:`multiclass_report` gather the papers' figures (from
:mod:`model_zoo.validation.stats` and :mod:`model_zoo.validation.decision`) into a plain dict
that :func:`json.dumps` accepts with ``allow_nan=False``: an undefined value (NaN: 0/0, a
variance from one case, an infinite bound) is ``None`` there and becomes ``null`` in the JSON and
"n/a" in the HTML. :func:`write_report` writes both files; the HTML embeds its figures as base64
PNG (matplotlib's Agg canvas, no pyplot) and loads nothing from outside.

Intervals: AUC 95% CI from DeLong's variance (normal, clipped to [0, 1]); accuracy, sensitivity,
specificity, PPV and NPV 95% CI by Wilson's score interval (:meth:`scipy.stats.binomtest`);
F1 has none.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from html import escape
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import binomtest
from sklearn.metrics import roc_curve

from model_zoo.validation.decision import DecisionCurve, decision_curve
from model_zoo.validation.delong import as_binary_labels, as_scores
from model_zoo.validation.stats import (
    AUCResult,
    BinaryMetrics,
    auc_delong,
    binary_metrics,
    delong_test,
    metrics_by_band,
    multiclass_metrics,
)

__all__ = ["binary_report", "multiclass_report", "segmentation_report", "write_report"]

logger = logging.getLogger(__name__)

Report = dict[str, Any]

CONFIDENCE: Final = 0.95
RATIOS: Final = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
METRICS: Final = (*RATIOS, "f1")
METRIC_NAMES: Final = {
    "accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
    "ppv": "PPV", "npv": "NPV", "f1": "F1", "auc": "ROC AUC",
}
DEMO_NOTE: Final = (
    "Phantom/demo: these figures come from a demo model and/or synthetic phantom data, "
    "not from patients. They say nothing about clinical performance."
)


# ----------------------------------------------------------------------------- building
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _methods(kind: str) -> dict[str, str]:
    common = {
        "auc_ci": "DeLong (1988) variance, normal 95% CI clipped to [0, 1]",
        "proportion_ci": "Wilson score 95% CI",
    }
    if kind == "multiclass":
        return {"decision": "most probable class (the first label wins a tie)",
                "per_class": "one-vs-rest", **common,
                "macro": "unweighted mean over the classes where the metric is defined"}
    try:
        dcurves_version = metadata.version("dcurves")
    except metadata.PackageNotFoundError:
        dcurves_version = "unknown"
    return {
        "decision": "positive when probability >= threshold", **common,
        "comparison": "DeLong paired test of two correlated AUCs, two-sided",
        "decision_curve": f"net benefit (Vickers & Elkin 2006), dcurves {dcurves_version}",
    }


def _wilson(successes: int, trials: int) -> list[float]:
    if trials == 0:
        return [math.nan, math.nan]
    interval = binomtest(successes, trials).proportion_ci(CONFIDENCE, method="wilson")
    return [float(interval.low), float(interval.high)]


def _metrics_block(m: BinaryMetrics) -> Report:
    """Threshold metrics, the four counts and the Wilson CI of each proportion."""
    fractions = {
        "accuracy": (m.tp + m.tn, m.tp + m.tn + m.fp + m.fn),
        "sensitivity": (m.tp, m.tp + m.fn),
        "specificity": (m.tn, m.tn + m.fp),
        "ppv": (m.tp, m.tp + m.fp),
        "npv": (m.tn, m.tn + m.fn),
    }
    block: Report = {name: getattr(m, name) for name in METRICS}
    block.update(tp=m.tp, fp=m.fp, tn=m.tn, fn=m.fn)
    block["ci"] = {name: _wilson(*fractions[name]) for name in RATIOS}
    return block


def _auc_block(auc: AUCResult | None) -> Report | None:
    return None if auc is None else asdict(auc)


def _roc_block(y: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]) -> Report:
    fpr, tpr, thresholds = roc_curve(y, scores)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}  # thresholds[0] = inf -> null


def _curve_block(curve: DecisionCurve) -> Report:
    return asdict(curve)


def _band_label(low: float, high: float) -> str:
    return f">= {low:g} mm" if math.isinf(high) else f"[{low:g}, {high:g}) mm"


def binary_report(
    name: str,
    version: str,
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    threshold: float,
    *,
    sizes_mm: npt.ArrayLike | None = None,
    compare: tuple[str, npt.ArrayLike] | None = None,
    demo: bool = False,
) -> Report:
    """Validation figures of a binary model (1 = positive) at ``threshold``.

    Keys: ``kind`` ("binary"), ``name``, ``version``, ``demo``, ``generated_utc``, ``methods``,
    ``n``, ``n_pos``, ``n_neg``, ``threshold``, ``auc`` (:class:`AUCResult` fields, or None),
    ``accuracy`` ... ``f1``, ``tp`` ``fp`` ``tn`` ``fn``, ``ci`` (name -> [low, high]),
    ``confusion_matrix`` ([[tn, fp], [fn, tp]]: rows truth, columns call) with
    ``confusion_labels``, ``roc`` (fpr, tpr, thresholds), ``decision_curve``, ``notes``; with
    ``sizes_mm``: ``size_bands`` (as :func:`metrics_by_band` with its default bands); with
    ``compare=(name_b, probabilities_b)``: ``comparison`` (:class:`DeLongTest` fields, ``name_a``,
    ``name_b``, ``auc_b_delong`` with B's CI, ``roc_b``, ``net_benefit_model_b``). A
    single-class set gives None for the AUC, ROC, decision curve and comparison, with a note
    saying why.

    Raises
    ------
    ValueError
        As :func:`binary_metrics`; probabilities outside [0, 1]; as :func:`metrics_by_band`.
    """
    y = as_binary_labels(y_true)
    p = as_scores(probabilities, y.size, "probabilities")
    m = binary_metrics(y, p, threshold)
    n_pos = int(y.sum())
    both = 0 < n_pos < y.size
    notes: list[str] = []
    if not both:
        notes.append("Only one class present: no AUC, ROC curve, decision curve or comparison.")
    report: Report = {
        "kind": "binary", "name": name, "version": version, "demo": demo,
        "generated_utc": _now(), "methods": _methods("binary"),
        "n": int(y.size), "n_pos": n_pos, "n_neg": int(y.size - n_pos), "threshold": threshold,
        "auc": _auc_block(auc_delong(y, p)) if both else None,
        **_metrics_block(m),
        "confusion_labels": ["negative", "positive"],
        "confusion_matrix": [[m.tn, m.fp], [m.fn, m.tp]],
        "roc": _roc_block(y, p) if both else None,
        "decision_curve": _curve_block(decision_curve(y, p)) if both else None,
    }
    if sizes_mm is not None:
        report["size_bands"] = [
            {"label": _band_label(b.low_mm, b.high_mm), "low_mm": b.low_mm, "high_mm": b.high_mm,
             "n": b.n, "n_pos": b.n_pos, "n_neg": b.n_neg, "auc": _auc_block(b.auc),
             "metrics": None if b.metrics is None else _metrics_block(b.metrics)}
            for b in metrics_by_band(y, p, sizes_mm, threshold=threshold)
        ]
    if compare is not None:
        name_b, probabilities_b = compare
        p_b = as_scores(probabilities_b, y.size, "compare probabilities")
        block: Report = {"name_a": f"{name} {version}", "name_b": name_b}
        try:
            test = delong_test(y, p, p_b)
        except ValueError as exc:
            block["note"] = f"No paired DeLong test: {exc}"
            notes.append(block["note"])
        else:
            block.update(asdict(test))
            block["auc_b_delong"] = asdict(auc_delong(y, p_b))  # B's AUC with its CI
            block["roc_b"] = _roc_block(y, p_b)
            block["net_benefit_model_b"] = decision_curve(y, p_b).net_benefit_model
        report["comparison"] = block
    report["notes"] = notes
    logger.info("binary report %s %s: n=%d", name, version, y.size)
    result: Report = _jsonable(report)
    return result


def multiclass_report(
    name: str,
    version: str,
    y_true_labels: Sequence[Hashable] | npt.ArrayLike,
    probabilities: npt.ArrayLike,
    labels: Sequence[Hashable],
    *,
    demo: bool = False,
) -> Report:
    """Validation figures of a k-class model (decision = argmax), one-vs-rest per class.

    Keys: ``kind`` ("multiclass"), ``name``, ``version``, ``demo``, ``generated_utc``,
    ``methods``, ``n``, ``labels`` (as strings), ``class_counts``, ``accuracy`` with ``ci``,
    ``macro`` (sensitivity, specificity, ppv, npv, f1, auc: unweighted means over the classes
    where defined), ``per_class`` (one dict per label: ``label``, ``n``, the threshold metrics
    with their ``ci``, ``auc`` and ``roc`` or None when the class is absent or alone),
    ``confusion_matrix`` (rows truth, columns prediction, in ``labels`` order), ``notes``.

    Raises
    ------
    ValueError
        As :func:`model_zoo.validation.stats.multiclass_metrics`.
    """
    mc = multiclass_metrics(y_true_labels, probabilities, labels)
    prob = np.asarray(probabilities, dtype=np.float64)
    truth = np.array([mc.labels.index(v) for v in np.asarray(y_true_labels, dtype=object).ravel()])
    counts = mc.confusion.sum(axis=1)
    per_class = []
    for j, label in enumerate(mc.labels):
        entry = mc.per_class[label]
        is_j = truth == j
        block = {"label": str(label), "n": int(counts[j]), **_metrics_block(entry.metrics)}
        block["auc"] = _auc_block(entry.auc)
        block["roc"] = _roc_block(is_j, prob[:, j]) if entry.auc is not None else None
        per_class.append(block)
    correct = int(np.trace(mc.confusion))
    absent = [str(lab) for lab, c in zip(mc.labels, counts) if c == 0]
    report: Report = {
        "kind": "multiclass", "name": name, "version": version, "demo": demo,
        "generated_utc": _now(), "methods": _methods("multiclass"), "n": int(truth.size),
        "labels": [str(lab) for lab in mc.labels], "class_counts": counts,
        "accuracy": mc.accuracy, "ci": {"accuracy": _wilson(correct, int(truth.size))},
        "macro": {"sensitivity": mc.macro_sensitivity, "specificity": mc.macro_specificity,
                  "ppv": mc.macro_ppv, "npv": mc.macro_npv, "f1": mc.macro_f1,
                  "auc": mc.macro_auc},
        "per_class": per_class,
        "confusion_matrix": mc.confusion,
        "notes": [f"No case of class {lab}: its sensitivity and AUC are undefined."
                  for lab in absent],
    }
    logger.info("multiclass report %s %s: n=%d, k=%d", name, version, truth.size, len(mc.labels))
    result: Report = _jsonable(report)
    return result


def segmentation_report(
    name: str,
    version: str,
    nodules: Sequence[dict[str, Any]],
    *,
    images: int,
    false_positives: int,
    match_dice: float,
    studies: int | None = None,
    demo: bool = False,
) -> Report:
    """Validation figures of a nodule segmentation model against a site's outlines.

    ``nodules``: one dict per outlined nodule with ``dice`` (its best Dice with a predicted
    nodule, 0 when none overlaps), ``found`` (matched one to one at Dice >= ``match_dice``) and
    optionally ``long_axis`` / ``unit`` and identifiers, kept in the report's ``per_nodule``.

    Keys: ``kind`` ("segmentation"), ``name``, ``version``, ``demo``, ``generated_utc``,
    ``methods``, ``images``, ``studies``, ``nodules``, ``found``, ``missed``, ``sensitivity``
    with its Wilson ``ci``, ``false_positives``, ``false_positives_per_image``, ``dice``
    (``mean``, ``sd``, ``median``, ``min``, ``max`` over every outlined nodule, ``mean_found``
    over the found ones), ``per_nodule``, ``notes``.
    """
    dice = np.array([float(n["dice"]) for n in nodules], dtype=np.float64)
    found = int(sum(bool(n["found"]) for n in nodules))
    n = int(dice.size)
    hit = np.array([bool(x["found"]) for x in nodules], dtype=bool)
    report: Report = {
        "kind": "segmentation", "name": name, "version": version, "demo": demo, "generated_utc": _now(),
        "methods": {
            "dice": "2|A and B| / (|A| + |B|) on the B-mode region's pixels, each outlined nodule against its best "
                    "predicted nodule (0 when none overlaps)",
            "detection": f"predicted and outlined nodules matched one to one, greedily by decreasing Dice, "
                         f"at Dice >= {match_dice:g}; unmatched predictions are false positives",
            "proportion_ci": "Wilson score 95% CI",
        },
        "images": int(images), "studies": studies, "nodules": n, "found": found, "missed": n - found,
        "sensitivity": found / n if n else math.nan, "ci": {"sensitivity": _wilson(found, n)},
        "false_positives": int(false_positives),
        "false_positives_per_image": false_positives / images if images else math.nan,
        "match_dice": match_dice,
        "dice": {
            "mean": float(dice.mean()) if n else math.nan,
            "sd": float(dice.std(ddof=1)) if n > 1 else math.nan,
            "median": float(np.median(dice)) if n else math.nan,
            "min": float(dice.min()) if n else math.nan,
            "max": float(dice.max()) if n else math.nan,
            "mean_found": float(dice[hit].mean()) if hit.any() else math.nan,
        },
        "per_nodule": [dict(x) for x in nodules],
        "notes": [] if n else ["No outlined nodule: sensitivity and Dice are undefined."],
    }
    logger.info("segmentation report %s %s: %d nodules on %d images", name, version, n, images)
    result: Report = _jsonable(report)
    return result


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy to Python, NaN and infinities to None, tuples to lists."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    raise TypeError(f"cannot write {type(value).__name__} to a JSON report")


# ----------------------------------------------------------------------------- writing
def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` (strict JSON) and a self-contained ``report.html`` into ``out_dir``.

    Returns
    -------
    (json_path, html_path)

    Raises
    ------
    ValueError
        ``report["kind"]`` is not "binary", "multiclass" or "segmentation".
    TypeError
        A value that JSON cannot hold.
    """
    clean: Report = _jsonable(report)
    if clean.get("kind") not in ("binary", "multiclass", "segmentation"):
        raise ValueError(f"unknown report kind {clean.get('kind')!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(_html(clean), encoding="utf-8")
    logger.info("validation report written to %s", out_dir)
    return json_path, html_path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_ci(pair: Sequence[float | None] | None) -> str:
    if not pair or any(v is None or math.isnan(v) for v in pair):
        return "n/a"
    return f"{pair[0]:.3f} - {pair[1]:.3f}"


def _fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; every cell is escaped here."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(fig: Figure, alt: str) -> str:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _auc_label(auc: Report | None) -> str:
    if auc is None:
        return "AUC n/a"
    return f"AUC {_fmt(auc['auc'])} (95% CI {_fmt_ci([auc['ci_low'], auc['ci_high']])})"


def _roc_figure(curves: Sequence[tuple[str, Report, Report | None]]) -> str:
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    for label, roc, auc in curves:
        ax.plot(roc["fpr"], roc["tpr"], label=f"{label}: {_auc_label(auc)}")
    ax.set(xlabel="1 - specificity (false positive rate)",
           ylabel="Sensitivity (true positive rate)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="ROC curve")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _img(fig, "ROC curve")


def _decision_figure(report: Report) -> str:
    curve = report["decision_curve"]
    t = np.asarray(curve["thresholds"], dtype=np.float64)
    series = [(f"{report['name']} {report['version']}", curve["net_benefit_model"])]
    comparison = report.get("comparison") or {}
    if comparison.get("net_benefit_model_b") is not None:
        series.append((str(comparison["name_b"]), comparison["net_benefit_model_b"]))
    series += [("treat all", curve["net_benefit_all"]), ("treat none", curve["net_benefit_none"])]
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    top = 0.0
    for label, values in series:
        nb = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        top = max(top, float(np.nanmax(nb)) if np.isfinite(nb).any() else 0.0)
        ax.plot(t, nb, label=label, linestyle="--" if label.startswith("treat") else "-")
    top = max(top, 0.05)
    ax.set(xlabel="Threshold probability", ylabel="Net benefit", title="Decision curve",
           xlim=(float(t.min()), float(t.max())), ylim=(-0.25 * top, 1.1 * top))
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return _img(fig, "Decision curve")


def _metric_rows(block: Report, auc: Report | None) -> list[list[str]]:
    rows = [["ROC AUC", _fmt(auc["auc"] if auc else None),
             _fmt_ci([auc["ci_low"], auc["ci_high"]] if auc else None), "DeLong"]]
    for name in METRICS:
        ci = block.get("ci", {}).get(name)
        rows.append([METRIC_NAMES[name], _fmt(block.get(name)), _fmt_ci(ci),
                     "Wilson" if ci is not None else ""])
    return rows


def _confusion_table(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    header = ["truth \\ prediction", *labels]
    return _table(header, [[lab, *map(str, row)] for lab, row in zip(labels, matrix)])


def _binary_sections(r: Report) -> list[str]:
    parts = [
        f"<p>{r['n']} cases: {r['n_pos']} positive, {r['n_neg']} negative; a case is called "
        f"positive when its probability is &gt;= {escape(_fmt(r['threshold']))}.</p>",
        "<h2>Metrics</h2>",
        _table(["Metric", "Value", "95% CI", "CI method"], _metric_rows(r, r["auc"])),
        "<h2>Confusion matrix</h2>",
        _confusion_table(r["confusion_labels"], r["confusion_matrix"]),
    ]
    if r.get("roc"):
        curves = [(f"{r['name']} {r['version']}", r["roc"], r["auc"])]
        comparison = r.get("comparison") or {}
        if comparison.get("roc_b"):
            curves.append((str(comparison["name_b"]), comparison["roc_b"],
                           comparison["auc_b_delong"]))
        parts += ["<h2>ROC curve</h2>", _roc_figure(curves)]
    if r.get("decision_curve"):
        parts += ["<h2>Decision curve</h2>", _decision_figure(r)]
    if r.get("size_bands") is not None:
        rows = [[b["label"], str(b["n"]), str(b["n_pos"]), str(b["n_neg"]),
                 _fmt((b["auc"] or {}).get("auc")),
                 _fmt_ci([b["auc"]["ci_low"], b["auc"]["ci_high"]] if b["auc"] else None),
                 *[_fmt((b["metrics"] or {}).get(k))
                   for k in ("sensitivity", "specificity", "accuracy")]]
                for b in r["size_bands"]]
        parts += ["<h2>By lesion size</h2>", _table(
            ["Size", "n", "Positive", "Negative", "AUC", "AUC 95% CI", "Sensitivity",
             "Specificity", "Accuracy"], rows)]
    c = r.get("comparison")
    if c is not None:
        parts.append("<h2>Comparison (DeLong paired test)</h2>")
        if c.get("note"):
            parts.append(f"<p>{escape(c['note'])}</p>")
        else:
            parts.append(_table(["", "Value"], [
                ["Model A", c["name_a"]], ["Model B", c["name_b"]],
                ["Model A AUC (95% CI)", _auc_label(r["auc"])],
                ["Model B AUC (95% CI)", _auc_label(c["auc_b_delong"])],
                ["AUC A - AUC B", _fmt(c["difference"])],
                ["95% CI of the difference", _fmt_ci([c["ci_low"], c["ci_high"]])],
                ["z", _fmt(c["z"])], ["p-value (two-sided)", _fmt_p(c["p_value"])],
            ]))
    return parts


def _multiclass_sections(r: Report) -> list[str]:
    macro = r["macro"]
    rows = [["Accuracy", _fmt(r["accuracy"]), _fmt_ci(r["ci"]["accuracy"]), "Wilson"]]
    rows += [[f"Macro {METRIC_NAMES[k]}", _fmt(macro[k]), "", ""]
             for k in ("sensitivity", "specificity", "ppv", "npv", "f1", "auc")]
    per_class = [[c["label"], str(c["n"]), _fmt((c["auc"] or {}).get("auc")),
                  _fmt_ci([c["auc"]["ci_low"], c["auc"]["ci_high"]] if c["auc"] else None),
                  *[f"{_fmt(c[k])} ({_fmt_ci(c['ci'][k])})" for k in RATIOS[1:]], _fmt(c["f1"])]
                 for c in r["per_class"]]
    parts = [
        f"<p>{r['n']} cases, {len(r['labels'])} classes; the predicted class is the most "
        "probable one; per-class figures are one-vs-rest.</p>",
        "<h2>Metrics</h2>", _table(["Metric", "Value", "95% CI", "CI method"], rows),
        "<h2>Per class (95% CI)</h2>",
        _table(["Class", "n", "AUC", "AUC 95% CI", "Sensitivity", "Specificity", "PPV", "NPV",
                "F1"], per_class),
        "<h2>Confusion matrix</h2>", _confusion_table(r["labels"], r["confusion_matrix"]),
    ]
    curves = [(c["label"], c["roc"], c["auc"]) for c in r["per_class"] if c.get("roc")]
    if curves:
        parts += ["<h2>ROC curves (one-vs-rest)</h2>", _roc_figure(curves)]
    return parts


def _segmentation_sections(r: Report) -> list[str]:
    d = r["dice"]
    rows = [
        ["Outlined nodules", str(r["nodules"]), ""],
        ["Found (Dice >= " + _fmt(r["match_dice"], 2) + ")", str(r["found"]), ""],
        ["Missed", str(r["missed"]), ""],
        ["Detection sensitivity", _fmt(r["sensitivity"]), _fmt_ci(r["ci"]["sensitivity"])],
        ["False positives", str(r["false_positives"]), ""],
        ["False positives per image", _fmt(r["false_positives_per_image"]), ""],
        ["Dice, mean (SD)", f"{_fmt(d['mean'])} ({_fmt(d['sd'])})", ""],
        ["Dice, median [min, max]", f"{_fmt(d['median'])} [{_fmt(d['min'])}, {_fmt(d['max'])}]", ""],
        ["Dice of the found nodules, mean", _fmt(d["mean_found"]), ""],
    ]
    per = [[str(x.get("sop_instance_uid", ""))[-16:], _fmt(x.get("segment_number")), _fmt(x["dice"]),
            "yes" if x["found"] else "no",
            f"{_fmt(x.get('long_axis'), 1)} {x.get('unit', '')}".strip()] for x in r["per_nodule"]]
    studies = f" of {r['studies']} studies" if r.get("studies") is not None else ""
    parts = [
        f"<p>{r['images']} images{studies}, {r['nodules']} nodules outlined by the site.</p>",
        "<h2>Detection and Dice</h2>", _table(["Figure", "Value", "95% CI"], rows),
    ]
    c = r.get("comparison")
    if c:
        parts += ["<h2>Comparison (same images)</h2>", _table(["", f"{r['name']} {r['version']}", str(c["name_b"])], [
            ["Detection sensitivity", _fmt(r["sensitivity"]), _fmt(c["sensitivity"])],
            ["False positives per image", _fmt(r["false_positives_per_image"]), _fmt(c["false_positives_per_image"])],
            ["Dice, mean", _fmt(d["mean"]), _fmt(c["dice"]["mean"])],
        ])]
    return parts + ["<h2>Per nodule</h2>", _table(["Image (UID end)", "Segment", "Dice", "Found", "Long axis"], per)]


_KNOWN_SEGMENTATION: Final = frozenset({
    "images", "studies", "nodules", "found", "missed", "sensitivity", "false_positives",
    "false_positives_per_image", "match_dice", "dice", "per_nodule",
})

_KNOWN: Final = frozenset({
    "kind", "name", "version", "demo", "generated_utc", "methods", "n", "n_pos", "n_neg",
    "threshold", "auc", *METRICS, "tp", "fp", "tn", "fn", "ci", "confusion_labels",
    "confusion_matrix", "roc", "decision_curve", "size_bands", "comparison", "notes", "labels",
    "class_counts", "macro", "per_class",
})

_STYLE: Final = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left}th{background:#eee}"
    ".demo{background:#fff3cd;border:1px solid #e0b000;padding:0.6em}.small{font-size:small}"
)


def _html(r: Report) -> str:
    title = f"Validation report: {r.get('name', '?')} {r.get('version', '?')}"
    parts = [f"<h1>{escape(title)}</h1>"]
    if r.get("demo"):
        parts.append(f'<p class="demo"><strong>{escape(DEMO_NOTE)}</strong></p>')
    parts += [f"<p>{escape(note)}</p>" for note in r.get("notes") or []]
    if r["kind"] == "segmentation":
        parts += _segmentation_sections(r)
    else:
        parts += _binary_sections(r) if r["kind"] == "binary" else _multiclass_sections(r)
    known = _KNOWN | _KNOWN_SEGMENTATION if r["kind"] == "segmentation" else _KNOWN
    extra = {k: v for k, v in r.items() if k not in known}
    if extra:
        rows = []
        for key, value in extra.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            rows += [[key, sub, _fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)]
                     for sub, v in items]
        parts += ["<h2>Additional information</h2>", _table(["Key", "Item", "Value"], rows)]
    methods = r.get("methods") or {}
    parts += ["<h2>Methods</h2>", _table(["", "Method"], [[k, str(v)] for k, v in methods.items()])]
    parts.append(f'<p class="small">Generated {escape(str(r.get("generated_utc", "")))}.</p>')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
