"""Rows of `samples.parquet` -> one model batch.

The same function serves the plain in-process loader, every Ray Train worker and `aam predict`,
so the model always sees counts, padding and token widths made the same way.

Speed: samples are padded to the batch's own longest sample (not to `token_limit`), and each
distinct ASV of the batch appears once in `tokens` (samples share most ASVs); `asv_index`
scatters the encoded vectors back to the samples.

Shape buckets (`BatchSpec.shape_buckets`, on where the batches go to a GPU): the three sizes that
vary from batch to batch (distinct-ASV rows, nucleotide positions, ASV slots per sample) are
rounded up to a short ladder of sizes (`bucket_size`), the extra rows, positions and slots being
padding exactly like the padding already there (PAD tokens, asv_mask False, count 0). A GPU
attention kernel (cuDNN's) builds a plan per new shape and `torch.compile` a graph per shape: on
a ladder the shapes repeat after a few batches. On CPU nothing is planned per shape, and the
padding would only add work, so there it stays off. The model reads `batch["bucketed_from"]` (the
sizes before rounding) so its random masking draws the same numbers either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from aam.data.transforms import TargetTransform


@dataclass
class BatchSpec:
    """What the collate needs besides the rows: fixed for a run."""

    tokens: np.ndarray  # uint8 [n_asvs, token_width] of the table the rows index into
    targets: list[str]
    categoricals: list[str]
    token_limit: int
    transform: TargetTransform | None
    # reference paths, off by default (benchmarks/ compares them with the fast ones)
    pad_to_limit: bool = False  # pad every sample to token_limit, not to the batch's longest
    dedupe: bool = True  # False: one `tokens` row per ASV slot, shared ASVs encoded again
    quantile_targets: list[int] | None = None  # set by evaluation to undo the transform of quantiles
    min_abundance: float = 0.0  # leave out ASVs below this share of their sample's reads
    all_asvs: bool = False  # also list every ASV of each sample with its share of the reads (abundance_bag)
    shape_buckets: bool = False  # round the varying sizes up to `bucket_size` (see the module docstring)


def bucket_size(n: int) -> int:
    """`n` rounded up on a ladder: multiples of 8 up to 64, then four sizes per doubling
    (64, 80, 96, 112, 128, 160, 192, 224, 256, 320, ...), so at most 25% of a size is padding
    and a range of sizes 16..2048 maps to ~25 shapes."""
    n = max(int(n), 1)
    if n <= 64:
        return -(-n // 8) * 8
    step = 2 ** ((n - 1).bit_length() - 3)  # a quarter of the power of two below n
    return -(-n // step) * step


def list_column(rows: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and flat values of a list column, whatever its chunking."""
    col = rows.column(name).combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values[offsets[0] : offsets[-1]]


