"""What the training step updates the weights with: AdamW with warm-up as a fraction of all
steps, then cosine decay to zero; the moving average of the weights that evaluation reads
(`weight_average`); and the guard that stops a run whose loss went NaN (`FiniteLossCheck`).

Warm-up is a fraction, not a step count, so a short run never spends its whole life warming up.

Two parameter groups when `categorical_lr` is set: every categorical parameter (embeddings,
fusion, category router, per-category affine) at its own peak rate, the rest at `lr`. Category
embeddings are sparse (a row sees only its category's samples) and often want a higher rate.

On CUDA the fused AdamW kernel is used (same update, fewer kernel launches).
"""

import math

import torch

from aam.config import RunConfig
from aam.errors import AamUserError

# the names of the parameter groups (`name` of each optimizer param group)
MAIN, CATEGORICAL, IDENTITY = "main", "categorical", "identity"


def make_optimizer(model, cfg) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` (an AAM), grouped as described above; the
    ASV identity vectors get a group of their own when `identity_weight_decay` is set (>= 0):
    one free vector per training ASV is where a small table is memorised first, so they may
    want a stronger pull to zero than the shared weights."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    categorical = {id(p) for p in model.categorical_parameters() if p.requires_grad} if cfg.categorical_lr > 0 else set()
    identity = set()
    if cfg.identity_weight_decay >= 0 and getattr(model, "asv_identity", None) is not None:
        identity = {id(p) for p in model.asv_identity.parameters() if p.requires_grad}
    groups = [{"params": [p for p in trainable if id(p) not in categorical | identity], "lr": cfg.lr, "name": MAIN}]
    if categorical:
        groups.append({"params": [p for p in trainable if id(p) in categorical], "lr": cfg.categorical_lr,
                       "name": CATEGORICAL})
    if identity:
        groups.append({"params": [p for p in trainable if id(p) in identity], "lr": cfg.lr, "name": IDENTITY,
                       "weight_decay": cfg.identity_weight_decay})
    # on a GPU the fused kernel updates every parameter in a few launches instead of several
    # per parameter tensor (~80 tensors in the default model)
    fused = bool(trainable) and all(p.is_cuda for p in trainable)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current rate of every group, keyed as the metrics log them: lr, lr_categorical."""
    # the identity group runs at lr itself (only its decay differs): not logged twice
    return {("lr" if g.get("name", MAIN) == MAIN else f"lr_{g['name']}"): g["lr"] for g in optimizer.param_groups
            if g.get("name") != IDENTITY}


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
