"""Sample metadata TSV: find the ID column, parse targets and categoricals, loudly."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pandas as pd

from aam.errors import AamUserError

# The ID headers QIIME 2 accepts for sample metadata (compared case-insensitively).
ID_COLUMNS = ("sample_id", "sample-id", "#SampleID", "id", "sampleid", "#Sample ID", "sample id", "sample_name")

MISSING = frozenset(
    {"", "na", "n/a", "nan", "none", "null", "missing", "not applicable", "not collected", "not provided", "unknown"}
)


def is_missing(values: pd.Series) -> np.ndarray:
    low = values.str.strip().str.lower()
    # INSDC/Qiita write reasons as "missing: not collected", "not applicable: ...".
    return (low.isin(MISSING) | low.str.startswith(("missing:", "not applicable:"))).to_numpy(dtype=bool)


def read_metadata(path: str | Path, id_column: str | None = None) -> pd.DataFrame:
    """All columns as stripped strings, indexed by sample ID (index name 'sample_id')."""
    path = Path(path)
    if not path.is_file():
        raise AamUserError(f"--metadata file {path} does not exist; check the path")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AamUserError(f"{path.name} is not a tab-separated metadata file ({msg}); save it as TSV") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.shape[1] < 2:
        raise AamUserError(f"{path.name} has {df.shape[1]} column(s); sample metadata must be tab-separated")

    if id_column is not None:
        if id_column not in df.columns:
            close = _close(id_column, df.columns)
            raise AamUserError(f"--id-column '{id_column}' is not a column of {path.name}{close}")
        id_col = id_column
    else:
        known = {c.lower() for c in ID_COLUMNS}
        id_col = next((c for c in df.columns if c.lower() in known), None)
        if id_col is None:
            raise AamUserError(
                f"{path.name} has no sample ID column (first column is '{df.columns[0]}'); "
                "name it sample_id or pass --id-column"
            )

    df = df.apply(lambda col: col.str.strip())
    # QIIME 2 directives (#q2:types) and comment rows start with '#' in the ID column.
    df = df[~df[id_col].str.startswith("#")]
    empty = np.flatnonzero(df[id_col].to_numpy() == "")
    if empty.size:
        raise AamUserError(f"{path.name} data row {empty[0] + 1} has an empty sample ID; fill in or delete the row")
    dup = df[id_col][df[id_col].duplicated()]
    if len(dup):
        raise AamUserError(
            f"{path.name} has duplicate sample ID '{dup.iloc[0]}' ({len(dup)} duplicates); make sample IDs unique"
        )
    return df.set_index(id_col).rename_axis("sample_id")


def _close(name: str, columns) -> str:
    near = difflib.get_close_matches(name, list(columns), n=3, cutoff=0.5)
    near += [c for c in columns if name.lower() in c.lower() and c not in near][:3]
    return f"; close matches: {', '.join(near)}" if near else f"; columns are: {', '.join(list(columns)[:12])}"


def require_columns(df: pd.DataFrame, names, flag: str, where: str) -> None:
    for name in names:
        if name not in df.columns:
            raise AamUserError(f"{flag} column '{name}' is not in {where}{_close(name, df.columns)}")


def parse_target(values: pd.Series, name: str, where: str) -> np.ndarray:
    """float64 with NaN for the missing markers; any other non-number is an error."""
    missing = is_missing(values)
    parsed = pd.to_numeric(values.where(~missing, None), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~missing & ~np.isfinite(parsed)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AamUserError(
            f"target column '{name}' in {where} has the non-numeric value {values.iloc[i]!r} "
            f"(sample '{values.index[i]}', {int(bad.sum())} such values); fix it or leave the cell empty"
        )
    return parsed


def parse_categorical(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """int32 codes (vocabulary position + 1; 0 = missing) and the sorted vocabulary."""
    missing = is_missing(values)
    vocab = sorted(set(values[~missing]))
    index = {v: i + 1 for i, v in enumerate(vocab)}
    codes = np.array([0 if m else index[v] for v, m in zip(values, missing)], dtype=np.int32)
    return codes, vocab
