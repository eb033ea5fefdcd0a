"""AdamW with warm-up as a fraction of all steps, then cosine decay to zero.

Warm-up is a fraction, not a step count, so a short run never spends its whole life warming up.

Two parameter groups when `categorical_lr` is set: every categorical parameter (embeddings,
fusion, category router, per-category affine) at its own peak rate, the rest at `lr`. Category
embeddings are sparse (a row sees only its category's samples) and often want a higher rate.

On CUDA the fused AdamW kernel is used (same update, fewer kernel launches).
"""

import math

import torch

# the names of the parameter groups (`name` of each optimizer param group)
MAIN, CATEGORICAL = "main", "categorical"


def make_optimizer(model, cfg) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` (an AAM), grouped as described above."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    categorical = {id(p) for p in model.categorical_parameters() if p.requires_grad} if cfg.categorical_lr > 0 else set()
    groups = [{"params": [p for p in trainable if id(p) not in categorical], "lr": cfg.lr, "name": MAIN}]
    if categorical:
        groups.append({"params": [p for p in trainable if id(p) in categorical], "lr": cfg.categorical_lr,
                       "name": CATEGORICAL})
    # on a GPU the fused kernel updates every parameter in a few launches instead of several
    # per parameter tensor (~80 tensors in the default model)
    fused = bool(trainable) and all(p.is_cuda for p in trainable)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current rate of every group, keyed as the metrics log them: lr, lr_categorical."""
    return {("lr" if g.get("name", MAIN) == MAIN else f"lr_{g['name']}"): g["lr"] for g in optimizer.param_groups}


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float):
    total_steps = max(int(total_steps), 1)
    warmup = int(round(warmup_frac * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler, lr: float, categorical_lr: float = 0.0) -> None:
    """Change the peak learning rates of a restored optimizer; the schedule's shape is kept."""
    f = scheduler.lr_lambdas[0]
    peaks = [categorical_lr if g.get("name") == CATEGORICAL and categorical_lr > 0 else lr
             for g in optimizer.param_groups]
    scheduler.base_lrs = list(peaks)
    for group, peak in zip(optimizer.param_groups, peaks):
        group["initial_lr"] = peak
        group["lr"] = peak * f(scheduler.last_epoch)
