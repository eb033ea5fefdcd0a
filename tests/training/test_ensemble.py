"""Greedy ensemble selection on val (Caruana et al. 2004), and `aam ensemble` / `aam predict` on real runs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aam.examples import path as example_path
from aam.training.ensemble import greedy_select, mean_mae
from aam.training.loop import fit
from aam.training.session import Session
from aam.training.prepare import load_static

from test_loop import tiny_cfg


def test_selection_mixes_members_whose_errors_cancel_and_never_loses_to_the_best_single():
    actual = np.array([[0.0], [0.0], [0.0], [0.0]])
    over = actual + 1.0  # MAE 1
    under = actual - 1.2  # MAE 1.2
    bad = actual + 5.0
    chosen = greedy_select([bad, over, under], actual, rounds=10)
    assert chosen.weights[0] == 0 and chosen.weights[1] > 0 and chosen.weights[2] > 0
    assert chosen.weights.sum() == pytest.approx(1.0)
    mixed = sum(w * p for w, p in zip(chosen.weights, [bad, over, under]))
    assert mean_mae(actual, mixed) < 0.2 < 1.0  # far better than either
    assert min(chosen.val_curve) == pytest.approx(mean_mae(actual, mixed))


def test_the_mae_of_several_targets_skips_missing_values():
    actual = np.array([[1.0, np.nan], [3.0, 2.0]])
    predicted = np.array([[2.0, 100.0], [3.0, 4.0]])
    assert mean_mae(actual, predicted) == pytest.approx((0.5 + 2.0) / 2)


def aam(*args):
    return subprocess.run([str(Path(sys.executable).parent / "aam"), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def seed_runs(example_dataset, tmp_path_factory):
    """Two seeds of a tiny model, as `aam train --seeds 2 --out OUT` lays them out (OUT/seed_K)."""
    out = tmp_path_factory.mktemp("seeds")
    for seed in (0, 1):
        cfg = tiny_cfg(example_dataset, seed=seed, asv_identity=True, abundance_bag=True)
        static, rows = load_static(cfg)
        session = Session(rows, seed, verbose=False)
        fit(cfg, static, session)
        shutil.copytree(session.last_checkpoint, out / f"seed_{seed}")
    return out


@pytest.mark.slow
def test_ensemble_of_seeds_is_scored_once_on_test_and_predicts_new_tables(seed_runs, tmp_path):
    out = tmp_path / "ens"
    made = aam("ensemble", seed_runs, "--out", out)
    assert made.returncode == 0, made.stderr
    info = json.loads((out / "ensemble.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert not info["includes_forest"] and "Random Forest" not in made.stdout
    singles = [m["val_mae"] for m in info["members"]]
    assert metrics["val_mae"] <= min(singles) + 1e-9  # the greedy start is the best single member
    assert sum(m["weight"] for m in info["members"]) == pytest.approx(1.0)
    test = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    assert abs(test["Age_wk_actual"] - test["Age_wk_predicted"]).mean() == pytest.approx(metrics["test_mae"])
    # aam predict mixes the members' own predictions with the same weights
    table = example_path("mouse_age_mini") / "feature-table.biom"
    predicted = aam("predict", "--model", out, "--table", table, "--out", tmp_path / "p.tsv")
    assert predicted.returncode == 0, predicted.stderr
    mixed = pd.read_csv(tmp_path / "p.tsv", sep="\t").set_index("sample_id")["Age_wk_predicted"]
    expected = 0
    for member in info["members"]:
        aam("predict", "--model", out / member["model"], "--table", table, "--out", tmp_path / "m.tsv")
        expected = expected + member["weight"] * pd.read_csv(tmp_path / "m.tsv", sep="\t").set_index("sample_id")[
            "Age_wk_predicted"]
    assert (mixed - expected).abs().max() < 1e-4
    assert (test.set_index("sample_id")["Age_wk_predicted"] - mixed.loc[test["sample_id"]]).abs().max() < 1e-3
    # an existing ensemble is never overwritten
    again = aam("ensemble", seed_runs, "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_members_of_several_run_folders_keep_names_that_tell_them_apart(seed_runs, tmp_path):
    # the runs of two recipes, each with its own seed_0 and seed_1
    for recipe in ("plain", "bagged"):
        shutil.copytree(seed_runs, tmp_path / recipe)
    runs = sorted((tmp_path / recipe / seed) for recipe in ("plain", "bagged") for seed in ("seed_0", "seed_1"))
    made = aam("ensemble", *runs, "--out", tmp_path / "ens", "--rounds", "2")
    assert made.returncode == 0, made.stderr
    info = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert info["candidates"] == ["bagged/seed_0", "bagged/seed_1", "plain/seed_0", "plain/seed_1"]


@pytest.mark.slow
def test_an_ensemble_with_the_forest_says_so_and_cannot_predict_new_tables(seed_runs, example_dataset, tmp_path):
    forest = tmp_path / "rf"
    fitted = aam("baseline", "rf", "--data", example_dataset, "--out", forest, "--n-estimators", "30")
    assert fitted.returncode == 0, fitted.stderr
    out = tmp_path / "ens"
    made = aam("ensemble", seed_runs / "seed_0", seed_runs / "seed_1", "--with-baseline", forest, "--out", out)
    assert made.returncode == 0, made.stderr
    info = json.loads((out / "ensemble.json").read_text())
    assert "baseline:rf" in info["candidates"]
    forest_val = json.loads((forest / "metrics.json").read_text())["val_mae"]
    assert json.loads((out / "metrics.json").read_text())["val_mae"] <= forest_val + 1e-9
    # one epoch of a tiny model is far behind the forest on val (~25 vs ~4 weeks): it is picked
    assert info["includes_forest"] and "includes the Random Forest" in made.stdout
    refused = aam("predict", "--model", out, "--table", example_path("mouse_age_mini") / "feature-table.biom",
                  "--out", tmp_path / "p.tsv")
    assert refused.returncode == 2 and "includes the Random Forest" in refused.stderr
    assert not (tmp_path / "p.tsv").exists()


def test_a_forest_of_another_split_is_refused(seed_runs, tmp_path):
    forest = tmp_path / "rf"
    forest.mkdir()
    (forest / "baseline.json").write_text(json.dumps({"kind": "random_forest", "targets": ["Age_wk"]}))
    (forest / "metrics.json").write_text("{}")
    for split in ("val", "test"):
        pd.DataFrame({"sample_id": ["x"], "Age_wk_actual": [1.0], "Age_wk_predicted": [1.0]}).to_csv(
            forest / f"{split}_predictions.tsv", sep="\t", index=False)
    made = aam("ensemble", seed_runs, "--with-baseline", forest, "--out", tmp_path / "ens")
    assert made.returncode == 2 and "not of the same samples" in made.stderr
    assert not (tmp_path / "ens").exists()
    # predictions with no baseline.json are no baseline folder aam wrote: refused before any work
    (forest / "baseline.json").unlink()
    made = aam("ensemble", seed_runs, "--with-baseline", forest, "--out", tmp_path / "ens")
    assert made.returncode == 2 and "not a baseline folder (no baseline.json)" in made.stderr
    assert not (tmp_path / "ens").exists()


def test_aam_runs_lists_an_experiments_ensembles_beside_its_trials(seed_runs, example_dataset, tmp_path):
    import yaml

    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "aam-space.yaml").write_text(yaml.safe_dump(
        {"data": str(example_dataset), "objective": {"metric": "val_mae", "mode": "min"},
         "search": {"seed": {"type": "int", "low": 0, "high": 1}}}))
    for seed in (0, 1):  # the seed runs as the trials' newest checkpoints
        trial = experiment / f"trial_{seed}"
        shutil.copytree(seed_runs / f"seed_{seed}", trial / "checkpoint_000000")
        (trial / "config.json").write_text((seed_runs / f"seed_{seed}" / "config.json").read_text())
        history = json.loads((seed_runs / f"seed_{seed}" / "metrics.json").read_text())["history"]
        (trial / "result.json").write_text("".join(json.dumps({**h, "training_iteration": h["epoch"]}) + "\n"
                                                   for h in history))
    made = aam("ensemble", experiment, "--top", "2")
    assert made.returncode == 0, made.stderr
    assert (experiment / "ensembles" / "top2" / "ensemble.json").is_file()
    listed = aam("runs", experiment, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    parsed = json.loads(listed.stdout)
    assert len(parsed["trials"]) == 2 and [e["trial"] for e in parsed["ensembles"]] == ["ensemble:top2"]
    metrics = json.loads((experiment / "ensembles" / "top2" / "metrics.json").read_text())
    assert parsed["ensembles"][0]["best_val_mae"] == pytest.approx(metrics["val_mae"])
    assert parsed["ensembles"][0]["status"].startswith("ensemble of ")
    assert "and 1 ensemble(s)" in aam("runs", experiment).stdout


def test_an_edited_ensemble_that_hides_its_baseline_is_still_refused_by_name(tmp_path):
    # ensemble.json can come from anyone: its members' kinds decide, not only what it says of them
    from aam.errors import AamUserError
    from aam.training.predict import predict_table

    folder = tmp_path / "ens"
    folder.mkdir()
    info = {"format": "aam-ensemble/1", "targets": ["Age_wk"], "includes_forest": False, "includes_baselines": [],
            "members": [{"name": "baseline:knn", "kind": "knn", "weight": 1.0}]}
    (folder / "ensemble.json").write_text(json.dumps(info))
    with pytest.raises(AamUserError, match="includes the nearest-neighbour baseline, whose fit aam does not store"):
        predict_table(folder, example_path("mouse_age_mini") / "feature-table.biom")
