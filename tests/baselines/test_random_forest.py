"""`run_random_forest` on real converted data: its files, its scores, its seeds, its mistakes."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aam.baselines import leaderboard_row, read_baseline, run_random_forest, with_baselines
from aam.baselines.random_forest import parse_max_features, relative_abundances
from aam.data import Dataset, convert_dataset
from aam.errors import AamUserError
from aam.training.metrics import regression_metrics

TREES = 50


@pytest.fixture(scope="module")
def rf_run(example_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("rf") / "rf"
    result = run_random_forest(example_dataset, out, n_estimators=TREES, seed=0)
    return result


def _predictions(folder: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{split}_predictions.tsv", sep="\t")


def test_writes_a_run_folder_with_the_model_runs_columns(rf_run, example_dataset):
    out = rf_run.out
    assert sorted(p.name for p in out.iterdir()) == [
        ".aam-output", "baseline.json", "metrics.json", "pred_vs_actual.png", "test_predictions.tsv", "val_predictions.tsv"]
    dataset = Dataset.open(example_dataset)
    for split in ("val", "test"):
        frame = _predictions(out, split)
        assert list(frame.columns) == ["sample_id", "Age_wk_actual", "Age_wk_predicted"]
        assert frame["sample_id"].tolist() == dataset.split(split).column("sample_id").to_pylist()
        assert frame["Age_wk_actual"].tolist() == dataset.split(split).column("target.Age_wk").to_pylist()
    assert (out / "pred_vs_actual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "baseline.json").read_text())
    assert info["kind"] == "random_forest" and info["targets"] == ["Age_wk"]
    assert info["n_estimators"] == TREES and info["seed"] == 0 and info["train_on_val"] is False
    assert info["n_train"] == dataset.split("train").num_rows and info["fit_seconds"] > 0
    assert Path(info["data"]) == Path(example_dataset).resolve()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_metrics_json_equals_a_recomputation_from_the_prediction_files(rf_run):
    metrics = json.loads((rf_run.out / "metrics.json").read_text())
    expected = {}
    for split in ("val", "test"):
        frame = _predictions(rf_run.out, split)
        scores = regression_metrics(frame[["Age_wk_actual"]].to_numpy(), frame[["Age_wk_predicted"]].to_numpy(),
                                    ["Age_wk"])
        expected.update({f"{split}_{k}": v for k, v in scores.items()})
    assert set(metrics) == set(expected)
    assert {"val_mae", "val_rmse", "val_r2", "test_mae", "test_rmse", "test_r2", "test_Age_wk/mae"} <= set(metrics)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6), key  # the TSV keeps 8 significant digits


def test_beats_predicting_the_train_mean(rf_run, example_dataset):
    train_mean = np.mean(Dataset.open(example_dataset).split("train").column("target.Age_wk").to_numpy())
    test = _predictions(rf_run.out, "test")
    mean_mae = np.mean(np.abs(test["Age_wk_actual"] - train_mean))
    # age in weeks is written all over the mouse gut: measured ~5 weeks vs ~32 for the mean
    assert rf_run.metrics["test_mae"] < 0.5 * mean_mae
    assert rf_run.metrics["test_r2"] > 0.8


def test_same_seed_same_predictions_other_seed_other_predictions(rf_run, example_dataset, tmp_path):
    again = run_random_forest(example_dataset, tmp_path / "again", n_estimators=TREES, seed=0)
    other = run_random_forest(example_dataset, tmp_path / "other", n_estimators=TREES, seed=1)
    first = _predictions(rf_run.out, "test")["Age_wk_predicted"].to_numpy()
    assert np.array_equal(_predictions(again.out, "test")["Age_wk_predicted"].to_numpy(), first)
    assert (again.out / "metrics.json").read_text() == (rf_run.out / "metrics.json").read_text()
    assert not np.allclose(_predictions(other.out, "test")["Age_wk_predicted"].to_numpy(), first)


def test_train_on_val_fits_more_samples_and_says_so(example_dataset, tmp_path):
    result = run_random_forest(example_dataset, tmp_path / "tv", n_estimators=10, seed=0, train_on_val=True)
    dataset = Dataset.open(example_dataset)
    assert result.info["n_train"] == dataset.split("train").num_rows + dataset.split("val").num_rows
    assert result.info["train_on_val"] is True
    row = leaderboard_row(result.out, "val_mae")
    assert row["status"] == "baseline (fit on val)"


# --- features and missing targets on a tiny dataset whose counts we know -------------------------

ASVS = ["ACGTACGTAA", "CCGGTTAA", "GGGTTTCCCAAA", "TTTTACGA", "ACACACGTGT", "GATTACA"]


def _write_tiny(folder: Path, n_samples: int = 40):
    """A real BIOM table + metadata: `a` for every sample, `b` missing for every third one, `c` for one."""
    import biom
    from biom.util import biom_open

    rng = np.random.default_rng(7)
    counts = rng.integers(0, 50, size=(len(ASVS), n_samples)).astype(float)
    counts[0] += np.arange(n_samples) * 5  # ASV 0 carries the signal of `a`
    counts[:, 0] += 1  # no sample without reads
    samples = [f"S{i:02d}" for i in range(n_samples)]
    with biom_open(str(folder / "t.biom"), "w") as f:
        biom.Table(counts, ASVS, samples).to_hdf5(f, "aam tests")
    lines = ["sample_id\ta\tb\tc"]
    for i, s in enumerate(samples):
        b = "NA" if i % 3 == 0 else f"{100 - i:.1f}"
        c = "1.5" if i == 5 else "NA"  # one value: too few to fit on, wherever the split puts it
        lines.append(f"{s}\t{i * 2.0:.1f}\t{b}\t{c}")
    (folder / "m.tsv").write_text("\n".join(lines) + "\n")
    return counts, samples


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    counts, samples = _write_tiny(folder)
    out = folder / "data"
    convert_dataset(table=folder / "t.biom", metadata=folder / "m.tsv", out=out, targets=["a", "b"], seed=0,
                    split=(0.6, 0.2, 0.2))
    return {"path": out, "counts": counts, "samples": samples, "folder": folder}


def test_features_are_relative_abundances_of_the_table(tiny_dataset):
    dataset = Dataset.open(tiny_dataset["path"])
    rows = dataset.split("test")
    matrix = relative_abundances(rows, len(dataset.asvs)).toarray()
    column_of = {s: i for i, s in enumerate(tiny_dataset["samples"])}
    row_of_asv = {seq: i for i, seq in enumerate(ASVS)}
    order = [row_of_asv[seq] for seq in dataset.asvs.column("sequence").to_pylist()]
    for r, sample in enumerate(rows.column("sample_id").to_pylist()):
        raw = tiny_dataset["counts"][order, column_of[sample]]
        np.testing.assert_allclose(matrix[r], raw / raw.sum())


def test_missing_target_values_leave_that_target_only(tiny_dataset, tmp_path):
    both = run_random_forest(tiny_dataset["path"], tmp_path / "both", n_estimators=TREES, seed=0)
    only_a = run_random_forest(tiny_dataset["path"], tmp_path / "a", targets=["a"], n_estimators=TREES, seed=0)
    train = Dataset.open(tiny_dataset["path"]).split("train")
    b_train = train.column("target.b").to_numpy(zero_copy_only=False)
    assert both.info["n_train_per_target"] == {"a": train.num_rows, "b": int((~np.isnan(b_train)).sum())}
    assert both.info["n_train_per_target"]["b"] < train.num_rows

    test = _predictions(both.out, "test")
    assert list(test.columns) == ["sample_id", "a_actual", "a_predicted", "b_actual", "b_predicted"]
    assert test["b_actual"].isna().any() and test["b_predicted"].notna().all()  # every row still predicted
    # samples without b are in a's fit: a's forest is the one fitted without b at all
    assert np.array_equal(test["a_predicted"], _predictions(only_a.out, "test")["a_predicted"])
    present = test["b_actual"].notna()
    b_mae = np.mean(np.abs(test.loc[present, "b_actual"] - test.loc[present, "b_predicted"]))
    assert both.metrics["test_b/mae"] == pytest.approx(b_mae, rel=1e-6)
    assert both.metrics["test_mae"] == pytest.approx((both.metrics["test_a/mae"] + b_mae) / 2, rel=1e-6)


# --- mistakes ---------------------------------------------------------------------------------------


def test_a_target_with_fewer_than_two_training_values_fails_before_fitting(tiny_dataset, tmp_path):
    folder = tiny_dataset["folder"]
    data = tmp_path / "with_c"
    convert_dataset(table=folder / "t.biom", metadata=folder / "m.tsv", out=data, targets=["a", "c"], seed=0)
    with pytest.raises(AamUserError, match=r"value\(s\) of target 'c'; a baseline needs at least 2"):
        run_random_forest(data, tmp_path / "rf", n_estimators=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with_c"]  # no out, no temp folder


def test_an_unknown_target_suggests_the_close_one(example_dataset, tmp_path):
    with pytest.raises(AamUserError, match=r"'Age_week' is not a target .*did you mean 'Age_wk'"):
        run_random_forest(example_dataset, tmp_path / "rf", targets=["Age_week"], n_estimators=5)
    assert not (tmp_path / "rf").exists()


@pytest.mark.parametrize("data, message", [("missing", "does not exist"), ("empty", "not an aam dataset")])
def test_a_folder_that_is_no_dataset_is_a_user_error(tmp_path, data, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AamUserError, match=message):
        run_random_forest(tmp_path / data, tmp_path / "rf", n_estimators=5)
    assert not (tmp_path / "rf").exists()


def test_an_existing_out_folder_is_kept_unless_force_and_only_an_aam_baseline_is_replaced(example_dataset, tmp_path):
    out = tmp_path / "rf"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(AamUserError, match="not empty.*--force"):
        run_random_forest(example_dataset, out, n_estimators=5)
    with pytest.raises(AamUserError, match="replaces only a baseline folder that aam wrote"):
        run_random_forest(example_dataset, out, n_estimators=5, force=True)
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    run_random_forest(example_dataset, out, n_estimators=5)
    first = (out / "metrics.json").read_text()
    run_random_forest(example_dataset, out, n_estimators=5, seed=1, force=True)
    assert (out / ".aam-output").read_text().splitlines()[0] == "baseline" and (out / "metrics.json").read_text() != first
    assert [p.name for p in tmp_path.iterdir()] == ["rf"]  # neither the temp nor the old folder is left


@pytest.mark.parametrize("value, parsed", [(None, None), ("sqrt", "sqrt"), ("0.3", 0.3), ("12", 12), (1.0, 1.0)])
def test_max_features_values(value, parsed):
    assert parse_max_features(value) == parsed


@pytest.mark.parametrize("value", ["all", "0", "1.5", "-2", True])
def test_bad_max_features_is_a_user_error(value):
    with pytest.raises(AamUserError, match="--max-features"):
        parse_max_features(value)


# --- leaderboard rows -------------------------------------------------------------------------------


def test_a_baseline_becomes_a_leaderboard_row_with_its_scores(rf_run):
    metrics = json.loads((rf_run.out / "metrics.json").read_text())
    row = leaderboard_row(rf_run.out, "val_mae")
    assert row["trial"] == "baseline:rf" and row["status"] == "baseline"
    assert row["best_val_mae"] == metrics["val_mae"] and "val_mae" not in row
    assert row["test_mae"] == metrics["test_mae"] and row["val_r2"] == metrics["val_r2"]
    other = leaderboard_row(rf_run.out, "test_Age_wk/r2")
    assert other["best_test_Age_wk/r2"] == metrics["test_Age_wk/r2"] and other["val_mae"] == metrics["val_mae"]


def test_baseline_rows_join_a_board_without_spoiling_its_ranks(rf_run, tmp_path):
    import shutil

    second = tmp_path / "rf_seed1"
    shutil.copytree(rf_run.out, second)
    board = pd.DataFrame([{"rank": 1, "trial": "trial_a", "status": "finished", "epochs": 3, "best_val_mae": 9.0,
                           "best_epoch": 2, "val_r2": 0.5, "test_mae": 10.0, "test_r2": 0.4, "lr": 1e-3}])
    shown, notes = with_baselines(board, [rf_run.out, second], "val_mae", trials_data=str(tmp_path / "other"))
    assert shown["trial"].tolist() == ["trial_a", f"baseline:rf:{rf_run.out.name}", "baseline:rf:rf_seed1"]
    assert shown["rank"].tolist()[0] == 1 and pd.isna(shown["rank"].tolist()[1])
    assert "1\ttrial_a" in shown.to_csv(sep="\t", index=False)  # not 1.0
    assert len(notes) == 2 and "may not compare" in notes[0]
    same, quiet = with_baselines(board, [rf_run.out], "val_mae", trials_data=rf_run.info["data"])
    assert quiet == [] and len(same) == 2


@pytest.mark.parametrize("seed, noted", [(0, False), (1, True)])
def test_trials_on_another_conversion_are_noted_only_when_the_split_differs(rf_run, tmp_path, seed, noted):
    from aam.examples import path as example_path

    src = example_path("mouse_age_mini")
    again = tmp_path / "converted_again"
    convert_dataset(table=src / "feature-table.biom", metadata=src / "sample-metadata.tsv", out=again,
                    targets=["Age_wk"], categoricals=["Diet", "study"], unifrac=src / "weighted-unifrac.tsv",
                    seed=seed)  # the example_dataset fixture's conversion, with this split seed
    board = pd.DataFrame([{"rank": 1, "trial": "trial_a", "best_val_mae": 9.0}])
    _, notes = with_baselines(board, [rf_run.out], "val_mae", trials_data=str(again))
    assert bool(notes) == noted


def test_a_folder_that_is_no_baseline_is_a_user_error(example_dataset, tmp_path):
    with pytest.raises(AamUserError, match="not a baseline folder"):
        read_baseline(example_dataset)
    with pytest.raises(AamUserError, match="no such folder"):
        read_baseline(tmp_path / "nothing")


def test_a_damaged_baseline_file_is_one_line_naming_it(rf_run, tmp_path):
    import shutil

    copy = tmp_path / "rf"
    shutil.copytree(rf_run.out, copy)
    (copy / "metrics.json").write_text('{"val_mae": 1.0')  # cut off mid-write, or edited by hand
    with pytest.raises(AamUserError, match=r"metrics\.json: this baseline file is not valid JSON") as info:
        read_baseline(copy)
    assert "\n" not in str(info.value)
    (copy / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)  # nested past Python's limits
    with pytest.raises(AamUserError, match="nested too deeply"):
        read_baseline(copy)
