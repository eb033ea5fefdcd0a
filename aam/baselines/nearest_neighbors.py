"""Nearest neighbours on which ASVs a sample holds: the bar a table with near twins sets.

Where test samples have near twins in training (the same mouse on another date, another sample
of the same site), the target of the closest training samples is a strong guess, and neither a
forest on abundances nor a transformer finds it as directly: on the dev datasets a 5-NN on
presence/absence beat the forest on six of seven splits (BENCHMARKS.md §9, "A nearest-neighbour
bar"). The distance is Jaccard's (1 - shared ASVs / ASVs of either sample), the one ecologists
compare community membership with. The number of neighbours and their weighting are chosen by
cross-validation on the training rows (whole groups per fold, as the models' folds are), never
on val or test. Fitting, scoring and the folder it writes are aam.baselines._fit's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from aam.baselines._fit import BaselineResult, run_baseline
from aam.baselines.random_forest import relative_abundances
from aam.errors import AamUserError

KIND = "knn"
NEIGHBORS = (1, 2, 3, 5, 8, 13, 21)
WEIGHTS = ("uniform", "distance")
INNER_FOLDS = 5


def run_nearest_neighbors(
    data,
    out,
    targets: list[str] | None = None,
    neighbors: tuple[int, ...] = NEIGHBORS,
    seed: int = 0,
    train_on_val: bool = False,
    force: bool = False,
    folds: int = 1,
) -> BaselineResult:
    """Per target, the mean target of the k training samples nearest in Jaccard distance (plain or
    weighted by 1/distance), k and the weighting chosen among `neighbors` x WEIGHTS by grouped
    cross-validation on the training rows; scores and writes val and test as every baseline does."""
    neighbors = _check_neighbors(neighbors)

    def fit(x, y, rows):
        return choose_neighbors(x, y, rows, neighbors, seed)

    def describe(fitted: dict) -> dict:
        return {"features": "presence/absence of every ASV, Jaccard distance", "grid": {
                    "n_neighbors": list(neighbors), "weights": list(WEIGHTS), "inner_folds": INNER_FOLDS},
                "chosen": {name: model.get_params() for name, model in fitted.items()}}

    return run_baseline(data, out, kind=KIND, title="nearest neighbours", features=presence, fit=fit,
                        describe=describe, targets=targets, train_on_val=train_on_val, force=force, folds=folds,
                        seed=seed)


def presence(rows: pa.Table, n_asvs: int) -> sp.csr_matrix:
    """[samples, ASVs] 1 where the sample holds the ASV (any reads), 0 elsewhere."""
    matrix = relative_abundances(rows, n_asvs)
    matrix.eliminate_zeros()
    matrix.data[:] = 1.0
    return matrix


def choose_neighbors(x, y: np.ndarray, rows: pa.Table, neighbors: tuple[int, ...], seed: int):
    """The grid's best on MAE over folds of `rows` (whole groups apart), refitted on all of them."""
    from sklearn.model_selection import GridSearchCV

    from aam.baselines._jaccard import JaccardNeighbors
    from aam.training.folds import fold_assignments, group_count

    inner = min(INNER_FOLDS, group_count(rows))
    if inner < 2:  # one group: nothing to hold out that would not leak; the grid's middle
        return JaccardNeighbors(n_neighbors=neighbors[len(neighbors) // 2]).fit(x, y)
    fold = fold_assignments(rows, inner, seed)
    splits = [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(inner)]
    grid = {"n_neighbors": list(neighbors), "weights": list(WEIGHTS)}
    search = GridSearchCV(JaccardNeighbors(), grid, cv=splits, scoring="neg_mean_absolute_error")
    return search.fit(x, y).best_estimator_


def _check_neighbors(neighbors) -> tuple[int, ...]:
    values = tuple(neighbors)
    if not values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in values):
        raise AamUserError(f"--neighbors {','.join(map(str, values)) or '(none)'}: give whole numbers >= 1, "
                           "such as 1,3,5,10")
    return tuple(sorted(set(values)))
