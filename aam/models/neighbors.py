"""The neighbour prior: the mean target of a sample's k nearest training samples, blended into
the head's prediction by a gate that reads how near they are.

The mean is plain (`neighbor_weighting: uniform`) or weighted by softmax(-sharpness * distance)
with the sharpness learned per target (`softmax`): a fixed k must choose between one twin's
target (k = 1, best where twins exist) and a steadier mean (k = 8, best where none do, emp
temperature); the softmax makes that choice per sample, from how much nearer the nearest is.

Why: on tables where a test sample has a near twin in training (the same animal at another
age, the same site sampled twice), the k nearest training samples by Jaccard distance on shared
ASVs predict better than the forest (BENCHMARKS.md §9, "A nearest-neighbour bar"), and AAM's own
embedding does not place a sample beside its twins. The model carries its training samples (the
reference: their ASVs by sequence and their transformed targets), so a saved model predicts a
new table alone, as `aam baseline knn` cannot.

The gate is per target, `sigmoid(w . [d_1, d_mean] + b)` of the distance to the nearest and the
mean distance of the k: near twins -> the prior, no near sample -> the head. It starts at 0.5
(w = b = 0). A sample is never its own neighbour (matched by sample id), so a training sample's
prior is what a new sample's would be: its neighbours among the other training samples. Given
groups (`neighbor_leave_group_out` on a table converted with --group-by), a training sample's
neighbours leave out its whole group too, as a test sample's group is never in training; on the
two grouped dev splits that did not pay on val (BENCHMARKS.md §9, "Leave-group-out neighbours").
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

# what a distance is when no reference sample has the target (the gate then reads a far sample)
FAR = 1.0
# neighbor_weighting softmax: the starting sharpness. The median Jaccard gap between a test
# sample's nearest and 8th nearest training sample is 0.08-0.13 on the dev splits with twins
# (weights 2-4x apart at 10) and 0.02 where test's studies are new (near uniform); training moves
# it per target (to 12-22 on mouse_age, BENCHMARKS.md §9 "A prior weighted by nearness").
SHARPNESS = 10.0
WEIGHTINGS = ("uniform", "softmax")


def _copy(values, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of its own from a tensor, an array (read-only from Ray's object store) or a list."""
    return torch.as_tensor(values if torch.is_tensor(values) else np.array(values), dtype=dtype).clone()


