"""Layers shared by the model's modules: the transformer stacks and attention pooling.

    attention        `scaled_dot_product_attention` with the backends allowed on a GPU
    Block            pre-norm transformer layer (fused SDPA attention with a key padding mask)
    Transformer      a stack of Blocks (the ASV and sample encoders', the perceiver fusion's)
    AttentionPool    learned-query pooling that never attends to padding

`model.py` (the encoders, the composed AAM) and `categorical.py` (the fusions) both build on these;
this module imports neither, so the two never import each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from aam.config import RunConfig

# Attention kernels allowed on a GPU, in torch's order of preference. cuDNN's is left out: it
# builds an execution plan for every new input shape (~23 ms of host time per call on an H200,
# 89% of a step, against 40-75 us of GPU time), and batch shapes change nearly every step. The
# memory-efficient kernel takes the boolean padding mask; flash runs where there is no mask.
CUDA_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """`scaled_dot_product_attention` with the backends above on CUDA (CPU: torch's choice)."""
    if q.is_cuda:
        with sdpa_kernel(CUDA_ATTENTION_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class Block(nn.Module):
    """Pre-norm transformer layer: x + Attn(LN(x)), then x + FF(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x [N, L, D]; attn_mask [N, 1, 1, L] bool, True = may be attended to (None: all real)."""
        n, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, attn_mask)
        y = y.transpose(1, 2).reshape(n, length, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))


def key_padding_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """[N, L] real-position mask -> the SDPA mask, or None when nothing is padding (fastest kernel).

    A row with no real position at all would make softmax divide by zero (NaN that then spreads
    through the backward pass), so such a row may attend to its padding; its output is garbage
    but finite and the pooling below drops it anyway.

    On a GPU the mask is always returned: testing it for padding is a host synchronisation.
    """
    if not mask.is_cuda and bool(mask.all()):
        return None
    safe = mask | ~mask.any(dim=-1, keepdim=True)
    return safe[:, None, None, :]


class Transformer(nn.Module):
    """A stack of Blocks and a final LayerNorm."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, ff_mult, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = key_padding_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)


class AttentionPool(nn.Module):
    """Weighted mean of the real positions; the weights come from a learned query.

    score_i = <query, W_k x_i> / sqrt(D); padding gets -inf so it has exactly zero weight.
    A row with no real position pools to zeros (not NaN).
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d_model))
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.ln = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, L, D], mask [N, L] True = real -> [N, D]."""
        scores = (self.key(x) @ self.query) / math.sqrt(x.shape[-1])
        scores = scores.float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        weights = torch.nan_to_num(weights, nan=0.0).to(x.dtype)  # all-padding rows: 0/0 -> 0
        return self.ln(torch.einsum("nl,nld->nd", weights, self.value(x)))


def choice_error(name: str, value) -> ValueError:
    """The error of a module asked for a value its RunConfig field does not offer, listing the
    field's own choices (RunConfig validation refuses such a config first; this guards direct use)."""
    choices = RunConfig.fields()[name].metadata["choices"]
    return ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
