"""Reading an experiment folder: how a failed trial reads (files written as Tune and aam write them)."""

import json

import yaml

from aam.search import clear_failed, error_line, mark_failed, read_experiment

ACTOR_DIED = """Failure # 1 (occurred at 2026-11-30_18-04-50)
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
\tpid: 6121
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR
"""
RAISED = """Failure # 2 (occurred at 2026-11-30_18-05-10)
ray::ImplicitFunc.train() (pid=7000, ip=127.0.0.1, actor_id=ab, repr=tune_trial)
  File "/x/aam/training/loop.py", line 196, in fit
    outputs = model(batch)
RuntimeError: shapes cannot be multiplied (16x8 and 4x4)
"""


def test_the_error_line_is_the_exception_of_the_last_failure_or_a_dead_workers_sentence(tmp_path):
    (tmp_path / "error.txt").write_text(ACTOR_DIED)
    assert error_line(tmp_path) == "The actor died unexpectedly before finishing this task."
    (tmp_path / "error.txt").write_text(ACTOR_DIED + RAISED)  # Tune appends one block per failure
    assert error_line(tmp_path) == "RuntimeError: shapes cannot be multiplied (16x8 and 4x4)"
    assert error_line(tmp_path / "nowhere") == ""


def experiment_with_a_trial_tune_left_running(tmp_path):
    """What Tune 2.60 leaves when a trial's process died for good: its state still says RUNNING."""
    experiment = tmp_path / "exp"
    trial = experiment / "trial_a1"
    trial.mkdir(parents=True)
    (experiment / "aam-space.yaml").write_text(yaml.safe_dump(
        {"objective": {"metric": "val_mae", "mode": "min"}, "fixed": {"epochs": 3}, "search": {"lr": {}}}))
    state = {"trial_data": [[json.dumps({"trial_id": "a1", "status": "RUNNING"}), json.dumps({"last_result": {}})]]}
    (experiment / "experiment_state-2026-11-30_18-04-40.json").write_text(json.dumps(state))
    (trial / "result.json").write_text(json.dumps({"epoch": 1, "training_iteration": 1, "val_mae": 27.0}) + "\n")
    (trial / "config.json").write_text(json.dumps({"epochs": 3, "lr": 1e-3}))
    (trial / "error.txt").write_text(ACTOR_DIED)
    return experiment, trial


def test_a_trial_marked_failed_reads_failed_with_its_error_in_runs_never_running(tmp_path):
    experiment, trial = experiment_with_a_trial_tune_left_running(tmp_path)
    assert read_experiment(experiment).trials[0].status == "running"  # Tune's record alone
    mark_failed(trial, error_line(trial), failures=1)
    (read,) = read_experiment(experiment).trials
    assert read.status == "failed" and read.error.startswith("The actor died")
    board = read_experiment(experiment).leaderboard()
    assert list(board["status"]) == ["failed"] and board["error"][0].startswith("The actor died")
    clear_failed(trial)  # a resumed search starts it again
    assert read_experiment(experiment).trials[0].status == "running"
