"""Dataset folder + run config -> what the training loop needs (`StaticData`, training rows).

Checks that the config fits the dataset before any worker starts, so a wrong target name is
one line from the CLI, not a traceback from a Ray worker.
"""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np
import pyarrow as pa

from aam.config import RunConfig
from aam.data.collate import raw_targets
from aam.data.dataset import Dataset
from aam.data.transforms import TargetTransform
from aam.errors import AamUserError
from aam.training.loop import StaticData


def resolve_targets(cfg: RunConfig, dataset: Dataset) -> list[str]:
    if not cfg.targets:
        return list(dataset.targets)
    for name in cfg.targets:
        if name not in dataset.targets:
            close = difflib.get_close_matches(name, dataset.targets, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            have = ", ".join(dataset.targets) or "none: convert again with --target"
            raise AamUserError(f"targets: '{name}' is not a target of {dataset.path}{hint}; it has {have}")
    return list(cfg.targets)


def load_static(cfg: RunConfig) -> tuple[StaticData, pa.Table]:
    if not cfg.data:
        raise AamUserError("data: no dataset folder given; pass --data DATASET_DIR (made by `aam convert`)")
    dataset = Dataset.open(cfg.data)
    targets = resolve_targets(cfg, dataset)
    splits = {name: dataset.split(name) for name in ("train", "val", "test")}
    if splits["train"].num_rows < 2:
        raise AamUserError(f"{dataset.path}: the train split has {splits['train'].num_rows} samples; need at least 2")
    train_rows = splits["train"]
    if cfg.train_on_val:
        train_rows = pa.concat_tables([splits["train"], splits["val"]])
    transform = None
    if targets:
        transform = TargetTransform.fit(cfg.target_transform, targets, raw_targets(train_rows, targets))
    static = StaticData(
        tokens=dataset.tokens,
        token_width=int(dataset.token_width),
        targets=targets,
        categoricals={k: list(v) for k, v in dataset.categoricals.items()},
        unifrac=None if dataset.unifrac is None else np.asarray(dataset.unifrac, dtype=np.float32),
        transform=transform,
        eval_rows={"val": splits["val"], "test": splits["test"]},
        calibration_rows=_calibration_rows(train_rows, cfg.seed),
        sample_lists={k: v.column("sample_id").to_pylist() for k, v in splits.items()},
        n_train=train_rows.num_rows,
        dataset_path=str(dataset.path),
    )
    return static, train_rows


def refit_transform(cfg: RunConfig, static: StaticData, train_rows: pa.Table) -> StaticData:
    """The same data with the target transform `cfg` asks for (a search may vary it per trial)."""
    if not static.targets or static.transform.kind == cfg.target_transform:
        return static
    transform = TargetTransform.fit(cfg.target_transform, static.targets, raw_targets(train_rows, static.targets))
    return dataclasses.replace(static, transform=transform)


CALIBRATION_SAMPLES = 256


def _calibration_rows(train_rows: pa.Table, seed: int) -> pa.Table:
    """A fixed random subset of the training rows for BatchNorm recalibration (see loop)."""
    n = min(CALIBRATION_SAMPLES, train_rows.num_rows)
    pick = np.sort(np.random.default_rng(seed).choice(train_rows.num_rows, size=n, replace=False))
    return train_rows.take(pick)
