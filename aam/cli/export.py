"""`aam export`: a trial's best checkpoint as a run folder `aam predict --model` accepts."""

import shutil
from pathlib import Path
from typing import Annotated

import typer

from aam.cli._app import app
from aam.errors import AamUserError

EXPORTED = ("model.pt", "config.json", "val_predictions.tsv", "test_predictions.tsv", "metrics.json",
            "pred_vs_actual.png", "samples")


@app.command()
def export(
    trial: Annotated[Path, typer.Argument(help="STORAGE/NAME (its best trial) or STORAGE/NAME/TRIAL.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty folder.")] = False,
):
    """Copy a trial's best model without retraining."""
    from aam.distributed.experiment import resolve_trial

    chosen = resolve_trial(trial)
    checkpoint = chosen.checkpoint()
    if checkpoint is None:
        raise AamUserError(f"{chosen.path}: this trial kept no checkpoint with a model; pick another trial")
    if out.exists() and any(out.iterdir()) and not force:
        raise AamUserError(f"--out {out}: folder is not empty; choose a new folder or pass --force")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in EXPORTED:
        src = checkpoint / name
        if src.is_dir():
            shutil.copytree(src, tmp / name)
        elif src.is_file():
            shutil.copy2(src, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"exported {chosen.path.name}: {_which_model(checkpoint, chosen.best_epoch)}, to {out}")


def _which_model(checkpoint: Path, best_epoch: int) -> str:
    """Say which epoch's model this is. Tune numbers checkpoints from 0 and epochs count from 1, and
    a checkpoint carries the best model so far, so `checkpoint_000014` may hold epoch 13's model."""
    import json

    try:
        saved = json.loads((checkpoint / "metrics.json").read_text())
        best_epoch, after = saved.get("best_epoch", best_epoch), len(saved.get("history", ()))
    except (OSError, ValueError):
        after = None
    when = f", saved after epoch {after}" if after else ""
    return f"the model of its best epoch, epoch {best_epoch} (from {checkpoint.name}{when})"
