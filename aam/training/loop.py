"""The one training loop: every entry point (Ray Train workers, an in-process Tune trial, tests)
runs `fit` unchanged. What differs between them is a `Session` (aam.training.session): where
this worker's training rows come from, how metrics and checkpoints are reported, and what to
resume from.

`fit` reads as its steps: `_setup` (model, optimizer, schedule, resumed state) -> per epoch
`_train_epoch` on this worker's shard -> `_evaluate_epoch`: rank 0 evaluates the whole val split
on the original target scale and keeps the best epoch's model -> `_save_epoch`: rank 0 writes the
checkpoint folder (best model, resumable state, predictions, TensorBoard events) -> every worker
reports (a barrier under Ray Train). At the last epoch the best epoch's weights predict the test
split, which is never used for selection. The run's files are built in a work folder that is
removed when `fit` returns or raises; the session keeps its own copy of what was reported.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from aam._files import atomic_write, load_torch, remove_work_folder, save_torch, work_folder
from aam.config import RunConfig
from aam.data.augment import augment_rows
from aam.data.collate import BatchSpec, collate, move_to
from aam.training import artifacts
from aam.training.checkpoint import MODEL_FILE, ModelBundle, load_encoder_weights, model_payload
from aam.training.evaluation import evaluate, recalibrate_batchnorm
from aam.training.folds import (FOLDS_DIR, FoldFiles, FoldScore, fold_static, folds_of_rank, share_fold_scores,
                                split_folds, write_cv_folder)
from aam.training.losses import total_loss
from aam.training.optim import FiniteLossCheck, group_lrs, make_optimizer, warmup_cosine, weight_average
from aam.training.resume import restore_training, save_training_state
from aam.training.session import Session, StaticData

if TYPE_CHECKING:
    from aam.models import AAM

__all__ = ["batch_spec", "build_model", "fit"]


def mixed_precision(cfg: RunConfig, device: torch.device):
    """bf16 autocast for the training step: `auto` uses it on a GPU that supports it, `bf16`
    anywhere (on CPU it is mostly a way to test the path), `fp32` never. The losses, softmaxes and
    pooling weights are computed in fp32 inside the model whatever this says; evaluation always
    runs in fp32 so metrics do not depend on it."""
    use = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def compiles(cfg: RunConfig) -> bool:
    """Whether the transformer layers are torch.compiled: only when asked (`compile: on`). There is
    no automatic choice: on CPU compiling costs more than it saves in a run, and on a GPU it has
    not been measured faster yet (BENCHMARKS.md has the command that would measure it)."""
    return cfg.compile == "on"


def batch_spec(cfg: RunConfig, model_io: StaticData | ModelBundle, device: torch.device | None = None,
               tokens: np.ndarray | None = None) -> BatchSpec:
    """How the batches of a model trained per `cfg` are made, in training and in prediction alike.

    `model_io` says what the model reads and predicts: a run's `StaticData`, or the `ModelBundle`
    of a saved model (aam.training.predict). `tokens` are those of the table the rows index into:
    the run's dataset by default, a new table's in prediction. Shape buckets are on exactly when the
    batches go to a GPU (see aam.data.collate): there repeated shapes save per-shape kernel
    planning; on CPU the bucket padding would only add work.
    """
    return BatchSpec(model_io.tokens if tokens is None else tokens, model_io.targets, list(model_io.categoricals),
                     cfg.token_limit, model_io.transform, pad_to_limit=cfg.pad_to_token_limit, dedupe=cfg.dedupe_asvs,
                     min_abundance=cfg.min_abundance, all_asvs=cfg.abundance_bag or cfg.neighbor_prior > 0,
                     shape_buckets=device is not None and torch.device(device).type == "cuda")


def prefetched(batches: Iterator[pa.Table], make: Callable[[pa.Table], dict]) -> Iterator[tuple[pa.Table, dict]]:
    """(rows, make(rows)) for every item of `batches`, in order, with `make` (the collate) of the
    next rows running in a background thread while the caller works on the current ones.

    `batches` itself is advanced in the caller's thread (a Ray Data iterator stays where it was
    made) and `make` is a pure function of the rows, so the batches are exactly those of a plain
    loop; only their preparation overlaps the step. An error in `make` is raised here, in order.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aam-collate")
    try:
        it = iter(batches)
        rows = next(it, None)
        pending = pool.submit(make, rows) if rows is not None else None
        while pending is not None:
            current_rows, current = rows, pending
            rows = next(it, None)
            pending = pool.submit(make, rows) if rows is not None else None
            yield current_rows, current.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def augmenting(cfg: RunConfig, epoch: int, rank: int) -> Callable[[pa.Table], pa.Table] | None:
    """This epoch's augmentation of training rows (aam.data.augment), or None when `cfg` asks for
    none. Its draws are seeded by (seed, epoch, rank), and the prefetch thread calls it batch by
    batch in order, so a run draws the same samples on every path."""
    if cfg.augment_rarefy <= 0 and cfg.augment_drop_asvs <= 0 and cfg.mixup <= 0:
        return None
    rng = np.random.default_rng([cfg.seed, epoch, rank, 1])
    return lambda rows: augment_rows(rows, rng, rarefy=cfg.augment_rarefy, drop=cfg.augment_drop_asvs, mixup=cfg.mixup)


