"""aam._ray_internals, the one door to Ray's and Tune's private names: one test per touch point
that fails when a Ray release moves what aam reaches for, and the one-line failure when it has.

The files a real search leaves are checked in tests/distributed/test_resume_repair.py.
"""

import json
import logging
import re
import tomllib
from pathlib import Path

import pytest
import ray
import ray.cloudpickle as cloudpickle
import yaml
from packaging.requirements import Requirement

from aam import _ray_internals as door
from aam._ray_internals import RayLayoutChanged
from aam.errors import AamUserError

REPO = Path(__file__).resolve().parents[1]


def one_line_naming_ray(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and f"Ray {ray.__version__}" in message and "pip install 'ray>=2.60,<2.61'" in message
    assert isinstance(error.value, AamUserError) and error.value.exit_code == 2
    return message


# --- the Ray release ---------------------------------------------------------------------------
def test_the_installed_ray_is_the_one_the_door_and_the_pin_name():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    [pin] = [Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "ray"]
    assert pin.specifier == Requirement(door.RAY_REQUIREMENT).specifier
    assert pin.specifier.contains(ray.__version__) and door.installed_ray() == ray.__version__
    door.check_ray_version()  # what importing the door ran


@pytest.mark.parametrize("version", ["2.59.9", "2.61.0", "3.0.0"])
def test_another_ray_release_is_refused_in_one_line(version):
    with pytest.raises(RayLayoutChanged) as error:
        door.check_ray_version(version)
    message = str(error.value)
    assert "\n" not in message and f"Ray {version} is installed" in message and door.RAY_REQUIREMENT in message


# --- the embedded Ray: ray._private ----------------------------------------------------------------
def test_ray_stays_on_loopback_through_its_private_constant(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    door.keep_ray_on_loopback()
    assert ray_constants.ENABLE_RAY_CLUSTER is False
    monkeypatch.delattr(ray_constants, "ENABLE_RAY_CLUSTER")
    with pytest.raises(RayLayoutChanged) as error:
        door.keep_ray_on_loopback()
    assert "ENABLE_RAY_CLUSTER" in one_line_naming_ray(error)
    assert not hasattr(ray_constants, "ENABLE_RAY_CLUSTER")  # never set blindly where Ray no longer reads it


def test_token_auth_is_ray_own_switch(monkeypatch):
    from ray._private.authentication import authentication_token_setup as setup

    assert callable(setup._enable_token_auth)  # not called here: the test session's Ray runs without tokens
    monkeypatch.delattr(setup, "_enable_token_auth")
    with pytest.raises(RayLayoutChanged) as error:
        door.enable_token_auth()
    assert "_enable_token_auth" in one_line_naming_ray(error)


def test_the_private_loggers_quieted_are_modules_of_this_ray(monkeypatch):
    door.quiet_private_loggers()
    for name, (_, level) in door.PRIVATE_LOGGERS.items():
        assert logging.getLogger(name).level == level
    report = Path(ray.__file__).parent / door.TRAIN_REPORT_LOGGER_FILE
    assert "logger = logging.getLogger(__file__)" in report.read_text()  # named by its path, as the door does
    monkeypatch.setitem(door.PRIVATE_LOGGERS, "ray.gone", ("gone/module.py", logging.ERROR))
    with pytest.raises(RayLayoutChanged) as error:
        door.quiet_private_loggers()
    assert "ray.gone" in one_line_naming_ray(error)


# --- Ray Train's wrapper of a worker's exception ---------------------------------------------------
def test_the_exception_a_worker_raised_comes_out_of_ray_trains_wrapper():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    raised = AamUserError("the loss became NaN")
    assert door.worker_exception(UserExceptionWithTraceback(raised, "Traceback ...")) is raised
    other = RuntimeError("a dead node")
    assert door.worker_exception(other) is other
    wrapped = UserExceptionWithTraceback(raised, "Traceback ...")
    del wrapped._base_exc
    with pytest.raises(RayLayoutChanged) as error:
        door.worker_exception(wrapped)
    assert "_base_exc" in one_line_naming_ray(error)


# --- Tune's Trial, as callbacks receive it -------------------------------------------------------
def test_a_trials_failures_and_folders_come_from_tunes_trial(ray_cluster, tmp_path):
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp")
    trial = Trial("aam", config={}, storage=storage, stub=True)
    assert door.trial_failures(trial) == 0
    assert Path(door.experiment_folder(trial)) == tmp_path / "exp"
    assert door.driver_staging_folder(trial) == Path(storage.experiment_driver_staging_path)
    del trial.run_metadata
    with pytest.raises(RayLayoutChanged) as error:
        door.trial_failures(trial)
    assert "run_metadata" in one_line_naming_ray(error)


# --- Tune's state files --------------------------------------------------------------------------
def experiment_state(pairs=None, **renamed) -> dict:
    pair = [json.dumps({"trial_id": "a1", "status": "RUNNING", "config": {"lr": 0.01}}),
            json.dumps({"last_result": {"val_mae": 3.0}})]
    data = {door.TRIAL_DATA: [pair] if pairs is None else pairs, "runner_data": {}}
    for old, new in renamed.items():
        data[new] = data.pop(old)
    return data


def test_the_experiment_state_is_read_as_tune_records_trials(tmp_path):
    file = tmp_path / "experiment_state-2026-12-05_08-00-00.json"
    assert door.trial_records(experiment_state(), file) == {"a1": {"status": "RUNNING", "last_result": {"val_mae": 3.0},
                                                                   "config": {"lr": 0.01}}}
    with pytest.raises(RayLayoutChanged) as error:
        door.trial_records(experiment_state(["not a pair"]), file)
    assert "pairs" in one_line_naming_ray(error)
    with pytest.raises(RayLayoutChanged) as error:
        door.trial_records(experiment_state(trial_data="trials"), file)  # the key renamed
    assert "'trial_data'" in one_line_naming_ray(error) and file.name in str(error.value)
    without_status = [[json.dumps({"trial_id": "a1", "state": "RUNNING"}), json.dumps({"last_result": {}})]]
    with pytest.raises(RayLayoutChanged) as error:
        door.trial_records(experiment_state(without_status), file)
    assert "'status'" in one_line_naming_ray(error)


def test_the_state_files_of_one_driver_session_are_named_alike(tmp_path):
    for name in ("experiment_state-S1.json", "search_gen_state-S1.json", "searcher-state-S1.pkl",
                 "experiment_state-S2.json", "tuner.pkl"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in door.experiment_states(tmp_path)] == ["experiment_state-S1.json",
                                                                  "experiment_state-S2.json"]
    assert [p.name for p in door.session_files(tmp_path / "experiment_state-S1.json")] == [
        "experiment_state-S1.json", "search_gen_state-S1.json", "searcher-state-S1.pkl"]
    with pytest.raises(RayLayoutChanged):
        door.session_files(tmp_path / "tuner.pkl")


def search_state(**renamed) -> dict:
    state = {door.COUNTER: 3, "total_samples": 3, "finished": False,
             door.LIMITER: {door.LIVE_TRIALS: {"a1", "gone"}, door.UNFINISHED_LIVE: 2, "max_concurrent": 2}}
    for old, new in renamed.items():
        if old in state:
            state[new] = state.pop(old)
        else:
            state[door.LIMITER][new] = state[door.LIMITER].pop(old)
    return state


def test_the_search_generator_state_is_rewritten_by_its_keys(tmp_path):
    file = tmp_path / "search_gen_state-S1.json"
    state = search_state()
    assert door.search_state_trials(state, file, limited=True) == (3, {"a1", "gone"})
    door.set_search_state_trials(state, file, limited=True, recorded={"a1", "a2"}, live={"a1"})
    assert state[door.COUNTER] == 2 and state[door.LIMITER][door.LIVE_TRIALS] == {"a1"}
    assert state[door.LIMITER][door.UNFINISHED_LIVE] == 1 and set(state) == set(search_state())  # no stray key
    unlimited = {door.COUNTER: 3}
    door.set_search_state_trials(unlimited, file, limited=False, recorded={"a1"}, live={"a1"})
    assert unlimited == {door.COUNTER: 1}


@pytest.mark.parametrize("old, new", [("counter", "count"), ("name:ConcurrencyLimiter", "name:Limiter"),
                                      ("live_trials", "running_trials"),
                                      ("num_unfinished_live_trials", "num_unfinished")])
def test_a_renamed_key_of_the_search_generator_state_fails_in_one_line(tmp_path, old, new):
    state = search_state(**{old: new})
    before = cloudpickle.dumps(state)
    with pytest.raises(RayLayoutChanged) as error:
        door.set_search_state_trials(state, tmp_path / "search_gen_state-S1.json", limited=True, recorded={"a1"},
                                     live={"a1"})
    assert f"'{old}'" in one_line_naming_ray(error)
    assert cloudpickle.dumps(state) == before  # nothing half-rewritten


def test_resume_of_a_search_state_with_a_renamed_key_fails_in_one_line_and_changes_nothing(tmp_path, monkeypatch):
    from aam.distributed._resume_repair import mend_killed_experiment
    from aam.distributed.state_signature import sign_state

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "aam-space.yaml").write_text(yaml.safe_dump({"tune": {"max_concurrent_trials": 2}}))
    (experiment / "experiment_state-S1.json").write_text(json.dumps(experiment_state()))
    snapshot = experiment / "search_gen_state-S1.json"
    snapshot.write_bytes(cloudpickle.dumps(search_state(**{"name:ConcurrencyLimiter": "name:Limiter"})))
    sign_state(experiment, experiment)  # as aam signs what Tune saves
    before = snapshot.read_bytes()
    with pytest.raises(RayLayoutChanged) as error:
        mend_killed_experiment(experiment)
    message = one_line_naming_ray(error)
    assert "'name:ConcurrencyLimiter'" in message and snapshot.name in message
    assert snapshot.read_bytes() == before


def test_no_module_but_the_door_names_rays_private_state():
    private = re.compile(r"ray\._private|_base_exc|_enable_token_auth|\._internal|live_trials|ConcurrencyLimiter|"
                         r"num_unfinished|run_metadata|_getframe|f_locals|\.storage\.|['\"]counter['\"]|trial_data|"
                         r"_ot_trials|_ot_study|_completed_trials")
    found = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "aam").rglob("*.py"))
             if path.name != "_ray_internals.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if private.search(line)]
    assert not found, found


