"""The Ray runtime: starting or joining Ray, training on Ray Train workers, and running a search
(compiled and read back without Ray in aam.search) on Ray Tune.

- `run_training(cfg, run_dir)`: `aam train` on Ray Train (`aam.distributed.train.train`).
- `make_trainer(...)`: the TorchTrainer that `aam train` and a multi-worker trial both run.
- `run_search(space)`: `aam tune`, and `--resume` of a search whose driver was killed.
- `make_tune_config(space)`: Tune's searcher, scheduler and TuneConfig for a `SearchSpace`.
- `ray_runtime(address)`, `set_ray_env()`: a connected Ray, and the environment it starts with.

The names are imported on first use, so that importing one module of this package (a Train
worker imports `aam.distributed.train`) does not load the others. Ray's and Tune's private
names are used only through aam._ray_internals.
"""

from __future__ import annotations

import importlib

_HOMES = {  # public name -> (module, its name there)
    "run_training": ("aam.distributed.train", "train"),
    "make_trainer": ("aam.distributed.train", "make_trainer"),
    "run_search": ("aam.distributed.tune", "run_search"),
    "make_tune_config": ("aam.distributed.tune_config", "make_tune_config"),
    "ray_runtime": ("aam.distributed.cluster", "ray_runtime"),
    "set_ray_env": ("aam.distributed.cluster", "set_ray_env"),
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'aam.distributed' has no attribute {name!r}")
    module, attribute = _HOMES[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
