"""`aam baseline rf` and `aam runs --baseline` as a user types them: outputs, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from aam.cli import app


def aam(*args):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    executable = Path(sys.executable).parent / "aam"  # the installed console script, as a user runs it
    return subprocess.run([str(executable), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def rf_folder(example_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "rf"
    result = aam("baseline", "rf", "--data", example_dataset, "--out", out, "--n-estimators", "30", "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_rf_writes_its_folder_and_prints_its_scores(rf_folder):
    out, result = rf_folder
    assert {"val_predictions.tsv", "test_predictions.tsv", "metrics.json", "baseline.json",
            "pred_vs_actual.png"} <= {p.name for p in out.iterdir()}
    info = json.loads((out / "baseline.json").read_text())
    assert info["n_estimators"] == 30 and info["seed"] == 3 and info["n_jobs"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"test MAE {metrics['test_Age_wk/mae']:.4g}" in result.stdout
    assert f"val MAE {metrics['val_Age_wk/mae']:.4g}" in result.stdout
    assert f"baseline folder: {out}" in result.stdout


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("not_a_dataset", "is not an aam dataset"),
        ("unknown_target", "'age' is not a target"),
        ("out_exists", "folder is not empty"),
        ("bad_max_features", "--max-features 'most'"),
        ("no_trees", "at least 1 tree"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_and_leaves_no_folder(example_dataset, tmp_path, case, message):
    data, out, extra = example_dataset, tmp_path / "rf", []
    if case == "missing":
        data = tmp_path / "no_such_dataset"
    elif case == "not_a_dataset":
        data = tmp_path / "plain"
        data.mkdir()
    elif case == "unknown_target":
        extra = ["--targets", "age"]
    elif case == "out_exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "bad_max_features":
        extra = ["--max-features", "most"]
    elif case == "no_trees":
        extra = ["--n-estimators", "0"]
    result = aam("baseline", "rf", "--data", data, "--out", out, "--n-estimators", "5", *extra)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aam: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    if case == "out_exists":
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _experiment(folder: Path, data: Path) -> Path:
    """A finished two-trial experiment folder, in the files `read_experiment` reads (as Tune leaves them)."""
    space = {"data": str(data), "objective": {"metric": "val_mae", "mode": "min"},
             "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    folder.mkdir(parents=True)
    (folder / "aam-space.yaml").write_text(yaml.safe_dump(space))
    for name, lr, val_maes in (("trial_aaa", 1e-3, [30.0, 20.0]), ("trial_bbb", 1e-4, [40.0, 35.0])):
        trial = folder / name
        trial.mkdir()
        (trial / "config.json").write_text(json.dumps({"data": str(data), "lr": lr, "epochs": 2}))
        epochs = [{"training_iteration": i + 1, "val_mae": v, "val_r2": 0.1, "test_mae": v + 1, "test_r2": 0.05}
                  for i, v in enumerate(val_maes)]
        (trial / "result.json").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    return folder


def test_runs_shows_the_baseline_beside_the_trials(rf_folder, example_dataset, tmp_path):
    out, _ = rf_folder
    experiment = _experiment(tmp_path / "exp", Path(example_dataset).resolve())
    metrics = json.loads((out / "metrics.json").read_text())
    runner = CliRunner()
    tsv = runner.invoke(app, ["runs", str(experiment), "--format", "tsv", "--baseline", str(out)])
    assert tsv.exit_code == 0, tsv.output
    frame = pd.read_csv(pd.io.common.StringIO(tsv.output), sep="\t")
    assert frame["trial"].tolist() == ["trial_aaa", "trial_bbb", "baseline:rf"]
    assert frame["rank"].tolist()[:2] == [1, 2] and pd.isna(frame["rank"].iloc[2])
    baseline = frame.iloc[2]
    assert baseline["status"] == "baseline"
    assert baseline["best_val_mae"] == pytest.approx(metrics["val_mae"], rel=1e-9)
    assert baseline["test_mae"] == pytest.approx(metrics["test_mae"], rel=1e-9)
    assert baseline["test_r2"] == pytest.approx(metrics["test_r2"], rel=1e-9)

    table = runner.invoke(app, ["runs", str(experiment), "--baseline", str(out)])
    assert table.exit_code == 0 and "2 trials (2 finished) and 1 baseline(s)" in table.output
    assert "baseline:rf" in table.output and "note:" not in table.output
    parsed = json.loads(runner.invoke(app, ["runs", str(experiment), "--format", "json", "--baseline", str(out)]).output)
    assert len(parsed["trials"]) == 2 and parsed["baselines"][0]["trial"] == "baseline:rf"


def test_runs_with_a_folder_that_is_no_baseline_is_exit_2(example_dataset, tmp_path):
    experiment = _experiment(tmp_path / "exp", Path(example_dataset).resolve())
    result = aam("runs", experiment, "--baseline", example_dataset)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a baseline folder (no baseline.json)" in lines[0], result.stderr
    assert result.stdout == ""