class NeighborPrior(nn.Module):
    """`reference`: {"sequences": the reference ASVs' sequences, "sample_ids": one per reference
    sample, "offsets": Long [R + 1] and "indices": Long [nnz] (each sample's ASVs as rows of
    `sequences`, CSR), "targets": Float [R, T] on the transformed scale, NaN where missing, and
    "groups" (optional): one per reference sample on a grouped table}.

    The reference tensors are plain attributes, not buffers: the checkpoint carries them in its
    payload (`payload()`), DistributedDataParallel has no sparse buffers to broadcast, and each
    device gets its own copy on first use."""

    def __init__(self, reference: dict, k: int, n_targets: int, weighting: str = "uniform"):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"neighbour weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        self.k = int(k)
        self.weighting = weighting
        self.sequences = list(reference["sequences"])
        self.sample_ids = list(reference["sample_ids"])
        self.offsets = _copy(reference["offsets"], torch.int64)
        indices = _copy(reference["indices"], torch.int64)
        # a sparse CSR row must list its columns sorted; rows are stored most abundant first
        row = torch.repeat_interleave(torch.arange(len(self.offsets) - 1), self.offsets.diff())
        self.indices = indices[torch.argsort(row * (len(reference["sequences"]) + 1) + indices)]
        self.targets = _copy(reference["targets"], torch.float32).reshape(len(self.sample_ids), -1)
        if self.targets.shape[1] != n_targets:
            raise ValueError(f"neighbour reference has {self.targets.shape[1]} targets; the model has {n_targets}")
        self.groups = list(reference["groups"]) if reference.get("groups") is not None else None
        if self.groups is not None and len(self.groups) != len(self.sample_ids):
            raise ValueError(f"neighbour reference has {len(self.groups)} groups for {len(self.sample_ids)} samples")
        self._row_of_sample = {s: i for i, s in enumerate(self.sample_ids)}
        # what a reference sample may not be a neighbour of: its own group, else only itself
        self.group_of_row = (torch.arange(len(self.sample_ids)) if self.groups is None else
                             torch.as_tensor(np.unique(np.asarray(self.groups, dtype=str), return_inverse=True)[1],
                                             dtype=torch.int64).reshape(-1))
        self._vocabulary = {s: i for i, s in enumerate(self.sequences)}
        self.gate_weight = nn.Parameter(torch.zeros(n_targets, 2))
        self.gate_bias = nn.Parameter(torch.zeros(n_targets))
        # a parameter only where used, so a uniform model's state dict is what it always was
        self.log_sharpness = (nn.Parameter(torch.full((n_targets,), float(np.log(SHARPNESS))))
                              if weighting == "softmax" else None)
        self.table_rows: torch.Tensor | None = None  # the table's ASV index -> reference row (-1: none)
        self._on: dict[str, tuple] = {}

    def payload(self) -> dict:
        """The reference as the checkpoint stores it (tensors and lists of strings only)."""
        return {"sequences": self.sequences, "sample_ids": self.sample_ids, "offsets": self.offsets.clone(),
                "indices": self.indices.clone(), "targets": self.targets.clone(), "groups": self.groups}

    def index_table(self, sequences: list[str]) -> None:
        """Match a table's ASVs (its ASV index order) to the reference's, by sequence."""
        self.table_rows = torch.tensor([self._vocabulary.get(s, -1) for s in sequences] or [-1], dtype=torch.int64)
        self._on.clear()  # the device copies hold the previous table's rows

    def _reference(self, device: torch.device) -> tuple:
        key = str(device)
        if key not in self._on:
            n_ref, n_asvs = len(self.sample_ids), len(self.sequences)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": the product below is not
                warnings.simplefilter("ignore", UserWarning)
                presence = torch.sparse_csr_tensor(self.offsets, self.indices, torch.ones(len(self.indices)),
                                                   size=(n_ref, max(n_asvs, 1)), check_invariants=True).to(device)
            sizes = (self.offsets[1:] - self.offsets[:-1]).to(device=device, dtype=torch.float32)
            self._on[key] = (presence, sizes, self.targets.to(device), self.table_rows.to(device),
                             self.group_of_row.to(device))
        return self._on[key]

    def distances(self, batch: dict) -> torch.Tensor:
        """Jaccard distance [B, R] of every sample of the batch to every reference sample, by all
        of each sample's ASVs (`all_asvs`, whatever token_limit); inf from a reference sample to
        itself and, where the reference has groups (neighbor_leave_group_out), to its whole group."""
        if self.table_rows is None:
            raise RuntimeError("NeighborPrior.index_table was not called for this table")
        asvs, real = batch["all_asvs"], batch["all_shares"] > 0
        device = asvs.device
        presence, sizes, _, table_rows, group_of_row = self._reference(device)
        rows = table_rows[asvs]
        known = real & (rows >= 0)
        mine = torch.zeros(asvs.shape[0], presence.shape[1], device=device)
        sample = torch.arange(asvs.shape[0], device=device)[:, None].expand_as(asvs)
        mine[sample[known], rows[known]] = 1.0
        with torch.autocast(device.type, enabled=False):  # sparse products are float32 only
            shared = (presence @ mine.T).T  # [B, R]
        union = real.sum(dim=1, dtype=torch.float32)[:, None] + sizes[None, :] - shared
        distance = 1.0 - shared / union.clamp(min=1.0)
        own = [self._row_of_sample.get(s, -1) for s in batch["sample_ids"]]
        if any(row >= 0 for row in own):
            own = torch.tensor(own, device=device)
            own_group = torch.where(own >= 0, group_of_row[own.clamp(min=0)], -1)
            excluded = (group_of_row[None, :] == own_group[:, None]) & (own_group[:, None] >= 0)
            distance = distance.masked_fill(excluded, float("inf"))
        return distance

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prior [B, T], gate [B, T], known [B, T]): the mean transformed target of the k nearest
        reference samples that have it (weighted by nearness with `weighting` softmax), the gate,
        and whether any reference sample has it."""
        distance = self.distances(batch)
        targets = self._reference(distance.device)[2]
        k = min(self.k, distance.shape[1])
        priors, features, known = [], [], []
        for t in range(targets.shape[1]):
            has = ~torch.isnan(targets[:, t])
            d = distance.masked_fill(~has[None, :], float("inf"))
            nearest, at = d.topk(k, dim=1, largest=False)
            ok = torch.isfinite(nearest)
            values = torch.where(ok, targets[at, t], torch.zeros_like(nearest))
            count = ok.sum(dim=1)
            if self.log_sharpness is None:
                weights = ok / count.clamp(min=1)[:, None]
            else:  # the nearest weigh most, by as much as their distances differ; none known: all 0
                # inf distances (too few reference samples have the target) must not reach the
                # product: 0 * inf in its backward would make the sharpness's gradient NaN
                logits = (-self.log_sharpness[t].exp() * torch.where(ok, nearest, 0.0)).masked_fill(~ok, float("-inf"))
                weights = torch.where(ok, torch.softmax(logits.masked_fill(~ok.any(1, keepdim=True), 0.0), dim=1), 0.0)
            priors.append((weights * values).sum(dim=1))
            near = torch.where(ok, nearest, torch.full_like(nearest, FAR))
            features.append(torch.stack([near[:, 0], near.mean(dim=1)], dim=1))
            known.append(count > 0)
        prior, known = torch.stack(priors, dim=1), torch.stack(known, dim=1)
        gate = torch.sigmoid((torch.stack(features, dim=1) * self.gate_weight).sum(-1) + self.gate_bias)
        return prior, gate * known, known

    def blend(self, raw: torch.Tensor, point: torch.Tensor, batch: dict, slices: list[slice]) -> tuple:
        """The head's outputs `raw` [B, n_outputs] (point predictions `point` [B, T]) moved toward
        the prior: each target's outputs shifted by gate * (prior - point), so a quantile target
        keeps its spread and its median becomes the gated mix. Returns (raw, gate)."""
        prior, gate, _ = self(batch)
        shift = gate * (prior.to(point.dtype) - point)
        moved = torch.cat([raw[:, s] + shift[:, t : t + 1] for t, s in enumerate(slices)], dim=1)
        return moved, gate
