"""`aam report`: an experiment as one HTML page that opens offline (plots inlined)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from aam.cli._app import app


@app.command()
def report(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder: STORAGE/NAME printed by `aam tune`.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default: STORAGE/NAME/report.html).")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Folder written by `aam baseline rf`: its predicted-vs-actual beside the best trial's.")] = None,
):
    """Leaderboard, best score against trials, parameter importances, parallel coordinates,
    validation curves and predicted-vs-actual of an experiment, in one self-contained HTML file."""
    import sys

    from aam.search import read_experiment, write_report

    for line in read_experiment(experiment).damaged:  # the report lists every trial that can be read
        print(f"aam: skipped what could not be read: {line}", file=sys.stderr)
    print(f"report: {write_report(experiment, out, baseline)}")
