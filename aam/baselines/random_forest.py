"""A Random Forest on relative abundances: the bar a tuned transformer has to clear.

Users already have an RF; a search is only worth its cost if it beats one fitted on the same
dataset folder and the same train/val/test split. Fitting, scoring and the folder it writes are
aam.baselines._fit's, as for every baseline.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from aam.baselines._fit import BaselineResult, run_baseline
from aam.errors import AamUserError

KIND = "random_forest"


def run_random_forest(
    data,
    out,
    targets: list[str] | None = None,
    n_estimators: int = 500,
    seed: int = 0,
    n_jobs: int = 1,
    max_features: str | int | float | None = None,
    train_on_val: bool = False,
    force: bool = False,
    folds: int = 1,
) -> BaselineResult:
    """Fit one RandomForestRegressor per target on the train split; score and write val and test.

    Samples without a value for a target are left out of that target's fit and metrics (their
    rows still get a prediction). `max_features=None` keeps sklearn's default. With n_jobs=1 the
    same seed gives identical predictions; threads may reorder the sum over trees.
    """
    _check_args(n_estimators, n_jobs)
    max_features = parse_max_features(max_features)
    forest = {"n_estimators": n_estimators, "random_state": seed, "n_jobs": n_jobs}
    if max_features is not None:
        forest["max_features"] = max_features

    def fit(x, y, rows):
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(**forest).fit(x, y)

    def describe(fitted: dict) -> dict:
        # max_features as sklearn resolved it (its default, where none was given)
        return {"features": "relative abundance of every ASV", "n_estimators": n_estimators,
                "max_features": next(iter(fitted.values())).max_features, "n_jobs": n_jobs}

    result = run_baseline(data, out, kind=KIND, title="random forest", features=relative_abundances, fit=fit,
                          describe=describe, targets=targets, train_on_val=train_on_val, force=force, folds=folds,
                          seed=seed)
    return result


def relative_abundances(rows: pa.Table, n_asvs: int) -> sp.csr_matrix:
    """[samples, ASVs] counts / sample total, from the rows' asv_idx and counts lists."""
    asv_idx = rows.column("asv_idx").combine_chunks()
    counts = rows.column("counts").combine_chunks()
    lengths = pc.list_value_length(asv_idx).to_numpy(zero_copy_only=False)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = asv_idx.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    values = counts.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    matrix = sp.csr_matrix((values, indices, indptr), shape=(rows.num_rows, n_asvs))
    matrix.sort_indices()  # rows are stored by count; sorted columns make the matrix canonical
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    # convert drops samples without reads; guard anyway rather than divide by zero
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sp.csr_matrix(sp.diags(scale) @ matrix)


def parse_max_features(value):
    """sklearn's max_features from a flag: None, sqrt, log2, a fraction (0, 1] or a count >= 1."""
    if value is None or value in ("sqrt", "log2"):
        return value
    parsed = math.nan  # anything that is neither a number nor a name is refused below
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = float(value) if "." in value else int(value)
        except ValueError:
            pass
    is_count = isinstance(parsed, int) and parsed >= 1
    is_fraction = isinstance(parsed, float) and 0 < parsed <= 1
    if not (is_count or is_fraction):
        raise AamUserError(
            f"--max-features {value!r}: use sqrt, log2, a fraction of the ASVs in (0, 1] such as 0.3, "
            "or a whole number of ASVs >= 1"
        )
    return parsed


def _check_args(n_estimators: int, n_jobs: int) -> None:
    if n_estimators < 1:
        raise AamUserError(f"--n-estimators {n_estimators}: a forest needs at least 1 tree")
    if n_jobs == 0 or n_jobs < -1:
        raise AamUserError(f"--n-jobs {n_jobs}: use a positive number of cores, or -1 for all of them")
