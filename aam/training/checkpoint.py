"""Self-describing checkpoints.

`model.pt` carries everything needed to rebuild and use the model with nothing else: the run
config, the weights, the target transform, the target names, categorical vocabularies, the
token width and the metrics it scored.

Both hold only tensors and plain data (dicts, lists, str, numbers), so they load with
`torch.load(weights_only=True)`: a received file can never run code. Each has a `NAME.sha256`
beside it, checked on every load (aam._files). `state.pt` carries what resuming needs on top
(current weights, optimizer, scheduler, epoch, best-so-far).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import aam
from aam.config import RunConfig
from aam.data.transforms import TargetTransform
from aam._files import load_torch
from aam.errors import AamUserError

MODEL_FILE = "model.pt"
STATE_FILE = "state.pt"


@dataclass
class ModelBundle:
    """A trained model and what it was trained on."""

    model: torch.nn.Module
    config: RunConfig
    transform: TargetTransform | None
    targets: list[str]
    categoricals: dict[str, list[str]]
    token_width: int
    metrics: dict
    best_epoch: int


def model_payload(model, cfg: RunConfig, transform, targets, categoricals, token_width, metrics, best_epoch):
    return {
        "format": "aam-model/1",
        "aam_version": aam.__version__,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "transform": transform.to_dict() if transform is not None else None,
        "targets": list(targets),
        "categoricals": categoricals,
        "token_width": int(token_width),
        "metrics": metrics,
        "best_epoch": int(best_epoch),
        # sequences of the ASVs with a learned identity vector (asv_identity), in row order
        "asv_vocabulary": list(model.asv_identity.vocabulary) if model.asv_identity is not None else None,
        # the training samples the neighbour prior searches (neighbor_prior)
        "neighbor_reference": model.neighbor_prior.payload() if getattr(model, "neighbor_prior", None) else None,
    }


def find_model_file(path: str | Path) -> Path:
    """Accept a run folder, its model/ folder, or the model.pt file itself."""
    path = Path(path)
    for candidate in (path, path / MODEL_FILE, path / "model" / MODEL_FILE):
        if candidate.is_file():
            return candidate
    raise AamUserError(f"{path}: no {MODEL_FILE} there; pass a run folder written by `aam train` or `aam export`")


def read_payload(path: str | Path) -> dict:
    file = find_model_file(path)
    payload = load_torch(file, "aam model")
    if not isinstance(payload, dict) or payload.get("format") != "aam-model/1":
        raise AamUserError(f"{file}: not an aam model file (no 'aam-model/1' format tag)")
    return payload


def load_model(path: str | Path) -> ModelBundle:
    """Rebuild the trained model from its checkpoint alone."""
    from aam.models import AAM

    payload = read_payload(path)
    cfg = RunConfig.from_dict(payload["config"], where=str(find_model_file(path)))
    model = AAM(cfg, payload["targets"], payload["token_width"], payload["categoricals"],
                asv_vocabulary=payload.get("asv_vocabulary"), neighbor_reference=payload.get("neighbor_reference"))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    transform = TargetTransform.from_dict(payload["transform"]) if payload["transform"] else None
    return ModelBundle(
        model=model,
        config=cfg,
        transform=transform,
        targets=payload["targets"],
        categoricals=payload["categoricals"],
        token_width=payload["token_width"],
        metrics=payload["metrics"],
        best_epoch=payload["best_epoch"],
    )


def load_encoder_weights(model, source: str | Path, payload: dict | None = None) -> dict:
    """Copy the ASV and sample encoders of a trained run into `model` (an AAM); returns the source
    config. `payload`: the run's `read_payload`, when the caller has read it already."""
    payload = payload if payload is not None else read_payload(source)
    source_cfg = payload["config"]
    mismatched = model.encoder_mismatches(payload["state_dict"])
    if mismatched:
        shape = ", ".join(f"{k}={source_cfg[k]}" for k in ("d_model", "asv_layers", "sample_layers", "count_embed"))
        raise AamUserError(
            f"pretrained_encoder={source}: its encoder ({shape}) does not fit this model "
            f"(first mismatch: {mismatched[0]}); use the same encoder settings"
        )
    # runs from before the option existed read log1p
    check_count_feature(model, source, source_cfg.get("count_feature", "log1p"))
    model.load_encoder_state_dict(payload["state_dict"])
    return source_cfg


def check_count_feature(model, source: str | Path, source_feature: str) -> None:
    """A pretrained encoder fed counts on another scale than it learned is refused, naming both."""
    if model.reads_counts and source_feature != model.cfg.count_feature:
        raise AamUserError(
            f"pretrained_encoder={source}: its encoder read count_feature={source_feature}, this run "
            f"count_feature={model.cfg.count_feature}; use the same count_feature"
        )