def collate_for(spec: BatchSpec, device: torch.device,
                augment: Callable[[pa.Table], pa.Table] | None = None) -> Callable[[pa.Table], dict]:
    """The collate of the training loop (after `augment`, when given): on a GPU the batch's
    tensors are pinned (in the prefetch thread) so that `move_to` copies them without blocking."""
    pin = torch.device(device).type == "cuda"

    def make(rows: pa.Table) -> dict:
        batch = collate(augment(rows) if augment is not None else rows, spec)
        return {k: (v.pin_memory() if pin and torch.is_tensor(v) else v) for k, v in batch.items()} if pin else batch

    return make


@dataclass
class _Best:
    """The best epoch so far by the val score (-1: none yet), its score and its metrics."""

    epoch: int = -1
    score: float = math.inf
    metrics: dict = field(default_factory=dict)


@dataclass
class _Run:
    """Everything one `fit` holds from epoch to epoch (made by `_setup`)."""

    cfg: RunConfig
    static: StaticData
    session: Session
    workdir: Path  # the run's files are built here and reported from here
    device: torch.device
    model: AAM  # what the optimizer, the EMA and state.pt read
    trained: torch.nn.Module  # what the training step calls: `model`, or the session's wrapper of it (DDP)
    evaluated: torch.nn.Module  # what validation, test and model.pt use: the EMA average, else `model`
    ema: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    spec: BatchSpec
    unifrac: torch.Tensor | None
    masking: torch.Generator  # the nucleotide and count masks of this rank
    writer: object = None  # TensorBoard (rank 0)
    best: _Best = field(default_factory=_Best)
    history: list = field(default_factory=list)
    start_epoch: int = 0


def fit(cfg: RunConfig, static: StaticData, session: Session) -> dict:
    """Train per `cfg`; returns the final metrics (rank 0; other ranks return {})."""
    if cfg.folds > 1:
        return _fit_folds(cfg, static, session)
    workdir = work_folder("aam-run-")
    run = None
    try:
        run = _setup(cfg, static, session, workdir)
        final: dict = {}
        for epoch in range(run.start_epoch, cfg.epochs):
            started = time.perf_counter()
            metrics = {"epoch": epoch + 1, **_train_epoch(run, epoch)}
            checkpoint_dir = None
            if session.rank == 0:
                _evaluate_epoch(run, epoch, metrics, started)
                _save_epoch(run, epoch, metrics)
                checkpoint_dir, final = str(workdir), metrics
            session.report(metrics, checkpoint_dir)
            if _every_rank_stops(run, _out_of_patience(run, epoch)):
                break
        return final
    finally:
        if run is not None and run.writer is not None:
            run.writer.close()
        remove_work_folder(workdir)


def _out_of_patience(run: _Run, epoch: int) -> bool:
    """Rank 0: whether val has not improved for `patience` epochs (early stopping)."""
    cfg = run.cfg
    return run.session.rank == 0 and 0 < cfg.patience <= epoch + 1 - run.best.epoch and not cfg.train_on_val


def _every_rank_stops(run: _Run, stop: bool) -> bool:
    """Rank 0's decision to stop, on every rank: a rank that left the loop alone would leave the
    others waiting in their next all-reduce."""
    if run.session.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([1.0 if stop else 0.0], device=run.device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())
    return stop


