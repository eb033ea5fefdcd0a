"""Regression metrics on the original target scale (numpy only)."""

from __future__ import annotations

import warnings

import numpy as np


def regression_metrics(actual: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict[str, float]:
    """MAE, RMSE and R² per target (f"{name}/mae", ...) and their mean across targets ("mae", ...).

    actual/predicted [N, T] (or [N] for one target) on the original scale; samples whose actual
    value is NaN are left out of that target. R² = 1 - SS_res / SS_tot, NaN when a target has
    fewer than 2 values or no spread (SS_tot = 0), where R² is undefined. A target with no
    value at all has NaN metrics; the means skip NaN targets (NaN only if every target is NaN).
    """
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if actual.ndim == 1:
        actual, predicted = actual[:, None], predicted[:, None]
    if actual.shape != predicted.shape:
        raise ValueError(f"actual {actual.shape} and predicted {predicted.shape} differ in shape")
    if actual.shape[1] != len(names):
        raise ValueError(f"{actual.shape[1]} target columns but {len(names)} names")

    out: dict[str, float] = {}
    per = {"mae": [], "rmse": [], "r2": []}
    for t, name in enumerate(names):
        present = ~np.isnan(actual[:, t])
        a, p = actual[present, t], predicted[present, t]
        mae = rmse = r2 = float("nan")
        if a.size:
            err = p - a
            mae = float(np.mean(np.abs(err)))
            rmse = float(np.sqrt(np.mean(err**2)))
            ss_tot = float(np.sum((a - a.mean()) ** 2))
            if a.size >= 2 and ss_tot > 0:
                r2 = 1.0 - float(np.sum(err**2)) / ss_tot
        for key, value in (("mae", mae), ("rmse", rmse), ("r2", r2)):
            out[f"{name}/{key}"] = value
            per[key].append(value)
    with warnings.catch_warnings():  # nanmean of all-NaN warns; NaN is the honest answer there
        warnings.simplefilter("ignore", RuntimeWarning)
        for key, values in per.items():
            out[key] = float(np.nanmean(values)) if values else float("nan")
    return out
