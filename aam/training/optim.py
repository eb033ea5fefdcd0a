"""AdamW with warm-up as a fraction of all steps, then cosine decay to zero.

Warm-up is a fraction, not a step count, so a short run never spends its whole life warming up
(an upstream bug: a fixed warm-up longer than the run).
"""

import math

import torch


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float):
    total_steps = max(int(total_steps), 1)
    warmup = int(round(warmup_frac * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """Change the peak learning rate of a restored optimizer; the schedule's shape is kept."""
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group, f in zip(optimizer.param_groups, [scheduler.lr_lambdas[0]] * len(optimizer.param_groups)):
        group["initial_lr"] = lr
        group["lr"] = lr * f(scheduler.last_epoch)
