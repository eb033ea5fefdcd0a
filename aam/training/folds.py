"""Cross-validation (`folds: K`): K models, each trained on all but one fold of train+val, never
on test.

Why: a model chosen on one small val split is chosen on noise a table's structure can rig (a
val split that happens to hold one person's samples), while K folds score every non-test sample
once, out of fold. The K models are also a bagged ensemble: each saw a different ~(K-1)/K of the
data, and their mean predicts test.

The K runs advance in lockstep, an epoch of each at a time, so the session reports one
out-of-fold score per epoch (what ASHA and early stopping read) from a single `fit`, in-process,
in a Tune trial or on Ray Train workers alike. With W Ray Train workers (W <= K) the folds run in
parallel: worker r trains folds r, r+W, ... on all of train+val (the dataset is not sharded), and
after each epoch sends its folds' changed files and scores to rank 0, which writes the folder and
reports. Each fold draws from its own RNG stream, so the K models are the same on 1 or W workers.
A grouped dataset (`aam convert --group-by`) folds by its groups, as its split did, so no group
is on both sides of a fold.

The folder is an ensemble folder (aam.training.ensemble) whose members are the fold models with
equal weights, so `aam predict`, `aam runs` and `aam ensemble` read it like any other:
`folds/<k>/` (each fold's run folder), `val_predictions.tsv` (out of fold: every train and val
sample, predicted by the model that never saw it), `test_predictions.tsv` (the mean of the K
models), `metrics.json`, `ensemble.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from aam._files import atomic_write
from aam.config import RunConfig
from aam.data.dataset import GROUP_COLUMN
from aam.errors import AamUserError
from aam.training.session import StaticData

FOLDS_DIR = "folds"


def fold_assignments(rows: pa.Table, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of every row: whole groups when the rows carry a group column, each fold
    about the same size either way; the same for the same rows and seed in any order."""
    names, inverse, sizes = np.unique(_fold_keys(rows), return_inverse=True, return_counts=True)
    if len(names) < k:
        what = "groups" if GROUP_COLUMN in rows.column_names else "samples"
        raise AamUserError(f"folds={k}: train+val holds only {len(names)} {what}; use folds={max(len(names), 2)} "
                           "or fewer")
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of_name = np.empty(len(names), dtype=np.int64)
    filled = np.zeros(k)
    # largest groups first, each to the emptiest fold: folds of near-equal size even with uneven groups
    for name in sorted(order, key=lambda i: -sizes[i]):
        fold = int(np.argmin(filled))
        fold_of_name[name] = fold
        filled[fold] += sizes[name]
    return fold_of_name[inverse]


def group_count(rows: pa.Table) -> int:
    """How many units `fold_assignments` keeps whole: groups where the rows carry them, else samples."""
    return len(np.unique(_fold_keys(rows)))


def _fold_keys(rows: pa.Table) -> np.ndarray:
    column = GROUP_COLUMN if GROUP_COLUMN in rows.column_names else "sample_id"
    return np.asarray([str(g) for g in rows.column(column).to_pylist()], dtype=str)


def fold_static(cfg: RunConfig, static: StaticData, train: pa.Table, held_out: pa.Table) -> StaticData:
    """`static` for one fold: its held-out rows are the val split, its target transform, BatchNorm
    calibration rows, ASV identity vocabulary and neighbour reference come from its own training
    rows only."""
    from aam.training.prepare import calibration_rows, fit_transform, with_neighbor_reference

    return with_neighbor_reference(cfg, dataclasses.replace(
        static,
        transform=fit_transform(cfg, static.targets, train),
        eval_rows={"val": held_out, "test": static.eval_rows["test"]},
        calibration_rows=calibration_rows(train, cfg.seed),
        sample_lists={"train": train.column("sample_id").to_pylist(),
                      "val": held_out.column("sample_id").to_pylist(),
                      "test": static.sample_lists["test"]},
        n_train=train.num_rows,
        train_asv_idx=np.unique(train.column("asv_idx").combine_chunks().flatten().to_numpy()),
    ), train)


def split_folds(rows: pa.Table, cfg: RunConfig) -> list[tuple[pa.Table, pa.Table]]:
    """(training rows, held-out rows) of each fold of `rows` (every non-test row)."""
    fold = fold_assignments(rows, cfg.folds, cfg.seed)
    return [(rows.filter(pa.array(fold != k)), rows.filter(pa.array(fold == k))) for k in range(cfg.folds)]


def folds_of_rank(folds: int, rank: int, world_size: int) -> list[int]:
    """The folds worker `rank` of `world_size` trains: every world_size-th, from its rank."""
    return list(range(rank, folds, world_size))


