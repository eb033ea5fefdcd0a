"""A Random Forest on relative abundances: the bar a tuned transformer has to clear.

Users already have an RF; a search is only worth its cost if it beats one fitted on the same
dataset folder and the same train/val/test split. So the RF reads what `aam convert` wrote and
leaves what a model run leaves (val/test_predictions.tsv, pred_vs_actual.png, flat val_/test_
metrics from `regression_metrics`), and every reader of a run folder reads it too.
`baseline.json` says what it is, so `aam runs --baseline` can put it beside the trials.
"""

from __future__ import annotations

import json
import math
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from aam._files import check_output_folder, mark_output, staged_folder
from aam.data.dataset import Dataset
from aam.errors import AamUserError

KIND = "random_forest"
BASELINE_FILE = "baseline.json"
METRICS_FILE = "metrics.json"
EVAL_SPLITS = ("val", "test")
OOF_FILE = "oof_predictions.tsv"  # with --folds: every train and val sample, predicted out of fold


@dataclass
class BaselineResult:
    out: Path
    targets: list[str]
    metrics: dict  # val_mae, test_r2, val_<t>/mae, ... (None where undefined)
    info: dict  # the contents of baseline.json


def run_random_forest(
    data: str | Path,
    out: str | Path,
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
    from aam.data.collate import raw_targets  # imports torch: only when a forest is fitted

    out = Path(out)
    _check_args(n_estimators, n_jobs)
    if folds < 1 or (folds > 1 and train_on_val):
        raise AamUserError(f"--folds {folds}: use 1 (no cross-validation) or more, without --train-on-val (the "
                           "folds are of train+val already)")
    max_features = parse_max_features(max_features)
    _check_out(out, force, data)
    dataset = Dataset.open(data)
    names = _resolve_targets(dataset, targets)
    n_asvs = len(dataset.asvs)
    train_rows = dataset.split("train")
    if train_on_val:
        train_rows = pa.concat_tables([train_rows, dataset.split("val")])
    eval_rows = {split: dataset.split(split) for split in EVAL_SPLITS}

    forest = {"n_estimators": n_estimators, "random_state": seed, "n_jobs": n_jobs}
    if max_features is not None:
        forest["max_features"] = max_features
    x_eval = {split: relative_abundances(rows, n_asvs) for split, rows in eval_rows.items()}
    fitted = _fit_and_predict(relative_abundances(train_rows, n_asvs), raw_targets(train_rows, names), x_eval,
                              names, forest, dataset.path)
    predicted, n_train, fit_seconds, effective_max_features = fitted

    actual = {split: raw_targets(rows, names) for split, rows in eval_rows.items()}
    metrics = _split_metrics(actual, predicted, names)
    info = {
        "kind": KIND,
        "data": str(dataset.path.resolve()),
        "targets": names,
        "features": "relative abundance of every ASV",
        "n_asvs": n_asvs,
        "n_estimators": n_estimators,
        "max_features": effective_max_features,
        "seed": seed,
        "n_jobs": n_jobs,
        "train_on_val": train_on_val,
        "n_train": max(n_train.values()),
        "n_train_per_target": n_train,
        "n_val": eval_rows["val"].num_rows,
        "n_test": eval_rows["test"].num_rows,
        "fit_seconds": round(fit_seconds, 3),
        "sklearn_version": _sklearn_version(),
    }
    sample_ids = {split: rows.column("sample_id").to_pylist() for split, rows in eval_rows.items()}
    oof = None
    if folds > 1:
        oof, oof_metrics, oof_seconds = _out_of_fold(pa.concat_tables([train_rows, eval_rows["val"]]), names, n_asvs,
                                                     folds, seed, forest, dataset.path)
        metrics.update(oof_metrics)
        info.update({"folds": folds, "oof_fit_seconds": round(oof_seconds, 3)})
    _write(out, force, names, sample_ids, actual, predicted, metrics, info, oof)
    return BaselineResult(out=out, targets=names, metrics=metrics, info=info)


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


def _resolve_targets(dataset: Dataset, targets: list[str] | None) -> list[str]:
    # the same check and did-you-mean as a model run; it only reads `.targets` of the config
    from aam.training.prepare import resolve_targets

    targets = list(targets or [])
    repeated = next((t for t in targets if targets.count(t) > 1), None)
    if repeated is not None:
        raise AamUserError(f"--targets: '{repeated}' is given twice; give each target once")
    names = resolve_targets(types.SimpleNamespace(targets=targets), dataset)
    if not names:
        raise AamUserError(
            f"{dataset.path} has no target to fit (a pretraining dataset); convert it again with --target COLUMN"
        )
    return names


def _fit_and_predict(x_train, y_train, x_eval: dict, names, forest: dict, where):
    """One forest per target on the rows that have it; predictions for every eval row.

    Returns (predicted per split [N, T], training rows per target, seconds fitting, max_features
    as sklearn resolved it).
    """
    from sklearn.ensemble import RandomForestRegressor

    n_train = {name: int((~np.isnan(y_train[:, t])).sum()) for t, name in enumerate(names)}
    for name, n in n_train.items():  # all checked before the first (slow) forest grows
        if n < 2:
            raise AamUserError(
                f"{where}: the training rows have {n} value(s) of target '{name}'; an RF needs at least 2 "
                "(convert with another split, or pass --targets without it)"
            )
    predicted = {split: np.full((x.shape[0], len(names)), np.nan) for split, x in x_eval.items()}
    fit_seconds, max_features = 0.0, None
    for t, name in enumerate(names):
        present = ~np.isnan(y_train[:, t])
        model = RandomForestRegressor(**forest)
        started = time.perf_counter()
        model.fit(x_train[present], y_train[present, t])
        fit_seconds += time.perf_counter() - started
        max_features = model.max_features
        for split, x in x_eval.items():
            if x.shape[0]:  # sklearn refuses to predict zero rows
                predicted[split][:, t] = model.predict(x)
    return predicted, n_train, fit_seconds, max_features


def _out_of_fold(rows: pa.Table, names: list[str], n_asvs: int, folds: int, seed: int, forest: dict, where):
    """Every train and val row predicted by a forest that never saw it (K forests, one per fold of
    `aam.training.folds`, grouped as the models' folds are), so `aam ensemble` can weigh the forest
    against cross-validated models on the same out-of-fold footing. Returns (a predictions frame,
    oof_ metrics, seconds fitting)."""
    from aam.data.collate import raw_targets
    from aam.training import artifacts
    from aam.training.folds import fold_assignments
    from aam.training.metrics import regression_metrics

    fold = fold_assignments(rows, folds, seed)
    x, y = relative_abundances(rows, n_asvs), raw_targets(rows, names)
    predicted = np.full(y.shape, np.nan)
    seconds = 0.0
    for k in range(folds):
        held = fold == k
        fitted = _fit_and_predict(x[~held], y[~held], {"held": x[held]}, names, forest, where)
        predicted[held] = fitted[0]["held"]
        seconds += fitted[2]
    metrics = {f"oof_{key}": None if math.isnan(v) else v for key, v in regression_metrics(y, predicted, names).items()}
    frame = artifacts.predictions_frame(rows.column("sample_id").to_pylist(), names, predicted, y, None)
    return frame, metrics, seconds


def _split_metrics(actual: dict, predicted: dict, names: list[str]) -> dict:
    """val_mae, val_<t>/mae, test_r2, ... as a model run names them; None where undefined (NaN)."""
    from aam.training.metrics import regression_metrics

    metrics = {}
    for split in EVAL_SPLITS:
        for key, value in regression_metrics(actual[split], predicted[split], names).items():
            metrics[f"{split}_{key}"] = None if math.isnan(value) else value
    return metrics


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def _check_out(out: Path, force: bool, data=None) -> None:
    check_output_folder(out, "baseline", force, {"--data": data})


def _write(out, force, names, sample_ids, actual, predicted, metrics, info, oof=None) -> None:
    """Write into a hidden sibling folder, then rename: a failure leaves nothing at `out`."""
    from aam.training import artifacts

    _check_out(out, force)  # again: the folder may have appeared while the forest grew
    with staged_folder(out) as tmp:
        mark_output(tmp, "baseline")
        for split in EVAL_SPLITS:
            frame = artifacts.predictions_frame(sample_ids[split], names, predicted[split], actual[split], None)
            artifacts.write_tsv(frame, tmp / f"{split}_predictions.tsv")
        if oof is not None:
            artifacts.write_tsv(oof, tmp / OOF_FILE)
        fig = artifacts.predicted_vs_actual_figure(names, actual["test"], predicted["test"], "test, random forest")
        fig.savefig(tmp / "pred_vs_actual.png", dpi=100)
        _close(fig)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
        (tmp / BASELINE_FILE).write_text(json.dumps(info, indent=1) + "\n")


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
