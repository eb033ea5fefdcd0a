"""Per-epoch augmentation of training rows: new draws of the same samples, made the way count
tables vary in the lab.

A table of ~2,000 samples is memorised within a few epochs (val MAE bottoms out at epoch 2-4 while
the training loss keeps falling), since the model sees the same reads of the same samples every
epoch. Each function here returns rows in the stored layout (ASVs most-abundant first, `depth` the
sum of the kept reads), so the collate, token_limit and the model read them as any other rows:

- `rarefy_rows`: the sample's reads drawn again without replacement at a lower depth, as
  rarefying does; rare ASVs come and go as they do between two sequencing runs of one sample.
- `drop_asvs`: a random share of the sample's ASVs left out (at least one kept).
- `mix_rows`: each sample mixed with another (mixup): read shares and targets by one weight.

Augmented rows carry `~aug` on their sample ID, so no cache keyed by sample (the frozen encoder's
sample vectors) stands in for the original sample's vector.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

AUGMENTED = "~aug"


def augment_rows(rows: pa.Table, rng: np.random.Generator, *, rarefy: float = 0.0, drop: float = 0.0,
                 mixup: float = 0.0) -> pa.Table:
    """`rows` with every augmentation whose strength is above 0 applied, in the order listed above."""
    if rarefy <= 0 and drop <= 0 and mixup <= 0:
        return rows
    samples = _unpack(rows)
    if rarefy > 0:
        samples = [rarefy_sample(asvs, counts, rng, rarefy) for asvs, counts in samples]
    if drop > 0:
        samples = [drop_asvs(asvs, counts, rng, drop) for asvs, counts in samples]
    rows = _pack(rows, samples)
    if mixup > 0 and rows.num_rows > 1:
        rows = mix_rows(rows, rng, mixup)
    ids = [s if s.endswith(AUGMENTED) else s + AUGMENTED for s in rows.column("sample_id").to_pylist()]
    return rows.set_column(rows.schema.get_field_index("sample_id"), "sample_id", pa.array(ids, pa.string()))


def rarefy_sample(asvs: np.ndarray, counts: np.ndarray, rng: np.random.Generator, share: float):
    """The sample's reads drawn without replacement at a depth uniform in [(1 - share) * depth, depth]."""
    reads = np.rint(counts).astype(np.int64)
    depth = int(reads.sum())
    if depth <= 1:
        return asvs, counts
    keep = int(rng.integers(max(int(np.ceil((1.0 - share) * depth)), 1), depth + 1))
    drawn = rng.multivariate_hypergeometric(reads, keep, method="marginals" if depth > 10**6 else "count")
    present = drawn > 0
    return asvs[present], drawn[present].astype(counts.dtype)


def drop_asvs(asvs: np.ndarray, counts: np.ndarray, rng: np.random.Generator, share: float):
    """The sample without a random `share` of its ASVs (each left out with that probability)."""
    if len(asvs) <= 1:
        return asvs, counts
    keep = rng.random(len(asvs)) >= share
    if not keep.any():
        keep[rng.integers(len(asvs))] = True
    return asvs[keep], counts[keep]


def mix_rows(rows: pa.Table, rng: np.random.Generator, alpha: float) -> pa.Table:
    """Every row mixed with a random other row of `rows`: weight w ~ Beta(alpha, alpha) on the row,
    1 - w on its partner. Read shares mix, at the depth they mix to; targets mix on their original
    scale (NaN where either is missing); categories and the UniFrac row (-1: no known distance) come
    from the side with the larger weight."""
    n = rows.num_rows
    partner = (np.arange(n) + rng.integers(1, n, size=n)) % n
    weight = rng.beta(alpha, alpha, size=n)
    samples = _unpack(rows)
    mixed = []
    for i, (j, w) in enumerate(zip(partner, weight)):
        (a_asvs, a_counts), (b_asvs, b_counts) = samples[i], samples[j]
        depth = w * a_counts.sum() + (1 - w) * b_counts.sum()
        shares = np.concatenate([w * a_counts / max(a_counts.sum(), 1e-9),
                                 (1 - w) * b_counts / max(b_counts.sum(), 1e-9)])
        asvs, inverse = np.unique(np.concatenate([a_asvs, b_asvs]), return_inverse=True)
        counts = np.bincount(inverse, weights=shares * depth, minlength=len(asvs)).astype(a_counts.dtype)
        mixed.append((asvs.astype(a_asvs.dtype), counts))
    out = _pack(rows, mixed)
    for name in out.column_names:
        if name.startswith("target."):
            values = out.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            out = _set(out, name, pa.array(weight * values + (1 - weight) * values[partner], pa.float64()))
    side = np.where(weight >= 0.5, np.arange(n), partner)
    for name in out.column_names:
        if name.startswith("cat."):
            out = _set(out, name, out.column(name).take(pa.array(side)))
    if "unifrac_row" in out.column_names:
        out = _set(out, "unifrac_row", pa.array(np.full(n, -1, np.int32)))
    return out


def _unpack(rows: pa.Table) -> list[tuple[np.ndarray, np.ndarray]]:
    asvs = rows.column("asv_idx").to_pylist()
    counts = rows.column("counts").to_pylist()
    return [(np.asarray(a, np.int32), np.asarray(c, np.float32)) for a, c in zip(asvs, counts)]


def _pack(rows: pa.Table, samples: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """`rows` with new ASV lists and counts, each sample sorted most-abundant first (ties by ASV
    index, as `aam convert` stores them), and `depth` the sum of its reads."""
    ordered = []
    for asvs, counts in samples:
        order = np.lexsort((asvs, -counts))
        ordered.append((asvs[order], counts[order]))
    schema = rows.schema
    out = _set(rows, "asv_idx", pa.array([a for a, _ in ordered], schema.field("asv_idx").type))
    out = _set(out, "counts", pa.array([c for _, c in ordered], schema.field("counts").type))
    if "depth" in out.column_names:
        depth = [int(round(float(c.sum()))) for _, c in ordered]
        out = _set(out, "depth", pa.array(depth, schema.field("depth").type))
    return out


def _set(rows: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return rows.set_column(rows.schema.get_field_index(name), name, values)
