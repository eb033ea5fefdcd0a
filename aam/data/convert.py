"""BIOM + metadata (+ UniFrac) -> dataset folder (manifest.json, samples/asvs.parquet, unifrac.npy).

Everything a user can get wrong is checked here, once, before anything is written; the folder
appears only when complete (written beside `out`, then renamed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

import aam
from aam._files import check_output_folder, mark_output, sha256_of, staged_folder
from aam.data import _metadata, _split, _unifrac
from aam.data._biom import TableData, read_table
from aam.data.dataset import GROUP_COLUMN
from aam.data.sequences import SEQUENCE_RULE, tokenize
from aam.errors import AamUserError

SCHEMA_VERSION = 1
N_EXAMPLES = 20
_REASONS = {
    "not_in_metadata": "not in {metadata}",
    "empty": "with no reads",
    "no_target": "without a value for {targets}",
    "below_rarefaction_depth": "with fewer than {depth} reads (--rarefy {depth})",
}


@dataclass
class ConvertReport:
    out: Path
    n_samples: int
    n_asvs: int
    token_width: int
    split_counts: dict[str, int]
    dropped: dict[str, dict]  # reason -> {"count", "examples"}
    notes: list[str] = field(default_factory=list)
    dropped_lines: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        split = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        return [
            *self.notes[:1],  # what was read
            *self.dropped_lines,
            f"kept {_n(self.n_samples, 'sample')} and {_n(self.n_asvs, 'ASV')} (token width {self.token_width})",
            f"split: {split}",
            *self.notes[1:],
        ]


def table_to_rows(
    table_data: TableData, sample_ids: Sequence[str] | None = None, width: int | None = None
) -> tuple[pa.Table, np.ndarray, list[str]]:
    """THE conversion of a table into model rows, shared by convert and prediction.

    Rows hold each sample's ASVs by count descending (ties: asv_idx ascending), zeros never
    stored; asv_idx indexes the returned tokens/sequences (ASVs with reads, canonical order).
    `width` is the trained model's token width: a longer sequence is an error.
    """
    td = table_data.select(list(sample_ids) if sample_ids is not None else None)
    m = td.matrix
    if width is not None:
        lengths = np.fromiter(map(len, td.sequences), dtype=np.int64, count=len(td.sequences))
        if lengths.size and lengths.max() > width:
            i = int(np.argmax(lengths))
            raise AamUserError(
                f"ASV '{td.observation_ids[i][:40]}' in {td.name} has {lengths[i]} bp, longer than the "
                f"{width} bp the model was trained on; trim the table's sequences to {width} bp"
            )
    column = np.repeat(np.arange(m.shape[1]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, column))
    offsets = pa.array(m.indptr.astype(np.int32))
    rows = pa.table(
        {
            "sample_id": pa.array(td.sample_ids, pa.string()),
            "asv_idx": pa.ListArray.from_arrays(offsets, pa.array(m.indices[order].astype(np.int32))),
            "counts": pa.ListArray.from_arrays(offsets, pa.array(m.data[order].astype(np.float32))),
            "depth": pa.array(np.rint(np.asarray(m.sum(axis=0)).ravel()).astype(np.int64)),
        }
    )
    tokens = tokenize(td.sequences, width, ids=td.observation_ids, where=td.name)
    return rows, tokens, td.sequences


def rarefy_table(td: TableData, depth: int, seed: int) -> TableData:
    """Subsample every sample to `depth` reads without replacement (seeded, in sample order)."""
    m = td.matrix
    if m.nnz and not np.array_equal(m.data, np.rint(m.data)):
        raise AamUserError(f"--rarefy needs integer read counts, but {td.name} has fractions; drop --rarefy")
    rng = np.random.default_rng(seed)
    data = np.empty_like(m.data)
    for j in range(m.shape[1]):
        lo, hi = m.indptr[j], m.indptr[j + 1]
        data[lo:hi] = rng.multivariate_hypergeometric(m.data[lo:hi].astype(np.int64), depth, method="marginals")
    matrix = sp.csc_matrix((data, m.indices.copy(), m.indptr.copy()), shape=m.shape)
    matrix.eliminate_zeros()
    rarefied = TableData(td.name, td.sample_ids, td.observation_ids, td.sequences, matrix)
    return rarefied.select()


def _source(path) -> dict | None:
    return None if path is None else {"path": str(Path(path).resolve()), "sha256": sha256_of(path)}


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _examples(ids: Sequence[str], shown: int = 5) -> str:
    more = f", ... ({len(ids) - shown} more)" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _check_out(out: Path, overwrite: bool, inputs: dict | None = None) -> None:
    check_output_folder(out, "dataset", overwrite, inputs)


def _check_args(targets, categoricals, split, rarefy, unifrac, tree, unifrac_metric, out, overwrite):
    """Everything that can be checked before reading a file, so mistakes fail fast."""
    for label, names in (("--target", targets), ("--categorical", categoricals)):
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise AamUserError(f"{label} '{dup}' is given twice; give each column once")
    both = sorted(set(targets) & set(categoricals))
    if both:
        raise AamUserError(f"column '{both[0]}' is given as both --target and --categorical; choose one")
    if unifrac is not None and tree is not None:
        raise AamUserError("pass either --unifrac (a distance matrix) or --tree (to compute one), not both")
    if unifrac_metric not in _unifrac.METRICS:
        raise AamUserError(f"--unifrac-metric '{unifrac_metric}' is not one of: {', '.join(_unifrac.METRICS)}")
    if rarefy is not None and rarefy < 1:
        raise AamUserError(f"--rarefy {rarefy} must be a positive number of reads")
    for flag, path in (("--unifrac", unifrac), ("--tree", tree)):
        if path is not None and not Path(path).is_file():
            raise AamUserError(f"{flag} file {path} does not exist; check the path")
    _check_out(out, overwrite)
    return _split.check_fractions(split)


def _choose_samples(td: TableData, meta, targets, rarefy, meta_name):
    """Kept sample IDs (sorted) and the dropped ones by reason (the first reason that applies)."""
    in_meta = set(meta.index)
    if not in_meta.intersection(td.sample_ids):
        raise AamUserError(
            f"{meta_name} covers none of the {len(td.sample_ids)} samples of {td.name} "
            f"(e.g. table '{td.sample_ids[0]}', metadata '{meta.index[0]}'); check the ID column and the files"
        )
    reads = dict(zip(td.sample_ids, np.asarray(td.matrix.sum(axis=0)).ravel()))
    values = [~np.isnan(_metadata.parse_target(meta[t], t, meta_name)) for t in targets]
    # no target at all: a pretraining dataset (UniFrac + nucleotides), every sample counts
    has_target = dict(zip(meta.index, np.any(values, axis=0) if values else np.ones(len(meta), bool)))
    tests = {
        "not_in_metadata": lambda s: s not in in_meta,
        "empty": lambda s: reads[s] <= 0,
        "no_target": lambda s: not has_target[s],
        "below_rarefaction_depth": lambda s: rarefy is not None and reads[s] < rarefy,
    }
    dropped: dict[str, list[str]] = {r: [] for r in tests}
    kept = []
    for s in sorted(td.sample_ids):
        reason = next((r for r, test in tests.items() if test(s)), None)
        (dropped[reason] if reason else kept).append(s)
    words = {"metadata": meta_name, "targets": " or ".join(targets), "depth": rarefy}
    lines = [
        f"dropped {_n(len(ids), 'sample')} {_REASONS[r].format(**words)}: {_examples(ids)}"
        for r, ids in dropped.items()
        if ids
    ]
    if not kept:
        raise AamUserError(f"no samples left to convert: {'; '.join(lines)}")
    return kept, dropped, lines


def _metadata_columns(kmeta, targets, categoricals, meta_name, table_name):
    """target.* and cat.* columns of the kept samples, the vocabularies, and report notes."""
    columns: dict[str, pa.Array] = {}
    vocabularies: dict[str, list[str]] = {}
    notes = []
    for t in targets:
        v = _metadata.parse_target(kmeta[t], t, meta_name)
        if np.isnan(v).all():
            raise AamUserError(f"target '{t}' has no value in any kept sample of {table_name}; remove --target {t}")
        columns[f"target.{t}"] = pa.array(v, pa.float64())
        notes.append(f"target {t}: {int((~np.isnan(v)).sum())} values, {np.nanmin(v):g} to {np.nanmax(v):g}")
    for c in categoricals:
        codes, vocab = _metadata.parse_categorical(kmeta[c])
        columns[f"cat.{c}"] = pa.array(codes, pa.int32())
        vocabularies[c] = vocab
        notes.append(f"categorical {c}: {len(vocab)} categories, {int((codes == 0).sum())} samples missing")
    return columns, vocabularies, notes


def _groups(kmeta, group_by):
    if group_by is None:
        return None
    missing = _metadata.is_missing(kmeta[group_by])
    if missing.any():
        example = kmeta.index[np.flatnonzero(missing)[0]]
        raise AamUserError(
            f"--group-by column '{group_by}' has no value for {int(missing.sum())} kept samples "
            f"(e.g. '{example}'); fill them in or group by another column"
        )
    return kmeta[group_by].tolist()


def convert_dataset(
    table,
    metadata,
    out,
    targets: Sequence[str],
    categoricals: Sequence[str] = (),
    id_column: str | None = None,
    sequences=None,
    rarefy: int | None = None,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    group_by: str | None = None,
    unifrac=None,
    tree=None,
    unifrac_metric: str = "unweighted",
    overwrite: bool = False,
) -> ConvertReport:
    """Validate the inputs and write a dataset folder at `out`; see the module docstring."""
    out = Path(out)
    targets, categoricals = list(targets), list(categoricals)
    sources = {"table": table, "metadata": metadata, "sequences": sequences, "unifrac": unifrac, "tree": tree}
    _check_out(out, overwrite, {f"--{name}": path for name, path in sources.items()})
    fractions = _check_args(targets, categoricals, split, rarefy, unifrac, tree, unifrac_metric, out, overwrite)

    td = read_table(table, sequences)
    meta, meta_name = _read_metadata(metadata, id_column, {"--target": targets, "--categorical": categoricals,
                                                           "--group-by": [group_by] if group_by else []})

    kept, dropped, dropped_lines = _choose_samples(td, meta, targets, rarefy, meta_name)
    sub = td.select(kept)
    if rarefy is not None:
        sub = rarefy_table(sub, rarefy, seed)
    rows, tokens, seq_list = table_to_rows(sub)

    kmeta = meta.loc[kept]
    columns, vocabularies, notes = _metadata_columns(kmeta, targets, categoricals, meta_name, td.name)
    groups = _groups(kmeta, group_by)
    split_names = _split.assign_split(kept, fractions, seed, groups)
    split_counts = {name: int((split_names == name).sum()) for name in _split.SPLITS}
    if groups is not None:
        notes.append(f"split grouped by {group_by}: {len(set(groups))} groups, none on two sides")

    uf = _unifrac_for(unifrac, tree, unifrac_metric, sub, kept)
    notes += uf.notes if uf is not None else []
    n_meta_only = len(set(meta.index) - set(td.sample_ids))
    if n_meta_only:
        notes.append(f"{n_meta_only} samples of {meta_name} are not in {td.name} (ignored)")
    if rarefy is not None:
        notes.append(f"rarefied to {rarefy} reads per sample (seed {seed})")

    if groups is not None:
        # kept per sample so cross-validation (`folds`) can fold by the same groups as the split
        columns[GROUP_COLUMN] = pa.array([str(g) for g in groups], pa.string())
    samples = _samples_table(rows, split_names, columns, uf)
    width = tokens.shape[1]
    asvs = asvs_table(sub.observation_ids, seq_list, tokens)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "aam_version": aam.__version__,
        "sources": {name: _source(path) for name, path in sources.items()},
        "targets": targets,
        "categoricals": vocabularies,
        "split": {"fractions": list(fractions), "seed": seed, "group_by": group_by, "counts": split_counts},
        "rarefy": {"depth": rarefy, "seed": seed},
        "n_samples": len(kept),
        "n_asvs": len(seq_list),
        "token_width": width,
        "unifrac": None if uf is None else {"file": "unifrac.npy", **uf.info},
        "dropped": {r: {"count": len(ids), "examples": ids[:N_EXAMPLES]} for r, ids in dropped.items()},
        "sequence_rule": SEQUENCE_RULE,
    }
    write_dataset(out, overwrite, manifest, samples, asvs, None if uf is None else uf.matrix)
    return ConvertReport(
        out=out,
        n_samples=len(kept),
        n_asvs=len(seq_list),
        token_width=width,
        split_counts=split_counts,
        dropped=manifest["dropped"],
        notes=[f"read {td.name}: {td.matrix.shape[0]} ASVs x {len(td.sample_ids)} samples", *notes],
        dropped_lines=dropped_lines,
    )


def _read_metadata(metadata, id_column: str | None, required: dict[str, list[str]]):
    """The metadata table and its file name; every column a flag names must be in it."""
    meta = _metadata.read_metadata(metadata, id_column)
    meta_name = Path(metadata).name
    for flag, columns in required.items():
        _metadata.require_columns(meta, columns, flag, meta_name)
    return meta, meta_name


def _unifrac_for(unifrac, tree, unifrac_metric: str, sub: TableData, kept: list[str]):
    """The UniFrac distances of the kept samples: read from a matrix, computed from a tree, or None."""
    if unifrac is not None:
        return _unifrac.from_matrix(unifrac, kept)
    if tree is not None:
        return _unifrac.from_tree(tree, sub.matrix, sub.observation_ids, kept, unifrac_metric)
    return None


def _samples_table(rows: pa.Table, split_names: np.ndarray, columns: dict[str, pa.Array], uf) -> pa.Table:
    """samples.parquet: the table rows with their split, target.*/cat.* columns and UniFrac row."""
    samples = rows.append_column("split", pa.array(split_names.tolist(), pa.string()))
    for name, arr in columns.items():
        samples = samples.append_column(name, arr)
    unifrac_rows = uf.rows if uf is not None else np.full(rows.num_rows, -1, dtype=np.int32)
    samples = samples.append_column("unifrac_row", pa.array(unifrac_rows, pa.int32()))
    return samples.select(["sample_id", "split", "asv_idx", "counts", "depth", *columns, "unifrac_row"])


def asvs_table(observation_ids: Sequence[str], sequences: list[str], tokens: np.ndarray) -> pa.Table:
    """asvs.parquet: a row per ASV (its index, ID, sequence and fixed-width tokens)."""
    return pa.table(
        {
            "asv_idx": pa.array(np.arange(len(sequences), dtype=np.int32)),
            "asv_id": pa.array(observation_ids, pa.string()),
            "sequence": pa.array(sequences, pa.string()),
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.ravel(), pa.uint8()), tokens.shape[1]),
        }
    )


def write_dataset(out: Path, overwrite: bool, manifest: dict, samples: pa.Table, asvs: pa.Table, unifrac) -> None:
    """Write into a hidden sibling folder, then rename: a failure leaves nothing at `out`."""
    _check_out(out, overwrite)
    with staged_folder(out) as tmp:
        mark_output(tmp, "dataset")
        pq.write_table(samples, tmp / "samples.parquet", compression="zstd")
        pq.write_table(asvs, tmp / "asvs.parquet", compression="zstd")
        if unifrac is not None:
            np.save(tmp / "unifrac.npy", unifrac.astype(np.float32))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
