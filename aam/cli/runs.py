"""`aam runs`: the leaderboard of an experiment, read from its folder (Ray need not run)."""

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from aam.cli._app import app
from aam.errors import AamUserError

FORMATS = ("table", "tsv", "json")


def print_leaderboard(experiment, fmt: str, baselines: tuple[Path, ...] = ()) -> None:
    from aam.baselines import with_baselines

    for line in experiment.damaged:
        print(f"aam: skipped what could not be read: {line}", file=sys.stderr)
    board = experiment.leaderboard()
    trials_data = next((t.config["data"] for t in experiment.trials if t.config.get("data")), None)
    with_rf, notes = with_baselines(board, list(baselines), experiment.metric, trials_data)
    shown = _with_ensembles(with_rf, experiment)
    n_baselines, n_ensembles = len(with_rf) - len(board), len(shown) - len(with_rf)
    for note in notes:
        print(note, file=sys.stderr)
    if fmt == "tsv":
        print(shown.to_csv(sep="\t", index=False), end="")
    elif fmt == "json":
        records = json.loads(shown.to_json(orient="records"))
        print(json.dumps({"experiment": str(experiment.path), "metric": experiment.metric, "mode": experiment.mode,
                          "trials": records[:len(board)], "baselines": records[len(board):len(with_rf)],
                          "ensembles": records[len(with_rf):]}, indent=1))
    else:
        counts = board["status"].value_counts().to_dict() if len(board) else {}
        extra = "".join(f" and {n} {kind}" for n, kind in ((n_baselines, "baseline(s)"), (n_ensembles, "ensemble(s)"))
                        if n)
        print(f"{experiment.path}: {len(board)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}){extra}, "
              f"ranked by {experiment.metric} ({experiment.mode})")
        if len(shown):
            # "-": a metric not reported, or a conditional key the trial did not sample
            blanks = {c: shown[c].where(shown[c].notna(), "-") for c in shown.columns if shown[c].dtype == object}
            print(shown.assign(**blanks).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))


def _with_ensembles(board, experiment):
    """Rows for the ensembles `aam ensemble` wrote into this experiment (STORAGE/NAME/ensembles/*)."""
    import pandas as pd

    from aam.training.ensemble import leaderboard_rows

    folders = sorted(p for p in (experiment.path / "ensembles").glob("*") if p.is_dir())
    rows, problems = leaderboard_rows(folders, experiment.metric)
    for problem in problems:
        print(f"aam: skipped a damaged ensemble: {problem}", file=sys.stderr)
    if not rows:
        return board
    combined = pd.concat([board, pd.DataFrame(rows)], ignore_index=True)
    for column in ("rank", "epochs", "best_epoch"):
        if column in combined:
            combined[column] = combined[column].astype("Int64")
    return combined


@app.command()
def runs(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder: STORAGE/NAME printed by `aam tune`.")],
    format: Annotated[str, typer.Option("--format", help="table, tsv or json.")] = "table",
    baseline: Annotated[Optional[list[Path]], typer.Option("--baseline", help="Folder written by `aam baseline`: shown as a row beside the trials (repeatable).")] = None,
):
    """List an experiment's trials: params, metrics, status, epochs, best first."""
    from aam.search import read_experiment

    if format not in FORMATS:
        raise AamUserError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    print_leaderboard(read_experiment(experiment), format, tuple(baseline or ()))
