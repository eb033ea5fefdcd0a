"""What every trial of `aam tune` runs: `tune_trial`, in a Tune actor, on one sampled config.

- one CPU worker: the loop runs inside the trial process itself (`TuneSession`). Tune reuses
  the actor from trial to trial, and no Ray Train controller or worker group is started per
  trial, which on a small machine costs more than a short trial's epochs.
- several workers or GPU workers: the trial builds a `TorchTrainer` (Ray Train V2 pattern),
  its run named from the trial id so a restarted trial resumes, its metrics forwarded to Tune.
Both paths report every epoch with a checkpoint, so ASHA can stop any trial early and a
resumed search restarts unfinished trials from their last checkpoint.

Tune pickles `tune_trial` with its parameters: they are plain data (`TrialOptions`, the static
data, the training rows), and its name is what `Tuner.restore` checks a resumed search against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from aam.config import RunConfig
from aam.distributed._storage import storage_join
from aam.search import NESTED_RUNS_DIR
from aam.training.loop import fit
from aam.training.resume import checkpoint_resume_state
from aam.training.session import Session, StaticData
from aam.training.prepare import refit_transform, with_neighbor_reference


@dataclass(frozen=True)
class TrialOptions:
    """What a trial takes from its search besides its config (the same for every trial)."""

    storage_path: str  # the search's storage path, a folder or a URI: nested runs go below it
    keep_checkpoints: int | None  # newest checkpoints kept, by Tune per trial and by a nested TorchTrainer
    verbose: bool = False  # a nested TorchTrainer prints Ray Train's start-up lines


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


def tune_trial(config: dict, static: StaticData, train_rows: pa.Table, options: TrialOptions) -> None:
    """What every trial runs (in a Tune actor)."""
    import ray.tune

    cfg = RunConfig.from_dict(config, where=f"trial {ray.tune.get_context().get_trial_id()}")
    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(trial_dir / "config.json")
    # target_transform and neighbor_prior may be searched keys
    static = with_neighbor_reference(cfg, refit_transform(cfg, static, train_rows), train_rows)
    if runs_in_trial(cfg):
        fit(cfg, static, TuneSession(train_rows, cfg.seed, verbose=False))  # the driver prints progress
    else:
        _fit_nested(cfg, static, train_rows, options)


def _fit_nested(cfg: RunConfig, static: StaticData, train_rows: pa.Table, options: TrialOptions) -> None:
    import ray.data
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from aam.distributed.train import make_trainer

    context = ray.tune.get_context()
    make_trainer(
        cfg, static, ray.data.from_arrow(train_rows),
        # named from the trial id: a restarted trial finds and resumes its own run
        name=f"{context.get_experiment_name()}-{context.get_trial_id()}",
        storage_path=storage_join(options.storage_path, NESTED_RUNS_DIR),
        # the newest N, like the trial's own checkpoints (see the driver's CheckpointConfig)
        num_to_keep=options.keep_checkpoints,
        verbose=options.verbose,
        callbacks=[TuneReportCallback()],
    ).fit()
