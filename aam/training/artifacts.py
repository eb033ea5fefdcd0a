"""What a run leaves for people: prediction tables, a predicted-vs-actual figure, TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def predictions_frame(sample_ids, names, predicted, actual=None, best_epoch=None, quantiles=None,
                      quantile_names=(), quantile_levels=()) -> pd.DataFrame:
    """One row per sample: `<target>_actual`, `<target>_predicted` on the original scale, and for a
    target trained with the quantile loss every quantile as `<target>_q<level>` (e.g. age_q0.1)."""
    frame = {"sample_id": list(sample_ids)}
    for t, name in enumerate(names):
        if actual is not None:
            frame[f"{name}_actual"] = actual[:, t]
        frame[f"{name}_predicted"] = predicted[:, t]
        if name in quantile_names:
            k = list(quantile_names).index(name)
            for j, level in enumerate(quantile_levels):
                frame[f"{name}_q{level:g}"] = quantiles[:, k, j]
    out = pd.DataFrame(frame)
    if best_epoch is not None:
        out["best_epoch"] = best_epoch
    return out


def write_tsv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False, float_format="%.8g", na_rep="NA")


def plain_text_plots() -> None:
    """Every figure aam draws: off-screen (Agg), and its text drawn as written. Target, column and
    trial names come from users' files; matplotlib would read `$...$` in them as mathtext, and a
    name such as `x$\\foo$` then fails at the end of a run, when the figure is saved."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False


def predicted_vs_actual_figure(names, actual, predicted, title: str):
    """A scatter per target with the identity line; returns a matplotlib Figure."""
    plain_text_plots()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for t, (ax, name) in enumerate(zip(axes[0], names)):
        keep = ~np.isnan(actual[:, t])
        a, p = actual[keep, t], predicted[keep, t]
        ax.scatter(a, p, s=10, alpha=0.7)
        if a.size:
            lo, hi = float(min(a.min(), p.min())), float(max(a.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xlabel(f"actual {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(title)
    fig.tight_layout()
    return fig
