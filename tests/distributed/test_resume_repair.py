"""The layout of Ray Tune's private experiment files that `aam tune --resume` reads and rewrites,
in the files a real search left.

`aam._ray_internals` reads and rewrites them as Ray 2.60 lays them out (and pyproject.toml pins
that Ray). These tests fail when a Ray release moves what it relies on: then change the door with
the pin, not one without the other. tests/test_ray_internals.py checks the one-line failure when
a key is missing.
"""

import json
import re

import pytest
import ray.cloudpickle as cloudpickle

from aam import _ray_internals as tune_files
from aam.search import read_experiment, recorded_trials

pytestmark = pytest.mark.slow


def test_the_experiment_state_lists_every_trial_by_id_and_status(small_experiment):
    [state] = tune_files.experiment_states(small_experiment)
    for trial_json, runtime_json in json.loads(state.read_text())[tune_files.TRIAL_DATA]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        assert isinstance(trial["trial_id"], str) and trial["status"] == "TERMINATED"
        assert "last_result" in runtime
    records = tune_files.trial_records(json.loads(state.read_text()), state)
    assert set(records) == set(recorded_trials(small_experiment)) == {t.trial_id for t in read_experiment(
        small_experiment).trials}
    assert all(r["status"] == "TERMINATED" and r["last_result"]["training_iteration"] for r in records.values())


def test_a_trials_last_result_in_the_state_is_its_last_result_json_line(small_experiment):
    # what a resume puts back when a kill cut the copy of result.json short
    [state] = tune_files.experiment_states(small_experiment)
    for trial_id, record in tune_files.trial_records(json.loads(state.read_text()), state).items():
        lines = (small_experiment / f"trial_{trial_id}" / tune_files.RESULT_FILE).read_text().splitlines()
        rebuilt, written = json.loads(tune_files.result_line(record["last_result"])), json.loads(lines[-1])
        # `done` may differ: the state marks the result a trial ended on, result.json may not
        assert {k: v for k, v in rebuilt.items() if k != "done"} == {k: v for k, v in written.items() if k != "done"}


def test_the_search_generator_state_holds_the_counter_and_the_limiter_the_repair_rewrites(small_experiment):
    [snapshot] = tune_files.search_states(small_experiment)
    state = cloudpickle.loads(snapshot.read_bytes())
    assert state[tune_files.COUNTER] == len(recorded_trials(small_experiment)) == 6
    limiter = state[tune_files.LIMITER]  # SMALL_SPACE sets max_concurrent_trials, so Tune adds a limiter
    assert isinstance(limiter[tune_files.LIVE_TRIALS], set) and limiter[tune_files.LIVE_TRIALS] <= set(recorded_trials(
        small_experiment))
    assert isinstance(limiter[tune_files.UNFINISHED_LIVE], int)
    counter, live = tune_files.search_state_trials(state, snapshot, limited=True)
    assert counter == 6 and live == limiter[tune_files.LIVE_TRIALS]


def test_a_searcher_snapshot_a_save_behind_is_caught_up_from_the_experiment_state(small_experiment):
    import pickle

    import optuna

    [state_file] = tune_files.experiment_states(small_experiment)
    records = tune_files.trial_records(json.loads(state_file.read_text()), state_file)
    [snapshot] = tune_files.searcher_states(small_experiment)
    searcher = pickle.loads(snapshot.read_bytes())
    trials, study = searcher[tune_files.OPTUNA_TRIALS], searcher[tune_files.OPTUNA_STUDY]
    assert set(trials) == set(records) and searcher[tune_files.OPTUNA_TOLD] == set(records)  # a whole save
    assert tune_files.catch_up_searcher(searcher, snapshot, records) == ([], [])

    # the snapshot of the save before the last trial was sampled: that trial is in no part of it
    last = max(trials, key=lambda trial_id: trials[trial_id].number)
    lost = trials.pop(last)
    searcher[tune_files.OPTUNA_TOLD].discard(last)
    behind = optuna.create_study(direction=study.direction, sampler=study.sampler)
    behind.add_trials([t for t in study.trials if t.number != lost.number])
    searcher[tune_files.OPTUNA_STUDY] = behind
    assert tune_files.catch_up_searcher(searcher, snapshot, records) == ([last], [last])
    [given] = [t for t in behind.trials if t.number == searcher[tune_files.OPTUNA_TRIALS][last].number]
    assert given.params == study.trials[lost.number].params  # the values the trial ran with
    assert given.distributions == study.trials[lost.number].distributions
    assert given.value == records[last]["last_result"]["val_mae"] == study.trials[lost.number].value
    assert last in searcher[tune_files.OPTUNA_TOLD]
    pickle.loads(pickle.dumps(searcher))  # written back as Tune reads it


def test_one_driver_session_names_all_its_state_files_alike(small_experiment):
    # a cut-short experiment state is rolled back by moving aside every `*-<session>.*` file
    [state] = tune_files.experiment_states(small_experiment)
    session = re.fullmatch(r"experiment_state-(.+)\.json", state.name).group(1)
    assert (small_experiment / f"search_gen_state-{session}.json").is_file()
    assert {p.name for p in tune_files.session_files(state)} >= {state.name, f"search_gen_state-{session}.json"}
    assert {p.name for p in tune_files.session_files(state)} == {p.name for p in small_experiment.glob(f"*-{session}.*")}


def test_every_file_tune_unpickles_on_restore_is_one_aam_signs(small_experiment):
    pickled = {p.name for pattern in tune_files.PICKLED_STATE for p in small_experiment.glob(pattern)}
    assert {"tuner.pkl"} <= pickled
    assert {p.name for p in small_experiment.glob("*.pkl")} <= pickled  # no pickle of Tune's escapes the patterns
