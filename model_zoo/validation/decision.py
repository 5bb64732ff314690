"""Decision-curve analysis (Vickers & Elkin 2006) of a binary model, computed with ``dcurves``.

At a threshold probability ``pt`` (the risk at which one would treat), with ``n`` cases:

* model: ``NB = TP / n - FP / n * pt / (1 - pt)``, a case being treated when ``p >= pt``;
* treat all: ``NB = prevalence - (1 - prevalence) * pt / (1 - pt)``;
* treat none: ``NB = 0``.

The figures come from :func:`dcurves.dca` (binary outcome, risks given as probabilities, no harm,
prevalence from the data); this module only checks the input, calls it and unpacks its table.
``dcurves`` imports lifelines, statsmodels and matplotlib's pyplot (about 3 s), so it is imported
on the first call only; its plotting helpers are never used here, and the warnings it raises are
logged at DEBUG instead of reaching the caller's console.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from model_zoo.validation.delong import as_binary_labels, as_scores, require_both_classes

__all__ = ["DEFAULT_THRESHOLDS", "DecisionCurve", "decision_curve"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

DEFAULT_THRESHOLDS: Final[FloatArray] = np.arange(0.01, 1.0, 0.01)
DEFAULT_THRESHOLDS.setflags(write=False)

_OUTCOME: Final = "outcome"
_MODEL: Final = "probability"


@dataclass(frozen=True, eq=False)
class DecisionCurve:
    """Net benefit per threshold probability; every array has the shape of ``thresholds``."""

    thresholds: FloatArray
    net_benefit_model: FloatArray
    net_benefit_all: FloatArray
    net_benefit_none: FloatArray


def _check_thresholds(thresholds: npt.ArrayLike) -> FloatArray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D array, got shape {t.shape}")
    if not np.isfinite(t).all() or (t <= 0.0).any() or (t >= 1.0).any():
        raise ValueError("thresholds must lie strictly between 0 and 1 (pt / (1 - pt) is finite)")
    return t


def decision_curve(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    thresholds: npt.ArrayLike = DEFAULT_THRESHOLDS,
) -> DecisionCurve:
    """Net benefit of the model, of treating all and of treating none, per threshold.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        0/1 or booleans, 1 = positive (the event one would treat).
    probabilities : array_like, shape (n,)
        Predicted risks in [0, 1]; a case is treated when ``probability >= threshold``.
    thresholds : array_like, shape (t,)
        Threshold probabilities, each strictly between 0 and 1; 0.01 to 0.99 by default.

    Returns
    -------
    DecisionCurve

    Raises
    ------
    ValueError
        Empty input, length mismatch, NaN or infinite probabilities, probabilities outside
        [0, 1], labels other than 0/1, a single class (dcurves divides by the count of each),
        thresholds outside (0, 1).
    """
    y = as_binary_labels(y_true)
    p = as_scores(probabilities, y.size, "probabilities")
    if (p < 0.0).any() or (p > 1.0).any():
        raise ValueError("probabilities must lie in [0, 1] for a decision curve")
    require_both_classes(y)
    t = _check_thresholds(thresholds)
    data = pd.DataFrame({_OUTCOME: y.astype(bool), _MODEL: p})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import dcurves  # heavy (lifelines, statsmodels, pyplot): imported on first use

        table = dcurves.dca(data=data, outcome=_OUTCOME, modelnames=[_MODEL], thresholds=list(t))
    for warning in caught:
        logger.debug("dcurves: %s: %s", warning.category.__name__, warning.message)

    def column(model: str) -> FloatArray:
        rows = table[table["model"] == model]
        values: FloatArray = rows["net_benefit"].to_numpy(dtype=np.float64)
        if values.shape != t.shape or not np.allclose(rows["threshold"].to_numpy(), t):
            raise RuntimeError(f"unexpected dcurves output for {model!r}: {values.shape} rows")
        return values

    return DecisionCurve(t.copy(), column(_MODEL), column("all"), column("none"))
