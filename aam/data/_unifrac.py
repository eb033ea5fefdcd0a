"""UniFrac distances between samples: load a precomputed matrix or compute one from a tree."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from aam.errors import AamUserError

METRICS = ("unweighted", "weighted")


@dataclass
class UniFrac:
    """Distances for the covered samples (row order = unifrac_row) plus what the report says."""

    rows: np.ndarray  # int32 per sample: row in matrix, or -1
    matrix: np.ndarray  # float32 [covered, covered]
    info: dict = field(default_factory=dict)  # goes into manifest["unifrac"]
    notes: list[str] = field(default_factory=list)


def _read_tsv(text: str, name: str) -> tuple[list[str], np.ndarray]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise AamUserError(f"UniFrac file {name} is empty; pass a distance-matrix TSV")
    ids = [c.strip() for c in lines[0].split("\t")[1:]]
    row_ids, rows = [], []
    for i, line in enumerate(lines[1:], 2):
        cells = line.split("\t")
        row_ids.append(cells[0].strip())
        try:
            rows.append([float(c) for c in cells[1:]])
        except ValueError:
            raise AamUserError(
                f"UniFrac file {name} line {i} has a non-number; pass a QIIME distance-matrix TSV"
            ) from None
        if len(rows[-1]) != len(ids):
            raise AamUserError(
                f"UniFrac file {name} line {i} has {len(rows[-1])} values for {len(ids)} samples; "
                "the matrix must be square with a header row of sample IDs"
            )
    if row_ids != ids:
        raise AamUserError(f"UniFrac file {name}: row IDs differ from the header IDs; rows and columns must match")
    return ids, np.asarray(rows, dtype=np.float64).reshape(len(ids), len(ids))


def load_matrix(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(ids, float64 matrix) from QIIME TSV, .qza DistanceMatrix, .npy + .ids.txt, or ssu HDF5."""
    path = Path(path)
    if not path.is_file():
        raise AamUserError(f"--unifrac file {path} does not exist; check the path")
    name = path.name
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if n.endswith("/data/distance-matrix.tsv")]
            if len(members) != 1:
                raise AamUserError(
                    f"{name} is a QIIME 2 archive without data/distance-matrix.tsv; pass a DistanceMatrix"
                )
            ids, m = _read_tsv(zf.read(members[0]).decode("utf-8"), name)
    elif path.suffix == ".npy":
        sidecar = path.with_name(path.name + ".ids.txt")
        if not sidecar.is_file():
            raise AamUserError(f"{name} needs its sample IDs in {sidecar.name} (one per line, in row order)")
        try:
            m = np.load(path, allow_pickle=False).astype(np.float64)
        except ValueError as e:
            raise AamUserError(f"{name} is not a numeric .npy matrix ({e})") from None
        ids = [ln.strip() for ln in sidecar.read_text().splitlines() if ln.strip()]
    else:
        import h5py

        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                if "order" not in f or "matrix" not in f:
                    raise AamUserError(
                        f"{name} is HDF5 without 'order' and 'matrix' datasets; pass an ssu UniFrac file"
                    )
                ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["order"][()]]
                m = np.asarray(f["matrix"][()], dtype=np.float64)
        else:
            ids, m = _read_tsv(path.read_text(encoding="utf-8", errors="replace"), name)
    _validate(ids, m, name)
    return ids, m


def _validate(ids: list[str], m: np.ndarray, name: str) -> None:
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise AamUserError(f"UniFrac matrix {name} has shape {m.shape}; it must be square")
    if len(ids) != m.shape[0]:
        raise AamUserError(f"UniFrac matrix {name} has {m.shape[0]} rows but {len(ids)} sample IDs; they must match")
    if len(set(ids)) != len(ids):
        raise AamUserError(f"UniFrac matrix {name} lists a sample ID twice; make IDs unique")
    if not np.isfinite(m).all():
        raise AamUserError(f"UniFrac matrix {name} has non-finite values; recompute it")
    if np.abs(np.diag(m)).max(initial=0) > 1e-6:
        raise AamUserError(f"UniFrac matrix {name} has a non-zero diagonal; it must be a distance matrix")
    if np.abs(m - m.T).max(initial=0) > 1e-6:
        raise AamUserError(f"UniFrac matrix {name} is not symmetric; it must be a distance matrix")


