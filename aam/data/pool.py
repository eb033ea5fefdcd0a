"""Dataset folders -> one target-free pretraining dataset (`aam pool`).

Self-supervised pretraining (masked nucleotides, counts) needs no targets, so it can read every
study a lab has. Pooling converted folders, rather than raw tables, reuses what `aam convert`
already checked (IDs, sequences, empty samples, rarefaction) for each study.

What is kept, and why:
- each source's train and val samples, on the same side; **never its test samples**, so a model
  fine-tuned from the pool on one of the sources is scored on tables pretraining never read;
- ASVs joined by their sequence (the same ASV in two studies is one ASV here), tokens padded to
  the longest sequence of any source: fine-tuning on a source with shorter reads pads its tokens
  to this width (see `aam.training.prepare`);
- no targets, categoricals or UniFrac: distances between studies were never computed.
Sample IDs become `SOURCE_FOLDER/SAMPLE_ID`, so two studies may reuse a name. Two folders converted
from one table (two splits of a study) are refused: one's test samples are the other's train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import aam
from aam._files import check_output_folder
from aam.data.convert import SCHEMA_VERSION, asvs_table, write_dataset
from aam.data.dataset import Dataset
from aam.data.sequences import SEQUENCE_RULE, tokenize
from aam.errors import AamUserError

POOLED_SPLITS = ("train", "val")


def _open_sources(sources: Sequence[Path]) -> list[Dataset]:
    if not sources:
        raise AamUserError("no dataset folder to pool; pass one or more folders made by `aam convert`")
    names: dict[str, Path] = {}
    for path in map(Path, sources):
        resolved = path.resolve()
        if resolved.name in names:
            other = names[resolved.name]
            what = "is given twice" if other == resolved else f"has the same folder name as {other}"
            raise AamUserError(f"dataset {path} {what}; pooled sample IDs are prefixed with the folder name, "
                               "so give each study once, in folders of distinct names")
        names[resolved.name] = resolved
    datasets = [Dataset.open(p) for p in sources]
    tables: dict[str, Path] = {}
    for ds in datasets:
        if ds.manifest.get("pooled_from"):
            raise AamUserError(f"{ds.path} is itself a pool; pool its source folders instead")
        table = (ds.manifest.get("sources") or {}).get("table") or {}
        if table.get("sha256") in tables:
            # two splits of one table: one's test samples are the other's train samples
            raise AamUserError(f"{ds.path} and {tables[table['sha256']]} were converted from the same table; "
                               "pool it once, so no source's test samples reach pretraining")
        if table.get("sha256"):
            tables[table["sha256"]] = ds.path
    return datasets


def _source_rows(ds: Dataset, global_index: dict[str, int]) -> pa.Table:
    """The train/val rows of one source, their ASV indexes mapped into the pool's."""
    rows = ds.samples.filter(pc.is_in(ds.samples.column("split"), pa.array(POOLED_SPLITS)))
    local_to_global = np.array([global_index.setdefault(seq, len(global_index))
                                for seq in ds.asvs.column("sequence").to_pylist()], dtype=np.int32)
    asv_idx = rows.column("asv_idx").combine_chunks()
    mapped = local_to_global[asv_idx.flatten().to_numpy()]
    offsets = asv_idx.offsets
    prefix = ds.path.resolve().name + "/"
    return pa.table({
        "sample_id": pc.binary_join_element_wise(pa.scalar(prefix), rows.column("sample_id"), pa.scalar("")),
        "split": rows.column("split"),
        "asv_idx": pa.ListArray.from_arrays(offsets, pa.array(mapped, pa.int32())),
        "counts": rows.column("counts").combine_chunks(),
        "depth": rows.column("depth"),
        "unifrac_row": pa.array(np.full(rows.num_rows, -1, dtype=np.int32)),
    })


def pool_datasets(sources: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> list[str]:
    """Write the pretraining dataset of `sources` at `out`; return the report's lines."""
    out = Path(out)
    check_output_folder(out, "dataset", overwrite, {f"source {i + 1}": s for i, s in enumerate(sources)})
    datasets = _open_sources(sources)
    global_index: dict[str, int] = {}
    parts = [_source_rows(ds, global_index) for ds in datasets]
    samples = pa.concat_tables(parts)
    if samples.num_rows < 2:
        raise AamUserError(f"the pool has {samples.num_rows} train/val samples; pretraining needs at least 2")
    sequences = list(global_index)  # insertion order = pool index
    width = max(ds.token_width for ds in datasets)
    tokens = tokenize(sequences, width, where="the pooled datasets")
    counts = {name: int(pc.sum(pc.equal(samples.column("split"), name)).as_py() or 0) for name in
              ("train", "val", "test")}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "aam_version": aam.__version__,
        "sources": {"table": None, "metadata": None, "sequences": None, "unifrac": None, "tree": None},
        "pooled_from": [{"path": str(ds.path.resolve()), "n_samples": part.num_rows, "token_width": ds.token_width}
                        for ds, part in zip(datasets, parts)],
        "targets": [],
        "categoricals": {},
        "split": {"fractions": None, "seed": None, "group_by": None, "counts": counts},
        "rarefy": {"depth": None, "seed": None},
        "n_samples": samples.num_rows,
        "n_asvs": len(sequences),
        "token_width": width,
        "unifrac": None,
        "dropped": {},
        "sequence_rule": SEQUENCE_RULE,
    }
    asvs = asvs_table(sequences, sequences, tokens)
    write_dataset(out, overwrite, manifest, samples, asvs, None)
    shared = sum(len(ds.asvs) for ds in datasets) - len(sequences)
    lines = [f"pooled {ds.path}: {part.num_rows} train/val samples, {len(ds.asvs)} ASVs, "
             f"{ds.token_width} bp" for ds, part in zip(datasets, parts)]
    lines += [f"kept {samples.num_rows} samples and {len(sequences)} ASVs ({shared} shared between sources; "
              f"token width {width})",
              f"split: train {counts['train']}, val {counts['val']}; every source's test samples are left out"]
    return lines
