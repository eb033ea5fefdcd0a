"""A model over a whole split: losses, metrics on the original target scale, predictions and the
diagnostics of the fusion and moe head (`evaluate`, `predict_rows`); and the BatchNorm
recalibration that runs before each evaluation during training.

Every row is scored, the last partial batch like any other; nothing here trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from aam.config import RunConfig
from aam.data.collate import BatchSpec, category_codes, collate, move_to, raw_targets
from aam.training import artifacts
from aam.training.losses import total_loss
from aam.training.metrics import regression_metrics


@torch.no_grad()
def recalibrate_batchnorm(model, rows: pa.Table, spec: BatchSpec, device, batch_size: int = 64) -> None:
    """Set BatchNorm statistics to the mean and variance of its inputs over `rows` (training rows)
    as the model sees them at evaluation.

    Training masks nucleotides and counts; evaluation does not. The sample vectors differ from
    each other by ~1% of their norm, so BatchNorm's running statistics, gathered on masked
    inputs, would turn that small train/eval shift into errors of several times the target's
    range. A pass without masking (as PreciseBN does) makes the statistics those of the inputs
    evaluation sees, for the cost of ~10% of an epoch.

    The statistics are those of all `rows` together, not an average of per-batch ones: rows
    come in table order, where neighbours share a study or a time point, and the average of
    within-batch variances of such batches missed the variance between them (on mouse_age it
    was a fraction of the whole), so evaluation scaled every sample's features up and its
    predictions spread 25-50% wider than the targets (BENCHMARKS.md §9, "BatchNorm statistics").
    Under DDP rank 0 does this and its buffers are broadcast to the others at the next forward.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or rows.num_rows < 2:
        return
    was_training = model.training
    model.eval()
    sums: dict[torch.nn.Module, list] = {m: [0, 0.0, 0.0] for m in norms}  # count, sum, sum of squares

    def record(module, inputs):
        x = inputs[0].detach().double().transpose(0, 1).reshape(module.num_features, -1)  # [C, N*L]
        total = sums[module]
        total[0] += x.shape[1]
        total[1] = total[1] + x.sum(dim=1)
        total[2] = total[2] + x.pow(2).sum(dim=1)

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # normalise each batch by its own statistics (as training does), record nothing
        m.train()
    try:
        for start in range(0, rows.num_rows, batch_size):
            chunk = rows.slice(start, batch_size)
            if chunk.num_rows >= 2:
                model(move_to(collate(chunk, spec), device))
    finally:
        for hook in hooks:
            hook.remove()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    for m in norms:
        n, total, squares = sums[m]
        if n < 2:
            continue
        mean = total / n
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(((squares - n * mean.pow(2)) / (n - 1)).clamp_min(0).to(m.running_var.dtype))
        m.num_batches_tracked.zero_()


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
    gmu_gate (share kept from the microbes), attention_<column>, asv_attention, expert<e>_usage,
    neighbor_gate_<target> (share of the prediction taken from the neighbour prior)."""

    def __init__(self, model, spec: BatchSpec):
        columns = [spec.categoricals[c] for c in getattr(model, "fusion_columns", [])]
        self.names = {"gate": ["gmu_gate"], "column_attention": [f"attention_{c}" for c in columns],
                      "asv_attention": ["asv_attention"],
                      "neighbor_gate": [f"neighbor_gate_{t}" for t in spec.targets]}
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
