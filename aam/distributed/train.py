"""`aam train` on Ray Train: a thin driver around one `TorchTrainer`.

Each worker runs `aam.training.loop.fit` unchanged with a `RayTrainSession`: its shard of the
training split comes from Ray Data (`get_dataset_shard`), gradients are averaged by DDP, and
rank 0 evaluates and checkpoints. The UniFrac loss all-gathers sample embeddings (with their
gradients) across workers, so every pair of the global batch counts, as on one worker. A
cross-validated run (`folds: K`) instead gives every worker all the rows, and each trains whole
fold models (aam.training.folds).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import torch

from aam._files import mark_output
from aam._ray_internals import worker_exception
from aam.config import RunConfig
from aam.distributed.cluster import quiet_ray_loggers, ray_runtime
from aam.errors import AamRunFailed, AamUserError
from aam.training.loop import build_model, fit
from aam.training.resume import checkpoint_resume_state
from aam.training.session import Session, StaticData
from aam.training.prepare import load_static

RAY_STORAGE = "ray"  # inside the run folder while it trains: Ray Train's own checkpoints


class RayTrainSession(Session):
    """The session of one Ray Train worker."""

    def __init__(self, cfg: RunConfig, n_train: int, restore: dict | None):
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.cfg = cfg
        self.seed = cfg.seed
        self.n_train = n_train
        self._restore = restore
        self.shard = ray.train.get_dataset_shard("train")

    @property
    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model):
        import ray.train.torch

        if self.world_size == 1:
            return model
        # heads whose task is off are not built; only a target head with target_weight 0 idles
        idle = model.head is not None and self.cfg.target_weight == 0
        return ray.train.torch.prepare_model(
            model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": idle}
        )

    def shard_size(self) -> int:
        return self.n_train // self.world_size  # the shards are equal (DataConfig default; folds do not shard)

    def epoch_rows(self, epoch: int) -> pa.Table:
        # The shard streams from Ray Data; its rows (small: a row is a sample's ASV list) are
        # gathered once per epoch so shuffling is the loop's own seeded permutation.
        return pa.concat_tables(self.shard.iter_batches(batch_size=None, batch_format="pyarrow"))

    def restore_state(self) -> dict | None:
        import ray.train

        # a restarted worker group resumes from its own checkpoint, else from --resume-from
        return checkpoint_resume_state(ray.train.get_checkpoint()) or self._restore

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report({**metrics, "node_id": ray.get_runtime_context().get_node_id()}, checkpoint=checkpoint)

    def all_gather_embeddings(self, embeddings, rows, pad_to: int):
        if self.world_size == 1:
            return None
        import torch.distributed.nn.functional as dist_fn

        n = embeddings.shape[0]
        # all_gather wants equal shapes: pad to the configured batch size, padding rows are -1
        padded = torch.zeros(pad_to, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
        padded = torch.cat([embeddings, padded[n:]], dim=0)
        padded_rows = torch.full((pad_to,), -1, dtype=rows.dtype, device=rows.device)
        padded_rows[:n] = rows
        with warnings.catch_warnings():  # its replacement has no autograd support yet
            warnings.simplefilter("ignore", FutureWarning)
            all_embeddings = torch.cat(dist_fn.all_gather(padded), dim=0)
            all_rows = torch.cat(dist_fn.all_gather(padded_rows), dim=0)
        return all_embeddings, all_rows


def train_loop_per_worker(config: dict) -> None:
    """What each Ray Train worker runs."""
    import ray

    quiet_ray_loggers()
    cfg = RunConfig.from_dict(config["run"])
    static: StaticData = ray.get(config["static"])
    restore = ray.get(config["restore"]) if config["restore"] is not None else None
    session = RayTrainSession(cfg, static.n_train, restore)
    fit(cfg, static, session)


def train_logging(verbose: bool):
    """Ray Train's console lines: its start-up steps (requesting resources, starting the worker
    group, each worker's ip and pid, the process group) only with --verbose; otherwise none.

    A worker that dies makes Ray Train log ~100 lines of tracebacks per attempt (the dead
    worker, each survivor's broken collective, the failure policy's decision, the shutdown);
    `_one_line` says what matters once. Ray Train still writes every level to its system log
    files, <ray session>/logs/train/ray-train-sys-*.log.
    """
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if verbose else "CRITICAL")


def make_trainer(cfg: RunConfig, static: StaticData, dataset, *, name: str, storage_path: Path | str,
                 num_to_keep: int | None, verbose: bool, restore: dict | None = None, callbacks=()):
    """The one `TorchTrainer` of aam: `cfg.workers` workers running `train_loop_per_worker` over `dataset`.

    `aam train` and a Tune trial with several (or GPU) workers both build theirs here. A dead worker
    (process, actor or node) restarts the worker group from the run's last checkpoint, up to
    `cfg.max_failures` times; Ray Train keeps the newest `num_to_keep` checkpoints under
    `storage_path/name`, so a run given the same name and storage path resumes from them.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "run": cfg.to_dict(),
            "static": ray.put(static),
            "restore": ray.put(restore) if restore is not None else None,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker},
        ),
        datasets={"train": dataset},
        # cross-validation's workers each train whole fold models on every row (aam.training.folds)
        dataset_config=ray.train.DataConfig(datasets_to_split=[] if cfg.folds > 1 else "all"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_path),
            callbacks=list(callbacks) or None,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            logging_config=train_logging(verbose),
        ),
    )


