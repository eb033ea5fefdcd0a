"""Losses of a batch (pure torch): target, UniFrac distance, masked nucleotides, ASV counts.

Every loss returns a scalar that stays attached to the graph even when it has nothing to score
(`x.sum() * 0`): a worker whose batch happens to hold no target or no UniFrac pair still runs the
same backward as the others, which DistributedDataParallel needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aam.config import RunConfig


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps `like`'s graph (and device/dtype)."""
    return like.sum() * 0.0


def target_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, huber_delta: float = 1.0) -> torch.Tensor:
    """Mean loss over the present (non-NaN) targets of pred/target [B, T]; 0 when none is present."""
    present = ~torch.isnan(target)
    if not bool(present.any()):
        return _zero(pred)
    p, t = pred[present].float(), target[present].float()
    if kind == "mse":
        return F.mse_loss(p, t)
    if kind == "mae":
        return F.l1_loss(p, t)
    if kind == "huber":
        return F.huber_loss(p, t, delta=huber_delta)
    raise ValueError(f"target_loss: kind={kind!r} is not one of mse, mae, huber")


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


def count_loss(pred: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and actual log1p(count) on the slots in `mask` [B, S]."""
    if not bool(mask.any()):
        return _zero(pred)
    return F.mse_loss(pred[mask].float(), torch.log1p(counts[mask].float()))


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
    worker replaces the local ones for the UniFrac term (more pairs per step).
    Parts keys: target, unifrac, nucleotide, count.
    """
    terms: list[tuple[float, str, torch.Tensor]] = []
    pred, targets = outputs["prediction"], batch.get("targets")
    if cfg.target_weight > 0 and targets is not None and targets.shape[-1] > 0 and pred.shape[-1] > 0:
        terms.append((cfg.target_weight, "target", target_loss(pred, targets, cfg.target_loss, cfg.huber_delta)))
    if cfg.unifrac_weight > 0 and unifrac_matrix is not None:
        emb, rows = gathered if gathered is not None else (outputs["sample_embedding"], batch["unifrac_row"])
        terms.append((cfg.unifrac_weight, "unifrac", unifrac_loss(emb, rows, unifrac_matrix)))
    if cfg.nucleotide_weight > 0 and "nucleotide_logits" in outputs:
        terms.append(
            (cfg.nucleotide_weight, "nucleotide", nucleotide_loss(outputs["nucleotide_logits"], outputs["nucleotide_labels"]))
        )
    if cfg.count_weight > 0 and "count_prediction" in outputs:
        mask = outputs.get("count_mask", batch["asv_mask"])
        terms.append((cfg.count_weight, "count", count_loss(outputs["count_prediction"], batch["counts"], mask)))

    if not terms:
        return _zero(outputs["sample_embedding"]), {}
    loss = sum(weight * value for weight, _, value in terms)
    return loss, {name: value.detach() for _, name, value in terms}
