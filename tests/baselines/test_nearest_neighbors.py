"""`run_nearest_neighbors` on the bundled real table: its distances, its choice of k on the
training rows alone, its predictions, its folds and its mistakes."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from aam.baselines import leaderboard_row, run_nearest_neighbors
from aam.baselines._jaccard import jaccard_distances
from aam.baselines.nearest_neighbors import INNER_FOLDS, WEIGHTS, presence
from aam.baselines.random_forest import relative_abundances
from aam.data import Dataset
from aam.training.folds import fold_assignments, group_count

GRID = (1, 3, 5, 8)


@pytest.fixture(scope="module")
def knn_run(example_dataset, tmp_path_factory):
    return run_nearest_neighbors(example_dataset, tmp_path_factory.mktemp("knn") / "knn", neighbors=GRID)


def _presence_and_targets(dataset, split):
    rows = dataset.split(split)
    return rows, presence(rows, len(dataset.asvs)), rows.column("target.Age_wk").to_numpy()


def _knn_predict(distances, y_train, k, weights):
    """What k nearest neighbours predict, written out with numpy: the mean of the k closest
    targets, or their mean weighted by 1/distance (a neighbour at distance 0 takes all the weight)."""
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    near, targets = np.take_along_axis(distances, order, axis=1), y_train[order]
    if weights == "uniform":
        return targets.mean(axis=1)
    with np.errstate(divide="ignore"):
        w = 1.0 / near
    exact = near == 0
    w[exact.any(axis=1)] = exact[exact.any(axis=1)].astype(float)
    return (w * targets).sum(axis=1) / w.sum(axis=1)


def _unambiguous(distances, k):
    """Rows whose k-th and (k+1)-th nearest are not tied, where any two correct k-NNs agree."""
    ordered = np.sort(distances, axis=1)
    return np.ones(len(distances), bool) if k >= distances.shape[1] else ordered[:, k - 1] < ordered[:, k]


def test_presence_marks_exactly_the_asvs_with_reads_and_jaccard_matches_scipy(example_dataset):
    dataset = Dataset.open(example_dataset)
    rows = dataset.split("train")
    held = presence(rows, len(dataset.asvs)).toarray()
    assert np.array_equal(held > 0, relative_abundances(rows, len(dataset.asvs)).toarray() > 0)
    assert set(np.unique(held)) == {0.0, 1.0}
    a, b = presence(dataset.split("test"), len(dataset.asvs)), presence(rows, len(dataset.asvs))
    expected = cdist(a.toarray().astype(bool), b.toarray().astype(bool), "jaccard")
    assert np.allclose(jaccard_distances(a, b), expected)
    assert np.allclose(np.diag(jaccard_distances(b, b)), 0.0)


def test_k_and_weighting_are_the_grids_best_on_folds_of_the_training_rows(knn_run, example_dataset):
    dataset = Dataset.open(example_dataset)
    rows, x, y = _presence_and_targets(dataset, "train")
    fold = fold_assignments(rows, min(INNER_FOLDS, group_count(rows)), 0)
    scores = {}
    for k, weights in itertools.product(GRID, WEIGHTS):  # sklearn's ParameterGrid order
        errors = []
        for f in np.unique(fold):
            fit, held = fold != f, fold == f
            d = jaccard_distances(x[held], x[fit])
            errors.append(np.mean(np.abs(_knn_predict(d, y[fit], min(k, fit.sum()), weights) - y[held])))
        scores[(k, weights)] = float(np.mean(errors))
    chosen = knn_run.info["chosen"]["Age_wk"]
    # the chosen pair scores the grid's best on the training rows' folds (val and test never seen)
    assert scores[(chosen["n_neighbors"], chosen["weights"])] <= min(scores.values()) + 1e-9
    assert knn_run.info["grid"]["n_neighbors"] == list(GRID) and knn_run.info["kind"] == "knn"


def test_predictions_are_the_k_nearest_training_samples_targets(knn_run, example_dataset):
    dataset = Dataset.open(example_dataset)
    _, x_train, y_train = _presence_and_targets(dataset, "train")
    chosen = knn_run.info["chosen"]["Age_wk"]
    for split in ("val", "test"):
        _, x, y = _presence_and_targets(dataset, split)
        d = jaccard_distances(x, x_train)
        expected = _knn_predict(d, y_train, chosen["n_neighbors"], chosen["weights"])
        frame = pd.read_csv(knn_run.out / f"{split}_predictions.tsv", sep="\t")
        clear = _unambiguous(d, chosen["n_neighbors"])
        assert clear.mean() > 0.5
        assert np.allclose(frame["Age_wk_predicted"].to_numpy()[clear], expected[clear], rtol=1e-6)
        assert frame["Age_wk_actual"].tolist() == y.tolist()
    metrics = json.loads((knn_run.out / "metrics.json").read_text())
    train_mean = np.mean(y_train)
    test = pd.read_csv(knn_run.out / "test_predictions.tsv", sep="\t")
    assert metrics["test_mae"] < 0.5 * np.mean(np.abs(test["Age_wk_actual"] - train_mean))
    assert leaderboard_row(knn_run.out, "val_mae")["trial"] == "baseline:knn"


def test_out_of_fold_a_sample_is_never_its_own_neighbour(example_dataset, tmp_path):
    result = run_nearest_neighbors(example_dataset, tmp_path / "knn", neighbors=(1,), folds=3)
    oof = pd.read_csv(result.out / "oof_predictions.tsv", sep="\t", dtype={"sample_id": str})
    non_test = pd.read_parquet(example_dataset / "samples.parquet").query("split != 'test'")["sample_id"]
    assert sorted(oof["sample_id"]) == sorted(non_test)
    errors = np.abs(oof["Age_wk_actual"] - oof["Age_wk_predicted"])
    # a 1-NN that could see the sample would return its own age: out of fold most are off
    assert (errors > 0).mean() > 0.5
    assert result.metrics["oof_mae"] == pytest.approx(float(errors.mean()))
    assert result.info["folds"] == 3 and result.info["chosen"]["Age_wk"]["n_neighbors"] == 1


@pytest.mark.parametrize("neighbors, message", [("0,3", "--neighbors 0,3: give whole numbers >= 1"),
                                                ("3,x", "--neighbors 3,x: give whole numbers separated by commas")])
def test_bad_neighbors_is_one_line_and_nothing_written(aam_main, example_dataset, tmp_path, neighbors, message):
    code, out, err = aam_main("baseline", "knn", "--data", example_dataset, "--out", tmp_path / "knn",
                              "--neighbors", neighbors)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "knn").exists()


def test_every_baseline_kind_is_one_aam_ensemble_takes_under_its_short_name():
    from aam.baselines import nearest_neighbors, random_forest
    from aam.training.ensemble import BASELINE_NAMES

    assert BASELINE_NAMES == {random_forest.KIND: "rf", nearest_neighbors.KIND: "knn"}