def train(cfg: RunConfig, run_dir: Path, restore: dict | None = None, address: str | None = None,
          verbose: bool = False) -> dict:
    """Train `cfg` with `cfg.workers` Ray Train workers; leave the run's files in `run_dir`."""
    static, _ = load_static(cfg)
    _check_before_ray(cfg, static)
    for warning in cfg.redundancy_warnings(list(static.categoricals)):
        print(f"warning: {warning}", flush=True)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_output(run_dir, "run")
    with ray_runtime(address, cpus_needed=cfg.workers * cfg.cpus_per_worker) as ray:
        import ray.data
        import ray.train
        from ray.data.expressions import col

        # Materialised up front: once Ray Train holds the workers' CPUs, a streaming read has no
        # CPU left to run on when the machine has no spare one, and would wait for one forever.
        samples = str(Path(static.dataset_path).resolve() / "samples.parquet")
        splits = ["train", "val"] if cfg.train_on_val else ["train"]
        train_ds = ray.data.read_parquet(samples).filter(expr=col("split").is_in(splits)).materialize()
        trainer = make_trainer(cfg, static, train_ds, name="train", storage_path=run_dir / RAY_STORAGE,
                               num_to_keep=1, verbose=verbose, restore=restore)
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as error:
            raise _one_line(error, cfg, run_dir) from None
        if result.error is not None:
            raise _one_line(result.error, cfg, run_dir)
        with result.checkpoint.as_directory() as folder:
            _copy_tree(Path(folder), run_dir)
    # Ray Train's own copy of the checkpoint, there only so a restarted worker group can resume
    # mid-run; its files are now in the run folder itself
    shutil.rmtree(run_dir / RAY_STORAGE, ignore_errors=True)
    return result.metrics or {}


def _one_line(error: Exception, cfg: RunConfig, run_dir: Path) -> Exception:
    """Ray's training failure as the one line a user needs.

    A mistake the loop found in a worker (an `AamUserError`, e.g. a resumed config it cannot
    continue) stays that user error. A worker that died (process, actor or node) is named with
    the death. An exception in the training code is a bug: its worker traceback is printed first.
    """
    from ray.exceptions import RayActorError

    user_error = _user_error_in(error)
    if user_error is not None:
        return user_error
    failures = dict(getattr(error, "worker_failures", None) or {})
    if not failures:
        failures = {None: getattr(error, "controller_failure", error)}
    for cause in failures.values():
        raised = worker_exception(cause)  # the exception a worker's training code raised
        if isinstance(raised, AamUserError):
            return raised
    died = {rank: cause for rank, cause in failures.items()
            if isinstance(getattr(cause, "health_check_failure", cause), RayActorError)}
    if died:
        rank, cause = next(iter(died.items()))
        what = f"worker rank {rank} died: {_first_line(getattr(cause, 'health_check_failure', cause))}"
    else:
        rank, cause = next(iter(failures.items()))
        print(str(cause), file=sys.stderr, flush=True)  # a bug keeps its traceback
        what = f"{'worker rank ' + str(rank) if rank is not None else 'Ray Train'} raised {_last_line(cause)}"
    return AamRunFailed(
        f"training failed after {cfg.max_failures} restart(s) from its last checkpoint ({what}); continue it "
        f"with `aam train --resume-from {run_dir} --out {run_dir}`, or allow more with --max-failures"
    )


def _user_error_in(error: BaseException) -> AamUserError | None:
    """The AamUserError a worker raised (a diverged loss, a bad file), as one line for the CLI;
    Ray wraps it in its own errors, whose text is a traceback."""
    candidates = [error, *getattr(error, "worker_failures", {}).values()]
    for candidate in candidates:
        for inner in (getattr(candidate, "cause", None), candidate.__cause__, candidate):
            if isinstance(inner, AamUserError):
                message = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
                return type(inner)(message.strip().splitlines()[-1] if "Traceback" in message else message)
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _short(lines[0] if lines else type(error).__name__)


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _short(lines[-1] if lines else type(error).__name__)


def _short(line: str) -> str:
    return line if len(line) <= 200 else line[:197] + "..."


def _check_before_ray(cfg: RunConfig, static: StaticData) -> None:
    """What would otherwise fail inside every worker, once Ray has started: a train split too small
    to give each worker a sample, and a pretrained encoder that does not fit (the model is built
    here as each worker builds it)."""
    if static.n_train // cfg.workers < 1:
        raise AamUserError(
            f"workers={cfg.workers}: the train split has only {static.n_train} samples; use fewer workers"
        )
    if cfg.pretrained_encoder:
        build_model(cfg, static)


def _copy_tree(source: Path, dest: Path) -> None:
    for path in source.iterdir():
        target = dest / path.name
        if path.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)
