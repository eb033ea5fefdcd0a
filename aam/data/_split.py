"""Train/val/test assignment: deterministic from the seed, optionally by whole groups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aam.errors import AamUserError

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or any(not np.isfinite(f) or f < 0 for f in values):
        raise AamUserError(f"split {list(fractions)} must be three fractions >= 0 (train/val/test), e.g. 0.8/0.1/0.1")
    if abs(sum(values) - 1.0) > 1e-6:
        raise AamUserError(f"split fractions {'/'.join(map(str, values))} sum to {sum(values):g}, not 1; fix --split")
    if values[0] <= 0:
        raise AamUserError("split gives no samples to train (first fraction is 0); fix --split")
    return values


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.8/0.1/0.1' (or commas) -> fractions, with a one-line error for anything else."""
    parts = [p.strip() for p in text.replace(",", "/").split("/")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise AamUserError(f"--split '{text}' is not three numbers like 0.8/0.1/0.1") from None
    if len(values) != 3:
        raise AamUserError(f"--split '{text}' has {len(values)} parts; give train/val/test like 0.8/0.1/0.1")
    return check_fractions(values)


def _bounds(fractions: Sequence[float], n: int) -> np.ndarray:
    return np.round(np.cumsum(fractions) * n).astype(np.int64)


def assign_split(
    sample_ids: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """One of train/val/test per sample (returned in the order of sample_ids).

    Independent of input order: samples (or groups) are sorted before the seeded shuffle.
    With groups, whole groups are shuffled and placed where their middle sample falls, so no
    group is on two sides; the first group always goes to train.
    """
    fractions = check_fractions(fractions)
    n = len(sample_ids)
    out = np.empty(n, dtype=object)
    rng = np.random.default_rng(seed)
    if groups is None:
        order = np.argsort(np.asarray(sample_ids, dtype=object), kind="stable")
        shuffled = order[rng.permutation(n)]
        b = _bounds(fractions, n)
        b[0] = max(b[0], 1)
        b = np.maximum.accumulate(b)
        for name, lo, hi in zip(SPLITS, [0, b[0], b[1]], [b[0], b[1], n]):
            out[shuffled[lo:hi]] = name
        return out.astype(str)

    groups = np.asarray(groups, dtype=object)
    names, inverse, sizes = np.unique(groups.astype(str), return_inverse=True, return_counts=True)
    targets = np.cumsum(fractions) * n
    placed = 0
    for k, g in enumerate(rng.permutation(len(names))):
        middle = placed + sizes[g] / 2
        which = 0 if k == 0 else min(int(np.searchsorted(targets, middle, side="right")), 2)
        out[inverse == g] = SPLITS[which]
        placed += sizes[g]
    return out.astype(str)
