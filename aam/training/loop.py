"""The one training loop: every entry point (Ray Train workers, an in-process Tune trial, tests)
runs `fit` unchanged. What differs between them is a `Session`: where this worker's training
rows come from, how metrics and checkpoints are reported, and what to resume from.

Per epoch: train on this worker's shard -> rank 0 evaluates the whole val split on the
original target scale -> rank 0 writes a checkpoint folder (best model, resumable state,
predictions, TensorBoard events) -> every worker reports (a barrier under Ray Train).
At the end the best epoch's weights predict the test split, which is never used for selection.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import contextlib
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from aam._files import load_torch, remove_work_folder, save_torch, work_folder
from aam.config import RunConfig
from aam.data.collate import BatchSpec, category_codes, collate, move_to, raw_targets
from aam.data.transforms import TargetTransform
from aam.errors import AamUserError
from aam.training import artifacts
from aam.training.checkpoint import MODEL_FILE, STATE_FILE, load_encoder_weights, model_payload
from aam.training.losses import total_loss
from aam.training.metrics import regression_metrics
from aam.training.optim import group_lrs, make_optimizer, set_peak_lr, warmup_cosine


@dataclass
class StaticData:
    """What every worker needs besides its shard of training rows (small; shipped once)."""

    tokens: np.ndarray
    token_width: int
    targets: list[str]
    categoricals: dict[str, list[str]]
    unifrac: np.ndarray | None
    transform: TargetTransform | None
    eval_rows: dict[str, pa.Table]  # "val", "test": whole splits, evaluated on rank 0
    calibration_rows: pa.Table  # a fixed sample of training rows to re-estimate BatchNorm statistics
    sample_lists: dict[str, list[str]]  # split -> sample ids, written beside the run
    n_train: int
    dataset_path: str = ""
    # with a frozen pretrained encoder: every ASV vector of the dataset, computed once and shared
    # by every epoch, worker and trial (see prepare.encode_asvs)
    asv_vectors: np.ndarray | None = None
    # and every sample's vector from the frozen sample encoder at `cache_token_limit` (a trial that
    # searches token_limit, or uses the perceiver fusion, falls back to the ASV vectors)
    sample_ids: list[str] = field(default_factory=list)
    sample_vectors: np.ndarray | None = None
    cache_token_limit: int = 0
    cache_min_abundance: float = 0.0
    # the sequence of every ASV of the dataset (its ASV index order) and the indices of those in
    # the training rows: the vocabulary of asv_identity
    asv_sequences: list[str] = field(default_factory=list)
    train_asv_idx: np.ndarray | None = None

    def asv_vocabulary(self) -> list[str]:
        return [self.asv_sequences[i] for i in self.train_asv_idx]


class Session:
    """The plain, single-process session: shuffles the training rows itself."""

    rank = 0
    world_size = 1
    verbose = True  # print a line per epoch (a Tune trial leaves that to the driver)

    def __init__(self, train_rows: pa.Table, seed: int, restore: dict | None = None, verbose: bool = True):
        self.train_rows = train_rows
        self.seed = seed
        self._restore = restore
        self.verbose = verbose
        self.reports: list[dict] = []
        self.last_checkpoint: Path | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def shard_size(self) -> int:
        return self.train_rows.num_rows

    def epoch_rows(self, epoch: int) -> pa.Table:
        """This worker's training rows for one epoch, in a fixed order."""
        return self.train_rows

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[pa.Table]:
        # the same seeded permutation on every path, so a run gives the same model in-process,
        # in a Tune trial and on one Ray Train worker (best-of retraining lands on the trial)
        rows = self.epoch_rows(epoch)
        order = np.random.default_rng([self.seed, epoch, self.rank]).permutation(rows.num_rows)
        for start in range(0, len(order), batch_size):
            yield rows.take(order[start : start + batch_size])

    def restore_state(self) -> dict | None:
        return self._restore

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is not None:
            if self.last_checkpoint is None:
                # a folder of its own, made only when a checkpoint is kept, and removed when the
                # process ends: the caller reads it after `fit` returns, never after exit
                self.last_checkpoint = work_folder("aam-ckpt-") / "latest"
            dest = self.last_checkpoint
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(checkpoint_dir, dest)

    def all_gather_embeddings(self, embeddings, rows, pad_to: int):
        return None


