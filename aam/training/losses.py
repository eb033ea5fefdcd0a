"""Losses of a batch (pure torch): target, UniFrac distance, masked nucleotides, ASV counts,
and the mixture-of-experts load balance.

The target loss is chosen per target (`target_loss`, overridden by `target_loss_map`):
    mse, mae, huber(delta)   on the one output of that target
    quantile                 pinball loss, averaged over the target's outputs, one per quantile
    asymmetric               over * relu(pred - y) + under * relu(y - pred): e.g. under > over
                             when predicting too young is worse than too old

Every loss returns a scalar that stays attached to the graph even when it has nothing to score
(`x.sum() * 0`): a worker whose batch happens to hold no target or no UniFrac pair still runs the
same backward as the others, which DistributedDataParallel needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aam.config import RunConfig
from aam.models.heads import MixtureOfExperts


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps `like`'s graph (and device/dtype)."""
    return like.sum() * 0.0


def target_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, huber_delta: float = 1.0,
                quantiles=(0.1, 0.5, 0.9), over: float = 1.0, under: float = 1.0) -> torch.Tensor:
    """Mean loss over the present (non-NaN) targets of pred/target [B, T]; 0 when none is present.

    For `quantile`, pred is [B, Q] (one target's outputs, one per quantile) and target [B, 1].
    """
    present = ~torch.isnan(target)
    if kind == "quantile":
        present = present[:, 0]
        if not bool(present.any()):
            return _zero(pred)
        error = target[present].float() - pred[present].float()  # [N, Q]: > 0 is under-prediction
        q = torch.as_tensor(quantiles, dtype=error.dtype, device=error.device)
        return torch.maximum(q * error, (q - 1) * error).mean()
    if not bool(present.any()):
        return _zero(pred)
    p, t = pred[present].float(), target[present].float()
    if kind == "mse":
        return F.mse_loss(p, t)
    if kind == "mae":
        return F.l1_loss(p, t)
    if kind == "huber":
        return F.huber_loss(p, t, delta=huber_delta)
    if kind == "asymmetric":
        return (over * F.relu(p - t) + under * F.relu(t - p)).mean()
    choices = ", ".join(RunConfig.fields()["target_loss"].metadata["choices"])
    raise ValueError(f"target_loss: kind={kind!r} is not one of {choices}")


def targets_loss(raw: torch.Tensor, targets: torch.Tensor, layout, cfg: RunConfig) -> torch.Tensor:
    """Each target's own loss on its slice of the head outputs, averaged over targets.

    Every target counts once whatever its scale: the targets are transformed (z-scored by
    default), and a target with no value in this batch adds a graph-keeping 0.
    """
    losses = [
        target_loss(raw[:, s], targets[:, t : t + 1], layout.losses[t], cfg.huber_delta, layout.quantiles,
                    cfg.asymmetric_over, cfg.asymmetric_under)
        for t, s in enumerate(layout.slices())
    ]
    return torch.stack(losses).mean()


def unifrac_loss(
    embeddings: torch.Tensor, rows: torch.Tensor, matrix: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """MSE between embedding distances and UniFrac distances, over pairs i<j with known rows.

    embeddings [N, D] (any N: the loop may all-gather them across workers first), rows [N] the
    samples' rows in `matrix` [n, n] (-1: unknown). The predicted distance is
    sqrt(||e_i - e_j||^2 + eps): the eps keeps the gradient finite for identical embeddings.
    """
    n = embeddings.shape[0]
    known = torch.nonzero(rows >= 0).flatten()
    if known.numel() < 2 or n < 2:
        return _zero(embeddings)
    i, j = torch.triu_indices(known.numel(), known.numel(), offset=1, device=known.device)
    i, j = known[i], known[j]
    diff = embeddings[i].float() - embeddings[j].float()
    predicted = torch.sqrt(diff.pow(2).sum(dim=-1) + eps)
    matrix = torch.as_tensor(matrix)
    r = rows.to(matrix.device)
    actual = matrix[r[i.to(matrix.device)], r[j.to(matrix.device)]].to(predicted.device, predicted.dtype)
    return F.mse_loss(predicted, actual)


def nucleotide_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the masked nucleotides [M, VOCAB] vs [M]; 0 when nothing was masked."""
    if labels.numel() == 0:
        return _zero(logits)
    return F.cross_entropy(logits.float(), labels)


def count_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and actual count feature (`count_features`) on the slots in `mask` [B, S]."""
    if not bool(mask.any()):
        return _zero(pred)
    return F.mse_loss(pred[mask].float(), target[mask].float())


def total_loss(
    outputs: dict,
    batch: dict,
    cfg: RunConfig,
    unifrac_matrix: torch.Tensor | None,
    gathered: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the terms that are on; parts are the unweighted, detached terms.

    A term is skipped when its weight is 0 or its inputs are absent (no targets, no UniFrac
    matrix, no masked nucleotides, no count head). `gathered` = (embeddings, rows) from every
    worker replaces the local ones for the UniFrac term (more pairs per step). The model's
    `outputs["layout"]` (a `TargetLayout`) gives each target its own loss and outputs.
    Parts keys: target, unifrac, nucleotide, count, moe_balance.
    """
    terms: list[tuple[float, str, torch.Tensor]] = []
    pred, targets = outputs["prediction"], batch.get("targets")
    if cfg.target_weight > 0 and targets is not None and targets.shape[-1] > 0 and pred.shape[-1] > 0:
        layout = outputs.get("layout")
        if layout is None:  # one output per target, the default loss for all
            loss = target_loss(pred, targets, cfg.target_loss, cfg.huber_delta, over=cfg.asymmetric_over,
                               under=cfg.asymmetric_under)
        else:
            loss = targets_loss(outputs["raw_prediction"], targets, layout, cfg)
        terms.append((cfg.target_weight, "target", loss))
    gates = outputs.get("diagnostics", {}).get("gates")
    if cfg.moe_balance_weight > 0 and gates is not None:
        terms.append((cfg.moe_balance_weight, "moe_balance", MixtureOfExperts.balance_loss(gates)))
    if cfg.unifrac_weight > 0 and unifrac_matrix is not None:
        emb, rows = gathered if gathered is not None else (outputs["sample_embedding"], batch["unifrac_row"])
        terms.append((cfg.unifrac_weight, "unifrac", unifrac_loss(emb, rows, unifrac_matrix)))
    if cfg.nucleotide_weight > 0 and "nucleotide_logits" in outputs:
        terms.append(
            (cfg.nucleotide_weight, "nucleotide", nucleotide_loss(outputs["nucleotide_logits"], outputs["nucleotide_labels"]))
        )
    if cfg.count_weight > 0 and "count_prediction" in outputs:
        mask = outputs.get("count_mask", batch["asv_mask"])
        terms.append((cfg.count_weight, "count", count_loss(outputs["count_prediction"], outputs["count_target"], mask)))

    if not terms:
        return _zero(outputs["sample_embedding"]), {}
    loss = sum(weight * value for weight, _, value in terms)
    return loss, {name: value.detach() for _, name, value in terms}