def searcher_state() -> dict:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return {door.OPTUNA_TRIALS: {}, door.OPTUNA_STUDY: study, door.OPTUNA_TOLD: set(), door.OPTUNA_METRIC: "val_mae",
            door.OPTUNA_SPACE: lambda trial: {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}}


@pytest.mark.parametrize("key", ["_ot_trials", "_ot_study", "_completed_trials", "_metric", "_space"])
def test_a_renamed_key_of_the_searcher_state_fails_in_one_line(tmp_path, key):
    state = searcher_state()
    state[f"{key}_renamed"] = state.pop(key)
    records = {"a1": {"status": "TERMINATED", "last_result": {"val_mae": 3.0}, "config": {"lr": 1e-3}}}
    with pytest.raises(RayLayoutChanged) as error:
        door.catch_up_searcher(state, tmp_path / "searcher-state-S1.pkl", records)
    assert f"'{key}'" in one_line_naming_ray(error)


def test_a_searcher_catch_up_needs_each_trials_config(tmp_path):
    state = searcher_state()
    records = {"a1": {"status": "RUNNING", "last_result": {}, "config": None}}
    with pytest.raises(RayLayoutChanged) as error:
        door.catch_up_searcher(state, tmp_path / "searcher-state-S1.pkl", records)
    assert "'config'" in one_line_naming_ray(error) and "a1" in one_line_naming_ray(error)
    records = {"a1": {"status": "TERMINATED", "last_result": {"val_mae": 3.0}, "config": {"lr": 1e-3}}}
    assert door.catch_up_searcher(state, tmp_path / "searcher-state-S1.pkl", records) == (["a1"], ["a1"])
    [trial] = state[door.OPTUNA_STUDY].trials
    assert trial.params == {"lr": 1e-3} and trial.value == 3.0
