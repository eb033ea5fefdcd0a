"""Target transforms: fitted on the training split only, saved with the model, undone for every
metric, figure and prediction file.

A transform is plain data (`to_dict`/`from_dict`) so a checkpoint carries it without pickling code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aam.errors import AamUserError


@dataclass
class TargetTransform:
    kind: str  # none | minmax | zscore | log-minmax | log-zscore
    names: list[str]
    # per-target parameters, fitted on train: shift/scale after the optional log1p
    shift: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, kind: str, names: list[str], values: np.ndarray) -> "TargetTransform":
        """Fit on the training targets [N, T] (NaN = missing)."""
        values = np.asarray(values, dtype=np.float64).reshape(len(values), len(names))
        if kind.startswith("log-"):
            low = np.nanmin(values, axis=0) if len(values) else np.zeros(len(names))
            for name, v in zip(names, low):
                if v <= -1:
                    raise AamUserError(
                        f"target_transform={kind!r}: target '{name}' has values <= -1 (min {v:g}), "
                        "so log1p is undefined; use zscore or minmax instead"
                    )
            values = np.log1p(values)
        shift, scale = [], []
        for t, name in enumerate(names):
            col = values[:, t]
            col = col[~np.isnan(col)]
            if col.size == 0:
                raise AamUserError(f"target '{name}' has no value in the training split; nothing to fit")
            if kind in ("zscore", "log-zscore"):
                s, c = float(col.mean()), float(col.std())
            elif kind in ("minmax", "log-minmax"):
                s, c = float(col.min()), float(col.max() - col.min())
            else:
                s, c = 0.0, 1.0
            shift.append(s)
            scale.append(c if c > 1e-12 else 1.0)  # a constant target must not divide by zero
        return cls(kind, list(names), shift, scale)

    def forward(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.kind.startswith("log-"):
            values = np.log1p(values)
        return (values - np.asarray(self.shift)) / np.asarray(self.scale)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64) * np.asarray(self.scale) + np.asarray(self.shift)
        if self.kind.startswith("log-"):
            values = np.expm1(values)
        return values

    def to_dict(self) -> dict:
        return {"kind": self.kind, "names": self.names, "shift": self.shift, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "TargetTransform":
        return cls(d["kind"], list(d["names"]), list(d["shift"]), list(d["scale"]))
