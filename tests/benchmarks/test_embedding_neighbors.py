"""benchmarks/embedding_neighbors.py on a real (tiny) cross-validated run: every train and val
sample is predicted by the fold model that never trained on it, from that fold's own samples."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aam.config import RunConfig
from aam.training.loop import fit
from aam.training.prepare import load_static
from aam.training.session import Session

_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_DIR / "benchmarks"))
_spec = importlib.util.spec_from_file_location("embedding_neighbors", _DIR / "benchmarks" / "embedding_neighbors.py")
embedding_neighbors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(embedding_neighbors)

TINY = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, token_limit=48, batch_size=16, epochs=1, folds=3)


@pytest.mark.slow
def test_each_sample_is_predicted_out_of_fold_from_its_folds_training_samples(example_dataset, tmp_path):
    cfg = RunConfig.from_dict({"data": str(example_dataset), **TINY})
    static, rows = load_static(cfg)
    session = Session(rows, 0, verbose=False)
    fit(cfg, static, session)
    run = tmp_path / "run"
    shutil.copytree(session.last_checkpoint, run)
    payload = embedding_neighbors.main(["--run", str(run), "--data", str(example_dataset), "--k", "1,400",
                                        "--out", str(tmp_path / "out.json")])
    samples = pd.read_parquet(example_dataset / "samples.parquet")
    non_test = samples.query("split != 'test'")
    ages = non_test["target.Age_wk"].to_numpy()
    # with k at least a fold's training size, each held-out sample gets its training samples' mean:
    # the out-of-fold MAE that follows from the folds' own held-out lists
    expected = []
    for fold in sorted((run / "folds").iterdir()):
        held = set(pd.read_csv(fold / "val_predictions.tsv", sep="\t", dtype={"sample_id": str})["sample_id"])
        inside = non_test["sample_id"].isin(held).to_numpy()
        expected.append(np.abs(ages[inside] - ages[~inside].mean()))
    assert sum(len(e) for e in expected) == len(non_test)  # every train and val sample held out once
    assert payload["results"]["k400"]["oof_mae"] == pytest.approx(float(np.mean(np.concatenate(expected))))
    # a 1-NN among the fold's own training samples: never the sample itself, so not a perfect score
    assert payload["results"]["k1"]["oof_mae"] > 0
    assert json.loads((tmp_path / "out.json").read_text())["results"]["head"]["oof_mae"] is not None
