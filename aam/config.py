"""The run config: the one description of a training run.

CLI flags (`--count-embed film`), a run YAML, the `fixed:`/`search:` keys of a search space and
`config.json` beside every checkpoint all use the same flat names (`count_embed: film`).
A flat namespace is deliberate: a search space or a flag never has to know which section a
field lives in. Sections below are only for reading.

Validation lives here and only here: `RunConfig.validate` for a whole config, and for one value
the helpers below it (`field_problem`, `coerce_value`, `unknown_field`, `did_you_mean`), which the
search-space compiler asks too, so the CLI, a search space and `--best-of` reject the same mistakes
with the same words.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aam.errors import AamUserError

COUNT_EMBEDS = ("off", "add", "concat", "film")
COUNT_FEATURES = ("log1p", "relative")
# choices that are gone, read as what they always did, so the configs saved with them (model.pt,
# a run's or a trial's config.json) still load: `compile: auto` never compiled anything
RETIRED_VALUES = {("compile", "auto"): "off"}
TARGET_LOSSES = ("mse", "mae", "huber", "quantile", "asymmetric")
TARGET_TRANSFORMS = ("none", "minmax", "zscore", "zscore-category", "log-minmax", "log-zscore")
HEADS = ("linear", "mlp", "residual", "moe")
CATEGORICAL_FUSIONS = ("off", "concat", "add", "gmu", "cross-attention", "perceiver")
# list fields whose items are numbers, not names
_INT_LISTS = ("head_hidden",)
_FLOAT_LISTS = ("quantiles",)


def _f(default, help: str, choices: tuple | None = None, low=None, high=None, section: str = ""):
    """A config field with the help text and bounds the CLI and validation read."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "section": section}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # --- data -------------------------------------------------------------------------------
    data: str = _f("", "Dataset folder written by `aam convert`.", section="data")
    targets: list = _f([], "Target columns to train on (default: every target of the dataset).", section="data")
    token_limit: int = _f(256, "Most ASVs per sample; the most abundant are kept.", low=1, section="data")
    batch_size: int = _f(16, "Samples per optimiser step (per worker).", low=2, section="data")
    train_on_val: bool = _f(False, "Train on train+val (a final fit): the last epoch is kept, val scores are "
                            "no longer held out.", section="data")
    # --- model ------------------------------------------------------------------------------
    d_model: int = _f(64, "Width of every embedding (nucleotide, ASV, sample).", low=8, section="model")
    n_heads: int = _f(4, "Attention heads in every transformer layer.", low=1, section="model")
    nucleotide_patch: int = _f(4, "Nucleotides per position of the ASV transformer (1: one per letter; "
                               "4 is ~4x faster at similar accuracy).", low=1, high=16, section="model")
    asv_layers: int = _f(2, "Transformer layers over the nucleotides of one ASV.", low=1, section="model")
    sample_layers: int = _f(2, "Transformer layers over the ASVs of one sample.", low=1, section="model")
    ff_mult: int = _f(2, "Feed-forward width as a multiple of d_model.", low=1, section="model")
    dropout: float = _f(0.1, "Dropout in every transformer layer and head.", low=0.0, high=0.9, section="model")
    count_embed: str = _f("add", "How count magnitudes (as count_feature reads them) enter the sample encoder.", COUNT_EMBEDS, section="model")
    count_feature: str = _f("log1p", "What the count embedding and the count task read: log1p (of the raw count) or "
                            "relative (log1p of the count per 10,000 reads of its sample, so samples sequenced to "
                            "different depths show an equal abundance equally).", COUNT_FEATURES, section="model")
    head: str = _f("linear", "Regression head on the pooled sample embedding: linear, mlp, residual "
                   "(linear + mlp) or moe (a mixture of experts).", HEADS, section="model")
    head_hidden: list = _f([64], "Hidden sizes of an mlp or residual head, and of each moe expert "
                           "(empty: linear experts).", section="model")
    head_dropout: float = _f(0.1, "Dropout between the hidden layers of a head.", low=0.0, high=0.9, section="model")
    moe_experts: int = _f(4, "Experts of the moe head.", low=2, high=64, section="model")
    moe_router: str = _f("embedding", "What routes the moe head: 'embedding' (learned from the sample "
                         "embedding) or the name of a categorical column.", section="model")
    categorical_fusion: str = _f("off", "How categorical metadata joins the sample embedding (see "
                                 "`aam train --categorical-help`).", CATEGORICAL_FUSIONS, section="model")
    categorical_columns: list = _f([], "Categorical columns the fusion reads (default: every categorical "
                                   "column of the dataset).", section="model")
    categorical_dim: int = _f(16, "Embedding width of each categorical column.", low=1, section="model")
    perceiver_latents: int = _f(8, "Latent vectors of the perceiver fusion.", low=1, section="model")
    perceiver_layers: int = _f(1, "Self-attention layers over the perceiver's latents.", low=0, section="model")
    category_affine: str = _f("", "Categorical column whose every category gets its own output scale and "
                              "bias (default: none).", section="model")
    count_head: bool = _f(True, "Predict each ASV's count feature as a self-supervised task.", section="model")
    mask_prob: float = _f(0.15, "Fraction of nucleotides masked for the nucleotide task (0 turns it off).",
                          low=0.0, high=0.5, section="model")
    # --- loss -------------------------------------------------------------------------------
    target_loss: str = _f("mse", "Loss on the (transformed) target.", TARGET_LOSSES, section="loss")
    target_loss_map: dict = _f({}, "Loss per target, e.g. ph=mse,temperature_deg_c=huber; targets not named "
                               "use target_loss.", section="loss")
    huber_delta: float = _f(1.0, "Delta of the huber loss, on the transformed scale.", low=1e-6, section="loss")
    quantiles: list = _f([0.1, 0.5, 0.9], "Quantiles of the quantile loss: sorted, in (0, 1), with 0.5 "
                         "(the median is the prediction).", section="loss")
    asymmetric_over: float = _f(1.0, "Asymmetric loss: penalty per unit of over-prediction.", low=1e-6,
                                section="loss")
    asymmetric_under: float = _f(1.0, "Asymmetric loss: penalty per unit of under-prediction.", low=1e-6,
                                 section="loss")
    target_transform: str = _f("zscore", "Transform fitted on train targets, undone for metrics.",
                               TARGET_TRANSFORMS, section="loss")
    transform_by: list = _f([], "Categorical columns whose groups get their own z-score "
                            "(target_transform=zscore-category).", section="loss")
    target_weight: float = _f(1.0, "Weight of the target loss.", low=0.0, section="loss")
    unifrac_weight: float = _f(1.0, "Weight of the UniFrac distance loss (pairs with a known distance).",
                               low=0.0, section="loss")
    nucleotide_weight: float = _f(0.1, "Weight of the masked-nucleotide loss.", low=0.0, section="loss")
    count_weight: float = _f(0.1, "Weight of the ASV count loss.", low=0.0, section="loss")
    moe_balance_weight: float = _f(0.01, "Weight of the moe load-balancing loss (0: none).", low=0.0,
                                   section="loss")
    # --- optimisation -----------------------------------------------------------------------
    epochs: int = _f(20, "Passes over the training split.", low=1, section="optim")
    lr: float = _f(1e-3, "Peak learning rate of AdamW.", low=1e-8, high=1.0, section="optim")
    categorical_lr: float = _f(0.0, "Peak learning rate of every categorical parameter (embeddings, fusion, "
                               "category router and affine; 0: same as lr).", low=0.0, high=1.0, section="optim")
    weight_decay: float = _f(0.01, "AdamW weight decay.", low=0.0, section="optim")
    identity_weight_decay: float = _f(-1.0, "AdamW weight decay of the ASV identity vectors (asv_identity), which "
                                      "hold one free vector per training ASV and are what a small table memorises "
                                      "first (-1: the same as weight_decay).", low=-1.0, section="optim")
    patience: int = _f(0, "Stop when the val score has not improved for this many epochs (0: run every epoch); the "
                       "best epoch is kept and scored on test either way.", low=0, section="optim")
    warmup_frac: float = _f(0.1, "Warm-up as a fraction of all steps, then cosine decay.", low=0.0, high=0.9,
                            section="optim")
    grad_clip: float = _f(1.0, "Clip the gradient norm to this (0 turns clipping off).", low=0.0, section="optim")
    seed: int = _f(0, "Seed for weights, shuffling and masking.", low=0, high=2**32 - 1, section="optim")
    # --- quality levers (each off by default; benchmarks/quality.py ablates them) ---------------
    ema_decay: float = _f(0.0, "Exponential moving average of the weights, updated every step (0: off; 0.99 "
                          "averages over ~100 steps): validation, test and the saved model use the averaged "
                          "weights, which are less noisy than the last step's.", low=0.0, high=0.9999,
                          section="quality")
    ema_warmup: str = _f("off", "How the average starts. off: decay ema_decay from the first update, so after n "
                         "updates ema_decay^n of it is still the initial weights (64% after 90 steps at 0.995); "
                         "short: decay min(ema_decay, (1 + n) / (10 + n)), spanning about the last n/9 updates; "
                         "mean: the plain mean of every update so far until that spans 1/(1 - ema_decay) of them.",
                         choices=("off", "short", "mean"), section="quality")
    asv_identity: bool = _f(False, "Add a learned vector per ASV seen in training (keyed by its sequence) to the "
                            "vector the nucleotide transformer makes; an ASV never seen in training uses the "
                            "sequence path alone.", section="quality")
    asv_identity_dropout: float = _f(0.1, "Share of ASVs whose identity vector is left out at each training step "
                                     "(as if never seen), so the sequence path keeps learning.", low=0.0,
                                     high=1.0, section="quality")
    abundance_bag: bool = _f(False, "Also pool the identity vectors of every ASV of a sample (not only the "
                             "token_limit kept for attention), each weighted by its share of the sample's reads, into "
                             "the sample vector: all of a sample at the cost of a weighted sum. Needs asv_identity.",
                             section="quality")
    abundance_bag_weight: str = _f("share", "What weights each ASV in the abundance bag: share (of the sample's "
                                   "reads), sqrt (of the share: the Hellinger transform, which lifts rare ASVs) or "
                                   "log (log1p of the reads per ten thousand).", choices=("share", "sqrt", "log"),
                                   section="quality")
    augment_rarefy: float = _f(0.0, "Each epoch, re-draw every training sample's reads without replacement at a "
                               "depth drawn between (1 - this) of its reads and all of them, as rarefying does "
                               "(0: off; 0.5: keep 50-100% of the reads).", low=0.0, high=0.95, section="quality")
    augment_drop_asvs: float = _f(0.0, "Each epoch, leave out this share of every training sample's ASVs, drawn at "
                                  "random (0: off); a sample keeps at least one.", low=0.0, high=0.9,
                                  section="quality")
    mixup: float = _f(0.0, "Mix each training sample with another of its batch: compositions (read shares) and "
                      "targets by a weight drawn from Beta(mixup, mixup) (0: off; 0.2-0.4 is usual).", low=0.0,
                      high=10.0, section="quality")
    neighbor_prior: int = _f(0, "Blend into each prediction the mean target of the sample's this many nearest "
                             "training samples (Jaccard distance on shared ASVs), by a learned gate that reads how "
                             "near they are (0: off). The model keeps its training samples' ASVs and targets to "
                             "search them, so a saved model predicts new tables alone.", low=0, high=100,
                             section="quality")
    neighbor_weighting: str = _f("uniform", "How neighbor_prior averages its k nearest samples' targets. uniform: the "
                                 "plain mean. softmax: weights softmax(-sharpness * distance), the sharpness learned "
                                 "per target, so the nearer of the k weigh more, by as much as they are nearer, and k "
                                 "about as near weigh about the same.", choices=("uniform", "softmax"), section="quality")
    neighbor_leave_group_out: bool = _f(False, "With neighbor_prior on a table converted with --group-by: a training "
                                        "sample's neighbours leave out its whole group, as a test sample's group is "
                                        "never in training (off: only the sample itself).", section="quality")
    folds: int = _f(1, "Cross-validation: train this many models, each on all but one fold of train+val (grouped "
                    "datasets fold by their group), and score the out-of-fold predictions of every non-test sample; "
                    "the folder is an ensemble of the fold models (1: off, a plain train/val run). With workers > 1 the folds "
                    "train in parallel, whole fold models per worker.", low=1, high=20,
                    section="quality")
    min_abundance: float = _f(0.0, "Leave out ASVs below this share of their sample's reads (0: keep all) before "
                              "token_limit applies; with a large token_limit every ASV above the floor is read.",
                              low=0.0, high=0.5, section="quality")
    # --- pretrain -> fine-tune --------------------------------------------------------------
    pretrained_encoder: str = _f("", "Run folder or checkpoint whose ASV and sample encoders start this run.",
                                 section="transfer")
    freeze_encoder: bool = _f(False, "Keep the pretrained encoders fixed; train only the heads.", section="transfer")
    # --- speed (each fast path can be switched off, so benchmarks/ can compare) ------------------
    pad_to_token_limit: bool = _f(False, "Reference path: pad every sample to token_limit instead of the batch's "
                                  "longest sample.", section="speed")
    dedupe_asvs: bool = _f(True, "Encode each distinct ASV of a batch once and scatter its vector to every "
                           "sample that holds it (off: encode every ASV slot).", section="speed")
    cache_asv_vectors: bool = _f(True, "With freeze_encoder: compute every ASV vector of the dataset once and "
                                 "reuse it across epochs and trials.", section="speed")
    precision: str = _f("auto", "auto (bf16 autocast on a GPU that supports it, else fp32), fp32 or bf16.",
                        ("auto", "fp32", "bf16"), section="speed")
    compile: str = _f("off", "torch.compile the transformer layers (on the collate's bucketed shapes on a GPU): "
                      "on or off (not yet measured faster on a GPU; BENCHMARKS.md has the command).",
                      ("on", "off"), section="speed")
    # --- resources --------------------------------------------------------------------------
    workers: int = _f(1, "Ray Train workers (data-parallel; with folds > 1, each trains whole fold models).", low=1,
                      section="resources")
    cpus_per_worker: float = _f(1.0, "CPUs reserved per worker.", low=0.0, section="resources")
    gpus_per_worker: float = _f(0.0, "GPUs per worker (0: CPU training).", low=0.0, section="resources")
    max_failures: int = _f(2, "Times a run whose worker, actor or node died is restarted from its last "
                           "checkpoint (0: never).", low=0, section="resources")

    # ---------------------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "RunConfig":
        """Build and validate a config; unknown keys and wrong types are errors, never ignored."""
        known = cls.fields()
        for key in values:
            if key not in known:
                raise AamUserError(f"{where}: {unknown_field(key)}")
        values = {k: RETIRED_VALUES.get((k, v), v) if isinstance(v, str) else v for k, v in values.items()}
        coerced = {k: coerce_value(k, v, where) for k, v in values.items()}
        cfg = cls(**coerced)
        cfg.validate(where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, where: str = "config", **changes) -> "RunConfig":
        return RunConfig.from_dict({**self.to_dict(), **changes}, where)

    def validate(self, where: str = "config") -> None:
        for name, f in self.fields().items():
            value = getattr(self, name)
            meta = f.metadata
            numbers = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                # NaN compares false with every bound, so it would pass them and surface as a NaN loss
                raise AamUserError(f"{where}: {name}={value!r} is not a finite number; give a number such as "
                                   f"{f.default if isinstance(f.default, float) else 0.5}")
            problem = field_problem(name, value)
            if problem:
                raise AamUserError(f"{where}: {name}={value!r} {problem}")
        if self.nucleotide_patch > 1 and self.d_model % 2:
            raise AamUserError(f"{where}: d_model={self.d_model} must be even when nucleotide_patch > 1")
        if self.d_model % self.n_heads:
            raise AamUserError(f"{where}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head in ("mlp", "residual") and not self.head_hidden:
            raise AamUserError(f"{where}: head={self.head!r} needs head_hidden, e.g. head_hidden=[64]")
        for target, loss in self.target_loss_map.items():
            if loss not in TARGET_LOSSES:
                raise AamUserError(f"{where}: target_loss_map: {target}={loss!r} is not one of "
                                   f"{', '.join(TARGET_LOSSES)}")
        q = self.quantiles
        if self.uses_quantiles and (not q or any(not 0 < v < 1 for v in q) or list(q) != sorted(set(q)) or 0.5 not in q):
            raise AamUserError(f"{where}: quantiles={q!r} must be distinct, sorted, inside (0, 1) and include "
                               "0.5 (the median is the prediction), e.g. quantiles=0.1,0.5,0.9")
        if self.target_transform == "zscore-category" and not self.transform_by:
            raise AamUserError(f"{where}: target_transform='zscore-category' needs transform_by, the categorical "
                               "column(s) whose groups get their own z-score, e.g. transform_by=Diet")
        if any((not isinstance(h, int)) or h < 1 for h in self.head_hidden):
            raise AamUserError(f"{where}: head_hidden={self.head_hidden!r} must be positive whole numbers")
        if self.abundance_bag and not self.asv_identity:
            raise AamUserError(f"{where}: abundance_bag=true pools the vectors of asv_identity; set asv_identity=true")
        if self.asv_identity and self.freeze_encoder:
            raise AamUserError(f"{where}: asv_identity=true needs a sample encoder that trains (its vectors feed it); "
                               "drop freeze_encoder or asv_identity")
        if -1 < self.identity_weight_decay < 0:
            raise AamUserError(f"{where}: identity_weight_decay={self.identity_weight_decay!r} must be -1 (the same as "
                               "weight_decay) or a decay of 0 or more")
        if self.folds > 1 and self.train_on_val:
            raise AamUserError(f"{where}: folds={self.folds} trains its fold models on train+val already; "
                               "set train_on_val=false (or folds=1)")
        if self.folds > 1 and self.workers > self.folds:
            raise AamUserError(f"{where}: folds={self.folds} with workers={self.workers}: each worker trains whole fold "
                               f"models, so a worker past the {self.folds}th would idle; set workers={self.folds} or "
                               "fewer")
        if self.freeze_encoder and not self.pretrained_encoder:
            raise AamUserError(f"{where}: freeze_encoder=true needs pretrained_encoder (a run folder)")

    # --- what the model and losses read off the config ---------------------------------------
    def loss_for(self, target: str) -> str:
        return self.target_loss_map.get(target, self.target_loss)

    @property
    def uses_quantiles(self) -> bool:
        return self.target_loss == "quantile" or "quantile" in self.target_loss_map.values()

    def fusion_columns(self, available: list[str]) -> list[str]:
        """The categorical columns the fusion reads (none when fusion is off)."""
        if self.categorical_fusion == "off":
            return []
        return list(self.categorical_columns) or list(available)

    def model_columns(self, available: list[str]) -> list[str]:
        """Every categorical column the model reads (fusion, moe router, affine), in dataset order."""
        used = set(self.fusion_columns(available))
        if self.head == "moe" and self.moe_router != "embedding":
            used.add(self.moe_router)
        if self.category_affine:
            used.add(self.category_affine)
        return [c for c in available if c in used]

    def check_dataset(self, targets: list[str], categoricals: list[str], where: str = "config") -> None:
        """What can only be checked against a dataset: target and column names."""
        for name in DATASET_NAMED_FIELDS:
            value = getattr(self, name)
            if name == "moe_router" and self.head != "moe":
                continue
            check_dataset_value(name, value, targets, categoricals, where)

    def redundancy_warnings(self, categoricals: list[str]) -> list[str]:
        """Combinations that run but waste parameters or say the same thing twice."""
        out = []
        fused = set(self.fusion_columns(categoricals))
        if self.categorical_lr > 0 and not self.model_columns(categoricals):
            out.append("categorical_lr is set but the model reads no categorical column (fusion off, no "
                       "category router or affine): it has no effect")
        if self.head == "moe" and self.moe_router in fused:
            out.append(f"moe_router={self.moe_router} and categorical_fusion={self.categorical_fusion} both read "
                       f"'{self.moe_router}': the experts already split by it, fusing it too is rarely needed")
        if self.category_affine and self.category_affine in self.transform_by:
            out.append(f"category_affine={self.category_affine} and target_transform=zscore-category by the same "
                       "column both give each category its own scale and shift: keep one")
        if self.category_affine and self.category_affine in fused and self.categorical_fusion == "add":
            out.append(f"category_affine={self.category_affine} with categorical_fusion=add on the same column: "
                       "both shift the output per category")
        moe_set = any(getattr(self, k) != field_default(k) for k in ("moe_router", "moe_experts"))
        if self.head != "moe" and moe_set:
            out.append(f"moe_router/moe_experts are set but head={self.head}: they apply to head=moe only")
        if self.categorical_fusion == "off" and self.categorical_columns:
            out.append("categorical_columns is set but categorical_fusion=off: the columns are not read")
        if self.target_transform != "zscore-category" and self.transform_by:
            out.append(f"transform_by is set but target_transform={self.target_transform}: it is not used")
        if not self.uses_quantiles and self.quantiles != field_default("quantiles"):
            out.append("quantiles are set but no target uses the quantile loss")
        if self.ema_warmup != "off" and self.ema_decay == 0:
            out.append(f"ema_warmup={self.ema_warmup} is set but ema_decay=0: there is no average to warm up")
        if self.identity_weight_decay >= 0 and not self.asv_identity:
            out.append("identity_weight_decay is set but asv_identity=false: there are no identity vectors to decay")
        if self.abundance_bag_weight != "share" and not self.abundance_bag:
            out.append(f"abundance_bag_weight={self.abundance_bag_weight} is set but abundance_bag=false: "
                       "there is no bag to weight")
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise AamUserError(f"{path}: no such config file") from None
        except json.JSONDecodeError as e:
            raise AamUserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(values, where=str(path))


# fields whose values name a target or a categorical column of the dataset
DATASET_NAMED_FIELDS = ("target_loss_map", "categorical_columns", "transform_by", "moe_router", "category_affine")


def check_dataset_value(name: str, value: Any, targets: list[str], categoricals: list[str],
                        where: str = "config") -> None:
    """One value of a DATASET_NAMED_FIELDS field (from a config or a search space's choices)."""
    if name == "target_loss_map":
        names, pool, kind = list(value), targets, "target"
    elif name in ("categorical_columns", "transform_by"):
        names, pool, kind = list(value), categoricals, "categorical"
    elif name == "moe_router":
        names, pool, kind = ([] if value == "embedding" else [value]), categoricals, "categorical"
    else:
        names, pool, kind = ([value] if value else []), categoricals, "categorical"
    for column in names:
        if column not in pool:
            also = did_you_mean(column, pool)
            have = ", ".join(pool) or f"none: convert again with --{kind}"
            extra = " or 'embedding'" if name == "moe_router" else ""
            raise AamUserError(f"{where}: {name}: '{column}' is not a {kind} column of the dataset{also}; "
                               f"it has {have}{extra}")


def field_default(name: str) -> Any:
    """A config field's default value (a fresh copy of a list or dict)."""
    f = RunConfig.fields()[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def field_type(name: str) -> type:
    """The Python type of a config field (from its default, since annotations are strings)."""
    return type(field_default(name))


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` (already of field `name`'s type) against the field's choices and
    bounds, worded to follow the value ("is not one of off, add"), or None when nothing is."""
    meta = RunConfig.fields()[name].metadata
    if meta["choices"] and value not in meta["choices"]:
        return f"is not one of {', '.join(map(str, meta['choices']))}"
    if meta["low"] is not None and value < meta["low"]:
        return f"is below the minimum of {name}, {meta['low']}"
    if meta["high"] is not None and value > meta["high"]:
        return f"is above the maximum of {name}, {meta['high']}"
    return None


def did_you_mean(name: Any, candidates) -> str:
    """' (did you mean 'x'?)' naming the candidate closest to a mistyped name, or '' when none is close."""
    hint = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def unknown_field(name: str, what: str = "key") -> str:
    """The message for a name that is no config field, wherever it was written (flag, file, space)."""
    return f"unknown {what} '{name}'{did_you_mean(name, RunConfig.fields())}; see `aam train --help` for the keys"


def coerce_value(name: str, value: Any, where: str = "config") -> Any:
    """Turn a YAML/JSON/CLI value into the field's type, or say clearly why it can't be."""
    kind = field_type(name)
    bad = AamUserError(f"{where}: {name}={value!r} is not a valid {kind.__name__}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if kind in (int, float):
        return _coerce_number(kind, value, bad)
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if kind is list:
        return _coerce_list(name, value, bad)
    if kind is dict:
        return _coerce_dict(name, value, where, bad)
    raise bad


def _coerce_number(kind: type, value: Any, bad: AamUserError) -> int | float:
    """An int or float; a whole float such as 3.0 is an int, a bool is neither."""
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int) or (isinstance(value, float) and (kind is float or value.is_integer())):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise bad from None
    raise bad


def _coerce_list(name: str, value: Any, bad: AamUserError) -> list:
    if isinstance(value, str):  # CLI: "64,32" or "ph,temperature"
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise bad
    number = int if name in _INT_LISTS else float if name in _FLOAT_LISTS else None
    if number is None:
        return [str(v) for v in value]
    if any(isinstance(v, bool) for v in value):
        raise bad
    try:
        numbers = [number(v) for v in value]
    except (TypeError, ValueError):
        raise bad from None
    if number is int and any(float(v) != n for v, n in zip(value, numbers)):
        raise bad
    return numbers


def _coerce_dict(name: str, value: Any, where: str, bad: AamUserError) -> dict:
    if isinstance(value, str):  # CLI: "ph=mse,temperature_deg_c=huber" (or a JSON object)
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise bad from None
        else:
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise AamUserError(f"{where}: {name}={value!r}: write name=value pairs separated by commas, "
                                   "e.g. ph=mse,temperature_deg_c=huber")
            value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad
    return dict(value)
