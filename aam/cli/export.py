"""`aam export`: a trial's best checkpoint as a run folder `aam predict --model` accepts."""

import shutil
from pathlib import Path
from typing import Annotated

import typer

from aam._files import check_output_folder, mark_output, staged_folder, verify_checksum
from aam.cli._app import app
from aam.errors import AamUserError

EXPORTED = ("model.pt", "model.pt.sha256", "config.json", "val_predictions.tsv", "test_predictions.tsv", "metrics.json",
            "pred_vs_actual.png", "samples")


@app.command()
def export(
    trial: Annotated[Path, typer.Argument(help="STORAGE/NAME (its best trial) or STORAGE/NAME/TRIAL.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a run folder that aam wrote.")] = False,
):
    """Copy a trial's best model without retraining."""
    from aam.distributed.experiment import resolve_trial

    check_output_folder(out, "run", force, {"TRIAL": trial})
    chosen = resolve_trial(trial)
    checkpoint = chosen.checkpoint()
    if checkpoint is None:
        raise AamUserError(f"{chosen.path}: this trial kept no checkpoint with a model; pick another trial")
    verify_checksum(checkpoint / "model.pt")  # a corrupt model is not passed on
    with staged_folder(out) as tmp:
        mark_output(tmp, "run")
        for name in EXPORTED:
            src = checkpoint / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
    print(f"exported {chosen.path.name} (best epoch {chosen.best_epoch}) from {checkpoint.name} to {out}")
