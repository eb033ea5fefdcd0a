"""A baseline folder as leaderboard rows, so `aam runs --baseline` shows it beside the trials.

A row has the columns of `Experiment.leaderboard()`: the experiment's objective goes in
`best_<metric>` (a baseline has one "epoch", so its best is its only score) and the other
val/test scores in their own columns; trial-only columns (rank, epochs, params) stay empty.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from aam.baselines._fit import BASELINE_FILE, METRICS_FILE
from aam.training.ensemble import BASELINE_NAMES
from aam._files import read_json
from aam.errors import AamUserError

SHORT_NAMES = BASELINE_NAMES  # the names `aam ensemble` gives them too
SHOWN_METRICS = ("val_mae", "val_r2", "test_mae", "test_r2")  # as Experiment.leaderboard shows them
INTEGER_COLUMNS = ("rank", "epochs", "best_epoch")


def read_baseline(folder: str | Path) -> tuple[dict, dict]:
    """(baseline.json, metrics.json) of a folder written by `aam baseline`."""
    folder = Path(folder)
    hint = "pass a folder written by `aam baseline rf` or `aam baseline knn --out DIR`"
    if not folder.is_dir():
        raise AamUserError(f"--baseline {folder}: no such folder; {hint}")
    files = {}
    for name in (BASELINE_FILE, METRICS_FILE):
        if not (folder / name).is_file():
            raise AamUserError(f"--baseline {folder}: not a baseline folder (no {name}); {hint}")
        # the one reader of aam's JSON from a folder a user may have received: bounded, one line on damage
        files[name] = read_json(folder / name, "baseline file")
    info = files[BASELINE_FILE]
    if not isinstance(info, dict) or "kind" not in info:
        raise AamUserError(f"--baseline {folder}: {BASELINE_FILE} does not say which baseline it is; {hint}")
    return info, files[METRICS_FILE]


def leaderboard_row(folder: str | Path, metric: str, name: str | None = None) -> dict:
    """One leaderboard row for the baseline in `folder`, scored like trials ranked by `metric`."""
    info, metrics = read_baseline(folder)
    status = "baseline (fit on val)" if info.get("train_on_val") else "baseline"
    row = {"rank": None, "trial": name or default_name(info), "status": status, "epochs": None,
           f"best_{metric}": _number(metrics.get(metric)), "best_epoch": None}
    for key in SHOWN_METRICS:
        if key != metric:
            row[key] = _number(metrics.get(key))
    return row


def default_name(info: dict) -> str:
    return f"baseline:{SHORT_NAMES.get(info['kind'], info['kind'])}"


def with_baselines(board: pd.DataFrame, folders: list[Path], metric: str, trials_data: str | None = None):
    """The leaderboard with a row per baseline appended, and notes for the user.

    Two baselines of one kind are told apart by their folder names. A baseline fitted on
    another dataset (or split) than the trials is still shown, with a note: its scores may not compare.
    """
    if not folders:
        return board, []
    infos = [read_baseline(f)[0] for f in folders]
    names = [default_name(i) for i in infos]
    names = [f"{n}:{Path(f).name}" if names.count(n) > 1 else n for n, f in zip(names, folders)]
    rows = [leaderboard_row(f, metric, n) for f, n in zip(folders, names)]
    combined = pd.concat([board, pd.DataFrame(rows)], ignore_index=True) if len(board) else pd.DataFrame(rows)
    for column in INTEGER_COLUMNS:  # empty cells in a baseline row must not turn trial ranks into 1.0
        if column in combined:
            combined[column] = combined[column].astype("Int64")
    notes = []
    if trials_data:
        for name, info in zip(names, infos):
            if not same_dataset(info.get("data"), trials_data):
                notes.append(f"note: {name} was fit on {info.get('data')}, the trials on {trials_data}, which "
                             "differ in source files or split; their scores may not compare")
    return combined, notes


def same_dataset(a: str | None, b: str | None) -> bool:
    """One folder, or two conversions of the same files with the same split, targets and rarefaction."""
    if not a or not b:
        return False
    if Path(a).resolve() == Path(b).resolve():
        return True
    manifests = []
    for folder in (a, b):
        try:
            manifests.append(read_json(Path(folder) / "manifest.json", "dataset manifest"))
        except AamUserError:
            return False
    what = ("sources", "split", "targets", "rarefy", "n_samples", "n_asvs")
    return all(isinstance(m, dict) for m in manifests) and all(manifests[0].get(k) == manifests[1].get(k) for k in what)


def _number(value) -> float:
    return math.nan if value is None else float(value)