def _fit_folds(cfg: RunConfig, static: StaticData, session: Session) -> dict:
    """`folds: K` (see aam.training.folds): K runs on the folds of train+val, an epoch of each in
    turn, reported as one run whose val scores are their mean and whose folder is their ensemble.
    On W Ray Train workers, worker r runs folds r, r+W, ... and rank 0 writes and reports.

    Each fold stops on its own patience; the test split is scored by each fold's best epoch when
    it stops and by the folds' mean at the end. A restarted run starts its folds afresh (their
    state is in the checkpoint, but a fold-wise resume is not built)."""
    # every row on every worker (the Ray Train dataset of a cross-validated run is not sharded),
    # sorted so that the folds and their batches do not depend on the order the rows arrived in
    rows = pa.concat_tables([session.epoch_rows(0), static.eval_rows["val"]], promote_options="default")
    rows = rows.sort_by("sample_id")
    rank, world_size = session.rank, session.world_size
    mine = folds_of_rank(cfg.folds, rank, world_size)
    workdir = work_folder("aam-run-")
    fold_cfg = cfg.replace(folds=1)  # each fold is a plain run; the folder's own config.json says folds=K
    runs: dict[int, _Run] = {}
    streams: dict[int, tuple] = {}
    try:
        for k, (train, held_out) in enumerate(split_folds(rows, cfg)):
            if k in mine:
                folder = workdir / FOLDS_DIR / str(k)
                folder.mkdir(parents=True)
                runs[k] = _setup(fold_cfg, fold_static(fold_cfg, static, train, held_out),
                                 Session(train, cfg.seed, verbose=False, device=session.device), folder)
                streams[k] = _rng_state(session.device)
        if rank == 0:
            cfg.save(workdir / "config.json")
        files = FoldFiles(rank, world_size)
        history: list[dict] = []
        live = set(runs)
        for epoch in range(cfg.epochs):
            started = time.perf_counter()
            for k in sorted(live):
                with _own_rng(streams, k, session.device):
                    metrics = {"epoch": epoch + 1, **_train_epoch(runs[k], epoch)}
                    _evaluate_epoch(runs[k], epoch, metrics, time.perf_counter())
                    _save_epoch(runs[k], epoch, metrics)
            live = {k for k in live if not _out_of_patience(runs[k], epoch)}
            scores = share_fold_scores([FoldScore(k, run.static.eval_rows["val"].num_rows, run.history[-1],
                                                  run.best.epoch, k in live, rank) for k, run in runs.items()],
                                       rank, world_size)
            files.gather({k: run.workdir for k, run in runs.items()}, workdir)
            metrics, checkpoint = {"epoch": epoch + 1}, None
            if rank == 0:
                metrics = _fold_metrics(scores, epoch, started)
                metrics.update(write_cv_folder(workdir, cfg, static, [str(s.fold) for s in scores]))
                metrics["best_val_score"] = metrics["val_mae"]
                history.append(metrics)
                atomic_write(workdir / "metrics.json", json.dumps(
                    {"history": history, "folds": cfg.folds, "fold_workers": {str(s.fold): s.rank for s in scores}},
                    indent=1))
                _log_epoch(None, metrics, cfg.epochs, session.verbose)
                checkpoint = str(workdir)
            session.report(metrics, checkpoint)
            if not any(s.live for s in scores):
                break
        return history[-1] if history else {}
    finally:
        for run in runs.values():
            if run.writer is not None:
                run.writer.close()
        remove_work_folder(workdir)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextlib.contextmanager
