"""The one door to what Ray and Tune do not publish, and aam relies on all the same.

Everywhere else aam uses Ray's public API only. What is here was read off Ray 2.60's own code:
a constant and a function of `ray._private` (keeping an embedded Ray on 127.0.0.1 with token
auth on), the user's exception inside Ray Train's wrapper of it, Tune's `Trial` internals (its
storage folders, its failure count), and the layout of Tune's state files in an experiment folder
(which files one driver session writes, what `experiment_state-*.json` records per trial, and the
search generator's keys that `aam tune --resume` rewrites).

Importing this module checks the installed Ray against the releases it was written for
(`WRITTEN_FOR`), and every function fails with `RayLayoutChanged`, one line naming the installed
Ray and what to do, when a name, key or attribute it needs is not there: never a silent default.
tests/test_ray_internals.py fails when a Ray release moves one of them.

Ray itself is imported only inside the functions that need a running one, so `aam.search` reads
Tune's files through here without loading Ray.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from aam.errors import AamUserError

WRITTEN_FOR = ((2, 60), (2, 61))  # Ray releases from the first up to, not including, the second
RAY_REQUIREMENT = "ray>=2.60,<2.61"  # the same range, as pip reads it (pyproject.toml pins it too)


class RayLayoutChanged(AamUserError):
    """Something of Ray's that aam reaches past its public API is not where aam expects it."""


def installed_ray() -> str:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def missing(what: str) -> RayLayoutChanged:
    """The one-line failure for a name, key or attribute of Ray's that is not there."""
    return RayLayoutChanged(
        f"Ray {installed_ray()}: {what} is not where aam expects it (aam was written for Ray 2.60); "
        f"install that Ray with pip install '{RAY_REQUIREMENT}'"
    )


def check_ray_version(version: str | None = None) -> None:
    """Refuse a Ray outside `WRITTEN_FOR`: its private state may have moved without a sign."""
    version = version or installed_ray()
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if not WRITTEN_FOR[0] <= numbers < WRITTEN_FOR[1]:
        raise RayLayoutChanged(
            f"Ray {version} is installed, but aam reads Ray's and Tune's private state as Ray 2.60 lays it out; "
            f"install that Ray with pip install '{RAY_REQUIREMENT}'"
        )


check_ray_version()


