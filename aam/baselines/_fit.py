"""The one way a baseline is fitted, scored and written, whatever the estimator.

A baseline reads what `aam convert` wrote and leaves what a model run leaves
(val/test_predictions.tsv, pred_vs_actual.png, flat val_/test_ metrics from
`regression_metrics`), and every reader of a run folder reads it too. `baseline.json` says which
baseline it is, so `aam runs --baseline` and `aam ensemble --with-baseline` can tell them apart.
A baseline module gives its features (rows -> matrix) and its fit ((x, y, rows) -> a fitted
estimator); one estimator per target, fitted on the train rows that have a value for it.
"""

from __future__ import annotations

import json
import math
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from aam._files import check_output_folder, mark_output, staged_folder
from aam.data.dataset import Dataset
from aam.errors import AamUserError

BASELINE_FILE = "baseline.json"
METRICS_FILE = "metrics.json"
EVAL_SPLITS = ("val", "test")
OOF_FILE = "oof_predictions.tsv"  # with --folds: every train and val sample, predicted out of fold

Features = Callable[[pa.Table, int], object]  # (rows, ASVs in the table) -> [N, F] matrix the estimator reads
Fit = Callable[[object, np.ndarray, pa.Table], object]  # (x, y of one target, rows) -> fitted estimator


@dataclass
class BaselineResult:
    out: Path
    targets: list[str]
    metrics: dict  # val_mae, test_r2, val_<t>/mae, ... (None where undefined)
    info: dict  # the contents of baseline.json
    fitted: dict  # target -> the estimator fitted on the train rows (not saved)


def run_baseline(data, out, *, kind: str, title: str, features: Features, fit: Fit,
                 describe: Callable[[dict], dict],
                 targets: list[str] | None = None, train_on_val: bool = False, force: bool = False,
                 folds: int = 1, seed: int = 0) -> BaselineResult:
    """Fit `fit` per target on the train split (train+val with `train_on_val`), score val and test,
    with `folds` > 1 also predict every train and val row out of fold; write `out` whole or not at all.
    `describe(fitted)`: what baseline.json says of the estimators (target -> fitted on train)."""
    from aam.data.collate import raw_targets  # imports torch: only when a baseline is fitted

    out = Path(out)
    if folds < 1 or (folds > 1 and train_on_val):
        raise AamUserError(f"--folds {folds}: use 1 (no cross-validation) or more, without --train-on-val (the "
                           "folds are of train+val already)")
    check_output_folder(out, "baseline", force, {"--data": data})
    dataset = Dataset.open(data)
    names = _resolve_targets(dataset, targets)
    train_rows = dataset.split("train")
    if train_on_val:
        train_rows = pa.concat_tables([train_rows, dataset.split("val")])
    eval_rows = {split: dataset.split(split) for split in EVAL_SPLITS}
    n_asvs = len(dataset.asvs)
    x_eval = {split: features(rows, n_asvs) for split, rows in eval_rows.items()}
    predicted, n_train, fit_seconds, fitted = _fit_and_predict(train_rows, features(train_rows, n_asvs),
                                                               raw_targets(train_rows, names), x_eval, names, fit,
                                                               dataset.path)
    actual = {split: raw_targets(rows, names) for split, rows in eval_rows.items()}
    metrics = _split_metrics(actual, predicted, names)
    info = {
        "kind": kind,
        "data": str(dataset.path.resolve()),
        "targets": names,
        "n_asvs": n_asvs,
        **describe(fitted),
        "seed": seed,
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
        oof, oof_metrics, oof_seconds = _out_of_fold(pa.concat_tables([train_rows, eval_rows["val"]]), names,
                                                     features(pa.concat_tables([train_rows, eval_rows["val"]]),
                                                              n_asvs), fit, folds, seed, dataset.path)
        metrics.update(oof_metrics)
        info.update({"folds": folds, "oof_fit_seconds": round(oof_seconds, 3)})
    result = BaselineResult(out=out, targets=names, metrics=metrics, info=info, fitted=fitted)
    _write(out, force, data, names, sample_ids, actual, predicted, metrics, info, oof, title)
    return result


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


def _fit_and_predict(rows: pa.Table, x_train, y_train, x_eval: dict, names, fit: Fit, where):
    """One estimator per target on the rows that have it; predictions for every eval row.

    Returns (predicted per split [N, T], training rows per target, seconds fitting, the fitted
    estimator per target).
    """
    n_train = {name: int((~np.isnan(y_train[:, t])).sum()) for t, name in enumerate(names)}
    for name, n in n_train.items():  # all checked before the first (slow) fit
        if n < 2:
            raise AamUserError(
                f"{where}: the training rows have {n} value(s) of target '{name}'; a baseline needs at least 2 "
                "(convert with another split, or pass --targets without it)"
            )
    predicted = {split: np.full((x.shape[0], len(names)), np.nan) for split, x in x_eval.items()}
    fit_seconds, fitted = 0.0, {}
    for t, name in enumerate(names):
        present = ~np.isnan(y_train[:, t])
        started = time.perf_counter()
        fitted[name] = fit(x_train[present], y_train[present, t], rows.filter(pa.array(present)))
        fit_seconds += time.perf_counter() - started
        for split, x in x_eval.items():
            if x.shape[0]:  # sklearn refuses to predict zero rows
                predicted[split][:, t] = fitted[name].predict(x)
    return predicted, n_train, fit_seconds, fitted


def _out_of_fold(rows: pa.Table, names: list[str], x, fit: Fit, folds: int, seed: int, where):
    """Every train and val row predicted by an estimator that never saw it (K fits, one per fold of
    `aam.training.folds`, grouped as the models' folds are), so `aam ensemble` can weigh the
    baseline against cross-validated models on the same out-of-fold footing. Returns (a
    predictions frame, oof_ metrics, seconds fitting)."""
    from aam.data.collate import raw_targets
    from aam.training import artifacts
    from aam.training.folds import fold_assignments
    from aam.training.metrics import regression_metrics

    fold = fold_assignments(rows, folds, seed)
    y = raw_targets(rows, names)
    predicted = np.full(y.shape, np.nan)
    seconds = 0.0
    for k in range(folds):
        held = fold == k
        fitted = _fit_and_predict(rows.filter(pa.array(~held)), x[~held], y[~held], {"held": x[held]}, names, fit,
                                  where)
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


def _write(out, force, data, names, sample_ids, actual, predicted, metrics, info, oof, title) -> None:
    """Write into a hidden sibling folder, then rename: a failure leaves nothing at `out`."""
    from aam.training import artifacts

    check_output_folder(out, "baseline", force, {"--data": data})  # again: it may have appeared during the fit
    with staged_folder(out) as tmp:
        mark_output(tmp, "baseline")
        for split in EVAL_SPLITS:
            frame = artifacts.predictions_frame(sample_ids[split], names, predicted[split], actual[split], None)
            artifacts.write_tsv(frame, tmp / f"{split}_predictions.tsv")
        if oof is not None:
            artifacts.write_tsv(oof, tmp / OOF_FILE)
        fig = artifacts.predicted_vs_actual_figure(names, actual["test"], predicted["test"], f"test, {title}")
        fig.savefig(tmp / "pred_vs_actual.png", dpi=100)
        _close(fig)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
        (tmp / BASELINE_FILE).write_text(json.dumps(info, indent=1) + "\n")


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