def _own_rng(streams: dict[int, tuple], key: int, device: torch.device):
    """Run the block on `streams[key]`, its own torch RNG stream (dropout draws from the global
    one): a fold's draws then do not depend on which other folds share its process, so K folds
    train the same models on one worker as on several."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        cpu, gpu = streams[key]
        torch.set_rng_state(cpu)
        if gpu is not None:
            torch.cuda.set_rng_state(gpu, device)
        yield
        streams[key] = _rng_state(device)


def _fold_metrics(scores: list[FoldScore], epoch: int, started: float) -> dict:
    """One epoch of the folds as one run's metrics: each fold's latest val and train scores (a
    stopped fold's last ones) averaged, weighted by its held-out samples."""
    weights = np.array([s.n_held_out for s in scores], dtype=float)
    latest = [s.latest for s in scores]
    keys = [k for k in latest[0] if k.startswith(("train_", "val_")) and all(isinstance(m.get(k), float) for m in latest)]
    metrics = {"epoch": epoch + 1, "lr": latest[0].get("lr", 0.0)}
    # this epoch's held-out scores as `fold_*`: `val_*` is the out-of-fold score of the kept models
    metrics.update({k if k.startswith("train_") else f"fold_{k}": float(np.average([m[k] for m in latest],
                                                                                   weights=weights)) for k in keys})
    metrics["best_epoch"] = max(s.best_epoch for s in scores)
    metrics["epoch_seconds"] = time.perf_counter() - started
    return metrics


def build_model(cfg: RunConfig, static: StaticData) -> AAM:
    """The model `fit` trains, on the host: a new AAM for the dataset, with the pretrained encoders
    (frozen, and reading the frozen-encoder caches of `static`) when `cfg` asks for them."""
    from aam.models import AAM

    model = AAM(cfg, static.targets, static.token_width, static.categoricals,
                asv_vocabulary=static.asv_vocabulary() if cfg.asv_identity else None,
                neighbor_reference=static.neighbor_reference)
    model.index_table(static.asv_sequences)
    if cfg.pretrained_encoder:
        load_encoder_weights(model, cfg.pretrained_encoder)
        if cfg.freeze_encoder:
            model.freeze_encoder()
            if cfg.cache_asv_vectors and static.asv_vectors is not None:
                model.use_asv_cache(torch.from_numpy(np.array(static.asv_vectors)))
                if (static.sample_vectors is not None and static.cache_token_limit == cfg.token_limit
                        and static.cache_min_abundance == cfg.min_abundance and model.sample_cache_exact):
                    model.use_sample_cache(static.sample_ids, torch.from_numpy(np.array(static.sample_vectors)))
    return model


def _setup(cfg: RunConfig, static: StaticData, session: Session, workdir: Path) -> _Run:
    """The model on this worker's device, its optimizer, schedule and EMA, and the resumed state."""
    torch.manual_seed(cfg.seed)
    device = session.device
    model = build_model(cfg, static).to(device)
    if compiles(cfg):
        model.compile_transformers()
    trained = session.prepare_model(model)
    optimizer = make_optimizer(model, cfg)
    ema = weight_average(model, cfg)
    steps_per_epoch = max(math.ceil(session.shard_size() / cfg.batch_size), 1)
    run = _Run(
        cfg, static, session, workdir, device, model, trained,
        evaluated=ema.module if ema is not None else model, ema=ema, optimizer=optimizer,
        scheduler=warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_frac),
        spec=batch_spec(cfg, static, device),
        # a copy: arrays from Ray's object store are read-only
        unifrac=torch.tensor(static.unifrac, device=device) if static.unifrac is not None else None,
        masking=torch.Generator().manual_seed(cfg.seed * 7919 + session.rank),
    )
    state = session.restore_state()
    if state is not None:
        run.start_epoch = restore_training(state, cfg, workdir, model=model, ema=ema, optimizer=optimizer,
                                           scheduler=run.scheduler, masking=run.masking, best=run.best,
                                           history=run.history, rank=session.rank)
    if session.rank == 0:
        run.writer = _tensorboard(workdir)
        _write_static_files(workdir, cfg, static)
    return run


def _train_epoch(run: _Run, epoch: int) -> dict:
    """One pass over this worker's shard: the learning rates, and each loss part's mean per step."""
    cfg, device = run.cfg, run.device
    run.trained.train()
    # summed on the device in float64 (a Python float's precision) and read once after the epoch:
    # reading a loss each step would make the host wait for the device every step
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    finite = FiniteLossCheck(epoch + 1)
    batches = run.session.train_batches(epoch, cfg.batch_size)
    for rows, collated in prefetched(batches, collate_for(run.spec, device, augmenting(cfg, epoch, run.session.rank))):
        if rows.num_rows < 2:  # a lone last sample: BatchNorm needs two (shards are equal, so all ranks skip)
            continue
        batch = move_to(collated, device)
        with mixed_precision(cfg, device):
            outputs = run.trained(batch, mask_nucleotides=True, generator=run.masking)
            gathered = None
            if run.unifrac is not None and cfg.unifrac_weight > 0:
                gathered = run.session.all_gather_embeddings(
                    outputs["sample_embedding"], batch["unifrac_row"], cfg.batch_size
                )
            loss, parts = total_loss(outputs, batch, cfg, run.unifrac, gathered)
        finite.step(loss, steps)
        _optimizer_step(run, loss)
        steps += 1
        sums["loss"] = sums.get("loss", 0.0) + loss.detach().double()
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value.double()
    finite.check()
    return {**group_lrs(run.optimizer), **{f"train_{k}": float(v) / max(steps, 1) for k, v in sums.items()}}


def _optimizer_step(run: _Run, loss: torch.Tensor) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)


