"""Training: the loop every entry point runs, and what reads and writes its results.

- `load_static(cfg)`: dataset folder + run config -> (`StaticData`, training rows).
- `fit(cfg, static, session)`: train; a `Session` says where rows come from and where reports go.
- `load_model(path)`: a `ModelBundle` (model, config, target transform, ...) from `model.pt` alone.
- `predict_table(model, table)`: predictions for a new BIOM table; `predict_rows` for dataset rows.
- `resume_state(folder)`: what `fit` needs to continue a run (pass it as the session's restore).

The names are imported on first use (`from aam.training import fit`), so that importing a light
module of this package (`aam.training.ensemble`, read by `aam runs`) does not load torch.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "fit": "aam.training.loop",
    "Session": "aam.training.session",
    "StaticData": "aam.training.session",
    "load_static": "aam.training.prepare",
    "load_model": "aam.training.checkpoint",
    "ModelBundle": "aam.training.checkpoint",
    "predict_table": "aam.training.predict",
    "predict_rows": "aam.training.evaluation",
    "resume_state": "aam.training.resume",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'aam.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
