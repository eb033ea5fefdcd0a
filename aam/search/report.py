"""`aam report`: an experiment as one self-contained HTML page (plots inlined, opens offline).

Read from the experiment folder alone (`read_experiment`), like `aam runs`: the leaderboard, each
trial's best score in the order the trials started with the best so far, Optuna's parameter
importances and parallel-coordinate plot over the searched keys, every trial's validation
curve, and the best trial's predicted-vs-actual beside a Random Forest's (`--baseline`).

The Optuna views need an Optuna study. Tune's searcher keeps its own in a pickle, which is not
read (a folder may come from someone else); the study is rebuilt in memory from the trials'
config.json and scores, each trial asked through the space's own define-by-run so every key gets
the distribution it was sampled from.
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from pathlib import Path

import pandas as pd

from aam._files import check_output_file, write_output_file
from aam.errors import AamUserError
from aam.search.experiment import Experiment, Trial, load_experiment_space, read_experiment
from aam.training.artifacts import plain_text_plots

REPORT_FILE = "report.html"
SECTIONS = {
    "leaderboard": "Leaderboard",
    "best-by-trial": "Best score against trials",
    "importances": "Parameter importances",
    "parallel-coordinates": "Parallel coordinates of the searched keys",
    "curves": "Validation curves",
    "predicted-vs-actual": "Predicted against actual",
}
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; } th, td { padding: 3px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } img { max-width: 100%; } .note { color: #666; font-size: 0.9em; }
"""


def write_report(experiment_path: str | Path, out: str | Path | None = None,
                 baseline: str | Path | None = None) -> Path:
    """Write the report (default: EXPERIMENT/report.html) and return its path."""
    experiment = read_experiment(experiment_path)
    if not experiment.trials:
        raise AamUserError(f"{experiment.path}: no trials yet; run `aam tune` first")
    forest = _read_forest(baseline) if baseline is not None else None
    out = Path(out) if out is not None else experiment.path / REPORT_FILE
    # the experiment is this command's input: the one place in it the report may go is its own
    check_output_file(out, "report", {"EXPERIMENT": experiment.path, "--baseline": baseline},
                      allowed=(experiment.path / REPORT_FILE,))
    write_output_file(out, "report", render(experiment, forest))
    return out


def render(experiment: Experiment, forest: tuple[Path, dict] | None = None) -> str:
    plain_text_plots()
    scored = [t for t in experiment.trials if not math.isnan(t.best)]
    study = _optuna_study(experiment, scored)
    parts = [f"<h1>{_e(experiment.path.name)}</h1>",
             f"<p>{_e(str(experiment.path))}: {len(experiment.trials)} trials, ranked by "
             f"{_e(experiment.metric)} ({_e(experiment.mode)}). Each trial's score is its best epoch's; "
             "a trial stopped early scored fewer epochs.</p>"]
    if experiment.damaged:
        parts.append("<p class=\"note\">Left out, as they could not be read: "
                     + "; ".join(_e(line) for line in experiment.damaged) + "</p>")
    parts.append(_section("leaderboard", _leaderboard(experiment)))
    parts.append(_section("best-by-trial", _figure(_best_by_trial(experiment, scored))))
    parts.append(_section("importances", _importances(study)))
    parts.append(_section("parallel-coordinates", _parallel(study)))
    parts.append(_section("curves", _figure(_curves(experiment, scored))))
    parts.append(_section("predicted-vs-actual", _predicted(experiment, forest)))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>aam report: {_e(experiment.path.name)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def _e(text: str) -> str:
    return html.escape(str(text))


def _section(key: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(SECTIONS[key])}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _figure(fig, alt: str = "") -> str:
    import matplotlib.pyplot as plt

    if fig is None:
        return _note("nothing to plot yet: no trial has reported a score")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _leaderboard(experiment: Experiment) -> str:
    board = experiment.leaderboard()
    shown = board.astype(object).where(board.notna(), "-")
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, escape=True)


def _started(trial: Trial) -> float:
    first = trial.history[0] if trial.history else {}
    return float(first.get("timestamp", math.inf))


def _best_by_trial(experiment: Experiment, scored: list[Trial]):
    import matplotlib.pyplot as plt

    if not scored:
        return None
    ordered = sorted(scored, key=_started)
    values = [t.best for t in ordered]
    pick = min if experiment.mode == "min" else max
    running = [pick(values[: i + 1]) for i in range(len(values))]
    x = list(range(1, len(values) + 1))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.scatter(x, values, label="trial's best", color="tab:blue")
    ax.step(x, running, where="post", label="best so far", color="tab:red")
    ax.set_xlabel("trial, in the order it started")
    ax.set_ylabel(experiment.metric)
    ax.legend()
    return fig


