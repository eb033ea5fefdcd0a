"""Rows of `samples.parquet` -> one model batch.

The same function serves the plain in-process loader, every Ray Train worker and `aam predict`,
so the model always sees counts, padding and token widths made the same way.

Speed: samples are padded to the batch's own longest sample (not to `token_limit`), and each
distinct ASV of the batch appears once in `tokens` (samples share most ASVs); `asv_index`
scatters the encoded vectors back to the samples.
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


def _list_column(rows: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and flat values of a list column, whatever its chunking."""
    col = rows.column(name).combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values[offsets[0] : offsets[-1]]


def collate(rows: pa.Table, spec: BatchSpec) -> dict:
    """A pyarrow Table of sample rows -> the model's batch dict (see aam.models.model)."""
    n = rows.num_rows
    idx_off, idx_flat = _list_column(rows, "asv_idx")
    cnt_off, cnt_flat = _list_column(rows, "counts")
    lengths = np.minimum(np.diff(idx_off), spec.token_limit)
    width = max(int(lengths.max()) if n else 1, 1)

    slot = np.arange(width)
    asv_mask = slot[None, :] < lengths[:, None]
    gather = np.where(asv_mask, idx_off[:-1, None] + slot[None, :], 0)
    # rows are stored most-abundant first, so the first `token_limit` slots are the ones kept
    slot_asv = np.where(asv_mask, idx_flat[gather] if idx_flat.size else 0, 0)
    slot_counts = np.where(asv_mask, cnt_flat[gather] if cnt_flat.size else 0, 0).astype(np.float32)

    distinct, inverse = np.unique(slot_asv[asv_mask], return_inverse=True)
    asv_index = np.zeros((n, width), dtype=np.int64)
    asv_index[asv_mask] = inverse
    tokens = spec.tokens[distinct] if distinct.size else np.zeros((1, spec.tokens.shape[1]), np.uint8)
    # trim columns that are padding for every distinct ASV of this batch
    used = np.flatnonzero(tokens.any(axis=0))
    tokens = tokens[:, : (used[-1] + 1 if used.size else 1)]

    batch = {
        "tokens": torch.from_numpy(tokens.astype(np.int64)),
        "asv_index": torch.from_numpy(asv_index),
        "asv_mask": torch.from_numpy(asv_mask),
        "counts": torch.from_numpy(slot_counts),
        "targets": torch.from_numpy(_targets(rows, spec).astype(np.float32)),
        "categoricals": torch.from_numpy(_categoricals(rows, spec)),
        "unifrac_row": torch.from_numpy(
            rows.column("unifrac_row").to_numpy().astype(np.int64)
            if "unifrac_row" in rows.column_names
            else np.full(n, -1, dtype=np.int64)
        ),
        "sample_ids": rows.column("sample_id").to_pylist(),
    }
    return batch


def raw_targets(rows: pa.Table, names: list[str]) -> np.ndarray:
    """Targets on their original scale [N, T], NaN where missing or where the rows have none."""
    out = np.full((rows.num_rows, len(names)), np.nan)
    for t, name in enumerate(names):
        column = f"target.{name}"
        if column in rows.column_names:
            out[:, t] = rows.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    return out


def _targets(rows: pa.Table, spec: BatchSpec) -> np.ndarray:
    values = raw_targets(rows, spec.targets)
    return spec.transform.forward(values) if spec.transform is not None else values


def _categoricals(rows: pa.Table, spec: BatchSpec) -> np.ndarray:
    out = np.zeros((rows.num_rows, len(spec.categoricals)), dtype=np.int64)
    for c, name in enumerate(spec.categoricals):
        column = f"cat.{name}"
        if column in rows.column_names:
            out[:, c] = rows.column(column).to_numpy(zero_copy_only=False)
    return out


def move_to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