def _evaluate_epoch(run: _Run, epoch: int, metrics: dict, started: float) -> None:
    """Rank 0: score the val split into `metrics`; keep this epoch's model when it is the best so
    far (model.pt, val predictions); at the last epoch, score the best one on test."""
    cfg, static = run.cfg, run.static
    recalibrate_batchnorm(run.evaluated, static.calibration_rows, run.spec, run.device)
    val = evaluate(run.evaluated, static.eval_rows["val"], run.spec, cfg, run.unifrac, run.device)
    metrics.update({f"val_{k}": v for k, v in val.metrics.items()})
    score = val.metrics["mae"] if static.targets else val.metrics["loss"]
    best = run.best
    # a final fit on train+val has nothing held out to select by: the last epoch is kept
    if score < best.score or best.epoch < 0 or cfg.train_on_val:
        best.epoch, best.score = epoch + 1, score
        save_torch(
            model_payload(run.evaluated, cfg, static.transform, static.targets, static.categoricals,
                          static.token_width, metrics, best.epoch),
            run.workdir / MODEL_FILE,
        )
        if static.targets:
            artifacts.write_tsv(val.frame(static.targets, best.epoch), run.workdir / "val_predictions.tsv")
    metrics["best_epoch"] = best.epoch
    metrics["best_val_score"] = best.score
    metrics["epoch_seconds"] = time.perf_counter() - started
    if epoch + 1 == cfg.epochs or _out_of_patience(run, epoch):
        metrics.update(_test_best_epoch(run))
    if best.epoch == epoch + 1:
        best.metrics = metrics


def _save_epoch(run: _Run, epoch: int, metrics: dict) -> None:
    """Rank 0: log the epoch and write what resuming reads (metrics.json, state.pt)."""
    run.history.append(metrics)
    _log_epoch(run.writer, metrics, run.cfg.epochs, run.session.verbose)
    best = run.best
    summary = {"history": run.history, "best_epoch": best.epoch}
    atomic_write(run.workdir / "metrics.json", json.dumps(summary, indent=1))
    save_training_state(run.workdir, epoch + 1, run.cfg, model=run.model, ema=run.ema, optimizer=run.optimizer,
                        scheduler=run.scheduler, masking=run.masking, best=best, history=run.history)
    if run.writer is not None:
        run.writer.flush()


def _test_best_epoch(run: _Run) -> dict:
    """Score the best epoch's weights on the test split; write its predictions and figures."""
    static, workdir, model = run.static, run.workdir, run.evaluated
    if static.eval_rows["test"].num_rows == 0:
        return {}  # a pool of studies (`aam pool`) holds no test samples: nothing to score, not a zero
    payload = load_torch(workdir / MODEL_FILE, "aam model")
    current = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(payload["state_dict"])
    test = evaluate(model, static.eval_rows["test"], run.spec, run.cfg, run.unifrac, run.device)
    model.load_state_dict(current)
    out = {f"test_{k}": v for k, v in test.metrics.items()}
    if static.targets:
        best_epoch = run.best.epoch
        artifacts.write_tsv(test.frame(static.targets, best_epoch), workdir / "test_predictions.tsv")
        fig = artifacts.predicted_vs_actual_figure(static.targets, test.actual, test.predicted,
                                                   f"test, best epoch {best_epoch}")
        fig.savefig(workdir / "pred_vs_actual.png", dpi=100)
        if run.writer is not None:
            run.writer.add_figure("test/predicted_vs_actual", fig, global_step=best_epoch)
    payload["metrics"] = {**payload["metrics"], **out}
    save_torch(payload, workdir / MODEL_FILE)
    return out


def _write_static_files(workdir: Path, cfg: RunConfig, static: StaticData) -> None:
    cfg.save(workdir / "config.json")
    samples = workdir / "samples"
    samples.mkdir(exist_ok=True)
    for split, ids in static.sample_lists.items():
        (samples / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))


def _tensorboard(workdir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(workdir / "tb"))


def _log_epoch(writer, metrics: dict, epochs: int, verbose: bool = True) -> None:
    step = metrics["epoch"]
    if writer is not None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
                writer.add_scalar(key.replace("_", "/", 1), value, step)
    if not verbose:
        return
    shown = [f"epoch {step:>3}/{epochs}", f"loss {metrics.get('train_loss', float('nan')):.4f}"]
    for key in ("val_mae", "val_r2", "val_loss"):
        if key in metrics:
            shown.append(f"{key} {metrics[key]:.4g}")
    shown.append(f"best {metrics['best_epoch']}")
    shown.append(f"{metrics['epoch_seconds']:.1f}s")
    if "test_mae" in metrics:
        shown.append(f"test_mae {metrics['test_mae']:.4g} test_r2 {metrics.get('test_r2', float('nan')):.3g}")
    print("  ".join(shown), file=sys.stdout, flush=True)