def _optuna_study(experiment: Experiment, scored: list[Trial]):
    """An in-memory Optuna study of the scored trials, or a note (str) saying why there is none."""
    import optuna

    from aam.search._space_validate import encode_choice

    if len(scored) < 2:
        return "needs at least two scored trials"
    try:
        space = load_experiment_space(experiment.path)
    except AamUserError as e:
        return f"the experiment's search space no longer loads ({e})"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "minimize" if experiment.mode == "min" else "maximize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
    for trial in sorted(scored, key=_started):
        sampled = {k: encode_choice(v) for k, v in experiment.sampled(trial).items()}
        study.enqueue_trial(sampled)
        asked = study.ask()
        space.define_by_run(asked)  # fixed to the enqueued values; records each key's distribution
        study.tell(asked, trial.best)
    return study


def _importances(study) -> str:
    import matplotlib.pyplot as plt
    import optuna

    if isinstance(study, str):
        return _note(f"no importances: {study}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as e:
        return _note(f"no importances: {e}")
    if not importances:
        return _note("no importances: no key was searched in every scored trial")
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (Optuna's fANOVA, share of the score's variance)")
    note = _note(f"Optuna's fANOVA over {len(study.trials)} trials, each scored by its best epoch.")
    return _figure(fig, "parameter importances") + note


def _parallel(study) -> str:
    if isinstance(study, str):
        return _note(f"no plot: {study}")
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = plot_parallel_coordinate(study)
    fig = ax.figure
    fig.set_size_inches(9, 4.5)
    return _figure(fig, "parallel coordinates")


def _curves(experiment: Experiment, scored: list[Trial]):
    import matplotlib.pyplot as plt

    if not scored:
        return None
    best = experiment.best() if any(t.checkpoint() for t in scored) else None
    fig, ax = plt.subplots(figsize=(8, 4))
    for trial in sorted(scored, key=_started):
        points = [(h.get("training_iteration", i + 1), h[experiment.metric])
                  for i, h in enumerate(trial.history) if experiment.metric in h]
        x, y = zip(*points)
        is_best = best is not None and trial.path == best.path
        ax.plot(x, y, marker="o", markersize=3, linewidth=2.5 if is_best else 1,
                linestyle="-" if trial.status == "finished" else "--",
                label=f"{trial.path.name} (best)" if is_best else None, zorder=3 if is_best else 2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(experiment.metric)
    ax.set_title("solid: finished; dashed: stopped early", fontsize=9)
    if best is not None:
        ax.legend()
    return fig


def _read_forest(folder: str | Path) -> tuple[Path, dict]:
    from aam.baselines.leaderboard import read_baseline

    info, _ = read_baseline(folder)
    return Path(folder), info


def _predicted(experiment: Experiment, forest: tuple[Path, dict] | None) -> str:
    import matplotlib.pyplot as plt

    try:
        best = experiment.best()
    except AamUserError as e:
        return _note(str(e))
    checkpoint = best.checkpoint()
    split = "test" if (checkpoint / "test_predictions.tsv").is_file() else "val"
    panels = [(f"{best.path.name}, {split}", checkpoint / f"{split}_predictions.tsv")]
    notes = []
    if forest is not None:
        panels.append((f"random forest ({forest[0].name}), {split}", forest[0] / f"{split}_predictions.tsv"))
        notes.append(f"Beside it: the random forest in {forest[0]}, on the same split.")
    else:
        notes.append("no forest beside it: pass --baseline DIR, a folder written by `aam baseline rf --data ... --out DIR`")
    frames = [(title, pd.read_csv(file, sep="\t")) for title, file in panels if file.is_file()]
    if not frames:
        return _note(f"{checkpoint}: no predictions file")
    targets = [c.removesuffix("_actual") for c in frames[0][1].columns if c.endswith("_actual")]
    fig, axes = plt.subplots(len(targets), len(frames), figsize=(4.2 * len(frames), 4 * len(targets)), squeeze=False)
    for col, (title, frame) in enumerate(frames):
        for row, target in enumerate(targets):
            ax = axes[row][col]
            if f"{target}_predicted" not in frame:
                ax.set_axis_off()
                continue
            pair = frame[[f"{target}_actual", f"{target}_predicted"]].dropna()
            actual, predicted = pair.iloc[:, 0], pair.iloc[:, 1]
            mae = (actual - predicted).abs().mean()
            ax.scatter(actual, predicted, s=12, alpha=0.7)
            low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
            ax.plot([low, high], [low, high], color="grey", linewidth=1)
            ax.set_xlabel(f"{target} actual")
            ax.set_ylabel(f"{target} predicted")
            ax.set_title(f"{title}\nMAE {mae:.4g} (n={len(pair)})", fontsize=9)
    notes.insert(0, f"{best.path.name}: the model of its best epoch (epoch {best.best_epoch}), on the {split} split.")
    return _figure(fig, "predicted against actual") + "".join(_note(n) for n in notes)
