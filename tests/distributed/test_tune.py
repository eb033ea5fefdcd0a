"""A small real search: Ray Tune + Optuna + ASHA on the bundled data, then runs / export / best-of."""

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from aam.cli import app
from aam.search import read_experiment, resolve_trial
from aam.search import load_space
from aam.distributed.state_signature import sign_state
from aam.distributed.tune import run_search
from aam.examples import path
from aam.errors import AamUserError
from aam.training.checkpoint import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(small_experiment):
    """The session's small search (tests/conftest.py): 6 trials, ASHA, keep_checkpoints 1."""
    return small_experiment


def test_every_trial_ends_and_asha_stops_some_early(experiment):
    result = read_experiment(experiment)
    assert len(result.trials) == 6
    statuses = [t.status for t in result.trials]
    assert set(statuses) <= {"finished", "stopped early"}
    assert "stopped early" in statuses and "finished" in statuses
    for trial in result.trials:
        assert (trial.path / "config.json").is_file()
        config = json.loads((trial.path / "config.json").read_text())
        assert config["epochs"] == 3 and config["d_model"] == 16
        if config["head"] == "mlp":  # the conditional was sampled on its branch only
            assert config["head_hidden"] in ([16], [32, 16])
        else:
            assert config["head_hidden"] == [64]  # the default: not sampled for a linear head
        if trial.status == "finished":
            assert trial.epochs_done == 3
        else:
            assert 1 <= trial.epochs_done < 3
        # keep_checkpoints: 1 keeps exactly one, the newest (it holds the best model so far)
        [kept] = trial.path.glob("checkpoint_*")
        assert json.loads((kept / "metrics.json").read_text())["history"][-1]["epoch"] == trial.epochs_done


def test_runs_lists_the_trials_best_first_as_table_tsv_and_json(experiment):
    runner = CliRunner()
    table = runner.invoke(app, ["runs", str(experiment)])
    assert table.exit_code == 0 and "6 trials" in table.output
    assert "None" not in table.output and "NaN" not in table.output  # blanks read "-"
    tsv = runner.invoke(app, ["runs", str(experiment), "--format", "tsv"])
    frame = pd.read_csv(pd.io.common.StringIO(tsv.output), sep="\t")
    assert list(frame["rank"]) == list(range(1, 7))
    scores = frame["best_val_mae"].dropna().tolist()
    assert scores == sorted(scores)
    assert {"lr", "head", "status", "epochs"} <= set(frame.columns)
    parsed = json.loads(runner.invoke(app, ["runs", str(experiment), "--format", "json"]).output)
    assert parsed["metric"] == "val_mae" and len(parsed["trials"]) == 6
    # head_hidden is searched only for an mlp head: a linear-head trial shows it blank, not its default
    by_head = {row["head"]: row["head_hidden"] for row in parsed["trials"]}
    assert set(by_head) == {"linear", "mlp"}
    assert all((row["head_hidden"] is None) == (row["head"] == "linear") for row in parsed["trials"])
    assert frame.loc[frame["head"] == "linear", "head_hidden"].isna().all()


def test_export_copies_the_best_model_without_retraining(experiment, tmp_path):
    runner = CliRunner()
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", str(experiment), "--out", str(out)])
    assert result.exit_code == 0, result.output
    best = read_experiment(experiment).best()
    bundle = load_model(out)
    assert bundle.config.lr == pytest.approx(best.config["lr"])
    assert bundle.metrics["val_mae"] == pytest.approx(best.best)
    # it names the epoch whose model it took, not only Tune's 0-based checkpoint number
    assert f"the model of its best epoch, epoch {best.best_epoch} (from {best.checkpoint().name}" in result.output


