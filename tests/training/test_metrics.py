"""Regression metrics against scikit-learn, NaN actuals left out per target."""

import math

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from aam.training.metrics import regression_metrics


def test_metrics_match_sklearn_per_target_and_on_average():
    rng = np.random.default_rng(0)
    actual = rng.normal(10, 3, size=(60, 3))
    predicted = actual + rng.normal(0, 1.5, size=(60, 3))
    actual[rng.random((60, 3)) < 0.2] = np.nan
    names = ["age", "ph", "bmi"]
    got = regression_metrics(actual, predicted, names)
    per = {"mae": [], "rmse": [], "r2": []}
    for t, name in enumerate(names):
        keep = ~np.isnan(actual[:, t])
        a, p = actual[keep, t], predicted[keep, t]
        expected = {
            "mae": mean_absolute_error(a, p),
            "rmse": math.sqrt(mean_squared_error(a, p)),
            "r2": r2_score(a, p),
        }
        for key, value in expected.items():
            assert got[f"{name}/{key}"] == pytest.approx(value, rel=1e-10)
            per[key].append(value)
    for key, values in per.items():
        assert got[key] == pytest.approx(np.mean(values), rel=1e-10)


def test_one_dimensional_input_and_degenerate_targets():
    got = regression_metrics(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]), ["y"])
    assert got["y/mae"] == pytest.approx(1.0)
    assert got["y/rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert got["y/r2"] == pytest.approx(r2_score([1, 2, 4], [1, 3, 2]))

    actual = np.array([[1.0, np.nan], [np.nan, np.nan], [np.nan, 3.0]])
    got = regression_metrics(actual, np.zeros((3, 2)), ["a", "b"])
    assert got["a/mae"] == pytest.approx(1.0)
    assert math.isnan(got["a/r2"])  # one value: R² is undefined
    assert got["mae"] == pytest.approx(2.0)
    assert math.isnan(got["r2"])


def test_mismatched_names_are_an_error():
    with pytest.raises(ValueError, match="names"):
        regression_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["only_one"])
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(np.zeros((3, 2)), np.zeros((3, 1)), ["a", "b"])
