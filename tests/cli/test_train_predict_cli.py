"""The `aam train` / `aam predict` command lines: flags, one-line errors, nothing half-written."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aam.examples import path

TINY = ["--d-model", "16", "--n-heads", "2", "--asv-layers", "1", "--sample-layers", "1", "--token-limit", "48",
        "--epochs", "1"]


def aam(*args, env_extra=None):
    import os

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env_extra or {})}
    executable = Path(sys.executable).parent / "aam"  # the installed console script, as a user runs it
    return subprocess.run([str(executable), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "abc"], "Invalid value for '--lr'"),
        (["--count-embed", "banana"], "count_embed='banana' is not one of off, add, concat, film"),
        (["--d-model", "30"], "d_model=30 is not divisible by n_heads=4"),
        (["--targets", "Age"], "'Age' is not a target"),
        (["--freeze-encoder"], "freeze_encoder=true needs pretrained_encoder"),
    ],
)
def test_bad_flags_are_one_line_errors_before_ray_starts(example_dataset, tmp_path, args, message):
    result = aam("train", "--data", example_dataset, "--out", tmp_path / "run", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(message in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_config_file_with_an_unknown_key_names_the_file_and_key(example_dataset, tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("lr: 0.001\nlearning_rate: 0.01\n")
    result = aam("train", "--data", example_dataset, "--out", tmp_path / "run", "--config", run_yaml)
    assert result.returncode == 2
    assert "unknown key 'learning_rate'" in result.stderr and str(run_yaml) in result.stderr


def test_a_config_file_reads_off_as_the_word_and_1e_4_as_a_number(tmp_path):
    # PyYAML's YAML 1.1 would read `off` as False (not a count_embed) and `1e-4` as a string
    from aam.cli.train import load_run_file, resolve_config

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("count_embed: off\nlr: 1e-4\nema_warmup: off\n")
    cfg = resolve_config(load_run_file(run_yaml), {}, where=str(run_yaml))
    assert (cfg.count_embed, cfg.lr, cfg.ema_warmup) == ("off", 1e-4, "off")


def test_a_non_empty_out_folder_is_refused_without_force(example_dataset, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    result = aam("train", "--data", example_dataset, "--out", tmp_path / "run")
    assert result.returncode == 2 and "--force" in result.stderr
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_predict_with_a_folder_that_is_no_model_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = aam("predict", "--model", tmp_path / "empty", "--table", path("mouse_age_mini") / "feature-table.biom",
                 "--out", tmp_path / "p.tsv")
    assert result.returncode == 2 and "no model.pt there" in result.stderr
    assert not (tmp_path / "p.tsv").exists()


@pytest.mark.slow
def test_train_then_predict_from_the_command_line(example_dataset, ray_cluster, tmp_path):
    """One real `aam train` (its own embedded Ray, one worker) and `aam predict` on the same table.

    The session's Ray runs beside it, as a user's other aam command would: Ray Train's
    placement-group cleaner then finds two local Rays and, unless the worker is told which is its
    own, prints a traceback ("Found multiple active Ray instances").
    """
    run = tmp_path / "run"
    trained = aam("train", "--data", example_dataset, "--out", run, *TINY)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "run folder:" in trained.stdout
    output = trained.stdout + trained.stderr  # Ray's per-epoch INFO chatter stays out of the terminal
    assert "Reporting training result" not in output and "Starting execution of Dataset" not in output
    assert "Traceback" not in output and "multiple active Ray instances" not in output, output[-3000:]
    assert "is deprecated" not in output  # Ray Train's own deprecation warning, which no user can act on
    assert "Progress bars disabled" not in output  # Ray Data's nag about a choice aam made
    assert "epoch   1/1" in output  # while our own progress line is there
    for startup in ("Requesting resources", "Attempting to start training worker group", "Setting up process group",
                    "Started training worker group"):  # Ray Train's start-up lines: only with --verbose
        assert startup not in output, output[-3000:]
    assert "Token authentication is enabled" not in output  # the dashboard line says where the token is
    predictions = tmp_path / "predictions.tsv"
    predicted = aam("predict", "--model", run, "--table", path("mouse_age_mini") / "feature-table.biom",
                    "--out", predictions)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    new = pd.read_csv(predictions, sep="\t")
    test = pd.read_csv(run / "test_predictions.tsv", sep="\t")
    assert len(new) == 160 and set(test["sample_id"]) <= set(new["sample_id"])
    merged = test.merge(new, on="sample_id", suffixes=("", "_new"))
    assert (merged["Age_wk_predicted"] - merged["Age_wk_predicted_new"]).abs().max() < 1e-5


@pytest.mark.slow
def test_verbose_shows_ray_trains_start_up_lines(example_dataset, tmp_path):
    trained = aam("train", "--data", example_dataset, "--out", tmp_path / "run", *TINY, "--workers", "2", "--verbose")
    assert trained.returncode == 0, trained.stderr[-3000:]
    output = trained.stdout + trained.stderr
    assert "Requesting resources" in output and "Started training worker group of size 2" in output, output[-3000:]
    assert "epoch   1/1" in output
    assert not (tmp_path / "run" / "ray").exists()  # Ray Train's own copy of the checkpoint, removed at the end


def test_categorical_help_names_every_fusion_without_needing_other_flags():
    result = aam("train", "--categorical-help")
    assert result.returncode == 0, result.stderr
    for fusion in ("off", "concat", "add", "gmu", "cross-attention", "perceiver"):
        assert f"\n  {fusion} " in result.stdout
    assert "--moe-router" in result.stdout and "zscore-category" in result.stdout


# --- reliability: received files, user data, corrupt inputs -----------------------------------
def one_line_exit_2(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["predict", "resume"])
def test_a_received_model_or_state_file_never_runs_its_code(example_dataset, tmp_path, command, runs_code):
    import torch

    marker = tmp_path / "code-ran"
    run = tmp_path / "received"
    run.mkdir()
    name = "model.pt" if command == "predict" else "state.pt"
    torch.save({"format": "aam-model/1", "config": runs_code(marker)}, run / name)
    if command == "predict":
        result = aam("predict", "--model", run, "--table", path("mouse_age_mini") / "feature-table.biom",
                     "--out", tmp_path / "p.tsv")
    else:
        result = aam("train", "--resume-from", run, "--out", tmp_path / "run")
    line = one_line_exit_2(result)
    assert str(run / name) in line and "could run code" in line
    assert not marker.exists() and not (tmp_path / "run").exists() and not (tmp_path / "p.tsv").exists()


def test_force_on_a_folder_aam_did_not_write_or_on_the_input_is_refused_untouched(example_dataset, tmp_path,
                                                                                 folder_hash):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    cases = [
        (["train", "--data", example_dataset, "--out", notes, "--force"], notes, "aam did not write it"),
        (["train", "--data", example_dataset, "--out", notes, "--force", "--lr", "2"], notes, "lr=2.0 is above"),
        (["train", "--data", example_dataset, "--out", example_dataset, "--force"], example_dataset,
         "is the input --data"),
        (["convert", "--example", "mouse_age_mini", "--target", "Age_wk", "--out", notes, "--force"], notes,
         "replaces only a dataset folder"),
        (["baseline", "rf", "--data", example_dataset, "--out", example_dataset.parent, "--force"],
         example_dataset.parent, "contains the input --data"),
    ]
    for args, folder, message in cases:
        before = folder_hash(folder)
        line = one_line_exit_2(aam(*args))
        assert message in line, (args, line)
        assert folder_hash(folder) == before, args


@pytest.mark.parametrize("damage, message", [
    ("truncate-samples", "samples.parquet: not a readable Parquet file"),
    ("manifest-key", "manifest.json has no 'token_width'"),
    ("manifest-json", "is not a valid aam manifest"),
    ("lr-nan", "lr=nan is not a finite number"),
])
def test_damaged_inputs_are_one_line_before_ray_starts(example_dataset, tmp_path, damage, message):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(example_dataset, data)
    args = []
    if damage == "truncate-samples":
        file = data / "samples.parquet"
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif damage == "manifest-key":
        manifest = json.loads((data / "manifest.json").read_text())
        del manifest["token_width"]
        (data / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "manifest-json":
        (data / "manifest.json").write_text("{not json")
    else:
        args = ["--lr", "nan"]
    line = one_line_exit_2(aam("train", "--data", data, "--out", tmp_path / "run", *args))
    assert message in line, line
    assert not (tmp_path / "run").exists()


def test_predict_never_writes_over_its_own_input_table(tmp_path):
    import shutil

    table = tmp_path / "table.biom"
    shutil.copy(path("mouse_age_mini") / "feature-table.biom", table)
    before = table.read_bytes()
    line = one_line_exit_2(aam("predict", "--model", tmp_path, "--table", table, "--out", table))
    assert "is the input --table" in line and table.read_bytes() == before
