"""`aam runs`: the leaderboard of an experiment, read from its folder (Ray need not run)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from aam.cli._app import app
from aam.errors import AamUserError

FORMATS = ("table", "tsv", "json")


def print_leaderboard(experiment, fmt: str) -> None:
    board = experiment.leaderboard()
    if fmt == "tsv":
        print(board.to_csv(sep="\t", index=False), end="")
    elif fmt == "json":
        print(json.dumps({"experiment": str(experiment.path), "metric": experiment.metric, "mode": experiment.mode,
                          "trials": json.loads(board.to_json(orient="records"))}, indent=1))
    else:
        counts = board["status"].value_counts().to_dict() if len(board) else {}
        print(f"{experiment.path}: {len(board)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
              f"ranked by {experiment.metric} ({experiment.mode})")
        if len(board):
            print(board.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


@app.command()
def runs(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder: STORAGE/NAME printed by `aam tune`.")],
    format: Annotated[str, typer.Option("--format", help="table, tsv or json.")] = "table",
):
    """List an experiment's trials: params, metrics, status, epochs, best first."""
    from aam.distributed.experiment import read_experiment

    if format not in FORMATS:
        raise AamUserError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    print_leaderboard(read_experiment(experiment), format)