def collate(rows: pa.Table, spec: BatchSpec) -> dict:
    """A pyarrow Table of sample rows -> the model's batch dict (see aam.models.model).

    `spec.pad_to_limit` and `spec.dedupe=False` switch on the slow reference paths (every sample
    padded to `token_limit` and full-width tokens; one `tokens` row per ASV slot). The model
    gives the same outputs on every path; benchmarks/ measures what the fast one saves.
    """
    n = rows.num_rows
    idx_off, idx_flat = list_column(rows, "asv_idx")
    cnt_off, cnt_flat = list_column(rows, "counts")
    depth = _depth(rows, cnt_off, cnt_flat)
    lengths = _kept_lengths(idx_off, cnt_off, cnt_flat, depth, spec)
    if spec.pad_to_limit:
        width = max(int(spec.token_limit), 1)
    else:
        width = max(int(lengths.max()) if n else 1, 1)
    real_width = width
    if spec.shape_buckets and not spec.pad_to_limit:
        width = min(bucket_size(width), max(int(spec.token_limit), width))

    slot = np.arange(width)
    asv_mask = slot[None, :] < lengths[:, None]
    gather = np.where(asv_mask, idx_off[:-1, None] + slot[None, :], 0)
    # rows are stored most-abundant first, so the first `token_limit` slots are the ones kept
    slot_asv = np.where(asv_mask, idx_flat[gather] if idx_flat.size else 0, 0)
    slot_counts = np.where(asv_mask, cnt_flat[gather] if cnt_flat.size else 0, 0).astype(np.float32)
    tokens, rows_of_tokens, asv_index = _distinct_tokens(slot_asv, asv_mask, spec)
    real_rows, real_length = tokens.shape
    if spec.shape_buckets:
        tokens, rows_of_tokens = _bucketed_tokens(tokens, rows_of_tokens, spec)

    batch = {
        "tokens": torch.from_numpy(tokens.astype(np.int64)),
        # the dataset's ASV index of each `tokens` row: where a frozen encoder's cached vectors are
        "asv_ids": torch.from_numpy(rows_of_tokens.astype(np.int64)),
        "asv_index": torch.from_numpy(asv_index),
        "asv_mask": torch.from_numpy(asv_mask),
        "counts": torch.from_numpy(slot_counts),
        # reads of the whole sample, not only of the slots kept under token_limit
        "depth": torch.from_numpy(depth),
        "targets": torch.from_numpy(_targets(rows, spec).astype(np.float32)),
        "categoricals": torch.from_numpy(_categoricals(rows, spec)),
        "unifrac_row": torch.from_numpy(
            rows.column("unifrac_row").to_numpy().astype(np.int64)
            if "unifrac_row" in rows.column_names
            else np.full(n, -1, dtype=np.int64)
        ),
        "sample_ids": rows.column("sample_id").to_pylist(),
    }
    if spec.all_asvs:
        batch.update(_all_asvs(idx_off, idx_flat, cnt_flat, depth))
    if spec.shape_buckets:
        batch["bucketed_from"] = {"asv_rows": real_rows, "token_length": real_length, "slots": real_width}
    return batch


def _kept_lengths(idx_off: np.ndarray, cnt_off: np.ndarray, cnt_flat: np.ndarray, depth: np.ndarray,
                  spec: BatchSpec) -> np.ndarray:
    """How many ASVs of each sample the batch keeps: at most `token_limit`, none below `min_abundance`."""
    n = len(idx_off) - 1
    lengths = np.minimum(np.diff(idx_off), spec.token_limit)
    if spec.min_abundance > 0 and cnt_flat.size:
        # counts are stored most-abundant first, so the ASVs above the floor are a prefix of the row
        sample_of_count = np.repeat(np.arange(n), np.diff(cnt_off))
        above = cnt_flat >= spec.min_abundance * depth[sample_of_count]
        lengths = np.minimum(lengths, np.bincount(sample_of_count, weights=above, minlength=n).astype(np.int64))
    return lengths


def _distinct_tokens(slot_asv: np.ndarray, asv_mask: np.ndarray, spec: BatchSpec):
    """The `tokens` rows of the batch (each distinct ASV once, or every slot on the reference
    path), the dataset's ASV index of each row, and each slot's row (`asv_index`)."""
    if spec.dedupe:
        rows_of_tokens, inverse = np.unique(slot_asv[asv_mask], return_inverse=True)
    else:  # reference path: every real slot gets its own row, shared ASVs repeated
        rows_of_tokens = slot_asv[asv_mask]
        inverse = np.arange(rows_of_tokens.size)
    asv_index = np.zeros(asv_mask.shape, dtype=np.int64)
    asv_index[asv_mask] = inverse
    if rows_of_tokens.size:
        tokens = spec.tokens[rows_of_tokens]
    else:
        tokens = np.zeros((1, spec.tokens.shape[1]), np.uint8)
        rows_of_tokens = np.zeros(1, dtype=np.int64)
    if not spec.pad_to_limit:
        # trim columns that are padding for every distinct ASV of this batch
        used = np.flatnonzero(tokens.any(axis=0))
        tokens = tokens[:, : (used[-1] + 1 if used.size else 1)]
    return tokens, rows_of_tokens, asv_index


