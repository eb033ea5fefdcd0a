"""Predictions for a new table from a checkpoint alone.

Rows come from `aam.data.table_to_rows`, the function `aam convert` uses, and batches from the
same collate as training, so counts reach the model exactly as they did in training.
Categorical metadata (for a model that reads it) comes from a metadata TSV and is coded with
the checkpoint's own vocabularies; a category the model never saw, or a sample without the
column, is "unknown" (code 0), the same as missing metadata in training.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from aam.data import is_missing, read_metadata, read_table, table_to_rows
from aam.data.collate import BatchSpec
from aam.errors import AamUserError
from aam.training.artifacts import predictions_frame
from aam.training.checkpoint import load_model
from aam.training.evaluation import predict_rows
from aam.training.loop import batch_spec


def predict_table(model_path: Path, table: Path, sequences: Path | None = None, batch_size: int = 64,
                  metadata: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(predictions, notes): notes say what metadata was missing or unknown. `model_path` may be
    an ensemble folder (`aam ensemble`): its members' predictions are mixed with its weights."""
    from aam.training.ensemble import read_ensemble

    info = read_ensemble(model_path) if Path(model_path).is_dir() else None
    if info is not None:
        return _predict_ensemble(Path(model_path), info, table, sequences, batch_size, metadata)
    bundle = load_model(model_path)
    if not bundle.targets:
        raise AamUserError(f"--model {model_path}: a pretrained encoder without targets; it has nothing to predict")
    rows, tokens, asv_sequences = table_to_rows(read_table(table, sequences=sequences), width=bundle.token_width)
    used = bundle.config.model_columns(list(bundle.categoricals))
    notes: list[str] = []
    if used:
        rows, notes = _add_categories(rows, bundle.categoricals, used, metadata)
    spec = table_batch_spec(bundle, tokens, asv_sequences)
    result = predict_rows(bundle.model, rows, spec, torch.device("cpu"), batch_size=batch_size)
    frame = predictions_frame(result.sample_ids, bundle.targets, result.predicted, None, None, result.quantiles,
                              result.quantile_names, result.quantile_levels)
    return frame, notes


def table_batch_spec(bundle, tokens: np.ndarray, sequences: list[str]) -> BatchSpec:
    """How a trained model's batches are made from a table (tokens and sequences in the table's ASV
    order), by the same `batch_spec` as its training; a model with asv_identity is matched to the
    table's ASVs by sequence (ASVs not seen in training use their sequence alone), and so is a
    model's neighbour prior."""
    bundle.model.index_table(sequences)
    return batch_spec(bundle.config, bundle, tokens=tokens)


def _predict_ensemble(folder: Path, info: dict, table, sequences, batch_size, metadata):
    from aam.training.ensemble import BASELINE_LABELS, includes_baselines

    if included := includes_baselines(info):
        what = " and ".join(BASELINE_LABELS[k] for k in included)
        raise AamUserError(f"--model {folder}: this ensemble includes {what}, whose fit aam does not store; build "
                           "one without --with-baseline to predict new tables")
    frames, notes = [], []
    for member in info["members"]:
        frame, member_notes = predict_table(folder / member["model"], table, sequences, batch_size, metadata)
        frames.append((frame, member["weight"]))
        notes.extend(n for n in member_notes if n not in notes)
    mixed = frames[0][0].copy()
    numeric = [c for c in mixed.columns if c != "sample_id"]
    mixed[numeric] = sum(f[numeric].to_numpy() * w for f, w in frames)
    return mixed, notes


def _add_categories(rows: pa.Table, vocabularies: dict[str, list[str]], used: list[str], metadata: Path | None):
    if metadata is None:
        raise AamUserError(f"this model reads the categorical column(s) {', '.join(used)}; pass --metadata "
                           "with a sample-metadata TSV that has them (missing values are treated as unknown)")
    meta = read_metadata(metadata)
    ids = rows.column("sample_id").to_pylist()
    notes = []
    for name in used:
        codes = np.zeros(len(ids), dtype=np.int32)
        if name not in meta.columns:
            notes.append(f"--metadata {metadata}: no column '{name}'; every sample's {name} is unknown")
        else:
            index = {v: i + 1 for i, v in enumerate(vocabularies[name])}
            values = meta[name].reindex(ids)
            present = ~values.isna().to_numpy() & ~is_missing(values.fillna(""))
            known = [index.get(str(v), 0) if ok else 0 for v, ok in zip(values, present)]
            codes[:] = known
            unseen = sorted({str(v) for v, ok, c in zip(values, present, known) if ok and c == 0})
            if unseen:
                notes.append(f"{name}: categories not seen in training are treated as unknown: {', '.join(unseen[:5])}")
            if (~present).any():
                notes.append(f"{name}: {int((~present).sum())} samples without a value are treated as unknown")
        rows = rows.append_column(f"cat.{name}", pa.array(codes, pa.int32()))
    return rows, notes
