"""The AAM model: nucleotides -> ASV vectors -> sample vector -> heads.

Read it top to bottom:

    mask_tokens      BERT-style masking of real nucleotides (seeded)
    ASVEncoder       nucleotide tokens [U, L] -> one vector per distinct ASV [U, D]
    count_features   what the count embedding and the count task read: log1p | relative
    CountEmbedding   the count feature into the ASV slots: add | concat | film
    SampleEncoder    ASV vectors scattered to slots [B, S, D] -> sample vector [B, D]
    ASVIdentity      a learned vector per ASV seen in training, keyed by sequence (optional)
    AAM              the composition: the encoders (`encode_samples`) -> categorical fusion ->
                     regression head, the self-supervised tasks, and the pretrain -> fine-tune helpers

The transformer layers and attention pooling are in `layers.py`, the regression heads (linear,
mlp, residual, mixture of experts) in `heads.py`, the categorical fusions (concat, add, gmu,
cross-attention, perceiver) in `categorical.py`, the neighbour prior (the nearest training
samples' targets, gated into the head's prediction) in `neighbors.py`.

The batch is made by `aam.data.collate.collate`:

    tokens       Long  [U, L]  tokens of the DISTINCT ASVs of the batch (PAD=0 at the end)
    asv_index    Long  [B, S]  row of `tokens` for each ASV slot of each sample (0 at padding)
    asv_mask     Bool  [B, S]  True for a real ASV slot
    counts       Float [B, S]  raw counts (0 at padding)
    depth        Float [B]     reads of the whole sample (what `relative` counts divide by)
    targets      Float [B, T]  transformed targets, NaN where missing (read by the losses)
    categoricals Long  [B, C]  category codes of every categorical column of the dataset (0: unknown)
    unifrac_row  Long  [B]     row in the UniFrac matrix, -1 when unknown (read by the losses)

Speed: each distinct ASV is encoded once and its vector gathered into every sample that has it;
nothing is padded beyond the batch's own longest ASV and sample (on a GPU, beyond the next size
of the collate's shape buckets; `batch["bucketed_from"]` then holds the unpadded sizes, at which
the random task draws are made); attention uses the fused
`scaled_dot_product_attention` kernel (so there is no dropout on attention weights: on CPU it
forces the slow unfused path, ~4x slower; dropout acts on the residual branches of the sample
transformer, on the pooled ASV vectors and in the head instead, see ASVEncoder for why not in
the nucleotide transformer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aam.config import RunConfig
from aam.data.collate import bucket_size
from aam.data.sequences import MASK, PAD, VOCAB_SIZE
from aam.models.categorical import CategoricalFusion
from aam.models.heads import RegressionHead, TargetLayout
from aam.models.layers import AttentionPool, Transformer, choice_error
from aam.models.neighbors import NeighborPrior

# Share of a batch's distinct ASVs that get a second, masked pass for the nucleotide task.
NUCLEOTIDE_TASK_FRACTION = 0.25

# The state-dict keys of the encoders: what a pretrained run hands on (encoder_state_dict).
ENCODER_PREFIXES = ("asv_encoder.", "sample_encoder.")


# --------------------------------------------------------------------------------------------
# Random draws of the self-supervised tasks
# --------------------------------------------------------------------------------------------
def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` (host draws of the seeded generator) on `device`. To a GPU through pinned memory and a
    non-blocking copy: a copy from pageable memory makes the host wait for the device first."""
    if torch.device(device).type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def uniform(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) draws on `device`, taken from `generator` on its own device (a CPU generator
    cannot draw CUDA tensors; the loop keeps one seeded CPU generator whatever the device)."""
    where = generator.device if generator is not None else device
    return to_device(torch.rand(shape, generator=generator, device=where), device)


def mask_tokens(
    tokens: torch.Tensor, prob: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a fraction `prob` of the real nucleotides of every row with MASK.

    Each row gets round(prob * its length) masked positions, at least one, chosen uniformly
    among its real (non-PAD) positions; padding is never masked. Returns (masked tokens,
    bool [U, L] of the masked positions). Drawn from torch's RNG (or `generator`), so seeded.
    """
    real = tokens != PAD
    scores = uniform(tokens.shape, generator, tokens.device)
    scores = scores.masked_fill(~real, 2.0)  # padding sorts after every real position
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each position among its row
    n_mask = (real.sum(dim=1) * prob).round().clamp(min=1)
    chosen = (rank < n_mask[:, None]) & real
    return tokens.masked_fill(chosen, MASK), chosen


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------
class ASVEncoder(nn.Module):
    """Nucleotide tokens [U, L] -> (ASV vectors [U, D], per-position states [U, ceil(L/p), D]).

    With `nucleotide_patch` p > 1, each run of p nucleotides is one transformer position (the
    p letter embeddings concatenated, then projected to D), as in a ViT's patches: attention
    over 176 nucleotides costs ~16x more than over 44 patches, and this encoder is nearly all
    of a training step. The masked-nucleotide head still predicts every letter (p per patch).

    Dropout acts on the pooled ASV vectors, not inside the nucleotide transformer: there a
    dropout mask has U x L x D values (~7M a batch) and drawing them cost ~14% of a training
    step on CPU, while masked nucleotides already corrupt this encoder's input.
    """

    def __init__(self, cfg: RunConfig, token_width: int):
        super().__init__()
        d = cfg.d_model
        self.patch = cfg.nucleotide_patch
        self.token_embedding = nn.Embedding(VOCAB_SIZE, d if self.patch == 1 else cfg.d_model // 2)
        self.patch_projection = (
            nn.Linear(self.patch * (d // 2), d) if self.patch > 1 else None
        )
        self.position_embedding = nn.Embedding(math.ceil(token_width / self.patch), d)  # order matters
        self.transformer = Transformer(cfg.asv_layers, d, cfg.n_heads, cfg.ff_mult, dropout=0.0)
        self.pool = AttentionPool(d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.patch > 1:
            extra = (-tokens.shape[1]) % self.patch
            tokens = F.pad(tokens, (0, extra), value=PAD)
        u, length = tokens.shape
        x = self.token_embedding(tokens)
        real = tokens != PAD
        if self.patch > 1:
            x = self.patch_projection(x.reshape(u, length // self.patch, -1))
            real = real.reshape(u, length // self.patch, self.patch).any(dim=-1)
        positions = torch.arange(x.shape[1], device=tokens.device)
        states = self.transformer(x + self.position_embedding(positions), real)
        return self.drop(self.pool(states, real)), states


RELATIVE_READS = 10_000.0  # `relative` counts are per this many reads: log1p then spans ~0-9, like raw counts


def count_features(batch: dict, mode: str) -> torch.Tensor:
    """The count feature of every slot [B, S] (0 at padding).

    log1p     log1p(count): what the sequencer returned; a sample sequenced 4x deeper shows every
              ASV ~1.4 higher
    relative  log1p(count per 10,000 reads of the sample): the same abundance gives the same
              value at any depth (what the Random Forest baseline sees, as proportions)
    """
    counts = batch["counts"].float()
    if mode == "relative":
        depth = batch["depth"].float().clamp(min=1.0)
        counts = counts * (RELATIVE_READS / depth)[:, None]
    elif mode != "log1p":
        raise choice_error("count_feature", mode)
    return torch.log1p(counts)


class CountEmbedding(nn.Module):
    """Put count magnitudes into the ASV slot vectors.

    The features are [count feature, hidden]: `hidden` is 1 where the count was masked for the
    count task (its feature is then 0), so a hidden count is never mistaken for a small one.
        add     x + MLP(features)
        concat  Linear([x, features]) back to D
        film    x * (1 + gamma(features)) + beta(features), starting as the identity
    `off` is no module at all (`build` returns None): the encoder never sees counts.
    """

    @classmethod
    def build(cls, mode: str, d_model: int) -> "CountEmbedding | None":
        return None if mode == "off" else cls(mode, d_model)

    def __init__(self, mode: str, d_model: int):
        super().__init__()
        self.mode = mode
        if mode == "add":
            self.mlp = nn.Sequential(nn.Linear(2, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        elif mode == "concat":
            self.mix = nn.Linear(d_model + 2, d_model)
        elif mode == "film":
            self.mlp = nn.Sequential(nn.Linear(2, d_model), nn.GELU(), nn.Linear(d_model, 2 * d_model))
        else:
            raise choice_error("count_embed", mode)

    def forward(self, x: torch.Tensor, log_counts: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        features = torch.stack([log_counts.masked_fill(hidden, 0.0), hidden.to(log_counts.dtype)], dim=-1)
        features = features.to(x.dtype)
        if self.mode == "add":
            return x + self.mlp(features)
        if self.mode == "concat":
            return self.mix(torch.cat([x, features], dim=-1))
        gamma, beta = self.mlp(features).chunk(2, dim=-1)
        return x * (1 + gamma) + beta


class ASVIdentity(nn.Module):
    """A learned vector per ASV of the training vocabulary, added to its nucleotide-encoder vector.

    The nucleotide transformer sees only the sequence, so two ASVs one letter apart start nearly
    equal; a Random Forest tells them apart at once. Rows are keyed by sequence (`vocabulary`,
    saved with the model), not by a table's ASV index, so a new table is matched to them by
    `index_table`. Row 0 is "not seen in training": exactly zero, so such an ASV uses the
    sequence path alone. In training a share `dropout` of the ASVs of each batch are treated as
    unseen, so the sequence path keeps learning for the ASVs that will be.
    """

    def __init__(self, vocabulary: list[str], d_model: int, dropout: float, bag: bool = False,
                 bag_weight: str = "share"):
        super().__init__()
        self.vocabulary = list(vocabulary)
        self.dropout = dropout
        self.bag_weight = bag_weight
        self.embedding = nn.Embedding(len(self.vocabulary) + 1, d_model, padding_idx=0)
        # abundance_bag: every ASV of a sample, weighted by its share of the reads, in one weighted sum
        self.bag = nn.EmbeddingBag(len(self.vocabulary) + 1, d_model, mode="sum", padding_idx=0) if bag else None
        # the table's ASV index -> row of `embedding`; set per table, never saved
        self.register_buffer("rows", torch.zeros(0, dtype=torch.long), persistent=False)

    def index_table(self, sequences: list[str]) -> int:
        """Match the ASVs of a table (its ASV index order) to the vocabulary; returns how many matched."""
        row_of = {seq: i + 1 for i, seq in enumerate(self.vocabulary)}
        rows = torch.tensor([row_of.get(seq, 0) for seq in sequences], dtype=torch.long)
        self.rows = rows.to(self.embedding.weight.device)
        return int((rows > 0).sum())

    def forward(self, asv_vectors: torch.Tensor, asv_ids: torch.Tensor, generator: torch.Generator | None):
        """asv_vectors [U, D] of the table's ASVs `asv_ids` [U] -> the same plus their identity vectors."""
        rows = self._rows(asv_ids, generator)
        return asv_vectors + self.embedding(rows).to(asv_vectors.dtype)

    def pool(self, all_asvs: torch.Tensor, shares: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """sum_i w(share_i) * bag vector of ASV i over every ASV of each sample: all_asvs, shares [B, K] -> [B, D].

        w is the share itself, its square root or log1p(10^4 share) (`bag_weight`); each is 0 at a
        zero share, so padding adds nothing. The share lets the few dominant ASVs decide; the
        other two let the rare ones, where a forest finds much of its signal, count too.
        """
        weights = shares.float()
        if self.bag_weight == "sqrt":
            weights = weights.sqrt()
        elif self.bag_weight == "log":
            weights = torch.log1p(weights * 1e4)
        return self.bag(self._rows(all_asvs, generator), per_sample_weights=weights)

    def _rows(self, asv_ids: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.rows.numel() == 0:
            raise RuntimeError("ASVIdentity.index_table was not called for this table")
        rows = self.rows[asv_ids]
        if self.training and self.dropout > 0:
            rows = rows.masked_fill(uniform(rows.shape, generator, rows.device) < self.dropout, 0)
        return rows


class SampleEncoder(nn.Module):
    """ASV vectors gathered into slots [B, S, D] (+ counts) -> (sample vector [B, D], slot states).

    No position embedding: a sample is a set of ASVs. The slots are sorted by abundance by the
    collate, but that order only decides which ASVs are kept under token_limit; the model sees
    abundance through the count embedding alone.
    """

    def __init__(self, cfg: RunConfig):
        super().__init__()
        d = cfg.d_model
        self.count_embedding = CountEmbedding.build(cfg.count_embed, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg.sample_layers, d, cfg.n_heads, cfg.ff_mult, cfg.dropout)
        self.pool = AttentionPool(d)

    def forward(
        self, slots: torch.Tensor, mask: torch.Tensor, log_counts: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = slots
        if self.count_embedding is not None:
            x = self.count_embedding(x, log_counts, hidden)
        states = self.transformer(self.drop(x), mask)
        return self.pool(states, mask), states


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class Encoded(NamedTuple):
    """What `AAM.encode_samples` returns."""

    samples: torch.Tensor  # [B, D] the sample vectors
    slots: torch.Tensor | None  # [B, S, D] the ASV vectors in each sample's slots (None: from the sample cache)
    slot_states: torch.Tensor | None  # [B, S, D] the sample transformer's states of those slots


class AAM(nn.Module):
    """Attention All Microbes: a batch dict (see the module docstring) -> outputs dict.

    Self-supervised heads are only built when their task is on (mask_prob > 0 and
    nucleotide_weight > 0; count_head and count_weight > 0): a head that no loss reads would be
    compute for nothing and, under DistributedDataParallel, a parameter without a gradient.
    """

    def __init__(self, cfg: RunConfig, targets: Sequence[str], token_width: int,
                 categoricals: dict[str, list[str]] | None = None, asv_vocabulary: list[str] | None = None,
                 neighbor_reference: dict | None = None):
        """`targets`: the target names (none: a pretraining model, without a head); `categoricals`:
        every categorical column of the dataset -> its categories, in the order of the batch's
        `categoricals`; `asv_vocabulary`: the sequences of the ASVs seen in training (read with
        asv_identity); `neighbor_reference`: the training samples the neighbour prior searches
        (read with neighbor_prior, see aam.models.neighbors)."""
        super().__init__()
        if isinstance(targets, (str, int)):
            raise TypeError(f"targets={targets!r}: give the list of target names")
        names = list(targets)
        categoricals = dict(categoricals or {})
        self.cfg = cfg
        self.n_targets = len(names)
        self.token_width = token_width
        self.layout = TargetLayout.from_config(cfg, names)
        d = cfg.d_model
        self.asv_encoder = ASVEncoder(cfg, token_width)
        self.sample_encoder = SampleEncoder(cfg)
        self.asv_identity = None
        if cfg.asv_identity:
            if asv_vocabulary is None:
                raise ValueError("asv_identity needs the training ASVs' sequences (asv_vocabulary)")
            self.asv_identity = ASVIdentity(asv_vocabulary, d, cfg.asv_identity_dropout, bag=cfg.abundance_bag,
                                            bag_weight=cfg.abundance_bag_weight)
        # categorical columns, as indices into the batch's `categoricals`
        columns = list(categoricals)
        fused = cfg.fusion_columns(columns) if self.n_targets else []
        self.fusion_columns = [columns.index(c) for c in fused]
        self.fusion = CategoricalFusion(cfg, [len(categoricals[c]) for c in fused]) if fused else None
        self.head = None
        if self.n_targets > 0:
            router = cfg.moe_router if cfg.head == "moe" and cfg.moe_router != "embedding" else None
            affine = cfg.category_affine or None
            self.head = RegressionHead(
                cfg, d, self.layout.n_outputs,
                router_column=columns.index(router) if router else None,
                router_categories=len(categoricals[router]) if router else None,
                affine_column=columns.index(affine) if affine else None,
                affine_categories=len(categoricals[affine]) if affine else None,
            )
        self.neighbor_prior = None
        if cfg.neighbor_prior > 0 and self.n_targets > 0:
            if neighbor_reference is None:
                raise ValueError("neighbor_prior needs the training samples (neighbor_reference)")
            self.neighbor_prior = NeighborPrior(neighbor_reference, cfg.neighbor_prior, self.n_targets,
                                                weighting=cfg.neighbor_weighting)
        self.masks_nucleotides = cfg.mask_prob > 0 and cfg.nucleotide_weight > 0
        # one position holds `nucleotide_patch` letters: the head predicts each of them
        patch = cfg.nucleotide_patch
        self.nucleotide_head = nn.Linear(d, patch * VOCAB_SIZE) if self.masks_nucleotides else None
        self.count_head = nn.Linear(d, 1) if cfg.count_head and cfg.count_weight > 0 else None
        self.encoder_frozen = False
        # every ASV vector of the dataset, computed once by a frozen encoder (see use_asv_cache);
        # not persistent: a checkpoint never carries it
        self.register_buffer("asv_cache", None, persistent=False)
        self.register_buffer("sample_cache", None, persistent=False)
        self.sample_rows: dict[str, int] = {}
        self.apply(self._init_weights)
        if self.head is not None and self.head.affine is not None:
            nn.init.zeros_(self.head.affine.weight)  # every category starts at scale 1, bias 0

    def index_table(self, sequences: list[str]) -> None:
        """Match a table's ASVs (its ASV index order, what batches index) to what the model keeps by
        sequence: the identity vectors and the neighbour prior's reference samples."""
        if self.asv_identity is not None:
            self.asv_identity.index_table(sequences)
        if self.neighbor_prior is not None:
            self.neighbor_prior.index_table(sequences)

    def categorical_parameters(self) -> list[nn.Parameter]:
        """Every categorical parameter (embeddings, fusion, category router, affine): the group
        that `categorical_lr` drives."""
        modules = ([self.fusion] if self.fusion is not None else []) + (
            self.head.categorical_modules() if self.head is not None else [])
        return [p for m in modules for p in m.parameters()]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # small normal init (as GPT-2/nanoGPT): keeps the residual stream near unit scale at start
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:  # the "unknown" category stays exactly zero
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, AttentionPool):
            # near-uniform pooling at start, but not exactly zero: a zero query gives the key
            # projection a zero gradient
            nn.init.normal_(module.query, std=0.02)
        elif isinstance(module, CountEmbedding) and module.mode == "film":
            # FiLM starts as the identity (gamma = beta = 0) so counts cannot scramble the ASV
            # vectors before the model has learnt what to do with them
            nn.init.zeros_(module.mlp[-1].weight)
            nn.init.zeros_(module.mlp[-1].bias)

    # ---------------------------------------------------------------------------------------
    def forward(
        self,
        batch: dict,
        mask_nucleotides: bool = False,
        generator: torch.Generator | None = None,
        mask_counts: bool | None = None,
    ) -> dict:
        """Outputs:
            sample_embedding   [B, D] from the microbes alone (what UniFrac compares)
            prediction         [B, n_targets] on the transformed target scale (the median of a
                               quantile target)
            quantiles          [B, T_quantile, Q] every quantile of the quantile targets
            raw_prediction     [B, n_outputs] the head's outputs, and `layout` (a heads.TargetLayout)
                               that says which belong to which target and its loss
            diagnostics        dict of per-sample values to log: "gate", "column_attention",
                               "asv_attention" (fusion), "gates" (moe)
            nucleotide_logits  [M, VOCAB] and nucleotide_labels [M]: masked nucleotides, only
                               when mask_nucleotides and the nucleotide task is on
            count_prediction   [B, S] predicted count feature (0 at padding), when count_head
            count_target       [B, S] the count feature it is scored against
            count_mask         [B, S] the slots the count loss should score, when count_head

        `mask_counts` (default: follow `mask_nucleotides`, i.e. on while training) hides the
        count of a fraction mask_prob of the real slots from the count embedding; the count loss
        is then taken on those slots only, so it cannot be won by copying the input count.
        When count_embed is off the encoder never sees counts and every real slot is scored.
        Without hiding (eval, or mask_prob 0) a count embedding makes the count task trivial.

        The targets and UniFrac always see the clean input (`encode_samples`). The self-supervised
        tasks corrupt their own copies: masked nucleotides go through the ASV encoder again for a
        subset of the batch's distinct ASVs, hidden counts through the (cheap) sample encoder
        again. So the embeddings the head trains on are those it sees in evaluation: the
        BatchNorm before it would turn any shift between the two into errors several times the
        target's range.
        """
        # with a frozen encoder the self-supervised tasks cannot teach it anything
        pretraining = not self.encoder_frozen
        log_counts = count_features(batch, self.cfg.count_feature)
        encoded = self.encode_samples(batch, log_counts, generator)
        out: dict = {"sample_embedding": encoded.samples, **self._predict(batch, encoded)}
        if mask_nucleotides and self.masks_nucleotides and pretraining:
            out.update(self._nucleotide_task(batch, generator))
        if self.count_head is not None and pretraining:
            hide = (mask_nucleotides if mask_counts is None else mask_counts) and self.reads_counts
            out.update(self._count_task(batch, encoded, log_counts, hide and self.cfg.mask_prob > 0, generator))
        return out

    def encode_samples(self, batch: dict, log_counts: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> "Encoded":
        """The encoders on the clean input: the sample vectors [B, D] from the microbes alone.

        What `forward` gives the heads and UniFrac, and what the frozen-encoder cache holds
        (aam.training.prepare). The ASV vectors come from the ASV cache when one is set, the
        sample vectors from the sample cache when it holds every sample of the batch (then
        neither transformer runs and `slots`, `slot_states` are None).
        """
        if log_counts is None:
            log_counts = count_features(batch, self.cfg.count_feature)
        # a frozen encoder needs no autograd graph: cheaper in time and memory
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            cached = self._cached_samples(batch)
            if cached is not None:
                return Encoded(cached, None, None)
            if self.asv_cache is not None and "asv_ids" in batch:
                asv_vectors = self.asv_cache[batch["asv_ids"]]  # the nucleotide transformer never runs
            else:
                asv_vectors, _ = self.asv_encoder(batch["tokens"])  # each distinct ASV once
            if self.asv_identity is not None:
                asv_vectors = self.asv_identity(asv_vectors, batch["asv_ids"], generator)
            slots = asv_vectors[batch["asv_index"]]  # [B, S, D]: scatter to the samples that hold them
            asv_mask = batch["asv_mask"]
            samples, slot_states = self.sample_encoder(slots, asv_mask, log_counts, torch.zeros_like(asv_mask))
            if self.asv_identity is not None and self.asv_identity.bag is not None:
                samples = samples + self.asv_identity.pool(batch["all_asvs"], batch["all_shares"],
                                                           generator).to(samples.dtype)
        return Encoded(samples, slots, slot_states)

    def _predict(self, batch: dict, encoded: "Encoded") -> dict:
        """The regression head's outputs on the fused sample vector, and the diagnostics."""
        samples = encoded.samples
        if self.head is None:
            return {"prediction": samples.new_zeros(samples.shape[0], 0), "diagnostics": {}}
        codes = batch.get("categoricals")
        fused, diagnostics = samples, {}
        if self.fusion is not None:
            fused, diagnostics = self.fusion(samples, codes[:, self.fusion_columns], encoded.slot_states,
                                             batch["asv_mask"])
        raw, head_diagnostics = self.head(fused, codes)
        diagnostics.update(head_diagnostics)
        if self.neighbor_prior is not None:
            raw, diagnostics["neighbor_gate"] = self.neighbor_prior.blend(raw, self.layout.point(raw), batch,
                                                                          self.layout.slices())
        out = {"raw_prediction": raw, "layout": self.layout, "prediction": self.layout.point(raw)}
        if self.layout.quantile_targets:
            out["quantiles"] = self.layout.quantile_outputs(raw)
        return {**out, "diagnostics": diagnostics}

    def _nucleotide_task(self, batch: dict, generator: torch.Generator | None) -> dict:
        """Masked nucleotides of a share of the batch's distinct ASVs, through the ASV encoder again."""
        tokens = batch["tokens"]
        # sizes before the collate's shape buckets: the random draws are made at these sizes, so
        # a bucketed batch masks exactly what the same batch unbucketed would
        bucketed = batch.get("bucketed_from")
        n_rows, real_length = (bucketed["asv_rows"], bucketed["token_length"]) if bucketed else tokens.shape
        n_pick = max(1, math.ceil(NUCLEOTIDE_TASK_FRACTION * n_rows))  # never a bucket's padding row
        pick = to_device(torch.randperm(n_rows, generator=generator)[:n_pick], tokens.device)
        labels = tokens[pick][:, :real_length]
        corrupted, masked = mask_tokens(labels, self.cfg.mask_prob, generator)
        if bucketed:  # the second pass on bucketed shapes too: padding rows and positions
            corrupted = F.pad(corrupted, (0, tokens.shape[1] - real_length, 0, bucket_size(n_pick) - n_pick),
                              value=PAD)
        _, nucleotide_states = self.asv_encoder(corrupted)
        u, length = masked.shape
        letters = self.nucleotide_head(nucleotide_states[:n_pick]).reshape(u, -1, VOCAB_SIZE)[:, :length]
        return {"nucleotide_logits": letters[masked], "nucleotide_labels": labels[masked]}

    def _count_task(self, batch: dict, encoded: "Encoded", log_counts: torch.Tensor, hide: bool,
                    generator: torch.Generator | None) -> dict:
        """The count feature of every slot predicted from its state. Without `hide` every real slot
        is scored (with count_embed off the encoder never saw the counts); with it, a share
        mask_prob of the slots is hidden from a second sample-encoder pass and only those are."""
        asv_mask = batch["asv_mask"]
        count_mask, slot_states = asv_mask, encoded.slot_states
        if hide:
            bucketed = batch.get("bucketed_from")
            real_slots = bucketed["slots"] if bucketed else asv_mask.shape[1]
            drawn = uniform((asv_mask.shape[0], real_slots), generator, asv_mask.device) < self.cfg.mask_prob
            count_mask = F.pad(drawn, (0, asv_mask.shape[1] - real_slots), value=False) & asv_mask
            _, slot_states = self.sample_encoder(encoded.slots, asv_mask, log_counts, count_mask)
        return {
            "count_prediction": self.count_head(slot_states).squeeze(-1).masked_fill(~asv_mask, 0.0),
            "count_target": log_counts,
            "count_mask": count_mask,
        }

    @property
    def reads_counts(self) -> bool:
        """Whether the sample encoder reads the count feature (count_embed is not off)."""
        return self.sample_encoder.count_embedding is not None

    def compile_transformers(self) -> None:
        """torch.compile every transformer stack (the encoders', the perceiver's): nearly all of a
        step's kernels, on the collate's bucketed shapes. The glue around them (random task draws,
        gathers, losses) stays eager: it reads Python sizes that would make a compiled graph
        recompile for nearly every batch."""
        for module in self.modules():
            if isinstance(module, Transformer):
                module.compile()

    # --- pretrain -> fine-tune ---------------------------------------------------------------
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoders' weights, keyed as in `state_dict()` ("asv_encoder.…", "sample_encoder.…")."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIXES)}

    def encoder_mismatches(self, state: dict[str, torch.Tensor]) -> list[str]:
        """The encoder keys of `state` (another model's state dict) that this model lacks or holds
        in another shape: empty when its encoders fit this one."""
        own = self.encoder_state_dict()
        encoder = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
        return [k for k, v in encoder.items() if k not in own or own[k].shape != v.shape]

    def load_encoder_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the encoders' weights of another model (its `state_dict()` or `encoder_state_dict()`;
        other keys are ignored). Every encoder key of `state` must fit (`encoder_mismatches`); an
        encoder part this model has and `state` lacks keeps its own weights."""
        mismatched = self.encoder_mismatches(state)
        if mismatched:
            raise ValueError(
                f"encoder weights do not fit this model ({len(mismatched)} keys missing here or of another "
                f"shape; first: {mismatched[0]}); use the same d_model, layers, ff_mult, count_embed and "
                "token width as the pretrained run"
            )
        self.load_state_dict({k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}, strict=False)

    def freeze_encoder(self) -> None:
        """Fix the encoders: no gradients, dropout off (kept off by `train()`).

        The regression head still trains. The self-supervised heads (nucleotide, count) are
        frozen too and no longer run: they exist to shape the encoder, which is now fixed.
        """
        self.encoder_frozen = True
        for module in (self.asv_encoder, self.sample_encoder, self.nucleotide_head, self.count_head):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(False)
        self.asv_encoder.eval()
        self.sample_encoder.eval()

    @torch.no_grad()
    def encode_all_asvs(self, tokens: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Vectors [n, D] of every row of `tokens` [n, L] from the ASV encoder in eval mode."""
        was_training = self.asv_encoder.training
        self.asv_encoder.eval()
        out = torch.cat([self.asv_encoder(tokens[i : i + chunk])[0] for i in range(0, len(tokens), chunk)])
        self.asv_encoder.train(was_training and not self.encoder_frozen)
        return out

    def use_asv_cache(self, vectors: torch.Tensor) -> None:
        """Read ASV vectors from `vectors` [n_asvs, D] (rows = the dataset's ASV index, which a
        batch's `asv_ids` gives) instead of running the ASV encoder. Only a frozen encoder's
        vectors never change, so only then is this exact."""
        if not self.encoder_frozen:
            raise ValueError("an ASV-vector cache needs a frozen encoder (freeze_encoder)")
        self.asv_cache = vectors.to(next(self.parameters()).device)

    @property
    def sample_cache_exact(self) -> bool:
        """Whether a sample-vector cache gives exactly this model's outputs: its encoders are frozen
        (so they run in eval mode on clean counts) and no fusion reads the ASV states besides the
        sample vector (the perceiver does)."""
        return self.encoder_frozen and not (self.fusion is not None and self.fusion.reads_asv_states)

    def use_sample_cache(self, sample_ids: list[str], vectors: torch.Tensor) -> None:
        """Read the sample vectors of these samples from `vectors` [n, D] instead of running either
        encoder (a sample not listed is encoded as usual); only where `sample_cache_exact`."""
        if not self.sample_cache_exact:
            raise ValueError("a sample-vector cache needs frozen encoders and no fusion that reads the ASV states")
        self.sample_rows = {s: i for i, s in enumerate(sample_ids)}
        self.sample_cache = vectors.to(next(self.parameters()).device)

    def _cached_samples(self, batch: dict) -> torch.Tensor | None:
        if self.sample_cache is None or "sample_ids" not in batch:
            return None
        rows = [self.sample_rows.get(s, -1) for s in batch["sample_ids"]]
        if min(rows, default=-1) < 0:
            return None
        return self.sample_cache[torch.tensor(rows, device=self.sample_cache.device)]

    def train(self, mode: bool = True) -> "AAM":
        super().train(mode)
        if self.encoder_frozen:  # nn.Module.train() would switch the encoders' dropout back on
            self.asv_encoder.eval()
            self.sample_encoder.eval()
        return self
