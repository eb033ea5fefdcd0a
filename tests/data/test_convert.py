import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from aam import examples
from aam.data import Dataset, convert_dataset, read_table, table_to_rows
from aam.errors import AamUserError

DATASETS = Path(__file__).parents[2] / ".." / "shared" / "datasets"


def test_tiny_conversion_reports_every_drop(tiny):
    out = tiny["dir"] / "ds"
    report = convert_dataset(tiny["table"], tiny["metadata"], out, targets=["age"], categoricals=["diet"])
    assert report.n_samples == 2 and report.n_asvs == 4
    assert report.dropped["not_in_metadata"] == {"count": 1, "examples": ["S5"]}
    assert report.dropped["no_target"] == {"count": 1, "examples": ["S2"]}
    assert report.dropped["empty"] == {"count": 1, "examples": ["S4"]}
    lines = report.lines()
    assert "dropped 1 sample without a value for age: S2" in lines
    assert "dropped 1 sample not in m.tsv: S5" in lines
    assert "dropped 1 sample with no reads: S4" in lines
    assert any("1 samples of m.tsv are not in t.biom" in line for line in lines)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["targets"] == ["age"]
    assert manifest["categoricals"] == {"diet": ["SD", "WD"]}
    assert manifest["n_samples"] == 2 and manifest["token_width"] == 12 and manifest["unifrac"] is None
    assert manifest["sources"]["table"]["sha256"] and manifest["sources"]["sequences"] is None
    assert sorted(p.name for p in out.iterdir()) == [".aam-output", "asvs.parquet", "manifest.json", "samples.parquet"]

    samples = pq.read_table(out / "samples.parquet").to_pylist()
    asvs = pq.read_table(out / "asvs.parquet")
    assert str(asvs.schema.field("tokens").type) == "fixed_size_list<element: uint8>[12]"
    assert str(pq.read_table(out / "samples.parquet").schema.field("counts").type) == "list<element: float>"
    asv_ids = asvs.column("asv_id").to_pylist()
    assert asv_ids == sorted(asv_ids)  # canonical order: by sequence
    s1 = samples[0]
    assert s1["sample_id"] == "S1" and s1["target.age"] == 10.0 and s1["cat.diet"] == 1 and s1["unifrac_row"] == -1
    # S1 counts: ACGTACGTAA 5, CCGGTTAA 5, TTTTACGA 1: count descending, ties by asv_idx, no zeros.
    by_id = [asv_ids[i] for i in s1["asv_idx"]]
    assert by_id == ["ACGTACGTAA", "CCGGTTAA", "TTTTACGA"] and s1["counts"] == [5.0, 5.0, 1.0]
    assert s1["depth"] == 11


def test_output_does_not_depend_on_table_order(tmp_path, write_biom, write_tsv, seqs):
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.5, size=(6, 12)) * rng.integers(0, 2, size=(6, 12))
    counts[:, counts.sum(0) == 0] = 1
    samples = [f"S{i}" for i in range(12)]
    meta = write_tsv(tmp_path / "m.tsv", ["sample_id", "y"], [[s, i] for i, s in enumerate(samples)])
    r, c = rng.permutation(6), rng.permutation(12)
    write_biom(tmp_path / "a.biom", counts, seqs, samples)
    write_biom(tmp_path / "b.biom", counts[r][:, c], [seqs[i] for i in r], [samples[i] for i in c], fmt="json")
    convert_dataset(tmp_path / "a.biom", meta, tmp_path / "a", ["y"])
    convert_dataset(tmp_path / "b.biom", meta, tmp_path / "b", ["y"])
    for name in ("samples.parquet", "asvs.parquet"):
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))