def _item(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise missing(f"the key '{key}' of {where}")
    return mapping[key]


def _attribute(obj: Any, name: str, where: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise missing(f"the attribute '{name}' of {where}") from None


# --- the embedded Ray (aam.distributed.cluster) --------------------------------------------------
# loggers of Ray's private modules, each named by its module (its file below the ray package, and
# the level kept): lines a user cannot act on, or that aam says better itself
PRIVATE_LOGGERS = {
    # "Token authentication is enabled ... set RAY_AUTH_MODE=disabled": aam names where the token is
    "ray._private.authentication.authentication_token_setup": ("_private/authentication/authentication_token_setup.py",
                                                               logging.ERROR),
    # "Progress bars disabled. To enable, set ...": a warning per process about aam's own choice
    "ray.data._internal.progress": ("data/_internal/progress/__init__.py", logging.ERROR),
}
# Ray Train's "Reporting training result ..." per report: its logger is named by its file's path
TRAIN_REPORT_LOGGER_FILE = "train/v2/_internal/execution/context.py"


def quiet_private_loggers() -> None:
    """Set the levels of `PRIVATE_LOGGERS` and of Ray Train's per-report logger, in this process."""
    import ray

    package = Path(ray.__file__).parent
    for name, (file, level) in PRIVATE_LOGGERS.items():
        if not (package / file).is_file():
            raise missing(f"the module {name} (whose log lines aam quiets)")
        logging.getLogger(name).setLevel(level)
    report = package / TRAIN_REPORT_LOGGER_FILE
    if not report.is_file():
        raise missing(f"Ray Train's {TRAIN_REPORT_LOGGER_FILE} (whose per-report log lines aam quiets)")
    logging.getLogger(str(report)).setLevel(logging.WARNING)


def keep_ray_on_loopback() -> None:
    """Make `ray.init(_node_ip_address="127.0.0.1")` keep 127.0.0.1: Ray does so only while its
    `ENABLE_RAY_CLUSTER` (read once at import from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER) is false."""
    from ray._private import ray_constants

    _attribute(ray_constants, "ENABLE_RAY_CLUSTER", "ray._private.ray_constants")
    ray_constants.ENABLE_RAY_CLUSTER = False


def enable_token_auth() -> None:
    """Ray's own switch to token authentication, for this process and the ones it starts."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:
        raise missing("ray._private.authentication.authentication_token_setup._enable_token_auth") from None
    _enable_token_auth()


# --- Ray Train's errors (aam.distributed.train) -------------------------------------------------
def worker_exception(failure: BaseException) -> BaseException:
    """The exception a worker's training code raised, out of Ray Train's wrapper of it (a
    `UserExceptionWithTraceback`, which keeps it as `_base_exc`); any other failure as it is."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    if isinstance(failure, UserExceptionWithTraceback):
        return _attribute(failure, "_base_exc", "Ray Train's UserExceptionWithTraceback")
    return failure


# --- Tune's Trial, as its callbacks receive it (aam.distributed.progress, .state_signature) ------
def trial_failures(trial) -> int:
    """How often the trial has failed so far (Tune's run metadata of it)."""
    return _attribute(_attribute(trial, "run_metadata", "Tune's Trial"), "num_failures", "Tune's Trial.run_metadata")


def experiment_folder(trial) -> str:
    """The experiment's folder (a path, or a path inside a URI's file system) from the trial's storage."""
    return _attribute(_attribute(trial, "storage", "Tune's Trial"), "experiment_fs_path", "Ray's StorageContext")


def driver_staging_folder(trial) -> Path:
    """The local folder Tune saves the search's state into before copying it to the experiment
    folder (`StorageContext.experiment_driver_staging_path`, the folder `save_to_dir` writes)."""
    storage = _attribute(trial, "storage", "Tune's Trial")
    return Path(_attribute(storage, "experiment_driver_staging_path", "Ray's StorageContext"))


# --- Tune's state files in an experiment folder (aam.search.experiment, aam.distributed) --------
EXPERIMENT_STATE = "experiment_state-{session}.json"  # the trials Tune recorded (JSON)
SEARCH_STATE = "search_gen_state-{session}.json"  # the search generator, cloudpickled
SEARCHER_STATE = "searcher-state-{session}.pkl"  # the searcher itself: OptunaSearch's attributes, pickled
# every file Tune unpickles on `Tuner.restore` (what aam signs before it may be read)
PICKLED_STATE = ("tuner.pkl", "experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json",
                 "callback-states-*.pkl")
TRIAL_DATA = "trial_data"  # experiment state: one [trial JSON, run metadata JSON] pair per trial
LIVE_STATUSES = ("PENDING", "RUNNING", "PAUSED")  # a recorded trial's status when a resume continues it
COUNTER = "counter"  # search generator: how many trials it created
LIMITER = "name:ConcurrencyLimiter"  # search generator: the limiter's attributes (max_concurrent_trials set)
LIVE_TRIALS = "live_trials"  # limiter: the ids of trials it counts as running
UNFINISHED_LIVE = "num_unfinished_live_trials"
RESULT_FILE = "result.json"  # a trial's folder: one JSON line per result it reported
STATE_ONLY_KEYS = ("experiment_tag",)  # what the experiment state's copy of a result adds to its result.json line
# OptunaSearch's attributes: its Optuna trial per Tune trial id, its study, the trial ids it has
# told the study the end of, the metric it tells, and the define-by-run function it samples with
OPTUNA_TRIALS, OPTUNA_STUDY, OPTUNA_TOLD, OPTUNA_METRIC, OPTUNA_SPACE = (
    "_ot_trials", "_ot_study", "_completed_trials", "_metric", "_space")


def experiment_states(folder: Path) -> list[Path]:
    """Tune's experiment-state snapshots in `folder`, oldest first (one per driver session)."""
    return sorted(Path(folder).glob(EXPERIMENT_STATE.format(session="*")))


def search_states(folder: Path) -> list[Path]:
    """Tune's search-generator snapshots in `folder`, oldest first."""
    return sorted(Path(folder).glob(SEARCH_STATE.format(session="*")))


def searcher_states(folder: Path) -> list[Path]:
    """Tune's snapshots of the searcher in `folder`, oldest first."""
    return sorted(Path(folder).glob(SEARCHER_STATE.format(session="*")))


def session_files(state: Path) -> list[Path]:
    """Every state file of the driver session that wrote `state` (an experiment state): Tune names
    them all `*-<session>.*`."""
    prefix, suffix = EXPERIMENT_STATE.split("{session}")
    if not (state.name.startswith(prefix) and state.name.endswith(suffix)):
        raise missing(f"the session in the name of {state.name} (expected {EXPERIMENT_STATE})")
    session = state.name[len(prefix):-len(suffix)]
    return sorted(state.parent.glob(f"*-{session}.*"))


def trial_records(data: dict, file: Path) -> dict[str, dict]:
    """trial id -> {"status", "last_result", "config" (None where absent)} from a parsed experiment-state file."""
    out = {}
    where = f"Tune's experiment state {file.name}"
    for pair in _item(data, TRIAL_DATA, where):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise missing(f"the [trial, run metadata] pairs of '{TRIAL_DATA}' in {where}")
        trial, runtime = json.loads(pair[0]), json.loads(pair[1])
        trial_id = _item(trial, "trial_id", f"a trial of {where}")
        out[trial_id] = {"status": _item(trial, "status", f"a trial of {where}"),
                         "last_result": _item(runtime, "last_result", f"a trial's run metadata in {where}") or {},
                         "config": trial.get("config")}  # read only by catch_up_searcher, which checks it
    return out


def result_line(last_result: dict) -> str:
    """The line Tune's JSON logger writes to result.json for the result an experiment state
    records as a trial's last (`trial_records`)."""
    return json.dumps({key: value for key, value in last_result.items() if key not in STATE_ONLY_KEYS})


def catch_up_searcher(state: dict, file: Path, records: dict[str, dict]) -> tuple[list[str], list[str]]:
    """Make an OptunaSearch snapshot (`searcher_states`) know every trial an experiment state
    records (`trial_records`), and the score of each that Tune finished; return the trial ids it
    was given (from their configs: Optuna samples the same values again) and those it was told
    the score of. See aam.distributed._resume_repair."""
    where = f"Tune's searcher state {file.name}"
    trials, study, told = (_item(state, key, where) for key in (OPTUNA_TRIALS, OPTUNA_STUDY, OPTUNA_TOLD))
    metric, define_by_run = _item(state, OPTUNA_METRIC, where), _item(state, OPTUNA_SPACE, where)
    given, scored = [], []
    for trial_id, record in records.items():
        if trial_id not in trials:
            # the trial's config holds the values Optuna suggested (Tune's config is what
            # define-by-run captured): enqueued, the same suggestions return them
            if not isinstance(record["config"], dict):
                raise missing(f"the key 'config' of trial {trial_id} in Tune's experiment state")
            study.enqueue_trial(record["config"])
            trials[trial_id] = study.ask()
            define_by_run(trials[trial_id])
            given.append(trial_id)
        score = record["last_result"].get(metric)
        finite = isinstance(score, (int, float)) and math.isfinite(score)
        if record["status"] == "TERMINATED" and trial_id not in told and finite:
            study.tell(trials[trial_id], score)  # as OptunaSearch.on_trial_complete tells it
            told.add(trial_id)
            scored.append(trial_id)
    return given, scored


def search_state_trials(state: dict, file: Path, limited: bool) -> tuple[int, set[str] | None]:
    """(trials the search generator created, trial ids its concurrency limiter counts as live; None
    without a limiter). `limited`: the search set max_concurrent_trials, so Tune added a limiter."""
    where = f"Tune's search-generator state {file.name}"
    counter = _item(state, COUNTER, where)
    if not limited:
        return counter, None
    return counter, set(_item(_item(state, LIMITER, where), LIVE_TRIALS, f"{LIMITER} in {where}"))


def set_search_state_trials(state: dict, file: Path, limited: bool, recorded: set[str], live: set[str]) -> None:
    """Make the search generator count exactly the `recorded` trials, and its limiter hold the
    `live` ones (those Tune continues: `LIVE_STATUSES`) as live (see aam.distributed._resume_repair)."""
    search_state_trials(state, file, limited)
    if limited:  # every key checked before any is written: never half a rewrite
        _item(state[LIMITER], UNFINISHED_LIVE, f"{LIMITER} in Tune's search-generator state {file.name}")
        state[LIMITER][LIVE_TRIALS] = set(live)
        state[LIMITER][UNFINISHED_LIVE] = len(live)
    state[COUNTER] = len(recorded)
