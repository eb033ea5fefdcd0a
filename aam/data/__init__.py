"""Data layer: BIOM + metadata -> dataset folder, and the rules shared with prediction.

- `convert_dataset(...)`: validate inputs once and write a dataset folder (see `aam.data.convert`).
- `Dataset.open(path)`: read one back.
- `read_table(path, sequences=None)` + `table_to_rows(td, width=...)`: the same table -> rows path
  that prediction uses on new tables.
- `pool_datasets(sources, out)`: converted folders -> one target-free pretraining dataset
  (train and val samples only; see `aam.data.pool`).
- `parse_split("0.8/0.1/0.1")`: the `--split` text -> fractions, with a one-line error.
- `read_metadata(path)` + `is_missing(values)`: a sample-metadata TSV, and which of its values
  mean "no value" (prediction codes a new table's categories with them).
"""

from aam.data._biom import TableData, read_table
from aam.data._metadata import is_missing, read_metadata
from aam.data._split import parse_split
from aam.data.convert import ConvertReport, convert_dataset, table_to_rows
from aam.data.dataset import Dataset
from aam.data.pool import pool_datasets
from aam.data.sequences import SEQUENCE_RULE, VOCAB_SIZE, tokenize

__all__ = [
    "ConvertReport",
    "Dataset",
    "SEQUENCE_RULE",
    "TableData",
    "VOCAB_SIZE",
    "convert_dataset",
    "is_missing",
    "parse_split",
    "pool_datasets",
    "read_metadata",
    "read_table",
    "table_to_rows",
    "tokenize",
]