def align(ids: list[str], matrix: np.ndarray, sample_ids: list[str], name: str, info: dict) -> UniFrac:
    """Rows for the samples the matrix covers (in sample order); the others get -1."""
    index = {s: i for i, s in enumerate(ids)}
    where = np.array([index.get(s, -1) for s in sample_ids], dtype=np.int64)
    covered = np.flatnonzero(where >= 0)
    if covered.size == 0:
        raise AamUserError(
            f"UniFrac matrix {name} covers none of the {len(sample_ids)} kept samples "
            f"(e.g. matrix '{ids[0]}', table '{sample_ids[0]}'); pass the matrix made from this table"
        )
    rows = np.full(len(sample_ids), -1, dtype=np.int32)
    rows[covered] = np.arange(covered.size, dtype=np.int32)
    sub = matrix[np.ix_(where[covered], where[covered])].astype(np.float32)
    notes = [f"UniFrac ({name}) covers {covered.size} of {len(sample_ids)} samples"]
    return UniFrac(rows=rows, matrix=sub, info={**info, "n_samples": int(covered.size)}, notes=notes)


def from_matrix(path: str | Path, sample_ids: list[str]) -> UniFrac:
    ids, m = load_matrix(path)
    return align(ids, m, sample_ids, Path(path).name, {"source": "matrix", "metric": "precomputed"})


def from_tree(
    tree_path: str | Path,
    matrix: sp.csc_matrix,
    observation_ids: list[str],
    sample_ids: list[str],
    metric: str,
) -> UniFrac:
    """Compute UniFrac with scikit-bio on the ASVs that are tips of the tree (others left out)."""
    tree_path = Path(tree_path)
    if not tree_path.is_file():
        raise AamUserError(f"--tree file {tree_path} does not exist; check the path")
    try:
        import skbio
        from skbio.diversity import beta_diversity
    except ImportError:
        raise AamUserError("--tree needs scikit-bio, a dependency of aam; reinstall aam (pip install -e .)") from None
    try:
        # Newick turns '_' into ' ' in unquoted names unless told not to; IDs must stay as written.
        tree = skbio.TreeNode.read(str(tree_path), format="newick", convert_underscores=False)
    except Exception as e:
        raise AamUserError(
            f"--tree {tree_path.name} is not a readable Newick tree ({type(e).__name__}); check the file"
        ) from None
    tips = {t.name for t in tree.tips()}
    in_tree = np.array([o in tips for o in observation_ids], dtype=bool)
    if not in_tree.any():
        raise AamUserError(
            f"no ASV of the table is a tip of {tree_path.name} (e.g. table '{observation_ids[0][:40]}'); "
            "tip labels must be the table's observation IDs"
        )
    reads = np.asarray(matrix.sum(axis=1)).ravel()
    counts = matrix[in_tree].T.toarray()
    has_reads = counts.sum(axis=1) > 0
    # skbio wants integer-like counts for unweighted; weighted uses relative abundances anyway.
    counts = np.rint(counts).astype(np.int64) if np.allclose(counts, np.rint(counts)) else counts
    taxa = [o for o, keep in zip(observation_ids, in_tree) if keep]
    covered_ids = [s for s, keep in zip(sample_ids, has_reads) if keep]
    try:
        dm = beta_diversity(f"{metric}_unifrac", counts[has_reads], ids=covered_ids, taxa=taxa, tree=tree)
    except Exception as e:
        raise AamUserError(f"cannot compute UniFrac from {tree_path.name}: {str(e).splitlines()[0]}") from None
    left_out = int((~in_tree).sum())
    read_frac = float(reads[~in_tree].sum() / reads.sum()) if reads.sum() else 0.0
    info = {
        "source": "tree",
        "metric": metric,
        "asvs_not_in_tree": left_out,
        "reads_not_in_tree_fraction": round(read_frac, 6),
    }
    result = align(list(dm.ids), dm.data, sample_ids, tree_path.name, info)
    result.notes.append(
        f"UniFrac from {tree_path.name}: {left_out} of {len(observation_ids)} ASVs are not in the tree "
        f"({read_frac:.2%} of reads) and were left out of UniFrac only"
    )
    if (~has_reads).any():
        result.notes.append(f"{int((~has_reads).sum())} sample(s) have no reads on tree ASVs and get no UniFrac row")
    return result
