"""Predictions for a new table from a checkpoint alone.

Rows come from `aam.data.table_to_rows`, the function `aam convert` uses, and batches from the
same collate as training, so counts reach the model exactly as they did in training.
"""

from pathlib import Path

import pandas as pd
import torch

from aam.data import read_table, table_to_rows
from aam.data.collate import BatchSpec
from aam.errors import AamUserError
from aam.training.artifacts import predictions_frame
from aam.training.checkpoint import load_model
from aam.training.loop import predict_rows


def predict_table(model_path: Path, table: Path, sequences: Path | None = None, batch_size: int = 64) -> pd.DataFrame:
    bundle = load_model(model_path)
    if not bundle.targets:
        raise AamUserError(f"--model {model_path}: a pretrained encoder without targets; it has nothing to predict")
    rows, tokens, _ = table_to_rows(read_table(table, sequences=sequences), width=bundle.token_width)
    spec = BatchSpec(tokens, bundle.targets, list(bundle.categoricals), bundle.config.token_limit, bundle.transform)
    predicted = predict_rows(bundle.model, rows, spec, torch.device("cpu"), batch_size=batch_size)
    return predictions_frame(rows.column("sample_id").to_pylist(), bundle.targets, predicted)