def test_best_of_retrains_the_best_trial_and_compares_with_its_score(experiment, tmp_path):
    runner = CliRunner()
    out = tmp_path / "retrained"
    result = runner.invoke(app, ["train", "--best-of", str(experiment), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    best = resolve_trial(experiment)
    assert summary["trial"]["path"] == str(best.path)
    assert summary["trial"]["score"] == pytest.approx(best.best)
    retrained = summary["trial"]["retrained"]
    # same config, same seed, same data: the retrained run lands on the trial's score
    assert retrained == pytest.approx(best.best, rel=1e-3)
    assert load_model(out).config.lr == pytest.approx(best.config["lr"])


def test_resume_sets_aside_a_trial_folder_tune_never_recorded(experiment, tmp_path):
    # what a driver killed within Tune's snapshot second leaves: a trial folder its state does not list
    copy = tmp_path / "small"
    shutil.copytree(experiment, copy)
    finished = read_experiment(copy).trials
    shutil.copytree(finished[0].path, copy / "trial_neverrecorded")
    assert len(read_experiment(copy).trials) == len(finished) + 1

    result = CliRunner().invoke(app, ["tune", "--resume", str(copy)])
    assert result.exit_code == 0, result.output
    epochs = finished[0].epochs_done
    assert f"trial_neverrecorded ({epochs} epoch{'' if epochs == 1 else 's'})" in result.output
    assert (copy / "unrecorded" / "trial_neverrecorded" / "result.json").is_file()  # moved, not deleted
    resumed = read_experiment(copy)
    assert sorted(t.trial_id for t in resumed.trials) == sorted(t.trial_id for t in finished)
    assert [t.status for t in resumed.trials] == [t.status for t in finished]

    # that resume wrote a second session's snapshot; killed while writing it, the next resume rolls back
    states = sorted(copy.glob("experiment_state-*.json"))
    assert len(states) == 2
    states[-1].write_text(states[-1].read_text()[:1000])
    result = CliRunner().invoke(app, ["tune", "--resume", str(copy)])
    assert result.exit_code == 0, result.output
    assert f"{states[-1].name} was cut short" in result.output and states[0].name in result.output
    assert (copy / "unrecorded" / states[-1].name).is_file()
    assert [t.status for t in read_experiment(copy).trials] == [t.status for t in finished]


def test_resume_refuses_a_cut_short_state_with_nothing_to_roll_back_to(experiment, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(experiment, copy)
    [state] = copy.glob("experiment_state-*.json")
    state.write_text(state.read_text()[:1000])
    before = sorted(p.name for p in copy.iterdir())
    result = CliRunner().invoke(app, ["tune", "--resume", str(copy)])
    assert isinstance(result.exception, AamUserError), result.output
    assert f"{state.name} was cut short" in str(result.exception) and "new --name" in str(result.exception)
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing moved


def test_runs_reads_an_experiment_whose_tune_state_was_cut_short(experiment, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(experiment, copy)
    state = sorted(copy.glob("experiment_state-*.json"))[-1]
    state.write_text(state.read_text()[:1000])  # a driver killed while Tune wrote it
    result = CliRunner().invoke(app, ["runs", str(copy), "--format", "json"])
    assert result.exit_code == 0, result.output
    statuses = {row["trial"]: row["status"] for row in json.loads(result.output)["trials"]}
    assert statuses == {t.path.name: t.status for t in read_experiment(experiment).trials}  # told by result.json


def test_resume_reconciles_a_search_generator_that_counted_an_unrecorded_trial(experiment, tmp_path):
    import ray.cloudpickle as cloudpickle

    # what a kill during Tune's background copy can leave: the generator's snapshot and the
    # experiment state from different saves (here the generator is one trial behind)
    copy = tmp_path / "small"
    shutil.copytree(experiment, copy)
    [snapshot] = copy.glob("search_gen_state-*.json")
    state = cloudpickle.loads(snapshot.read_bytes())
    assert state["counter"] == 6
    state["counter"] = 5
    state["name:ConcurrencyLimiter"]["live_trials"] = {"neverrecorded"}
    snapshot.write_bytes(cloudpickle.dumps(state))
    sign_state(copy, copy, [snapshot.name])  # aam signed both versions when Tune saved them

    result = CliRunner().invoke(app, ["tune", "--resume", str(copy)])
    assert result.exit_code == 0, result.output
    resumed = read_experiment(copy)
    assert len(resumed.trials) == 6, [t.trial_id for t in resumed.trials]  # no seventh trial sampled
    fixed = cloudpickle.loads(sorted(copy.glob("search_gen_state-*.json"))[-1].read_bytes())
    assert fixed["counter"] == 6 and "neverrecorded" not in fixed["name:ConcurrencyLimiter"]["live_trials"]


def test_resume_makes_each_result_json_hold_the_epochs_tunes_state_records(experiment, tmp_path):
    # what a kill during Tune's background copy can leave: result.json and the state from different saves
    copy = tmp_path / "small"
    shutil.copytree(experiment, copy)
    trials = read_experiment(copy).trials
    behind = next(t for t in trials if t.status == "finished")  # its file lost its last epoch
    ahead = next(t for t in trials if t is not behind)  # its file holds an epoch the state never recorded
    behind_lines = (behind.path / "result.json").read_text().splitlines()
    (behind.path / "result.json").write_text("\n".join(behind_lines[:-1]) + "\n")
    ahead_lines = (ahead.path / "result.json").read_text().splitlines()
    extra = json.loads(ahead_lines[-1])
    extra.update(training_iteration=extra["training_iteration"] + 1, epoch=extra["epoch"] + 1)
    (ahead.path / "result.json").write_text("\n".join([*ahead_lines, json.dumps(extra)]) + "\n")
    assert read_experiment(copy).trial(behind.trial_id).status == "stopped early"  # as a kill leaves it

    result = CliRunner().invoke(app, ["tune", "--resume", str(copy)])
    assert result.exit_code == 0, result.output
    resumed = read_experiment(copy)
    assert [t.status for t in resumed.trials] == [t.status for t in trials]
    assert [t.best for t in resumed.trials] == pytest.approx([t.best for t in trials])
    put_back = json.loads((behind.path / "result.json").read_text().splitlines()[-1])
    assert {**put_back, "done": None} == {**json.loads(behind_lines[-1]), "done": None}
    assert f"{behind.path.name}: its result.json lacked epoch {behind.epochs_done}, which Tune's state" in result.output
    assert (ahead.path / "result.json").read_text().splitlines() == ahead_lines
    kept = copy / "unrecorded" / "results" / f"{ahead.path.name}.json"
    assert kept.read_text().splitlines() == [*ahead_lines, json.dumps(extra)]  # taken out, not deleted
    assert f"{ahead.path.name}: epochs {extra['epoch']} of its result.json come after" in result.output


def test_a_second_search_under_an_existing_name_is_refused_with_a_pointer_to_resume(experiment, small_space_file,
                                                                                    folder_hash):
    before = folder_hash(experiment)
    result = CliRunner().invoke(app, ["tune", str(small_space_file), "--storage-path", str(experiment.parent),
                                      "--name", experiment.name, "--data", read_experiment(experiment).trials[0]
                                      .config["data"]])
    assert isinstance(result.exception, AamUserError), result.output
    assert f"aam tune --resume {experiment}" in str(result.exception)
    assert folder_hash(experiment) == before


def test_an_experiment_is_marked_and_its_tune_state_signed(experiment):
    from aam.distributed.state_signature import SIGNATURE_FILE, verify_state

    assert (experiment / ".aam-output").read_text().strip() == "experiment"
    signed = json.loads((experiment / SIGNATURE_FILE).read_text())["files"]
    assert {"tuner.pkl"} | {p.name for p in experiment.glob("experiment_state-*.json")} <= set(signed)
    assert not list(experiment.glob("callback-states-*.pkl"))  # aam's callbacks leave Tune nothing to pickle
    verify_state(experiment)


def test_a_storage_path_that_is_a_file_is_refused_before_ray_starts(example_dataset, small_space_file, tmp_path):
    storage = tmp_path / "results.txt"
    storage.write_text("not a folder")
    result = CliRunner().invoke(app, ["tune", str(small_space_file), "--data", str(example_dataset),
                                      "--storage-path", str(storage), "--name", "x"])
    assert isinstance(result.exception, AamUserError), result.output
    assert f"storage_path {storage} is a file" in str(result.exception)
    assert storage.read_text() == "not a folder"


def test_a_trial_with_two_workers_nests_a_torch_trainer_that_keeps_the_spaces_checkpoints(
        ray_cluster, example_dataset, tmp_path):
    import yaml

    space = {"fixed": {"epochs": 2, "d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1,
                       "token_limit": 32, "batch_size": 16},
             "search": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
             "tune": {"num_samples": 1, "scheduler": {"type": "none"}, "searcher": {"type": "random", "seed": 0},
                      "keep_checkpoints": 1, "resources": {"workers": 2, "cpus_per_worker": 0.5}}}
    (tmp_path / "nested.yaml").write_text(yaml.safe_dump(space))
    storage = tmp_path / "experiments"
    experiment = run_search(load_space(tmp_path / "nested.yaml", data_override=str(example_dataset),
                                       storage_override=str(storage), name_override="nested"))
    [trial] = read_experiment(experiment).trials
    assert (trial.status, trial.epochs_done) == ("finished", 2)  # each epoch's report reached Tune
    [run] = (storage / "_train_runs").iterdir()
    assert run.name == f"nested-{trial.trial_id}"  # named from the trial: a restarted trial resumes it
    [kept] = [p for p in run.glob("checkpoint_*") if p.is_dir()]  # tune.keep_checkpoints reaches the trainer
    # Ray Train keeps the checkpoints; Tune's result names the newest (the trial folder holds none)
    assert trial.history[-1]["checkpoint_path"] == str(kept)
    assert trial.checkpoint() == kept  # what export, ensembles and the summary load
    moved = tmp_path / "moved"
    storage.rename(moved)  # an experiment copied elsewhere still finds its nested checkpoints
    [trial] = read_experiment(moved / "nested").trials
    assert trial.checkpoint() == moved / "_train_runs" / run.name / kept.name


def test_a_searched_log_transform_of_a_target_below_minus_one_is_refused_before_ray_starts(tmp_path):
    """Timeline_diet (weeks from the diet change) starts at -3: log1p cannot fit it, and the search
    says so before its first trial instead of failing whichever trial draws the log."""
    import yaml

    from aam.data import convert_dataset
    from aam.examples import path as example_path

    src = example_path("mouse_age_mini")
    data = tmp_path / "timeline"
    convert_dataset(table=src / "feature-table.biom", metadata=src / "sample-metadata.tsv", out=data,
                    targets=["Timeline_diet"], seed=0)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"fixed": {"epochs": 1, "d_model": 16}, "tune": {"num_samples": 2},
                                     "search": {"target_transform": {"choices": ["zscore", "log-zscore"]}}}))
    storage = tmp_path / "experiments"
    result = CliRunner().invoke(app, ["tune", str(space), "--data", str(data), "--storage-path", str(storage),
                                      "--name", "x"])
    assert isinstance(result.exception, AamUserError), result.output
    message = str(result.exception)
    assert "search.target_transform: choice 'log-zscore' cannot fit" in message
    assert "Timeline_diet" in message and "remove it from the choices" in message
    assert not storage.exists()


def test_a_search_with_folds_ranks_trials_on_their_out_of_fold_score(ray_cluster, example_dataset, tmp_path):
    """`folds: 3` in a search: each trial trains 3 fold models in lockstep and reports, every epoch,
    the MAE of its out-of-fold predictions of every train and val sample; what it ranks on is what
    its checkpoint's files say, and `aam export` and `aam predict` take the exported CV folder."""
    import yaml

    space = {"fixed": {"epochs": 2, "d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1,
                       "token_limit": 32, "batch_size": 16, "folds": 3, "neighbor_prior": 1},
             "search": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
             "tune": {"num_samples": 2, "scheduler": {"type": "none"}, "searcher": {"type": "random", "seed": 0},
                      "keep_checkpoints": 1}}
    (tmp_path / "cv.yaml").write_text(yaml.safe_dump(space))
    experiment = run_search(load_space(tmp_path / "cv.yaml", data_override=str(example_dataset),
                                       storage_override=str(tmp_path / "experiments"), name_override="cv"))
    trials = read_experiment(experiment).trials
    assert [t.status for t in trials] == ["finished", "finished"]
    for trial in trials:
        assert all("fold_val_mae" in epoch and "val_mae" in epoch for epoch in trial.history)
    best = read_experiment(experiment).best()
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", str(experiment), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list((out / "folds").glob("*/model.pt"))) == 3
    oof = pd.read_csv(out / "val_predictions.tsv", sep="\t")
    held_out = [set((out / "folds" / str(k) / "samples" / "val.txt").read_text().split()) for k in range(3)]
    assert not (held_out[0] & held_out[1]) and not (held_out[1] & held_out[2]) and not (held_out[0] & held_out[2])
    assert set(oof["sample_id"]) == set().union(*held_out) and oof["sample_id"].is_unique
    # each fold model's neighbour prior searches its own training samples, never its held-out ones
    for k in range(3):
        reference = set(load_model(out / "folds" / str(k)).model.neighbor_prior.sample_ids)
        assert reference == set().union(*held_out) - held_out[k]
    test = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    assert len(oof) + len(test) == 160 and not set(oof["sample_id"]) & set(test["sample_id"])  # never test
    mae = (oof["Age_wk_actual"] - oof["Age_wk_predicted"]).abs().mean()
    assert mae == pytest.approx(best.best, rel=1e-6)  # the score the search ranked the trial on
    predictions = tmp_path / "predictions.tsv"
    result = CliRunner().invoke(app, ["predict", "--model", str(out), "--table",
                                      str(path("mouse_age_mini") / "feature-table.biom"), "--out", str(predictions)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(predictions, sep="\t")) == 160
