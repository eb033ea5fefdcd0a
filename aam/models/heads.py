"""Regression heads on the sample vector, and the layout of their outputs.

    TargetLayout    which head outputs belong to which target (one, or one per quantile)
    RegressionHead  BatchNorm -> linear | mlp | residual | moe -> per-category scale and bias

Every head ends in the same [B, n_outputs] tensor; `TargetLayout.point` turns it into one
prediction per target (the median for a quantile target), which is what metrics, checkpoints
and prediction files use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aam.config import RunConfig
from aam.models.layers import choice_error


@dataclass(frozen=True)
class TargetLayout:
    """Targets -> slices of the head's outputs. Built from the config, so a checkpoint rebuilds it."""

    names: tuple[str, ...]
    losses: tuple[str, ...]
    quantiles: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: RunConfig, names: list[str]) -> "TargetLayout":
        return cls(tuple(names), tuple(cfg.loss_for(n) for n in names), tuple(cfg.quantiles))

    def width(self, t: int) -> int:
        return len(self.quantiles) if self.losses[t] == "quantile" else 1

    @property
    def n_outputs(self) -> int:
        return sum(self.width(t) for t in range(len(self.names)))

    def slices(self) -> list[slice]:
        out, start = [], 0
        for t in range(len(self.names)):
            out.append(slice(start, start + self.width(t)))
            start += self.width(t)
        return out

    @property
    def quantile_targets(self) -> list[int]:
        return [t for t, loss in enumerate(self.losses) if loss == "quantile"]

    def point(self, raw: torch.Tensor) -> torch.Tensor:
        """[B, n_outputs] -> [B, T]: the output of a one-output target, the median of a quantile one."""
        median = self.quantiles.index(0.5) if 0.5 in self.quantiles else 0
        cols = [s.start + (median if self.losses[t] == "quantile" else 0) for t, s in enumerate(self.slices())]
        return raw[:, cols]

    def quantile_outputs(self, raw: torch.Tensor) -> torch.Tensor:
        """[B, n_outputs] -> [B, T_quantile, Q], the quantile targets in target order."""
        parts = [raw[:, self.slices()[t]] for t in self.quantile_targets]
        return torch.stack(parts, dim=1) if parts else raw.new_zeros(raw.shape[0], 0, len(self.quantiles))


def mlp(d_in: int, hidden: list[int], d_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(d_in, width), nn.GELU(), nn.Dropout(dropout)]
        d_in = width
    return nn.Sequential(*layers, nn.Linear(d_in, d_out))


class ResidualHead(nn.Module):
    """linear(x) + mlp(x): the linear path is there from the first step, the MLP adds what it can."""

    def __init__(self, d_in: int, hidden: list[int], d_out: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.mlp = mlp(d_in, hidden, d_out, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


class MixtureOfExperts(nn.Module):
    """Soft mixture: sum_e gate_e(x) * expert_e(x).

    The gate comes from the sample vector (a learned linear router) or, when `n_categories` is
    given, from a learned row of logits per category of one column: samples of one category then
    share a mixture, so the experts can split the data where the column says it differs (a target
    whose relation to the microbes flips with diet, say). The unknown category (code 0) has fixed
    zero logits: an even mixture.

    `balance_loss` is E * sum_e mean(gate_e)^2 - 1 (the Switch Transformer's load-balancing term
    for soft gates): 0 when every expert carries the same share of the batch, up to E - 1 when one
    carries it all. `usage` is that mean gate per expert, for logging.
    """

    def __init__(self, d_in: int, hidden: list[int], d_out: int, dropout: float, n_experts: int,
                 n_categories: int | None = None):
        super().__init__()
        self.n_experts = n_experts
        self.experts = nn.ModuleList(mlp(d_in, hidden, d_out, dropout) for _ in range(n_experts))
        if n_categories is None:
            self.router = nn.Linear(d_in, n_experts)
            self.category_router = None
        else:
            self.router = None
            self.category_router = nn.Embedding(n_categories + 1, n_experts, padding_idx=0)

    def gates(self, x: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        logits = self.router(x) if self.router is not None else self.category_router(codes)
        return torch.softmax(logits.float(), dim=-1).to(x.dtype)

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D] (codes [B] for a category router) -> (outputs [B, d_out], gates [B, E])."""
        gates = self.gates(x, codes)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, d_out]
        return torch.einsum("be,bed->bd", gates, outputs), gates

    @staticmethod
    def balance_loss(gates: torch.Tensor) -> torch.Tensor:
        usage = gates.float().mean(dim=0)
        return gates.shape[-1] * usage.pow(2).sum() - 1.0


class RegressionHead(nn.Module):
    """BatchNorm -> dropout -> linear | mlp | residual | moe -> optional per-category scale and bias.

    `forward(x, codes)` takes the sample vector [B, D] and every categorical column the model reads
    [B, C]; `router_column` and `affine_column` say which of those columns route and rescale.
    Returns (raw outputs [B, n_outputs], diagnostics) with "gates" [B, E] for the moe head.
    """

    def __init__(self, cfg: RunConfig, d_in: int, n_outputs: int, router_column: int | None = None,
                 router_categories: int | None = None, affine_column: int | None = None,
                 affine_categories: int | None = None):
        super().__init__()
        # Sample vectors are means over ~100 ASV vectors that share most of their content, so at
        # the start two samples differ by ~1% of their norm. BatchNorm rescales those differences
        # per feature; without it the head needs thousands of steps before its output varies at
        # all (measured: prediction spread 1e-4 after 60 steps without, 0.6 with).
        self.norm = nn.BatchNorm1d(d_in)
        self.drop = nn.Dropout(cfg.dropout)
        self.kind = cfg.head
        self.router_column = router_column
        self.affine_column = affine_column
        if cfg.head == "linear":
            self.body = nn.Linear(d_in, n_outputs)
        elif cfg.head == "mlp":
            self.body = mlp(d_in, cfg.head_hidden, n_outputs, cfg.head_dropout)
        elif cfg.head == "residual":
            self.body = ResidualHead(d_in, cfg.head_hidden, n_outputs, cfg.head_dropout)
        elif cfg.head == "moe":
            self.body = MixtureOfExperts(d_in, cfg.head_hidden, n_outputs, cfg.head_dropout, cfg.moe_experts,
                                         router_categories)
        else:
            raise choice_error("head", cfg.head)
        # per-category (1 + scale) and bias, both 0 at the start and for the unknown category
        self.affine = (
            nn.Embedding(affine_categories + 1, 2 * n_outputs, padding_idx=0) if affine_column is not None else None
        )

    def categorical_modules(self) -> list[nn.Module]:
        """The modules whose parameters belong to the categorical learning-rate group."""
        out = [m for m in (self.affine,) if m is not None]
        if isinstance(self.body, MixtureOfExperts) and self.body.category_router is not None:
            out.append(self.body.category_router)
        return out

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        x = self.drop(self.norm(x))
        diagnostics: dict[str, torch.Tensor] = {}
        if self.kind == "moe":
            route = codes[:, self.router_column] if self.router_column is not None else None
            out, gates = self.body(x, route)
            diagnostics["gates"] = gates
        else:
            out = self.body(x)
        if self.affine is not None:
            scale, bias = self.affine(codes[:, self.affine_column]).to(out.dtype).chunk(2, dim=-1)
            out = out * (1 + scale) + bias
        return out, diagnostics
