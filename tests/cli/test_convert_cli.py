"""`aam convert` and `aam pool` through the real entry point (aam.cli.main): output, exit codes, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from aam import examples
from aam.data import Dataset

EX = examples.path("mouse_age_mini")
BASE = ["--table", str(EX / "feature-table.biom"), "--metadata", str(EX / "sample-metadata.tsv")]


def test_convert_writes_dataset_and_prints_report(aam_main, tmp_path):
    out = tmp_path / "mini"
    code, stdout, stderr = aam_main(
        "convert", *BASE, "--target", "Age_wk", "--categorical", "Diet", "--categorical", "study",
        "--unifrac", EX / "weighted-unifrac.tsv", "--split", "0.7/0.15/0.15", "--group-by", "Sampling-date",
        "--out", out,
    )  # fmt: skip
    assert code in (0, None), stderr
    assert "kept 160 samples and 841 ASVs (token width 176)" in stdout
    assert "UniFrac (weighted-unifrac.tsv) covers 80 of 160 samples" in stdout
    assert stdout.strip().endswith(f"wrote {out}")
    ds = Dataset.open(out)
    assert ds.manifest["split"]["fractions"] == [0.7, 0.15, 0.15] and ds.manifest["split"]["group_by"] == "Sampling-date"
    assert list(ds.categoricals) == ["Diet", "study"]

    code, _, stderr = aam_main("convert", *BASE, "--target", "Age_wk", "--out", out)
    assert code == 2 and "pass --force" in stderr
    code, _, stderr = aam_main("convert", *BASE, "--target", "Age_wk", "--out", out, "--force", "--rarefy", "3000")
    assert code in (0, None), stderr
    assert Dataset.open(out).manifest["rarefy"]["depth"] == 3000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "Age_wk", "--split", "80/10"], "--split '80/10' has 2 parts"),
        (["--target", "Age_wk", "--split", "a/b/c"], "--split 'a/b/c' is not three numbers"),
        (["--target", "Age"], "--target column 'Age' is not in sample-metadata.tsv; close matches: Age_wk"),
        (["--target", "Age_wk", "--unifrac", "missing.tsv"], "--unifrac file missing.tsv does not exist"),
        (["--target", "Age_wk", "--tree", "t.nwk", "--unifrac", "u.tsv"], "not both"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(aam_main, tmp_path, args, message):
    out = tmp_path / "o"
    code, stdout, stderr = aam_main("convert", *BASE, *args, "--out", out)
    assert code == 2
    assert stderr.startswith("aam: error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists()


def test_missing_table_file(aam_main, tmp_path):
    code, _, stderr = aam_main(
        "convert", "--table", tmp_path / "no.biom", "--metadata", EX / "sample-metadata.tsv",
        "--target", "Age_wk", "--out", tmp_path / "o",
    )  # fmt: skip
    assert code == 2 and stderr.strip() == f"aam: error: --table file {tmp_path / 'no.biom'} does not exist; check the path"


def test_real_process_exit_code(tmp_path):
    """The installed entry point, in its own process: exit code 2 and one line on stderr."""
    cmd = [sys.executable, "-c", "from aam.cli import main; main()", "convert", *BASE, "--target", "Nope",
           "--out", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("aam: error: --target column 'Nope'")


def test_convert_bundled_example(aam_main, tmp_path):
    out = tmp_path / "demo"
    code, stdout, stderr = aam_main("convert", "--example", "mouse_age_mini", "--out", out, "--seed", "3")
    assert code in (0, None), stderr
    ds = Dataset.open(out)
    assert ds.targets == ["Age_wk"] and list(ds.categoricals) == ["Diet", "study"] and ds.unifrac is not None
    assert ds.manifest["split"]["seed"] == 3
    code, _, stderr = aam_main("convert", "--out", tmp_path / "x")
    assert code == 2 and "--table is required (or pass --example mouse_age_mini" in stderr


def test_pool_prints_what_it_kept_and_a_mistake_is_one_line(aam_main, example_dataset, tmp_path):
    out = tmp_path / "pool"
    code, stdout, stderr = aam_main("pool", example_dataset, "--out", out)
    assert code in (0, None), stderr
    pool = Dataset.open(out)
    n = Dataset.open(example_dataset).manifest["split"]["counts"]
    assert len(pool.samples) == n["train"] + n["val"]
    assert f"kept {n['train'] + n['val']} samples" in stdout and stdout.strip().endswith(f"wrote {out}")

    code, stdout, stderr = aam_main("pool", tmp_path / "nowhere", "--out", tmp_path / "second")
    assert code == 2 and stderr.count("\n") == 1 and "does not exist" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "second").exists()