def mixed_precision(cfg: RunConfig, device: torch.device):
    """bf16 autocast for the training step: `auto` uses it on a GPU that supports it, `bf16`
    anywhere (on CPU it is mostly a way to test the path), `fp32` never. The losses, softmaxes and
    pooling weights are computed in fp32 inside the model whatever this says; evaluation always
    runs in fp32 so metrics do not depend on it."""
    use = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


def compiles(cfg: RunConfig, device: torch.device) -> bool:
    """Whether `compile` asks for torch.compile here: `on` everywhere; `auto` nowhere yet (on CPU
    compiling costs more than it saves in a run; on a GPU it is to be measured first, see
    BENCHMARKS.md), `off` never."""
    return cfg.compile == "on"


def batch_spec(cfg: RunConfig, static: StaticData, device: torch.device | None = None) -> BatchSpec:
    """The collate's settings for this run. Shape buckets are on exactly when the batches go to a
    GPU (see aam.data.collate): there repeated shapes save per-shape kernel planning; on CPU the
    bucket padding would only add work."""
    return BatchSpec(static.tokens, static.targets, list(static.categoricals), cfg.token_limit, static.transform,
                     pad_to_limit=cfg.pad_to_token_limit, dedupe=cfg.dedupe_asvs, min_abundance=cfg.min_abundance,
                     all_asvs=cfg.abundance_bag,
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


def collate_for(spec: BatchSpec, device: torch.device) -> Callable[[pa.Table], dict]:
    """The collate of the training loop: on a GPU the batch's tensors are pinned (in the prefetch
    thread) so that `move_to` copies them without blocking."""
    pin = torch.device(device).type == "cuda"

    def make(rows: pa.Table) -> dict:
        batch = collate(rows, spec)
        return {k: (v.pin_memory() if pin and torch.is_tensor(v) else v) for k, v in batch.items()} if pin else batch

    return make


@dataclass
class _Best:
    epoch: int = -1
    score: float = math.inf
    metrics: dict = field(default_factory=dict)


def fit(cfg: RunConfig, static: StaticData, session: Session) -> dict:
    """Train per `cfg`; returns the final metrics (rank 0; other ranks return {})."""
    # the run's files are built in a work folder and reported from there; it goes when the run
    # ends, however it ends (the session keeps its own copy of what it reported)
    workdir = work_folder("aam-run-")
    try:
        return _fit(cfg, static, session, workdir)
    finally:
        remove_work_folder(workdir)


def _fit(cfg: RunConfig, static: StaticData, session: Session, workdir: Path) -> dict:
    from aam.models import AAM

    torch.manual_seed(cfg.seed)
    device = session.device
    model = AAM(cfg, static.targets, static.token_width, static.categoricals,
                asv_vocabulary=static.asv_vocabulary() if cfg.asv_identity else None)
    if model.asv_identity is not None:
        model.asv_identity.index_table(static.asv_sequences)
    if cfg.pretrained_encoder:
        load_encoder_weights(model, cfg.pretrained_encoder)
        if cfg.freeze_encoder:
            model.freeze_encoder()
            if cfg.cache_asv_vectors and static.asv_vectors is not None:
                model.use_asv_cache(torch.from_numpy(np.array(static.asv_vectors)))
                if (static.sample_vectors is not None and static.cache_token_limit == cfg.token_limit
                        and static.cache_min_abundance == cfg.min_abundance
                        and cfg.categorical_fusion != "perceiver"):
                    model.use_sample_cache(static.sample_ids, torch.from_numpy(np.array(static.sample_vectors)))
    model.to(device)
    if compiles(cfg, device):
        model.compile_transformers()
    core = model
    model = session.prepare_model(model)
    optimizer = make_optimizer(core, cfg)
    ema = weight_average(core, cfg)
    evaluated = ema.module if ema is not None else core  # what validation, test and model.pt use
    steps_per_epoch = max(math.ceil(session.shard_size() / cfg.batch_size), 1)
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_frac)
    spec = batch_spec(cfg, static, device)
    # a copy: arrays from Ray's object store are read-only
    unifrac = torch.tensor(static.unifrac, device=device) if static.unifrac is not None else None
    masking = torch.Generator().manual_seed(cfg.seed * 7919 + session.rank)

    best, history, start_epoch = _Best(), [], 0
    state = session.restore_state()
    if state is not None:
        start_epoch = _restore(state, core, optimizer, scheduler, masking, cfg, best, history, session.rank)
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if state.get("workdir_files"):
            _unpack_files(state["workdir_files"], workdir)
    writer = _tensorboard(workdir) if session.rank == 0 else None
    if session.rank == 0:
        _write_static_files(workdir, cfg, static)

    final: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        model.train()
        # summed on the device (in float64, as Python floats were) and read once after the epoch:
        # reading a loss each step would make the host wait for the device every step
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        finite = FiniteLossCheck(epoch + 1)
        for rows, collated in prefetched(session.train_batches(epoch, cfg.batch_size), collate_for(spec, device)):
            if rows.num_rows < 2:  # a lone last sample: BatchNorm needs two (shards are equal, so all ranks skip)
                continue
            batch = move_to(collated, device)
            with mixed_precision(cfg, device):
                outputs = model(batch, mask_nucleotides=True, generator=masking)
                gathered = None
                if unifrac is not None and cfg.unifrac_weight > 0:
                    gathered = session.all_gather_embeddings(
                        outputs["sample_embedding"], batch["unifrac_row"], cfg.batch_size
                    )
                loss, parts = total_loss(outputs, batch, cfg, unifrac, gathered)
            finite.step(loss, steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(core)
            steps += 1
            sums["loss"] = sums.get("loss", 0.0) + loss.detach().double()
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value.double()
        finite.check()
        metrics = {"epoch": epoch + 1, **group_lrs(optimizer)}
        metrics.update({f"train_{k}": float(v) / max(steps, 1) for k, v in sums.items()})

        checkpoint_dir = None
        if session.rank == 0:
            recalibrate_batchnorm(evaluated, static.calibration_rows, spec, device)
            val = evaluate(evaluated, static.eval_rows["val"], spec, cfg, unifrac, device)
            metrics.update({f"val_{k}": v for k, v in val.metrics.items()})
            score = val.metrics["mae"] if static.targets else val.metrics["loss"]
            # a final fit on train+val has nothing held out to select by: the last epoch is kept
            if score < best.score or best.epoch < 0 or cfg.train_on_val:
                best.epoch, best.score = epoch + 1, score
                save_torch(
                    model_payload(evaluated, cfg, static.transform, static.targets, static.categoricals,
                                  static.token_width, metrics, best.epoch),
                    workdir / MODEL_FILE,
                )
                if static.targets:
                    artifacts.write_tsv(val.frame(static.targets, best.epoch), workdir / "val_predictions.tsv")
            metrics["best_epoch"] = best.epoch
            metrics["best_val_score"] = best.score
            metrics["epoch_seconds"] = time.perf_counter() - started
            last = epoch + 1 == cfg.epochs
            if last:
                metrics.update(_finish(workdir, evaluated, static, spec, cfg, unifrac, device, writer, best))
            best.metrics = metrics if best.epoch == epoch + 1 else best.metrics
            history.append(metrics)
            _log_epoch(writer, metrics, cfg.epochs, session.verbose)
            (workdir / "metrics.json").write_text(json.dumps({"history": history, "best_epoch": best.epoch}, indent=1))
            save_torch(
                {
                    "epoch": epoch + 1,
                    "model": core.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best": {"epoch": best.epoch, "score": best.score, "metrics": best.metrics},
                    "history": history,
                    "config": cfg.to_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "masking_rng": masking.get_state(),
                },
                workdir / STATE_FILE,
            )
            if writer is not None:
                writer.flush()
            checkpoint_dir = str(workdir)
            final = metrics
        session.report(metrics, checkpoint_dir)
    if writer is not None:
        writer.close()
    return final


def weight_average(model: torch.nn.Module, cfg: RunConfig):
    """An exponential moving average of `model`'s weights (None when ema_decay is 0).

    Validation, the kept model and test use it: at the small sizes of these datasets, val MAE
    moves by a fifth between neighbouring epochs, and the average of the last ~1/(1-decay)
    steps is less noisy than any one step's weights, so the epoch chosen on val is less luck.
    """
    if cfg.ema_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    update = get_ema_multi_avg_fn(cfg.ema_decay) if cfg.ema_warmup == "off" else ema_with_warmup(
        cfg.ema_decay, cfg.ema_warmup)
    # buffers are copied, not averaged: BatchNorm's statistics are re-estimated for the averaged
    # weights before every evaluation (recalibrate_batchnorm), and index buffers are integers
    return AveragedModel(model, multi_avg_fn=update, use_buffers=False)


def ema_with_warmup(decay: float, warmup: str):
    """An EMA update whose weight on the new step is at least 1 - decay, and more at first.

    A plain EMA of decay 0.995 still holds 0.995^n of the initial weights after n steps: 64%
    after the 90 steps of 10 epochs on 141 samples, so the "averaged" model is mostly the
    untrained one. `short` (TensorFlow's ExponentialMovingAverage with num_updates) uses decay
    min(decay, (1 + n) / (10 + n)) after n updates: a window of about the last n/9. `mean` uses
    1 / (n + 1): the plain mean of every update so far (Polyak averaging), a window of all n.
    Either switches to `decay` once its window reaches 1/(1 - decay). `n_averaged` is
    AveragedModel's own count (saved in its state, so a resumed run continues the same
    schedule); the weight stays a tensor, so no update waits on the device.
    """
    early = 9.0 if warmup == "short" else 1.0
    offset = 10.0 if warmup == "short" else 1.0

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        weight = torch.clamp(early / (offset + n_averaged.to(torch.float32)), min=1.0 - decay)
        torch._foreach_lerp_(averaged, current, weight.to(averaged[0].dtype))

    return update


class NonFiniteLoss(AamUserError):
    """Training diverged: the loss became NaN or infinite (the run stops; its last checkpoint stays)."""


class FiniteLossCheck:
    """Stops training on the first NaN/infinite loss without a host sync per step.

    `step` records, on the device, the first step whose loss was not finite; the record is read
    back every `every` steps and at the epoch's end (`check`), so at most that many steps run
    on after the loss went bad, and no checkpoint is written from them.
    """

    def __init__(self, epoch: int, every: int = 64):
        self.epoch, self.every = epoch, every
        self.first_bad: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach()
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step + 1), self.first_bad)
        if (step + 1) % self.every == 0:
            self.check()

    def check(self) -> None:
        if self.first_bad is None:
            return
        step = int(self.first_bad)
        if step > 0:
            raise NonFiniteLoss(
                f"training stopped: the loss became NaN or infinite at epoch {self.epoch}, step {step}; the last "
                "good checkpoint is kept; try a lower --lr, gradient clipping (--grad-clip 1.0), or --precision fp32"
            )


