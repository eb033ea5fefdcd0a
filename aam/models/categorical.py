"""Categorical metadata (diet, study, body site) joined to the sample vector.

    CategoricalEmbeddings  one table per column; code 0 (unknown, or unseen at prediction) -> zeros
    CategoricalFusion      sample vector [B, D] + column embeddings -> fused vector [B, D]

The fusions, from cheapest to most expressive (see `FUSION_GUIDE`, printed by
`aam train --categorical-help`):
    concat           Linear([s, e_1 .. e_C]) -> D
    add              s + Linear([e_1 .. e_C]): a learned offset per category combination
    gmu              gated multimodal unit: z * tanh(W_s s) + (1 - z) * tanh(W_c e), z = sigmoid(W [s, e])
    cross-attention  the sample vector queries one key/value token per column (so the weights say
                     which column it used)
    perceiver        learned latents cross-attend to the ASV states and the column tokens (padding
                     masked), then self-attend; their mean is added to s

Each fusion returns diagnostics for TensorBoard: the GMU gate ("gate": share kept from the
microbes), cross-attention weights per column ("column_attention" [B, C]) and the perceiver's
attention share on each column token ("column_attention") and on the ASVs ("asv_attention").
"""

from __future__ import annotations

import torch
from torch import nn

from aam.config import RunConfig
from aam.models.layers import Transformer, choice_error

FUSION_GUIDE = """\
Categorical metadata: which fusion to use, and when (flag: --categorical-fusion).

  off              The metadata says nothing the microbes do not, or you will predict samples
                   whose metadata you will not have.
  concat           First try. One linear layer over [sample vector, column embeddings]; cheap,
                   lets the head weigh metadata against microbes.
  add              The metadata shifts the target by a roughly constant amount per category
                   (a study or batch effect). Fewest parameters.
  gmu              How much to trust the microbes vs the metadata differs between samples; the
                   learned gate (logged as gate/…) says which one the model leans on.
  cross-attention  Several columns, and you want to know which one matters: one token per
                   column, attention weights logged per column.
  perceiver        The metadata changes which ASVs matter (diet reshapes which taxa track age):
                   latents attend to ASVs and metadata together. Slowest; needs more data.

Related options:
  --category-affine COL     each category of COL gets its own output scale and bias (the
                            target's level or spread differs by category).
  --head moe --moe-router COL
                            experts split by COL (the relation to the microbes itself differs
                            by category, e.g. flips sign).
  --target-transform zscore-category --transform-by COL
                            standardise the target within each category (the model learns the
                            within-category deviation; the category mean is added back).
  --categorical-lr LR       a separate learning rate for every categorical parameter
                            (embeddings are sparse: each row sees only its category's samples).
  --categorical-columns A,B which columns the fusion reads (default: all).

Unknown categories (missing metadata, or a category not seen in training) use a zero "unknown"
embedding, an even expert mixture and no affine change. Redundant combinations are warned about.
"""


class CategoricalEmbeddings(nn.Module):
    """codes [B, C] -> embeddings [B, C, dim]; row 0 of every table is the fixed zero 'unknown'."""

    def __init__(self, sizes: list[int], dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim, padding_idx=0) for n in sizes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        # a code beyond a table (a newer vocabulary than the model's) is unknown too
        return torch.stack(
            [table(codes[:, c].clamp(0, table.num_embeddings - 1) * (codes[:, c] < table.num_embeddings))
             for c, table in enumerate(self.tables)], dim=1
        )


