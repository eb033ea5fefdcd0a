"""What one `fit` is given: the data every worker shares (`StaticData`) and the `Session` that
says where this worker's training rows come from, how it reports, and what it resumes from.

`Session` is the plain, single-process one; aam.distributed subclasses it for a Tune trial and a
Ray Train worker, so the same `fit` runs unchanged on every path.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from aam._files import work_folder
from aam.data.transforms import TargetTransform


@dataclass
class StaticData:
    """What every worker needs besides its shard of training rows (small; shipped once)."""

    tokens: np.ndarray
    token_width: int
    targets: list[str]
    categoricals: dict[str, list[str]]
    unifrac: np.ndarray | None
    transform: TargetTransform | None
    eval_rows: dict[str, pa.Table]  # "val", "test": whole splits, evaluated on rank 0
    calibration_rows: pa.Table  # a fixed sample of training rows to re-estimate BatchNorm statistics
    sample_lists: dict[str, list[str]]  # split -> sample ids, written beside the run
    n_train: int
    dataset_path: str = ""
    # with a frozen pretrained encoder: every ASV vector of the dataset, computed once and shared
    # by every epoch, worker and trial (see prepare.encode_asvs)
    asv_vectors: np.ndarray | None = None
    # and every sample's vector from the frozen sample encoder at `cache_token_limit` (a trial that
    # searches token_limit, or uses the perceiver fusion, falls back to the ASV vectors)
    sample_ids: list[str] = field(default_factory=list)
    sample_vectors: np.ndarray | None = None
    cache_token_limit: int = 0
    cache_min_abundance: float = 0.0
    # the sequence of every ASV of the dataset (its ASV index order) and the indices of those in
    # the training rows: the vocabulary of asv_identity
    asv_sequences: list[str] = field(default_factory=list)
    train_asv_idx: np.ndarray | None = None
    # with neighbor_prior: the training samples it searches (prepare.with_neighbor_reference)
    neighbor_reference: dict | None = None

    def asv_vocabulary(self) -> list[str]:
        return [self.asv_sequences[i] for i in self.train_asv_idx]


class Session:
    """The plain, single-process session: shuffles the training rows itself."""

    rank = 0
    world_size = 1
    verbose = True  # print a line per epoch (a Tune trial leaves that to the driver)

    def __init__(self, train_rows: pa.Table, seed: int, restore: dict | None = None, verbose: bool = True,
                 device: torch.device | None = None):
        self.train_rows = train_rows
        self.seed = seed
        self._restore = restore
        self.verbose = verbose
        self._device = device  # a fold of a cross-validated run trains where its parent run does
        self.reports: list[dict] = []
        self.last_checkpoint: Path | None = None

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def shard_size(self) -> int:
        return self.train_rows.num_rows

    def epoch_rows(self, epoch: int) -> pa.Table:
        """This worker's training rows for one epoch, in a fixed order."""
        return self.train_rows

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[pa.Table]:
        # the same seeded permutation on every path, so a run gives the same model in-process,
        # in a Tune trial and on one Ray Train worker (best-of retraining lands on the trial)
        rows = self.epoch_rows(epoch)
        order = np.random.default_rng([self.seed, epoch, self.rank]).permutation(rows.num_rows)
        for start in range(0, len(order), batch_size):
            yield rows.take(order[start : start + batch_size])

    def restore_state(self) -> dict | None:
        return self._restore

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is not None:
            if self.last_checkpoint is None:
                # a folder of its own, made only when a checkpoint is kept, and removed when the
                # process ends: the caller reads it after `fit` returns, never after exit
                self.last_checkpoint = work_folder("aam-ckpt-") / "latest"
            dest = self.last_checkpoint
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(checkpoint_dir, dest)

    def all_gather_embeddings(self, embeddings, rows, pad_to: int):
        """Every worker's sample embeddings and UniFrac rows for the UniFrac loss (None: this
        worker's batch is the whole batch, as here)."""
        return None