@torch.no_grad()
def recalibrate_batchnorm(model, rows: pa.Table, spec: BatchSpec, device, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm statistics on training rows as the model sees them at evaluation.

    Training masks nucleotides and counts; evaluation does not. The sample vectors differ from
    each other by ~1% of their norm, so BatchNorm's running statistics, gathered on masked
    inputs, turn that small train/eval shift into errors of several times the target's range
    (val MAE jumped 25 -> 132 -> 24 between epochs). A pass without masking fixes it (as
    PreciseBN does) for the cost of ~10% of an epoch. Under DDP rank 0 does this and its
    buffers are broadcast to the others at the next forward.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or rows.num_rows < 2:
        return
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batches
        m.train()
    for start in range(0, rows.num_rows, batch_size):
        chunk = rows.slice(start, batch_size)
        if chunk.num_rows >= 2:
            model(move_to(collate(chunk, spec), device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


@dataclass
class Evaluation:
    sample_ids: list[str]
    actual: np.ndarray  # original scale [N, T]
    predicted: np.ndarray  # original scale [N, T]
    metrics: dict
    quantiles: np.ndarray | None = None  # original scale [N, T_quantile, Q]
    quantile_names: list[str] = field(default_factory=list)
    quantile_levels: list[float] = field(default_factory=list)

    def frame(self, names, best_epoch=None):
        return artifacts.predictions_frame(self.sample_ids, names, self.predicted, self.actual, best_epoch,
                                           self.quantiles, self.quantile_names, self.quantile_levels)


class _Diagnostics:
    """Per-sample diagnostics of the fusion and moe head, averaged over a split for logging:
    gmu_gate (share kept from the microbes), attention_<column>, asv_attention, expert<e>_usage."""

    def __init__(self, model, spec: BatchSpec):
        columns = [spec.categoricals[c] for c in getattr(model, "fusion_columns", [])]
        self.names = {"gate": ["gmu_gate"], "column_attention": [f"attention_{c}" for c in columns],
                      "asv_attention": ["asv_attention"]}
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, diagnostics: dict) -> None:
        for key, values in diagnostics.items():
            values = values.detach().float().reshape(values.shape[0], -1).sum(dim=0).cpu().tolist()
            names = self.names.get(key) or [f"expert{e}_usage" for e in range(len(values))]
            for name, value in zip(names, values):
                self.sums[name] = self.sums.get(name, 0.0) + value
        self.n += next(iter(diagnostics.values())).shape[0] if diagnostics else 0

    def means(self) -> dict[str, float]:
        return {k: v / self.n for k, v in self.sums.items()} if self.n else {}


def _outputs_by_batch(model, rows: pa.Table, spec: BatchSpec, device, batch_size: int):
    model.eval()
    for start in range(0, rows.num_rows, batch_size):
        batch = move_to(collate(rows.slice(start, batch_size), spec), device)
        yield batch, model(batch)


def _original_scale(values: list[np.ndarray], empty_shape: tuple, spec: BatchSpec, rows: pa.Table) -> np.ndarray:
    out = np.concatenate(values) if values else np.zeros(empty_shape)
    if spec.transform is None or not len(out):
        return out
    codes = category_codes(rows, spec.transform.by)
    if out.ndim == 3:  # quantiles of the quantile targets: those targets' own transform parameters
        return spec.transform.inverse(out, codes, targets=spec.quantile_targets)
    return spec.transform.inverse(out, codes)


@torch.no_grad()
def predict_rows(model, rows: pa.Table, spec: BatchSpec, device, batch_size: int = 64) -> Evaluation:
    """Predictions on the original scale for every row, in row order (nothing dropped); the
    actual values are NaN where the rows carry no target."""
    return evaluate(model, rows, spec, None, None, device, batch_size, with_loss=False)


@torch.no_grad()
def evaluate(model, rows: pa.Table, spec: BatchSpec, cfg: RunConfig | None, unifrac, device, batch_size: int = 64,
             with_loss: bool = True) -> Evaluation:
    """Loss, metrics and diagnostics over a whole split; the last partial batch counts like any other."""
    layout = getattr(model, "layout", None)
    quantile_targets = layout.quantile_targets if layout is not None and spec.targets else []
    predicted, quantiles, loss_sum, n = [], [], 0.0, 0
    diagnostics = _Diagnostics(model, spec)
    for batch, outputs in _outputs_by_batch(model, rows, spec, device, batch_size):
        if with_loss:
            loss, _ = total_loss(outputs, batch, cfg, unifrac, None)
            loss_sum += float(loss) * len(batch["sample_ids"])
        n += len(batch["sample_ids"])
        diagnostics.add(outputs.get("diagnostics", {}))
        if spec.targets:
            predicted.append(outputs["prediction"].float().cpu().numpy())
            if quantile_targets:
                quantiles.append(outputs["quantiles"].float().cpu().numpy())
    metrics = {"loss": loss_sum / max(n, 1)} if with_loss else {}
    actual = raw_targets(rows, spec.targets)
    pred = _original_scale(predicted, (0, len(spec.targets)), spec, rows)
    if spec.targets and with_loss:
        metrics.update(regression_metrics(actual, pred, spec.targets))
    metrics.update(diagnostics.means())
    evaluation = Evaluation(rows.column("sample_id").to_pylist(), actual, pred, metrics)
    if quantile_targets:
        evaluation.quantile_names = [spec.targets[t] for t in quantile_targets]
        evaluation.quantile_levels = list(layout.quantiles)
        q_spec = dataclasses.replace(spec, quantile_targets=quantile_targets)
        evaluation.quantiles = _original_scale(quantiles, (0, len(quantile_targets), len(layout.quantiles)),
                                               q_spec, rows)
    return evaluation


def _finish(workdir, core, static, spec, cfg, unifrac, device, writer, best) -> dict:
    """Score the best epoch's weights on the test split; write its predictions and figures."""
    payload = load_torch(workdir / MODEL_FILE, "aam model")
    current = {k: v.clone() for k, v in core.state_dict().items()}
    core.load_state_dict(payload["state_dict"])
    test = evaluate(core, static.eval_rows["test"], spec, cfg, unifrac, device)
    core.load_state_dict(current)
    out = {f"test_{k}": v for k, v in test.metrics.items()}
    if static.targets:
        artifacts.write_tsv(test.frame(static.targets, best.epoch), workdir / "test_predictions.tsv")
        fig = artifacts.predicted_vs_actual_figure(static.targets, test.actual, test.predicted,
                                                   f"test, best epoch {best.epoch}")
        fig.savefig(workdir / "pred_vs_actual.png", dpi=100)
        if writer is not None:
            writer.add_figure("test/predicted_vs_actual", fig, global_step=best.epoch)
    payload["metrics"] = {**payload["metrics"], **out}
    save_torch(payload, workdir / MODEL_FILE)
    return out


def _restore(state, core, optimizer, scheduler, masking, cfg, best, history, rank) -> int:
    if (state["config"].get("categorical_lr", 0.0) > 0) != (cfg.categorical_lr > 0):
        raise AamUserError("resume: categorical_lr can change its value but not be switched on or off "
                           "(that changes the optimizer's parameter groups); start a new run instead")
    core.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    saved_lr, saved_cat_lr = state["config"]["lr"], state["config"].get("categorical_lr", 0.0)
    if saved_lr != cfg.lr or saved_cat_lr != cfg.categorical_lr:
        set_peak_lr(optimizer, scheduler, cfg.lr, cfg.categorical_lr)
        if rank == 0:
            also = (f" (categorical {cfg.categorical_lr:g} replaces {saved_cat_lr:g})"
                    if cfg.categorical_lr != saved_cat_lr else "")
            print(f"resume: peak learning rate {cfg.lr:g} replaces the checkpoint's {saved_lr:g}{also}", flush=True)
    best.epoch, best.score, best.metrics = state["best"]["epoch"], state["best"]["score"], state["best"]["metrics"]
    history.extend(state["history"])
    torch.set_rng_state(state["torch_rng"])
    if rank == 0:  # other ranks' masking streams differ; rank 0's is the one saved
        masking.set_state(state["masking_rng"])
    if rank == 0:
        print(f"resume: continuing after epoch {state['epoch']} of {cfg.epochs}", flush=True)
    return int(state["epoch"])


RESUMED_FILES = (MODEL_FILE, "val_predictions.tsv", "metrics.json", "tb")


def pack_files(folder: Path) -> dict[str, bytes]:
    """The files of a run folder that resuming carries on with (best model, predictions, TensorBoard)."""
    folder = Path(folder)
    files = {}
    for name in RESUMED_FILES:
        path = folder / name
        for p in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
            if p.is_file():
                files[str(p.relative_to(folder))] = p.read_bytes()
    return files


def resume_state(folder: Path) -> dict:
    """What `fit` needs to continue a run from its checkpoint or run folder."""
    state = load_torch(Path(folder) / STATE_FILE, "aam training state")
    state["workdir_files"] = pack_files(Path(folder))
    return state


def checkpoint_resume_state(checkpoint) -> dict | None:
    """`resume_state` of a Ray Train/Tune Checkpoint (None: nothing to resume)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return resume_state(Path(folder))


def _unpack_files(files: dict[str, bytes], folder: Path) -> None:
    for rel, data in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


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