@dataclass(frozen=True)
class FoldScore:
    """What rank 0 needs of one fold after an epoch to report the folds as one run."""

    fold: int
    n_held_out: int
    latest: dict  # the fold's metrics of its last trained epoch
    best_epoch: int
    live: bool  # still training (not stopped by its patience)
    rank: int  # the worker that trains it


def share_fold_scores(mine: list[FoldScore], rank: int, world_size: int) -> list[FoldScore]:
    """Every worker's fold scores on every worker (all of them need to know when to stop), by fold."""
    import torch.distributed

    if world_size == 1:
        return sorted(mine, key=lambda s: s.fold)
    everyone: list = [None] * world_size
    torch.distributed.all_gather_object(everyone, mine)
    return sorted((s for scores in everyone for s in scores), key=lambda s: s.fold)


class FoldFiles:
    """Brings the fold folders that other workers train into rank 0's run folder, each epoch only
    the files that changed since the last (a fold that stopped sends nothing)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.sent: dict[Path, tuple[int, int]] = {}

    def gather(self, folders: dict[int, Path], dest: Path) -> None:
        """Rank 0: write every other worker's changed files of its `folders` (fold -> folder) into
        `dest/folds/<fold>`."""
        import torch.distributed

        from aam.training.resume import unpack_files

        if self.world_size == 1:
            return
        changed: dict[int, dict[str, bytes]] = {}
        if self.rank != 0:
            for fold, folder in folders.items():
                for path in sorted(folder.rglob("*")):
                    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None
                    if stamp is not None and self.sent.get(path) != stamp:
                        changed.setdefault(fold, {})[str(path.relative_to(folder))] = path.read_bytes()
                        self.sent[path] = stamp
        received: list | None = [None] * self.world_size if self.rank == 0 else None
        # pickled between this run's own workers, never a file from elsewhere
        torch.distributed.gather_object(changed, received, dst=0)
        for files_by_fold in received or []:
            for fold, files in files_by_fold.items():
                unpack_files(files, dest / FOLDS_DIR / str(fold))


def read_predictions(path: Path, targets: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype={"sample_id": str})
    return frame[["sample_id", *[f"{t}_{kind}" for t in targets for kind in ("actual", "predicted")]]]


def write_cv_folder(folder: Path, cfg: RunConfig, static: StaticData, fold_names: list[str]) -> dict:
    """The folder's own files from its folds' (`folder/folds/<k>`) best-epoch predictions: out of
    fold for val, the folds' mean for test (when they have scored it); returns their metrics."""
    from aam.training import artifacts
    from aam.training.ensemble import ENSEMBLE_FILE, FORMAT, mean_mae
    from aam.training.metrics import regression_metrics

    targets = static.targets
    folds = [folder / FOLDS_DIR / name for name in fold_names]
    predicted = [t + "_predicted" for t in targets]
    actual = [t + "_actual" for t in targets]
    oof = pd.concat([read_predictions(f / "val_predictions.tsv", targets) for f in folds], ignore_index=True)
    metrics = {f"val_{k}": v for k, v in regression_metrics(oof[actual].to_numpy(float), oof[predicted].to_numpy(float),
                                                             targets).items()}
    artifacts.write_tsv(oof, folder / "val_predictions.tsv")
    if all((f / "test_predictions.tsv").is_file() for f in folds):
        tests = [read_predictions(f / "test_predictions.tsv", targets) for f in folds]
        mean = tests[0].copy()
        mean[predicted] = np.mean([t[predicted].to_numpy(float) for t in tests], axis=0)
        scores = regression_metrics(mean[actual].to_numpy(float), mean[predicted].to_numpy(float), targets)
        metrics.update({f"test_{k}": v for k, v in scores.items()})
        artifacts.write_tsv(mean, folder / "test_predictions.tsv")
        fig = artifacts.predicted_vs_actual_figure(targets, mean[actual].to_numpy(float),
                                                   mean[predicted].to_numpy(float), f"test, mean of {len(folds)} folds")
        fig.savefig(folder / "pred_vs_actual.png", dpi=100)
    members = []
    for name, f in zip(fold_names, folds):
        held_out = read_predictions(f / "val_predictions.tsv", targets)
        members.append({"name": f"fold_{name}", "kind": "model", "source": f"{FOLDS_DIR}/{name}",
                        "weight": 1.0 / len(folds), "model": f"{FOLDS_DIR}/{name}/model.pt",
                        "val_mae": mean_mae(held_out[actual].to_numpy(float), held_out[predicted].to_numpy(float))})
    info = {"format": FORMAT, "targets": targets, "data": cfg.data, "selected_on": "out-of-fold", "folds": len(folds),
            "rounds": 0, "val_curve": [], "candidates": [m["name"] for m in members], "includes_forest": False,
            "members": members}
    atomic_write(folder / ENSEMBLE_FILE, json.dumps(info, indent=1))
    return metrics
