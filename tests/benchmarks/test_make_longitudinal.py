"""benchmarks/make_longitudinal.py: the GPU-step issue's dataset from shared/datasets/mouse_age."""

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "make_longitudinal.py"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"  # as tests/conftest.py finds it
pytestmark = pytest.mark.skipif(not (SHARED_DATASETS / "mouse_age").is_dir(), reason="shared/datasets absent")


def test_longitudinal_dataset_is_the_433_matrix_samples_rarefied_and_split_346_44_43(tmp_path):
    out = tmp_path / "longitudinal"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--shared", str(SHARED_DATASETS.parent)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "split: train 346, val 44, test 43" in run.stdout
    rows = pq.read_table(out / "samples.parquet")
    matrix_ids = (SHARED_DATASETS / "mouse_age" / "unweighted-unifrac-longitudinal.tsv").open().readline()
    assert sorted(rows.column("sample_id").to_pylist()) == sorted(matrix_ids.rstrip("\n").split("\t")[1:])
    assert (rows.column("depth").to_numpy() == 2733).all()  # rarefied
    assert (rows.column("unifrac_row").to_numpy() >= 0).all()  # every sample has its UniFrac row
    # reproducible: the same command again gives the same rows (the seed fixes the rarefaction)
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(again), "--shared", str(SHARED_DATASETS.parent)],
                   check=True, capture_output=True)
    assert pq.read_table(again / "samples.parquet").equals(rows)


def test_a_shared_folder_without_mouse_age_is_one_clear_line(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x"), "--shared", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "--shared" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x").exists()
