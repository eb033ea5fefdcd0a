"""Target transforms: fitted on the training split only, saved with the model, undone for every
metric, figure and prediction file.

A transform is plain data (`to_dict`/`from_dict`) so a checkpoint carries it without pickling code.

`zscore-category` gives each group of samples (the combination of their categories in the `by`
columns) its own mean and standard deviation: the model then learns where a sample lies within
its group. Groups unseen in training, with fewer than two training values or no spread, and
samples whose category is unknown use the global z-score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aam.errors import AamUserError

MIN_GROUP_SIZE = 2


def _group_key(codes) -> str:
    return ",".join(str(int(c)) for c in codes)


@dataclass
class TargetTransform:
    kind: str  # none | minmax | zscore | zscore-category | log-minmax | log-zscore
    names: list[str]
    # per-target parameters, fitted on train: shift/scale after the optional log1p
    shift: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    by: list[str] = field(default_factory=list)  # zscore-category: the grouping columns
    groups: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # "code,code" -> shift/scale

    @classmethod
    def fit(cls, kind: str, names: list[str], values: np.ndarray, by: list[str] = (), codes=None) -> "TargetTransform":
        """Fit on the training targets [N, T] (NaN = missing); `codes` [N, len(by)] for zscore-category."""
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
            s, c = _fit_column(kind, col)
            shift.append(s)
            scale.append(c)
        out = cls(kind, list(names), shift, scale)
        if kind == "zscore-category":
            out.by = list(by)
            codes = np.asarray(codes, dtype=np.int64).reshape(len(values), len(out.by))
            for key_codes in np.unique(codes, axis=0):
                if (key_codes == 0).any():  # an unknown category is no group
                    continue
                rows = (codes == key_codes).all(axis=1)
                g_shift, g_scale = list(shift), list(scale)
                for t in range(len(names)):
                    col = values[rows, t]
                    col = col[~np.isnan(col)]
                    if col.size >= MIN_GROUP_SIZE and col.std() > 1e-12:
                        g_shift[t], g_scale[t] = float(col.mean()), float(col.std())
                out.groups[_group_key(key_codes)] = {"shift": g_shift, "scale": g_scale}
        return out

    def _parameters(self, n: int, codes) -> tuple[np.ndarray, np.ndarray]:
        """Shift and scale per sample [n, T] (one row for every sample unless grouped)."""
        shift = np.tile(np.asarray(self.shift, dtype=np.float64), (n, 1))
        scale = np.tile(np.asarray(self.scale, dtype=np.float64), (n, 1))
        if self.kind == "zscore-category" and codes is not None:
            codes = np.asarray(codes).reshape(n, len(self.by))
            for i, row in enumerate(codes):
                group = self.groups.get(_group_key(row))
                if group is not None:
                    shift[i], scale[i] = group["shift"], group["scale"]
        return shift, scale

    def forward(self, values: np.ndarray, codes=None) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.kind.startswith("log-"):
            values = np.log1p(values)
        shift, scale = self._parameters(len(values), codes)
        return (values - shift) / scale

    def inverse(self, values: np.ndarray, codes=None, targets: list[int] | None = None) -> np.ndarray:
        """Back to the original scale; [N, T] or quantiles [N, T', Q] of the targets `targets`."""
        values = np.asarray(values, dtype=np.float64)
        shift, scale = self._parameters(len(values), codes)
        if targets is not None:
            shift, scale = shift[:, targets], scale[:, targets]
        if values.ndim == 3:  # [N, T, Q] quantiles: the same per-target parameters for each
            shift, scale = shift[:, :, None], scale[:, :, None]
        values = values * scale + shift
        if self.kind.startswith("log-"):
            values = np.expm1(values)
        return values

    def to_dict(self) -> dict:
        return {"kind": self.kind, "names": self.names, "shift": self.shift, "scale": self.scale,
                "by": self.by, "groups": self.groups}

    @classmethod
    def from_dict(cls, d: dict) -> "TargetTransform":
        return cls(d["kind"], list(d["names"]), list(d["shift"]), list(d["scale"]),
                   list(d.get("by", [])), dict(d.get("groups", {})))


def _fit_column(kind: str, col: np.ndarray) -> tuple[float, float]:
    if kind in ("zscore", "log-zscore", "zscore-category"):
        s, c = float(col.mean()), float(col.std())
    elif kind in ("minmax", "log-minmax"):
        s, c = float(col.min()), float(col.max() - col.min())
    else:
        s, c = 0.0, 1.0
    return s, (c if c > 1e-12 else 1.0)  # a constant target must not divide by zero
