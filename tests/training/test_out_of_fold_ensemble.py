"""Bagging cross-validated runs: `aam ensemble` over `--folds K` runs (and the forest's own
out-of-fold predictions) selects on every train and val sample, out of fold; real runs, a real
forest, the real command."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from aam.baselines import run_nearest_neighbors, run_random_forest
from aam.config import RunConfig
from aam.errors import AamUserError
from aam.training.ensemble import mean_mae
from aam.training.loop import fit
from aam.training.predict import predict_table
from aam.training.prepare import load_static
from aam.training.session import Session
from aam.examples import path as example_path

TINY = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, token_limit=48, batch_size=16, epochs=2, folds=3)


@pytest.fixture(scope="module")
def runs(example_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    for seed in (0, 1):
        cfg = RunConfig.from_dict({"data": str(example_dataset), **TINY, "seed": seed})
        static, rows = load_static(cfg)
        session = Session(rows, seed, verbose=False)
        fit(cfg, static, session)
        shutil.copytree(session.last_checkpoint, root / "runs" / f"seed_{seed}")
    forest = run_random_forest(example_dataset, root / "rf", n_estimators=20, folds=3).out
    return root, forest


@pytest.fixture
def ensemble(aam_main):
    """`aam ensemble ARGS`: (exit code, stdout + stderr)."""

    def call(*args):
        code, out, err = aam_main("ensemble", *args)
        return code, out + err

    return call


def test_forest_folds_predict_every_train_and_val_sample_out_of_fold(runs, example_dataset):
    _, forest = runs
    oof = pd.read_csv(forest / "oof_predictions.tsv", sep="\t", dtype={"sample_id": str})
    non_test = pd.read_parquet(example_dataset / "samples.parquet").query("split != 'test'")["sample_id"]
    assert sorted(oof["sample_id"]) == sorted(non_test)
    metrics = json.loads((forest / "metrics.json").read_text())
    assert metrics["oof_mae"] == pytest.approx(float(np.mean(np.abs(oof["Age_wk_actual"] - oof["Age_wk_predicted"]))))
    assert json.loads((forest / "baseline.json").read_text())["folds"] == 3


def test_ensemble_of_cross_validated_runs_selects_out_of_fold_and_predicts(runs, example_dataset, ensemble):
    root, _ = runs
    code, output = ensemble(root / "runs", "--out", root / "bag")
    assert code == 0, output
    assert "out-of-fold MAE" in output
    info = json.loads((root / "bag" / "ensemble.json").read_text())
    assert info["selected_on"] == "out-of-fold" and not info["includes_forest"]
    assert sum(m["weight"] for m in info["members"]) == pytest.approx(1.0)
    assert all(m["kind"] == "model" and "/fold_" in m["name"] for m in info["members"])
    oof = pd.read_csv(root / "bag" / "val_predictions.tsv", sep="\t", dtype={"sample_id": str})
    assert len(oof) == len(pd.read_parquet(example_dataset / "samples.parquet").query("split != 'test'"))
    # the selection's score is the out-of-fold MAE of its mix: no better than its best member's
    members = [pd.read_csv(root / "runs" / f"seed_{s}" / "val_predictions.tsv", sep="\t", dtype={"sample_id": str})
               .set_index("sample_id").loc[oof["sample_id"]] for s in (0, 1)]
    best_single = min(mean_mae(m[["Age_wk_actual"]].to_numpy(), m[["Age_wk_predicted"]].to_numpy()) for m in members)
    metrics = json.loads((root / "bag" / "metrics.json").read_text())
    assert metrics["val_mae"] <= best_single + 1e-9
    frame, _ = predict_table(root / "bag", example_path("mouse_age_mini") / "feature-table.biom")
    assert frame["Age_wk_predicted"].notna().all()


def test_the_forest_joins_out_of_fold_and_a_plain_run_does_not_mix_in(runs, example_dataset, tmp_path, ensemble):
    root, forest = runs
    code, output = ensemble(root / "runs", "--out", root / "bag-rf", "--with-baseline", forest)
    assert code == 0, output
    info = json.loads((root / "bag-rf" / "ensemble.json").read_text())
    assert info["includes_forest"] == any(m["kind"] == "random_forest" for m in info["members"])
    assert "baseline:rf" in info["candidates"]
    plain = run_random_forest(example_dataset, tmp_path / "rf-plain", n_estimators=5).out
    code, output = ensemble(root / "runs", "--out", tmp_path / "x", "--with-baseline", plain)
    assert code == 2 and "oof_predictions.tsv" in output and "--folds K" in output
    assert not (tmp_path / "x").exists()


def test_the_forest_and_the_neighbours_join_together_and_are_named_in_the_result(runs, example_dataset, ensemble):
    root, forest = runs
    knn = run_nearest_neighbors(example_dataset, root / "knn", neighbors=(1, 3, 5), folds=3).out
    code, output = ensemble(root / "runs", "--out", root / "bag-both", "--with-baseline", forest,
                            "--with-baseline", knn)
    assert code == 0, output
    info = json.loads((root / "bag-both" / "ensemble.json").read_text())
    assert {"baseline:rf", "baseline:knn"} <= set(info["candidates"])
    chosen = sorted({m["kind"] for m in info["members"]} - {"model"})
    assert info["includes_baselines"] == chosen and info["includes_forest"] == ("random_forest" in chosen)
    # two-epoch tiny models are far behind both baselines out of fold: at least one is picked
    assert chosen
    labels = {"random_forest": "the Random Forest", "knn": "the nearest-neighbour baseline"}
    assert all(labels[k] in output for k in chosen)
    oof = {b: json.loads((b / "metrics.json").read_text())["oof_mae"] for b in (forest, knn)}
    assert json.loads((root / "bag-both" / "metrics.json").read_text())["val_mae"] <= min(oof.values()) + 1e-9
    with pytest.raises(AamUserError, match=f"includes {labels[chosen[0]]}.*without --with-baseline"):
        predict_table(root / "bag-both", example_path("mouse_age_mini") / "feature-table.biom")
    code, output = ensemble(root / "runs", "--out", root / "x", "--with-baseline", knn, "--with-baseline", knn)
    assert code == 2 and "given twice" in output and not (root / "x").exists()
