"""`aam tune`: a Ray Tune + Optuna search over a YAML search space.

Each trial is a Tune *function* trial running `aam.training.loop.fit`:
- one CPU worker: the loop runs inside the trial itself (`TuneSession`). On 2 cores this is
  5-20x cheaper than nesting a TorchTrainer (RAY_NOTES §0), and actors are reused.
- several workers or GPU workers: the trial builds a `TorchTrainer` (Ray Train V2 pattern),
  its run named from the trial id so a restarted trial resumes, its metrics forwarded to Tune.
Both paths report every epoch with a checkpoint, so ASHA can stop any trial early and a
resumed search restarts unfinished trials from their last checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import yaml
from ray.tune import Callback

from aam.config import DATASET_NAMED_FIELDS, RunConfig, check_dataset_value
from aam.distributed.cluster import ray_runtime
from aam.distributed.experiment import (
    clear_failed,
    cut_short_state,
    error_line,
    mark_failed,
    recorded_trial_ids,
    unrecorded_trials,
)
from aam._files import mark_output
from aam.distributed.space import SearchSpace
from aam.distributed.state_signature import StateSigner, sign_state, verify_state
from aam.errors import AamUserError
from aam.training.loop import Session, StaticData, checkpoint_resume_state, fit
from aam.training.prepare import load_static, refit_transform

SPACE_FILE = "aam-space.yaml"  # the resolved space, beside Tune's own files
UNRECORDED_DIR = "unrecorded"  # trial folders a killed driver started but Tune never recorded
PROGRESS_FILE = "aam-progress.json"  # the progress printer's best and tally, for a resumed search


class TuneSession(Session):
    """The loop inside a Tune trial: reports and checkpoints go to Tune."""

    def restore_state(self) -> dict | None:
        import ray.tune

        return checkpoint_resume_state(ray.tune.get_checkpoint())

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report({**metrics, "node_id": node_id()}, checkpoint=checkpoint)


def node_id() -> str:
    """The Ray node this process runs on: every report says where the trial ran."""
    import ray

    return ray.get_runtime_context().get_node_id()


def runs_in_trial(cfg: RunConfig) -> bool:
    """One CPU worker: run the loop in the trial process instead of nesting a TorchTrainer."""
    return cfg.workers == 1 and cfg.gpus_per_worker == 0


def tune_trial(config: dict, static: StaticData, train_rows: pa.Table, space_dict: dict,
               verbose: bool = False) -> None:
    """What every trial runs (in a Tune actor)."""
    import ray.tune

    cfg = RunConfig.from_dict(config, where=f"trial {ray.tune.get_context().get_trial_id()}")
    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(trial_dir / "config.json")
    static = refit_transform(cfg, static, train_rows)  # target_transform may be a searched key
    if runs_in_trial(cfg):
        fit(cfg, static, TuneSession(train_rows, cfg.seed, verbose=False))  # the driver prints progress
    else:
        _fit_nested(cfg, static, train_rows, space_dict, verbose)


def _fit_nested(cfg: RunConfig, static: StaticData, train_rows: pa.Table, space_dict: dict,
                verbose: bool = False) -> None:
    import ray
    import ray.data
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from aam.distributed.train import train_logging, train_loop_per_worker

    context = ray.tune.get_context()
    TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "static": ray.put(static), "restore": None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker},
        ),
        datasets={"train": ray.data.from_arrow(train_rows)},
        run_config=ray.train.RunConfig(
            # named from the trial id: a restarted trial finds and resumes its own run
            name=f"{context.get_experiment_name()}-{context.get_trial_id()}",
            storage_path=str(_storage_join(space_dict["storage_path"], "_train_runs")),
            callbacks=[TuneReportCallback()],
            # a dead Train worker restarts the worker group from this run's last checkpoint, within the trial
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            # the newest N, like the trial's own checkpoints (see run_search)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=space_dict["tune"]["keep_checkpoints"]),
            logging_config=train_logging(verbose),
        ),
    ).fit()


class ProgressPrinter(Callback):
    """One line per event: a trial's epoch, its end (finished / stopped early / failed), the best so far."""

    def __init__(self, metric: str, mode: str, epochs: int, experiment: Path | None = None):
        self.metric, self.mode, self.epochs = metric, mode, epochs
        self.best: tuple[float, str] | None = None
        self.started = time.monotonic()
        self.counts = {"finished": 0, "stopped early": 0, "failed": 0}
        self.experiment = experiment
        self._loaded = False
        self._saved: dict | None = None

    def setup(self, **info):
        # the clock of this driver: a resumed search's callback comes back as it was pickled when the
        # search began, and would count the time the search was not running
        self.started = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        """A resumed search keeps its best and tally: read back from the experiment folder as plain JSON
        (Tune's own callback state would be one more pickle to trust; see state_signature)."""
        if self._loaded or not trials:
            return
        self._loaded = True
        if self.best is not None or any(self.counts.values()):
            return  # this driver has its own tally already: never replace it by an older one
        self.experiment = Path(trials[0].storage.experiment_fs_path)
        try:
            saved = json.loads((self.experiment / PROGRESS_FILE).read_text())
            best = saved["best"]
            self.best = (float(best[0]), str(best[1])) if best else None
            self.counts.update({k: int(saved["counts"][k]) for k in self.counts})
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # a fresh search, or a folder from before this file: the tally starts again

    def get_state(self) -> None:
        """Called by Tune at each snapshot: write the best and tally beside it; nothing to pickle."""
        state = {"best": list(self.best) if self.best else None, "counts": dict(self.counts)}
        if self.experiment is not None and state != self._saved and Path(self.experiment).is_dir():
            staged = Path(self.experiment) / f".{PROGRESS_FILE}.tmp"
            staged.write_text(json.dumps(state) + "\n")
            staged.replace(Path(self.experiment) / PROGRESS_FILE)
            self._saved = state
        return None

    def on_trial_start(self, iteration, trials, trial, **info):
        if _local(trial.path):
            clear_failed(Path(trial.path))  # a resumed search retries a trial that had failed
        running = 1 + sum(t.status == "RUNNING" for t in trials if t is not trial)  # its own status lags
        self.say(f"{trial.trial_id} started ({running} running)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None:
            return
        better = self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0])
        if better:
            self.best = (value, trial.trial_id)
        self.say(
            f"{trial.trial_id} epoch {result.get('training_iteration')}: {self.metric} {value:.4g}"
            f"  (best {self.best[0]:.4g} by {self.best[1]})"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = (trial.last_result or {}).get("training_iteration", 0)
        total = int(trial.config.get("epochs", self.epochs))
        kind = "finished" if done >= total else "stopped early"
        self.counts[kind] += 1
        self.say(f"{trial.trial_id} {kind} after {done}/{total} epochs" + self.tally())

    def on_trial_recover(self, iteration, trials, trial, **info):
        failures = trial.run_metadata.num_failures
        self.say(f"{trial.trial_id} failed ({_error_line(trial)}); retrying from its last checkpoint "
                 f"(retry {failures} of {trial.max_failures})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.counts["failed"] += 1
        error = _error_line(trial)
        if _local(trial.path):
            mark_failed(Path(trial.path), error, trial.run_metadata.num_failures)
        self.say(f"{trial.trial_id} FAILED for good ({error}); see {trial.path}/error.txt" + self.tally())

    def tally(self) -> str:
        return "  [" + ", ".join(f"{v} {k}" for k, v in self.counts.items() if v) + "]"

    def say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {line}", file=sys.stdout, flush=True)


def _local(path: str) -> bool:
    return "://" not in str(path)


def _error_line(trial) -> str:
    """The gist of a trial's latest failure, from the error.txt Tune just wrote (never its pickle)."""
    return error_line(Path(trial.local_path)) or "no error message"


def _trainable(space: SearchSpace, probe: RunConfig, static: StaticData, train_rows: pa.Table,
               verbose: bool = False):
    import ray.tune

    if runs_in_trial(probe):
        request = {"cpu": probe.cpus_per_worker}
    else:
        request = {"cpu": 0.01}  # the trial only waits on its TorchTrainer, whose workers hold the CPUs
    trainable = ray.tune.with_parameters(tune_trial, static=static, train_rows=train_rows, space_dict=space.to_dict(),
                                         verbose=verbose)
    return ray.tune.with_resources(trainable, request)


def _cpus_needed(space: SearchSpace, probe: RunConfig) -> float:
    concurrent = space.max_concurrent_trials or 1
    if runs_in_trial(probe):
        return concurrent * probe.cpus_per_worker
    return concurrent * (probe.workers * probe.cpus_per_worker + 0.01) + 1


def _check_choices_fit_dataset(space: SearchSpace, static: StaticData) -> None:
    """A searched column or target name that the dataset lacks fails now, not in trial 7."""
    for param in space.params:
        if param.name in DATASET_NAMED_FIELDS:
            for branch in param.branches:
                for choice in branch.choices:
                    value = list(choice) if isinstance(choice, tuple) else choice
                    check_dataset_value(param.name, value, static.targets, list(static.categoricals),
                                        where=f"{space.source}: search.{param.name}")


def run_search(space: SearchSpace, address: str | None = None, resume: bool = False,
               dashboard: bool = True, verbose: bool = False) -> Path | str:
    """Run (or resume) the search; returns the experiment folder."""
    if space.data is None:
        raise AamUserError(f"{space.source}: no dataset; pass --data DATASET_DIR or set data: in the file")
    # fixed values and resources: what every trial shares (searched keys keep their defaults here)
    probe = RunConfig.from_dict(space.constants(), where=space.source)
    if not dashboard and not runs_in_trial(probe):
        raise AamUserError(
            f"{space.source}: --no-dashboard needs trials that run in-process (resources workers: 1, "
            f"gpus_per_worker: 0); these trials nest a TorchTrainer ({probe.workers} workers, "
            f"{probe.gpus_per_worker} GPUs each), whose placement groups leak without the dashboard; drop --no-dashboard"
        )
    experiment = _experiment_path(space)
    if not resume:
        _check_new_experiment(experiment, space)
    static, train_rows = load_static(probe)
    _check_choices_fit_dataset(space, static)
    if resume:
        print(f"resuming {experiment}", flush=True)
        if isinstance(experiment, Path):
            _mend_killed_experiment(experiment)
    with ray_runtime(address, cpus_needed=_cpus_needed(space, probe), dashboard=dashboard) as ray:
        trainable = _trainable(space, probe, static, train_rows, verbose)
        if resume:
            tuner = ray.tune.Tuner.restore(
                str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            _write_space(space, experiment)
            local = experiment if isinstance(experiment, Path) else None
            tuner = ray.tune.Tuner(
                trainable,
                tune_config=space.make_tune_config(
                    reuse_actors=runs_in_trial(probe),
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=ray.tune.RunConfig(
                    name=space.name,
                    storage_path=space.storage_path,
                    verbose=0,
                    # trial folders get config.json: sync it with each checkpoint
                    sync_config=ray.tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True),
                    callbacks=[ProgressPrinter(space.metric, space.mode, probe.epochs, local),
                               *([StateSigner(experiment)] if local else [])],
                    # a trial whose worker, actor or node died starts again from its last checkpoint
                    failure_config=ray.tune.FailureConfig(max_failures=space.max_failures),
                    # The newest keep_checkpoints checkpoints. Each holds the trial's best model so far
                    # (model.pt) and the state to resume from, so the newest is both the best and the
                    # one to resume; ranked by score, Tune kept the best N *and* the newest (N+1).
                    checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=space.keep_checkpoints),
                ),
            )
            if local is not None:
                sign_state(experiment, experiment, ["tuner.pkl"])  # written by the Tuner just now
        tuner.fit()
    return experiment


def _mend_killed_experiment(experiment: Path) -> None:
    """Undo what a killed driver left half-done, before Tune reads the experiment to resume it."""
    _set_aside_cut_short_state(experiment)
    verify_state(experiment)  # before anything of it is unpickled, here or by Tuner.restore
    recorded = recorded_trial_ids(experiment)
    if recorded is not None:
        _set_aside_unrecorded(experiment, recorded)
        _reconcile_search_state(experiment, recorded)


def _move_aside(experiment: Path, paths: list[Path]) -> Path:
    """Out of Tune's and `aam runs`' way, kept for the user to look at: nothing is deleted."""
    aside = experiment / UNRECORDED_DIR
    aside.mkdir(exist_ok=True)
    for path in paths:
        path.rename(aside / path.name)
    return aside


def _set_aside_cut_short_state(experiment: Path) -> None:
    """Roll back to the previous session's snapshot when the newest was cut short mid-write.

    Tune resumes from the newest snapshot of each kind (experiment state, searcher, search
    generator, callbacks: one set per driver session); from a truncated experiment state it
    resumed wrongly without a word (a finished search started an extra trial). Moving the whole
    set of that session aside keeps the four consistent.
    """
    cut = cut_short_state(experiment)
    if cut is None:
        return
    earlier = sorted(experiment.glob("experiment_state-*.json"))[:-1]
    if not earlier:
        raise AamUserError(
            f"--resume {experiment}: Tune's experiment state {cut.name} was cut short (the search was killed while "
            f"writing it) and there is no earlier one to resume from; start the search again under a new --name "
            f"(`aam runs {experiment}` still lists its trials)"
        )
    session = cut.name.removeprefix("experiment_state-").removesuffix(".json")
    aside = _move_aside(experiment, list(experiment.glob(f"*-{session}.*")))
    print(f"{cut.name} was cut short when the search was stopped: resuming from the snapshot before it "
          f"({earlier[-1].name}); that session's state files moved to {aside}", flush=True)


def _set_aside_unrecorded(experiment: Path, recorded: set[str]) -> None:
    """Move trial folders the killed driver never recorded out of the experiment's trials.

    Tune will not continue them, so left in place they would read as trials that never finish
    (`aam runs`) and the search would seem to hold more trials than it ran.
    """
    trials = unrecorded_trials(experiment, recorded)
    if not trials:
        return
    aside = _move_aside(experiment, [t.path for t in trials])
    described = ", ".join(f"{t.path.name} ({t.epochs_done} epoch{'' if t.epochs_done == 1 else 's'})" for t in trials)
    print(f"{described}: started just before the search was stopped but not yet in Tune's "
          f"experiment state, so Tune cannot continue them; moved to {aside}, Tune samples their places again",
          flush=True)


def _reconcile_search_state(experiment: Path, recorded: set[str]) -> None:
    """Make Tune's search-generator snapshot agree with its experiment state on which trials exist.

    Tune writes the two in one save but copies them to the storage path in the background, file
    by file, while the next save may already rewrite them; a killed driver can leave a generator
    that counted a trial the experiment state never listed. Resumed as they are, the search then
    ran fewer trials than num_samples, and the concurrency limiter held a slot for that trial all
    the rest of the search (2 trials at a time became 1).
    """
    import ray.cloudpickle as cloudpickle

    snapshots = sorted(experiment.glob("search_gen_state-*.json"))
    if not snapshots:
        return
    state = cloudpickle.loads(snapshots[-1].read_bytes())
    limiter = state.get("name:ConcurrencyLimiter", {})
    live = set(limiter.get("live_trials", ()))
    if state.get("counter") == len(recorded) and live <= recorded:
        return
    state["counter"] = len(recorded)
    if limiter:
        limiter["live_trials"] = live & recorded
        limiter["num_unfinished_live_trials"] = len(live & recorded)
    staged = snapshots[-1].with_name(f".{snapshots[-1].name}.tmp")
    staged.write_bytes(cloudpickle.dumps(state))
    staged.replace(snapshots[-1])
    sign_state(experiment, experiment, [snapshots[-1].name])


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _storage_join(storage: str, name: str) -> Path | str:
    """A folder below the storage path: a local Path, or a URI string (s3://...)."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{name}"
    return Path(storage) / name


def _experiment_path(space: SearchSpace) -> Path | str:
    return _storage_join(space.storage_path, space.name)


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


def _write_space(space: SearchSpace, experiment) -> None:
    text = yaml.safe_dump(space.to_dict(), sort_keys=False)
    if isinstance(experiment, Path):
        experiment.mkdir(parents=True, exist_ok=True)
        mark_output(experiment, "experiment")
        (experiment / SPACE_FILE).write_text(text)
    else:
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{SPACE_FILE}") as out:
            out.write(text.encode())


def load_experiment_space(experiment: Path) -> SearchSpace:
    """The space an experiment was started with (for --resume and reading results)."""
    file = Path(experiment) / SPACE_FILE
    if not file.is_file():
        raise AamUserError(f"{experiment}: not an aam experiment folder (no {SPACE_FILE}); pass STORAGE/NAME")
    raw = yaml.safe_load(file.read_text())
    return SearchSpace.from_dict(raw, where=str(file), stem=raw.get("name") or Path(experiment).name)
