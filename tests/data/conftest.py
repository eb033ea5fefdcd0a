"""Fixtures for data tests: write real tiny BIOM tables and metadata files.

Helpers are handed out as fixtures (not imported) so the tests work in any pytest import mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Short DNA IDs; each passes as a sequence (no digits, all bases).
SEQS = ["ACGTACGTAA", "CCGGTTAA", "GGGTTTCCCAAA", "TTTTACGA", "ACACACGTGT", "GATTACA"]


def _write_biom(path: Path, counts, obs_ids, sample_ids, fmt: str = "hdf5") -> Path:
    """counts: ASVs x samples (array-like)."""
    import biom
    from biom.util import biom_open

    table = biom.Table(np.asarray(counts, dtype=float), list(obs_ids), list(sample_ids))
    if fmt == "hdf5":
        with biom_open(str(path), "w") as f:
            table.to_hdf5(f, "aam tests")
    else:
        path.write_text(table.to_json("aam tests"))
    return path


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join("\t".join(str(c) for c in r) for r in [header, *rows]) + "\n")
    return path


@pytest.fixture
def write_biom():
    return _write_biom


@pytest.fixture
def write_tsv():
    return _write_tsv


@pytest.fixture
def seqs():
    return list(SEQS)


@pytest.fixture
def tiny(tmp_path):
    """A 4-ASV x 5-sample table and metadata with one sample missing from each side."""
    counts = [
        [5, 0, 3, 0, 1],
        [5, 2, 0, 0, 0],
        [0, 7, 3, 0, 9],
        [1, 0, 0, 0, 2],
    ]
    samples = ["S1", "S2", "S3", "S4", "S5"]
    table = _write_biom(tmp_path / "t.biom", counts, SEQS[:4], samples)
    meta = _write_tsv(
        tmp_path / "m.tsv",
        ["sample_id", "age", "diet", "cage"],
        [
            ["S1", "10", "SD", "c1"],
            ["S2", "NA", "WD", "c1"],  # no target
            ["S3", "30.5", "WD", "c2"],
            ["S4", "40", "SD", "c2"],  # empty sample
            ["X9", "50", "SD", "c3"],  # not in the table
        ],
    )  # S5 is not in the metadata
    return {"table": table, "metadata": meta, "dir": tmp_path, "counts": np.asarray(counts), "samples": samples}
