"""`aam pool`: converted studies -> one target-free pretraining dataset, on real BIOM files."""

import json

import numpy as np
import pytest

from aam.data import Dataset, convert_dataset, pool_datasets
from aam.data.sequences import PAD
from aam.errors import AamUserError

LONG = ["ACGTACGTAACC", "CCGGTTAAGGTT", "GGGTTTCCCAAA", "TTTTACGAACGT"]  # 12 bp
SHORT = ["ACGTACGTAACC"[:8], "GATTACAG"]  # 8 bp; the first is LONG[0] cut short: another ASV


def _study(tmp_path, write_biom, write_tsv, name, seqs, samples, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 20, size=(len(seqs), len(samples)))
    table = write_biom(tmp_path / f"{name}.biom", counts, seqs, samples)
    meta = write_tsv(tmp_path / f"{name}.tsv", ["sample_id", "age"], [[s, i] for i, s in enumerate(samples)])
    out = tmp_path / name
    convert_dataset(table, meta, out, ["age"], split=(0.6, 0.2, 0.2))
    return out


@pytest.fixture
def studies(tmp_path, write_biom, write_tsv):
    # both studies name their samples S0..S9: the pool tells them apart by folder
    names = [f"S{i}" for i in range(10)]
    gut = _study(tmp_path, write_biom, write_tsv, "gut", LONG, names, 0)
    soil = _study(tmp_path, write_biom, write_tsv, "soil", SHORT + [LONG[1]], names, 1)
    return gut, soil


def _counts_by_sequence(ds: Dataset) -> dict[str, dict[str, float]]:
    seqs = ds.asvs.column("sequence").to_pylist()
    return {row["sample_id"]: {seqs[i]: c for i, c in zip(row["asv_idx"], row["counts"])}
            for row in ds.samples.to_pylist()}


def test_pool_keeps_train_and_val_of_every_study_with_their_counts_and_never_a_test_sample(studies, tmp_path):
    gut, soil = studies
    lines = pool_datasets([gut, soil], tmp_path / "pool")
    pool = Dataset.open(tmp_path / "pool")
    assert pool.targets == [] and pool.categoricals == {} and pool.unifrac is None

    pooled = _counts_by_sequence(pool)
    expected_ids = set()
    for source in (Dataset.open(gut), Dataset.open(soil)):
        own = _counts_by_sequence(source)
        split = dict(zip(source.samples.column("sample_id").to_pylist(), source.samples.column("split").to_pylist()))
        for sample, counts in own.items():
            pooled_id = f"{source.path.name}/{sample}"
            if split[sample] == "test":
                assert pooled_id not in pooled
                continue
            expected_ids.add(pooled_id)
            assert pooled[pooled_id] == counts  # the same reads of the same sequences, re-indexed
    assert set(pooled) == expected_ids
    pool_split = dict(zip(pool.samples.column("sample_id").to_pylist(), pool.samples.column("split").to_pylist()))
    assert set(pool_split.values()) == {"train", "val"}
    assert pool.manifest["split"]["counts"]["test"] == 0
    assert "every source's test samples are left out" in lines[-1]


def test_pool_joins_asvs_by_sequence_and_pads_shorter_reads_to_the_longest(studies, tmp_path):
    gut, soil = studies
    pool_datasets([gut, soil], tmp_path / "pool")
    pool = Dataset.open(tmp_path / "pool")
    seqs = pool.asvs.column("sequence").to_pylist()
    assert len(seqs) == len(set(seqs)) == len(set(LONG) | set(SHORT))  # LONG[1] is in both studies: once
    assert pool.token_width == 12
    short = seqs.index(SHORT[1])
    assert (pool.tokens[short, 8:] == PAD).all() and (pool.tokens[short, :8] != PAD).all()
    assert [s["path"] for s in pool.manifest["pooled_from"]] == [str(gut.resolve()), str(soil.resolve())]


def test_pool_refuses_a_folder_twice_a_pool_as_source_one_table_twice_and_writing_into_a_source(studies, tmp_path):
    gut, soil = studies
    with pytest.raises(AamUserError, match="is given twice"):
        pool_datasets([gut, gut], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()
    pool_datasets([gut, soil], tmp_path / "pool")
    with pytest.raises(AamUserError, match="is itself a pool"):
        pool_datasets([tmp_path / "pool", soil], tmp_path / "nested")
    assert not (tmp_path / "nested").exists()
    before = json.loads((gut / "manifest.json").read_text())
    with pytest.raises(AamUserError, match="--out .*gut.*input"):
        pool_datasets([gut, soil], gut, overwrite=True)
    assert json.loads((gut / "manifest.json").read_text()) == before
    regrouped = tmp_path / "gut_again"
    convert_dataset(tmp_path / "gut.biom", tmp_path / "gut.tsv", regrouped, ["age"], seed=5)
    with pytest.raises(AamUserError, match="were converted from the same table"):
        pool_datasets([gut, regrouped], tmp_path / "same_table")
    assert not (tmp_path / "same_table").exists()
    with pytest.raises(AamUserError, match="no dataset folder to pool"):
        pool_datasets([], tmp_path / "empty")
