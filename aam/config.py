"""The run config: the one description of a training run.

CLI flags (`--count-embed film`), a run YAML, the `fixed:`/`search:` keys of a search space and
`config.json` beside every checkpoint all use the same flat names (`count_embed: film`).
A flat namespace is deliberate: a search space or a flag never has to know which section a
field lives in. Sections below are only for reading.

Validation lives here and only here (`RunConfig.validate`), so the CLI, the search-space
compiler and `--best-of` reject the same mistakes with the same words.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aam.errors import AamUserError

COUNT_EMBEDS = ("off", "add", "concat", "film")
TARGET_LOSSES = ("mse", "mae", "huber")
TARGET_TRANSFORMS = ("none", "minmax", "zscore", "log-minmax", "log-zscore")
HEADS = ("linear", "mlp")
UNIFRAC_METRICS = ("euclidean",)


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
    count_embed: str = _f("add", "How count magnitudes (log1p) enter the sample encoder.", COUNT_EMBEDS, section="model")
    head: str = _f("linear", "Regression head on the pooled sample embedding.", HEADS, section="model")
    head_hidden: list = _f([64], "Hidden sizes of an MLP head.", section="model")
    count_head: bool = _f(True, "Predict each ASV's log1p(count) as a self-supervised task.", section="model")
    mask_prob: float = _f(0.15, "Fraction of nucleotides masked for the nucleotide task (0 turns it off).",
                          low=0.0, high=0.5, section="model")
    # --- loss -------------------------------------------------------------------------------
    target_loss: str = _f("mse", "Loss on the (transformed) target.", TARGET_LOSSES, section="loss")
    huber_delta: float = _f(1.0, "Delta of the huber loss, on the transformed scale.", low=1e-6, section="loss")
    target_transform: str = _f("zscore", "Transform fitted on train targets, undone for metrics.",
                               TARGET_TRANSFORMS, section="loss")
    target_weight: float = _f(1.0, "Weight of the target loss.", low=0.0, section="loss")
    unifrac_weight: float = _f(1.0, "Weight of the UniFrac distance loss (pairs with a known distance).",
                               low=0.0, section="loss")
    nucleotide_weight: float = _f(0.1, "Weight of the masked-nucleotide loss.", low=0.0, section="loss")
    count_weight: float = _f(0.1, "Weight of the ASV count loss.", low=0.0, section="loss")
    # --- optimisation -----------------------------------------------------------------------
    epochs: int = _f(20, "Passes over the training split.", low=1, section="optim")
    lr: float = _f(1e-3, "Peak learning rate of AdamW.", low=1e-8, high=1.0, section="optim")
    weight_decay: float = _f(0.01, "AdamW weight decay.", low=0.0, section="optim")
    warmup_frac: float = _f(0.1, "Warm-up as a fraction of all steps, then cosine decay.", low=0.0, high=0.9,
                            section="optim")
    grad_clip: float = _f(1.0, "Clip the gradient norm to this (0 turns clipping off).", low=0.0, section="optim")
    seed: int = _f(0, "Seed for weights, shuffling and masking.", section="optim")
    # --- pretrain -> fine-tune --------------------------------------------------------------
    pretrained_encoder: str = _f("", "Run folder or checkpoint whose ASV and sample encoders start this run.",
                                 section="transfer")
    freeze_encoder: bool = _f(False, "Keep the pretrained encoders fixed; train only the heads.", section="transfer")
    # --- resources --------------------------------------------------------------------------
    workers: int = _f(1, "Ray Train workers (data-parallel).", low=1, section="resources")
    cpus_per_worker: float = _f(1.0, "CPUs reserved per worker.", low=0.0, section="resources")
    gpus_per_worker: float = _f(0.0, "GPUs per worker (0: CPU training).", low=0.0, section="resources")

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
                hint = difflib.get_close_matches(key, known, n=1)
                also = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise AamUserError(f"{where}: unknown key '{key}'{also}; see `aam train --help` for the keys")
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
            if meta["choices"] and value not in meta["choices"]:
                raise AamUserError(f"{where}: {name}={value!r} is not one of {', '.join(meta['choices'])}")
            if meta["low"] is not None and value < meta["low"]:
                raise AamUserError(f"{where}: {name}={value!r} is below its minimum {meta['low']}")
            if meta["high"] is not None and value > meta["high"]:
                raise AamUserError(f"{where}: {name}={value!r} is above its maximum {meta['high']}")
        if self.nucleotide_patch > 1 and self.d_model % 2:
            raise AamUserError(f"{where}: d_model={self.d_model} must be even when nucleotide_patch > 1")
        if self.d_model % self.n_heads:
            raise AamUserError(f"{where}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.head == "mlp" and not self.head_hidden:
            raise AamUserError(f"{where}: head='mlp' needs head_hidden, e.g. head_hidden=[64]")
        if any((not isinstance(h, int)) or h < 1 for h in self.head_hidden):
            raise AamUserError(f"{where}: head_hidden={self.head_hidden!r} must be positive whole numbers")
        if self.freeze_encoder and not self.pretrained_encoder:
            raise AamUserError(f"{where}: freeze_encoder=true needs pretrained_encoder (a run folder)")

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


def field_type(name: str) -> type:
    """The Python type of a config field (from its default, since annotations are strings)."""
    f = RunConfig.fields()[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return type(default)


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
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if kind is list:
        if isinstance(value, str):  # CLI: "64,32" or "ph,temperature"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        if name == "head_hidden":
            try:
                return [int(v) for v in value]
            except (TypeError, ValueError):
                raise bad from None
        return [str(v) for v in value]
    raise bad