class CategoricalFusion(nn.Module):
    def __init__(self, cfg: RunConfig, sizes: list[int]):
        super().__init__()
        d, k, n_cols = cfg.d_model, cfg.categorical_dim, len(sizes)
        self.mode = cfg.categorical_fusion
        # the perceiver reads the ASV states too, not only the sample vector (so no sample cache)
        self.reads_asv_states = self.mode == "perceiver"
        self.embeddings = CategoricalEmbeddings(sizes, k)
        if self.mode == "concat":
            self.mix = nn.Linear(d + n_cols * k, d)
        elif self.mode == "add":
            self.offset = nn.Linear(n_cols * k, d)
        elif self.mode == "gmu":
            self.from_sample = nn.Linear(d, d)
            self.from_categories = nn.Linear(n_cols * k, d)
            self.gate = nn.Linear(d + n_cols * k, d)
        elif self.mode in ("cross-attention", "perceiver"):
            self.to_token = nn.Linear(k, d)
            self.column_embedding = nn.Parameter(0.02 * torch.randn(n_cols, d))  # which column a token is
            n_heads = cfg.n_heads
            if self.mode == "cross-attention":
                self.attention = nn.MultiheadAttention(d, n_heads, batch_first=True)
                self.ln = nn.LayerNorm(d)
            else:
                # random, not zero: identical latents would get identical gradients and stay one
                self.latents = nn.Parameter(0.02 * torch.randn(cfg.perceiver_latents, d))
                self.attention = nn.MultiheadAttention(d, n_heads, batch_first=True)
                self.ln_inputs = nn.LayerNorm(d)
                self.ln_latents = nn.LayerNorm(d)
                # the same pre-norm blocks as the encoders
                self.latent_transformer = Transformer(cfg.perceiver_layers, d, n_heads, cfg.ff_mult, cfg.dropout)
                self.out = nn.Linear(d, d)
        else:
            raise choice_error("categorical_fusion", self.mode)  # "off" builds no fusion at all

    def _tokens(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.to_token(embedded) + self.column_embedding

    def forward(self, sample: torch.Tensor, codes: torch.Tensor, asv_states: torch.Tensor | None = None,
                asv_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """sample [B, D], codes [B, C] (the fusion's columns); the perceiver also reads the ASV
        states [B, S, D] and their mask [B, S] (True = real)."""
        embedded = self.embeddings(codes).to(sample.dtype)  # [B, C, k]
        flat = embedded.flatten(1)
        diagnostics: dict[str, torch.Tensor] = {}
        if self.mode == "concat":
            return self.mix(torch.cat([sample, flat], dim=-1)), diagnostics
        if self.mode == "add":
            return sample + self.offset(flat), diagnostics
        if self.mode == "gmu":
            z = torch.sigmoid(self.gate(torch.cat([sample, flat], dim=-1)))
            diagnostics["gate"] = z.mean(dim=-1)
            return z * torch.tanh(self.from_sample(sample)) + (1 - z) * torch.tanh(self.from_categories(flat)), diagnostics
        tokens = self._tokens(embedded)  # [B, C, D]
        if self.mode == "cross-attention":
            attended, weights = self.attention(self.ln(sample)[:, None], tokens, tokens, need_weights=True)
            diagnostics["column_attention"] = weights[:, 0]  # [B, C], averaged over heads
            return sample + attended[:, 0], diagnostics
        # perceiver: latents read the ASVs and the column tokens together; padding never attended
        n, n_cols = sample.shape[0], tokens.shape[1]
        inputs = self.ln_inputs(torch.cat([asv_states, tokens], dim=1))
        ignore = torch.cat([~asv_mask, asv_mask.new_zeros(n, n_cols)], dim=1)
        latents = self.ln_latents(self.latents).expand(n, -1, -1)
        read, weights = self.attention(latents, inputs, inputs, key_padding_mask=ignore, need_weights=True)
        weights = weights.mean(dim=1)  # [B, S + C], averaged over latents (and heads)
        diagnostics["column_attention"] = weights[:, -n_cols:]
        diagnostics["asv_attention"] = weights[:, :-n_cols].sum(dim=-1)
        latents = self.latent_transformer(read, torch.ones(read.shape[:2], dtype=torch.bool, device=read.device))
        return sample + self.out(latents.mean(dim=1)), diagnostics