def test_rarefaction_is_deterministic(tmp_path, write_biom, write_tsv, seqs):
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 40, size=(6, 10))
    samples = [f"S{i}" for i in range(10)]
    write_biom(tmp_path / "t.biom", counts, seqs, samples)
    meta = write_tsv(tmp_path / "m.tsv", ["sample_id", "y"], [[s, 1] for s in samples])
    depth = int(np.sort(counts.sum(0))[2])  # two samples fall below
    reports = [convert_dataset(tmp_path / "t.biom", meta, tmp_path / f"r{k}", ["y"], rarefy=depth, seed=k // 2)
               for k in range(3)]  # fmt: skip
    assert reports[0].dropped["below_rarefaction_depth"]["count"] == 2
    tables = [pq.read_table(tmp_path / f"r{k}" / "samples.parquet") for k in range(3)]
    assert tables[0].equals(tables[1])
    assert set(tables[0].column("depth").to_pylist()) == {depth}
    assert tables[0].column("counts").to_pylist() != tables[2].column("counts").to_pylist()
    json_rarefy = json.loads((tmp_path / "r0" / "manifest.json").read_text())["rarefy"]
    assert json_rarefy == {"depth": depth, "seed": 0}


def test_grouped_split_in_dataset(tmp_path, write_biom, write_tsv, seqs):
    samples = [f"S{i:02d}" for i in range(40)]
    write_biom(tmp_path / "t.biom", np.ones((3, 40)), seqs[:3], samples)
    meta = write_tsv(tmp_path / "m.tsv", ["sample_id", "y", "cage"], [[s, i, f"c{i % 7}"] for i, s in enumerate(samples)])
    convert_dataset(tmp_path / "t.biom", meta, tmp_path / "ds", ["y"], group_by="cage", split=(0.6, 0.2, 0.2))
    ds = Dataset.open(tmp_path / "ds")
    df = ds.samples.to_pandas().merge(pd.read_csv(meta, sep="\t", dtype=str), on="sample_id")
    assert (df.groupby("cage")["split"].nunique() == 1).all()
    assert ds.manifest["split"]["group_by"] == "cage"


def test_no_overlap_and_missing_target_column(tiny, tmp_path, write_tsv):
    other = write_tsv(tmp_path / "other.tsv", ["sample_id", "age"], [["Q1", "3"]])
    with pytest.raises(AamUserError, match=r"other.tsv covers none of the 5 samples of t.biom \(e.g. table 'S1', metadata 'Q1'\)"):
        convert_dataset(tiny["table"], other, tmp_path / "o", ["age"])
    with pytest.raises(AamUserError, match="--categorical column 'Diet' is not in m.tsv; close matches: diet"):
        convert_dataset(tiny["table"], tiny["metadata"], tmp_path / "o", ["age"], categoricals=["Diet"])
    assert not (tmp_path / "o").exists()


def test_nothing_written_on_failure(tiny, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("\tS1\tS3\nS1\t0\t0.2\nS3\t0.3\t0\n")  # not symmetric: found after all the work
    out = tmp_path / "out" / "ds"
    with pytest.raises(AamUserError, match="not symmetric"):
        convert_dataset(tiny["table"], tiny["metadata"], out, ["age"], unifrac=bad)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_refuses_to_overwrite_unless_asked(tiny, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AamUserError, match="folder is not empty; choose a new folder or pass --force"):
        convert_dataset(tiny["table"], tiny["metadata"], out, ["age"])
    with pytest.raises(AamUserError, match="replaces only a dataset folder that aam wrote"):
        convert_dataset(tiny["table"], tiny["metadata"], out, ["age"], overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    convert_dataset(tiny["table"], tiny["metadata"], out, ["age"])
    (out / "manifest.json").write_text("{}")  # an aam dataset, replaced on request
    convert_dataset(tiny["table"], tiny["metadata"], out, ["age"], overwrite=True)
    assert (out / "manifest.json").read_text() != "{}"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "kwargs, message",
    [({"targets": ["age", "age"]}, "given twice"),
     ({"targets": ["age"], "categoricals": ["age"]}, "both --target and --categorical"),
     ({"targets": ["age"], "unifrac": "a", "tree": "b"}, "not both"),
     ({"targets": ["age"], "unifrac_metric": "bray"}, "--unifrac-metric 'bray'"),
     ({"targets": ["age"], "split": (0.5, 0.6, 0.1)}, "sum to"), ({"targets": ["age"], "rarefy": 0}, "positive"),
     ({"targets": ["diet"]}, "non-numeric value 'SD'"), ({"targets": ["age"], "group_by": "nope"}, "--group-by")],
)  # fmt: skip
def test_argument_errors(tiny, kwargs, message):
    with pytest.raises(AamUserError, match=message):
        convert_dataset(tiny["table"], tiny["metadata"], tiny["dir"] / "o", **kwargs)
    assert not (tiny["dir"] / "o").exists()


def test_tree_unifrac_in_dataset(tiny, tmp_path):
    tree = tmp_path / "t.nwk"
    tree.write_text("((ACGTACGTAA:1,CCGGTTAA:2):1,GGGTTTCCCAAA:3);")  # TTTTACGA is not in the tree
    report = convert_dataset(tiny["table"], tiny["metadata"], tmp_path / "ds", ["age"], tree=tree, unifrac_metric="weighted")
    ds = Dataset.open(tmp_path / "ds")
    assert ds.manifest["unifrac"]["source"] == "tree" and ds.manifest["unifrac"]["asvs_not_in_tree"] == 1
    assert ds.unifrac.shape == (2, 2) and ds.unifrac[0, 0] == 0 and ds.unifrac[0, 1] > 0
    assert any("are not in the tree" in line for line in report.lines())


def test_md5_ids_with_fasta_give_the_same_rows(tmp_path, write_biom):
    import hashlib

    td = read_table(examples.path("mouse_age_mini") / "feature-table.biom")
    md5 = [hashlib.md5(s.encode()).hexdigest() for s in td.sequences]
    write_biom(tmp_path / "md5.biom", td.matrix.toarray(), md5, td.sample_ids)
    (tmp_path / "dna-sequences.fasta").write_text("".join(f">{h}\n{s}\n" for h, s in zip(md5, td.sequences)))
    meta = examples.path("mouse_age_mini") / "sample-metadata.tsv"
    with pytest.raises(AamUserError, match="not DNA sequences.*pass --sequences dna-sequences.fasta"):
        convert_dataset(tmp_path / "md5.biom", meta, tmp_path / "a", ["Age_wk"])
    convert_dataset(tmp_path / "md5.biom", meta, tmp_path / "a", ["Age_wk"], sequences=tmp_path / "dna-sequences.fasta")
    convert_dataset(examples.path("mouse_age_mini") / "feature-table.biom", meta, tmp_path / "b", ["Age_wk"])
    a, b = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "b")
    assert a.samples.equals(b.samples) and np.array_equal(a.tokens, b.tokens)
    assert a.asvs.column("asv_id").to_pylist()[0] in md5 and a.manifest["sources"]["sequences"]["sha256"]


def test_table_to_rows_for_prediction(tiny):
    td = read_table(tiny["table"])
    rows, tokens, seqs = table_to_rows(td, ["S3", "S1"], width=16)
    assert rows.column("sample_id").to_pylist() == ["S3", "S1"]
    assert tokens.shape == (len(seqs), 16) and tokens[:, 12:].max() == 0
    assert rows.column("depth").to_pylist() == [6, 11]
    with pytest.raises(AamUserError, match="longer than the 10 bp the model was trained on"):
        table_to_rows(td, width=10)


def test_bundled_example_converts(tmp_path):
    ex = examples.path("mouse_age_mini")
    report = convert_dataset(
        ex / "feature-table.biom", ex / "sample-metadata.tsv", tmp_path / "mini", ["Age_wk"],
        categoricals=["Diet", "study"], unifrac=ex / "weighted-unifrac.tsv",
    )  # fmt: skip
    assert report.n_samples == 160 and report.token_width == 176
    ds = Dataset.open(tmp_path / "mini")
    assert ds.unifrac.shape == (80, 80)
    covered = ds.samples.to_pandas().query("unifrac_row >= 0")
    assert set(covered["cat.study"]) == {ds.categoricals["study"].index("longitudinal") + 1}


def _require(name):
    if not (DATASETS / name / "feature-table.biom").is_file():
        pytest.skip(f"real dataset {name} not found at {DATASETS.resolve()}")
    return DATASETS / name


def test_real_mouse_age(tmp_path):
    src = _require("mouse_age")
    report = convert_dataset(
        src / "feature-table.biom", src / "sample-metadata.tsv", tmp_path / "m", ["Age_wk"],
        categoricals=["Diet", "study"], unifrac=src / "weighted-unifrac-longitudinal.tsv",
    )  # fmt: skip
    assert (report.n_samples, report.n_asvs, report.token_width) == (839, 1447, 176)
    ds = Dataset.open(tmp_path / "m")
    assert ds.unifrac.shape == (433, 433) and ds.manifest["unifrac"]["n_samples"] == 433


def test_real_emp_ph(tmp_path):
    src = _require("emp_150bp")
    report = convert_dataset(src / "feature-table.biom", src / "sample-metadata.tsv", tmp_path / "e", ["ph"])
    assert report.n_samples == 176 and report.dropped["no_target"]["count"] == 799
    assert report.token_width == 150 and set(Dataset.open(tmp_path / "e").samples.column("depth").to_pylist()) == {5000}


@pytest.mark.slow
def test_real_mouse_age_with_partial_tree(tmp_path):
    src = _require("mouse_age")
    report = convert_dataset(
        src / "feature-table.biom", src / "sample-metadata.tsv", tmp_path / "m", ["Age_wk"],
        tree=src / "tree-longitudinal.seqids.nwk",
    )  # fmt: skip
    ds = Dataset.open(tmp_path / "m")
    info = ds.manifest["unifrac"]
    assert info["source"] == "tree" and info["asvs_not_in_tree"] == 1447 - 653
    assert 0 < info["reads_not_in_tree_fraction"] < 0.05
    assert ds.unifrac.shape == (info["n_samples"], info["n_samples"]) and info["n_samples"] >= 800
    assert np.allclose(ds.unifrac, ds.unifrac.T) and np.all(np.diag(ds.unifrac) == 0)
    assert any("not in the tree" in line for line in report.lines())


def test_no_target_makes_a_pretraining_dataset_that_keeps_every_sample(tiny, tmp_path):
    report = convert_dataset(tiny["table"], tiny["metadata"], tmp_path / "pre", [])
    ds = Dataset.open(tmp_path / "pre")
    assert ds.targets == []
    assert not [c for c in ds.samples.column_names if c.startswith("target.")]
    assert report.dropped["no_target"] == [] or report.dropped["no_target"]["count"] == 0
