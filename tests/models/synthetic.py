"""Tiny synthetic microbiomes for learning tests: each test builds a target that only one model
option can explain, trains the real model with the real losses for a few hundred full-batch
steps (seeded, ~1-3 s), and scores held-out samples.

Every sample holds the same ASV pool, or a random part of it; counts are drawn per sample. The
targets are built from three signals a test can combine:
    presence   +1 / -1: whether marker ASV 0 is in the sample (the model sees it in the ASV set)
    abundance  standardised log count of ASV 1, which every sample holds (counts only)
    share      standardised log of that ASV's share of all its sample's reads; with `unseen_reads`
               each sample also holds reads of ASVs outside its slots (as beyond token_limit):
               in the sample's depth, never in its counts
    category   a categorical column with two categories (codes 1, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aam.config import RunConfig
from aam.models import AAM
from aam.training.losses import total_loss
from aam.training.optim import make_optimizer, warmup_cosine

N_ASVS, SEQ_LEN, SLOTS = 10, 12, 6


@dataclass
class World:
    batch: dict  # the model batch of every sample
    presence: np.ndarray  # [N] +1 / -1
    abundance: np.ndarray  # [N] standardised log1p(count of ASV 1)
    share: np.ndarray  # [N] standardised log(ASV 1's share of the sample's depth)
    category: np.ndarray  # [N] codes 1 or 2
    n_train: int

    def split(self, targets: np.ndarray) -> tuple[dict, dict]:
        """(train batch, test batch) with these targets [N] or [N, T]."""
        targets = torch.as_tensor(np.asarray(targets, dtype=np.float32).reshape(len(self.presence), -1))
        full = {**self.batch, "targets": targets}
        cut = self.n_train
        take = lambda sl: {k: (v[sl] if k != "tokens" else v) for k, v in full.items()}  # noqa: E731
        return take(slice(0, cut)), take(slice(cut, None))


def make_world(n_samples: int = 192, n_train: int = 128, seed: int = 0, same_asvs: bool = False,
               unseen_reads: bool = False) -> World:
    rng = np.random.default_rng(seed)
    tokens = torch.as_tensor(rng.integers(1, 5, size=(N_ASVS, SEQ_LEN)))
    asv_index = np.zeros((n_samples, SLOTS), dtype=np.int64)
    counts = np.zeros((n_samples, SLOTS), dtype=np.float32)
    presence = np.where(rng.random(n_samples) < 0.5, 1.0, -1.0)
    for i in range(n_samples):
        if same_asvs:
            chosen = np.arange(1, SLOTS + 1)
        else:
            others = rng.choice(np.arange(2, N_ASVS), size=SLOTS - 2, replace=False)
            chosen = np.concatenate([[0] if presence[i] > 0 else [N_ASVS - 1], [1], others])
        asv_index[i] = chosen
        counts[i] = rng.integers(5, 2000, size=SLOTS)
    if same_asvs:
        presence[:] = 1.0
    marker = counts[:, 1] if not same_asvs else counts[:, 0]
    log_abundance = np.log1p(marker)
    abundance = (log_abundance - log_abundance.mean()) / log_abundance.std()
    depth = counts.sum(axis=1)
    if unseen_reads:  # up to 20x the reads in the slots again
        depth = depth * (1.0 + np.exp(rng.uniform(np.log(0.05), np.log(20.0), size=n_samples)))
    log_share = np.log(marker / depth)
    share = (log_share - log_share.mean()) / log_share.std()
    category = rng.integers(1, 3, size=n_samples)
    batch = {
        "tokens": tokens,
        "asv_index": torch.as_tensor(asv_index),
        "asv_mask": torch.ones(n_samples, SLOTS, dtype=torch.bool),
        "counts": torch.as_tensor(counts),
        "depth": torch.as_tensor(depth.astype(np.float32)),
        "unifrac_row": torch.full((n_samples,), -1),
        "categoricals": torch.as_tensor(category[:, None]),
    }
    return World(batch, presence, abundance, share, category, n_train)


def learn_cfg(**changes) -> RunConfig:
    """A small model with only the target loss on (so the option under test is all that differs)."""
    base = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, ff_mult=2, dropout=0.0, head_dropout=0.0,
                nucleotide_patch=4, mask_prob=0.0, count_head=False, unifrac_weight=0.0, nucleotide_weight=0.0,
                count_weight=0.0, lr=1e-2, weight_decay=0.0, count_embed="off")
    return RunConfig().replace(**{**base, **changes})


def train_and_predict(cfg: RunConfig, train: dict, test: dict, steps: int = 200, targets=("y",),
                      seed: int = 0) -> tuple[AAM, dict]:
    """Full-batch AdamW with the loop's warm-up + cosine schedule on `train`; returns the model
    and its eval-mode outputs on `test`."""
    torch.manual_seed(seed)
    model = AAM(cfg, list(targets), SEQ_LEN, {"group": ["a", "b"]})
    optimizer = make_optimizer(model, cfg)
    schedule = warmup_cosine(optimizer, steps, cfg.warmup_frac)
    model.train()
    for _ in range(steps):
        loss, _ = total_loss(model(train), train, cfg, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        return model, model(test)


def r2(predicted, actual) -> float:
    predicted, actual = np.asarray(predicted, dtype=float).ravel(), np.asarray(actual, dtype=float).ravel()
    return 1.0 - float(((predicted - actual) ** 2).sum() / ((actual - actual.mean()) ** 2).sum())

