"""`aam tune`: a Ray Tune + Optuna search over a YAML search space, started or resumed.

The driver only wires the parts together: the space (`space.py`) gives the searcher, scheduler
and limits; every trial runs `trial.tune_trial`; `progress.ProgressPrinter` prints the search as
it goes; `_resume_repair` mends a killed search's files before Tune resumes it; the experiment
folder is read back by `experiment.py`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pyarrow as pa
import yaml

from aam._files import mark_output, remove_work_folder
from aam.config import DATASET_NAMED_FIELDS, RunConfig, check_dataset_value
from aam.distributed._resume_repair import mend_killed_experiment
from aam.distributed._storage import storage_join, whole_files_filesystem, write_text
from aam.distributed.cluster import ray_runtime
# Tune pickles the run config's callbacks into tuner.pkl under their module's name: an experiment
# started when ProgressPrinter lived in this module finds it here when it is resumed.
from aam.distributed.progress import ProgressPrinter
from aam.distributed.state_signature import StateSigner, pinned_state_filesystem, sign_state
from aam.distributed.trial import TrialOptions, runs_in_trial, tune_trial
from aam.distributed.tune_config import make_tune_config
from aam.errors import AamUserError
from aam.search import SPACE_FILE, SearchSpace
from aam.training.session import StaticData
from aam.training.prepare import fit_transform, load_static

NESTED_TRIAL_CPU = 0.01  # a nesting trial only waits on its TorchTrainer, whose workers hold the CPUs


def run_search(space: SearchSpace, address: str | None = None, resume: bool = False,
               dashboard: bool = True, verbose: bool = False) -> Path | str:
    """Run (or resume) the search; returns the experiment folder."""
    if space.data is None:
        raise AamUserError(f"{space.source}: no dataset; pass --data DATASET_DIR or set data: in the file")
    shared = space.shared_config()
    if not dashboard and not runs_in_trial(shared):
        raise AamUserError(
            f"{space.source}: --no-dashboard needs trials that run in-process (resources workers: 1, "
            f"gpus_per_worker: 0); these trials nest a TorchTrainer ({shared.workers} workers, "
            f"{shared.gpus_per_worker} GPUs each), whose placement groups leak without the dashboard; drop --no-dashboard"
        )
    experiment = storage_join(space.storage_path, space.name)
    if not resume:
        _check_new_experiment(experiment, space)
    static, train_rows = load_static(shared)
    # every trial builds the neighbour prior's reference on its own transform (trial.tune_trial)
    static = dataclasses.replace(static, neighbor_reference=None)
    _check_choices_fit_dataset(space, shared, static, train_rows)
    private = None
    if resume:
        print(f"resuming {experiment}", flush=True)
        if isinstance(experiment, Path):
            private = mend_killed_experiment(experiment)
    try:
        _run_tuner(space, shared, static, train_rows, experiment, resume, private, address, dashboard, verbose)
    finally:
        if private is not None:
            remove_work_folder(private)
    return experiment


def _run_tuner(space: SearchSpace, shared: RunConfig, static: StaticData, train_rows: pa.Table,
               experiment: Path | str, resume: bool, private: Path | None, address: str | None, dashboard: bool,
               verbose: bool) -> None:
    pinned = None if private is None else pinned_state_filesystem(experiment, private)
    with ray_runtime(address, cpus_needed=_cpus_needed(space, shared), dashboard=dashboard) as ray:
        trainable = _trainable(space, shared, static, train_rows, verbose)
        if resume:
            _answer_to_old_module_names()
            # Tune unpickles its state through `pinned`: from the verified private copy, never from
            # the experiment folder, where a file could be swapped after the check
            tuner = ray.tune.Tuner.restore(
                str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True,
                storage_filesystem=pinned,
            )
        else:
            tuner = _new_tuner(space, shared, experiment, trainable)
        tuner.fit()


# where the search-space classes lived when an experiment started before they moved to aam.search:
# Tune pickled its searcher (a bound `SearchSpace.define_by_run`) under these module names
_OLD_MODULE_NAMES = {"aam.distributed.space": "aam.search.space",
                     "aam.distributed._space_validate": "aam.search._space_validate"}


def _answer_to_old_module_names() -> None:
    """Let `Tuner.restore` unpickle a searcher saved under the modules' old names (see above)."""
    import importlib
    import sys

    for old, new in _OLD_MODULE_NAMES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def _new_tuner(space: SearchSpace, shared: RunConfig, experiment: Path | str, trainable):
    import ray.tune

    _write_space(space, experiment)
    local = experiment if isinstance(experiment, Path) else None
    tuner = ray.tune.Tuner(
        trainable,
        tune_config=make_tune_config(
            space,
            reuse_actors=runs_in_trial(shared),
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=ray.tune.RunConfig(
            name=space.name,
            # on local disk, every file Tune copies into the experiment appears only when whole: a
            # driver killed mid-copy leaves the previous experiment state, never a truncated one
            storage_path=str(local.parent.resolve()) if local else space.storage_path,
            storage_filesystem=whole_files_filesystem() if local else None,
            verbose=0,
            # trial folders get config.json: sync it with each checkpoint
            sync_config=ray.tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True),
            callbacks=[ProgressPrinter(space.metric, space.mode, shared.epochs, local),
                       *([StateSigner(experiment)] if local else [])],
            # a trial whose worker, actor or node died starts again from its last checkpoint
            failure_config=ray.tune.FailureConfig(max_failures=space.max_failures),
            # The newest keep_checkpoints checkpoints. Each holds the trial's best model so far
            # (model.pt) and the state to resume from, so the newest is both the best and the
            # one to resume; ranked by score, Tune would keep the best N *and* the newest (N+1).
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=space.keep_checkpoints),
        ),
    )
    if local is not None:
        sign_state(experiment, experiment, ["tuner.pkl"])  # written by the Tuner just now
    return tuner