def _bucketed_tokens(tokens: np.ndarray, rows_of_tokens: np.ndarray, spec: BatchSpec):
    """`tokens` grown to bucket sizes: padding rows (all PAD, never pointed at by asv_index) and PAD
    positions; never wider than the dataset's token width, which the position embedding is sized for."""
    real_rows, real_length = tokens.shape
    length = real_length if spec.pad_to_limit else min(bucket_size(real_length), spec.tokens.shape[1])
    padded = np.zeros((bucket_size(real_rows), max(length, real_length)), np.uint8)
    padded[:real_rows, :real_length] = tokens
    rows_of_tokens = np.concatenate([rows_of_tokens, np.zeros(len(padded) - real_rows, rows_of_tokens.dtype)])
    return padded, rows_of_tokens


def _all_asvs(idx_off: np.ndarray, idx_flat: np.ndarray, cnt_flat: np.ndarray, depth: np.ndarray) -> dict:
    """Every ASV of each sample, whatever token_limit, and its share of the sample's reads (0: padding)."""
    lengths = np.diff(idx_off)
    width = max(int(lengths.max()) if lengths.size else 1, 1)
    slot = np.arange(width)
    real = slot[None, :] < lengths[:, None]
    gather = np.where(real, idx_off[:-1, None] + slot[None, :], 0)
    asvs = np.where(real, idx_flat[gather] if idx_flat.size else 0, 0).astype(np.int64)
    shares = np.where(real, (cnt_flat[gather] if cnt_flat.size else 0) / np.maximum(depth, 1.0)[:, None], 0.0)
    return {"all_asvs": torch.from_numpy(asvs), "all_shares": torch.from_numpy(shares.astype(np.float32))}


def _depth(rows: pa.Table, cnt_off: np.ndarray, cnt_flat: np.ndarray) -> np.ndarray:
    if "depth" in rows.column_names:
        return rows.column("depth").to_numpy(zero_copy_only=False).astype(np.float32)
    sample_of_count = np.repeat(np.arange(rows.num_rows), np.diff(cnt_off))
    return np.bincount(sample_of_count, weights=cnt_flat, minlength=rows.num_rows).astype(np.float32)


def raw_targets(rows: pa.Table, names: list[str]) -> np.ndarray:
    """Targets on their original scale [N, T], NaN where missing or where the rows have none."""
    out = np.full((rows.num_rows, len(names)), np.nan)
    for t, name in enumerate(names):
        column = f"target.{name}"
        if column in rows.column_names:
            out[:, t] = rows.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    return out


def transformed_targets(rows: pa.Table, names: list[str], transform: TargetTransform | None) -> np.ndarray:
    """Targets [N, T] on the scale the model predicts (`transform`'s), NaN where missing."""
    values = raw_targets(rows, names)
    if transform is None:
        return values
    return transform.forward(values, category_codes(rows, transform.by))


def _targets(rows: pa.Table, spec: BatchSpec) -> np.ndarray:
    return transformed_targets(rows, spec.targets, spec.transform)


def category_codes(rows: pa.Table, names: list[str]) -> np.ndarray:
    """Category codes [N, len(names)] of the rows; 0 (unknown) where a row has no such column."""
    out = np.zeros((rows.num_rows, len(names)), dtype=np.int64)
    for c, name in enumerate(names):
        column = f"cat.{name}"
        if column in rows.column_names:
            out[:, c] = rows.column(column).to_numpy(zero_copy_only=False)
    return out


def _categoricals(rows: pa.Table, spec: BatchSpec) -> np.ndarray:
    return category_codes(rows, spec.categoricals)


def move_to(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device`. To a GPU they go from pinned (page-locked) memory with
    non-blocking copies, so the copy overlaps the work already queued instead of stalling the host."""
    device = torch.device(device)
    pin = device.type == "cuda"
    return {k: ((v.pin_memory() if pin else v).to(device, non_blocking=pin) if torch.is_tensor(v) else v)
            for k, v in batch.items()}
