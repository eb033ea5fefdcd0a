"""The layout of Ray Tune's private experiment files that `aam tune --resume` reads and rewrites.

`aam.distributed._resume_repair` was written against the Ray releases pinned in pyproject.toml.
These tests read the files a real search left and fail when a Ray release moves what the repair
relies on: then change the repair with the pin, not one without the other.
"""

import json
import re
import tomllib
from pathlib import Path

import pytest
import ray
import ray.cloudpickle as cloudpickle
from packaging.requirements import Requirement

from aam.distributed import _resume_repair as repair
from aam.search import read_experiment, recorded_trial_ids

pytestmark = pytest.mark.slow


def test_the_installed_ray_is_one_the_repair_was_written_for():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    [ray_pin] = [Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "ray"]
    assert ray_pin.specifier.contains(ray.__version__), (ray.__version__, str(ray_pin.specifier))


def test_the_experiment_state_lists_every_trial_by_id_and_status(small_experiment):
    [state] = sorted(small_experiment.glob(repair.EXPERIMENT_STATES))
    for trial_json, runtime_json in json.loads(state.read_text())["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        assert isinstance(trial["trial_id"], str) and trial["status"] == "TERMINATED"
        assert "last_result" in runtime
    assert recorded_trial_ids(small_experiment) == {t.trial_id for t in read_experiment(small_experiment).trials}


def test_the_search_generator_state_holds_the_counter_and_the_limiter_the_repair_rewrites(small_experiment):
    [snapshot] = sorted(small_experiment.glob(repair.SEARCH_STATES))
    state = cloudpickle.loads(snapshot.read_bytes())
    assert state[repair.COUNTER_KEY] == len(recorded_trial_ids(small_experiment)) == 6
    limiter = state[repair.LIMITER_KEY]  # SMALL_SPACE sets max_concurrent_trials, so Tune adds a limiter
    assert isinstance(limiter[repair.LIVE_TRIALS], set) and limiter[repair.LIVE_TRIALS] <= recorded_trial_ids(
        small_experiment)
    assert isinstance(limiter[repair.UNFINISHED_LIVE], int)


def test_one_driver_session_names_all_its_state_files_alike(small_experiment):
    # a cut-short experiment state is rolled back by moving aside every `*-<session>.*` file
    [state] = small_experiment.glob(repair.EXPERIMENT_STATES)
    session = re.fullmatch(r"experiment_state-(.+)\.json", state.name).group(1)
    assert (small_experiment / f"search_gen_state-{session}.json").is_file()
    assert {p.name for p in small_experiment.glob(f"*-{session}.*")} >= {state.name, f"search_gen_state-{session}.json"}