def _trainable(space: SearchSpace, shared: RunConfig, static: StaticData, train_rows: pa.Table,
               verbose: bool = False):
    import ray.tune

    request = {"cpu": shared.cpus_per_worker if runs_in_trial(shared) else NESTED_TRIAL_CPU}
    options = TrialOptions(storage_path=space.storage_path, keep_checkpoints=space.keep_checkpoints, verbose=verbose)
    trainable = ray.tune.with_parameters(tune_trial, static=static, train_rows=train_rows, options=options)
    return ray.tune.with_resources(trainable, request)


def _cpus_needed(space: SearchSpace, shared: RunConfig) -> float:
    concurrent = space.max_concurrent_trials or 1
    if runs_in_trial(shared):
        return concurrent * shared.cpus_per_worker
    return concurrent * (shared.workers * shared.cpus_per_worker + NESTED_TRIAL_CPU) + 1


def _check_choices_fit_dataset(space: SearchSpace, shared: RunConfig, static: StaticData,
                              train_rows: pa.Table) -> None:
    """A searched choice the dataset cannot take fails now, not in trial 7: a column or target name
    it lacks, or a log target transform of a target <= -1 (log1p of a latitude of -43); the fixed
    transform was fitted by load_static."""
    for param in space.params:
        choices = [list(c) if isinstance(c, tuple) else c for branch in param.branches for c in branch.choices]
        if param.name in DATASET_NAMED_FIELDS:
            for value in choices:
                check_dataset_value(param.name, value, static.targets, list(static.categoricals),
                                    where=f"{space.source}: search.{param.name}")
        elif param.name == "target_transform" and static.targets:
            for choice in sorted({c for c in choices if c.startswith("log-")}):
                try:
                    fit_transform(dataclasses.replace(shared, target_transform=choice), static.targets, train_rows)
                except AamUserError as e:
                    raise AamUserError(f"{space.source}: search.target_transform: choice '{choice}' cannot fit "
                                       f"the training targets ({e}); remove it from the choices") from None


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _check_new_experiment(experiment: Path | str, space: SearchSpace) -> None:
    """A new search never writes into an existing experiment (its trials and space would mix), nor
    where the storage path cannot hold one; checked before Ray starts."""
    if not isinstance(experiment, Path):
        return
    storage = experiment.parent
    for folder in (storage, experiment):
        if folder.exists() and not folder.is_dir():
            raise AamUserError(f"{space.source}: storage_path {folder} is a file, not a folder; "
                               "pass --storage-path FOLDER")
    if experiment.is_dir() and any(experiment.iterdir()):
        raise AamUserError(f"{space.source}: experiment {experiment} already exists; continue it with "
                           f"`aam tune --resume {experiment}`, or pass another --name")
    existing = next((p for p in (storage, *storage.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise AamUserError(f"{space.source}: storage_path {storage}: cannot write in {existing}; "
                           "pass a --storage-path you can write to")


def _write_space(space: SearchSpace, experiment: Path | str) -> None:
    """The resolved space, beside Tune's own files: what `--resume`, `aam runs` and the report read."""
    if isinstance(experiment, Path):
        experiment.mkdir(parents=True, exist_ok=True)
        mark_output(experiment, "experiment")
    write_text(experiment, SPACE_FILE, yaml.safe_dump(space.to_dict(), sort_keys=False))

