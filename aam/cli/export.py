"""`aam export`: a trial's best checkpoint as a run folder `aam predict --model` accepts."""

import shutil
from pathlib import Path
from typing import Annotated

import typer

from aam._files import check_output_folder, mark_output, read_verified, staged_folder
from aam.cli._app import app
from aam.errors import AamUserError

EXPORTED = ("model.pt", "model.pt.sha256", "config.json", "val_predictions.tsv", "test_predictions.tsv", "metrics.json",
            "pred_vs_actual.png", "samples", "ensemble.json", "folds")
# what a cross-validated trial's fold folders pass on: each fold's model, not its training state
FOLD_EXPORTED = tuple(name for name in EXPORTED if name not in ("ensemble.json", "folds"))


@app.command()
def export(
    trial: Annotated[Path, typer.Argument(help="STORAGE/NAME (its best trial) or STORAGE/NAME/TRIAL.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a run folder that aam wrote.")] = False,
):
    """Copy a trial's best model without retraining."""
    from aam.search import resolve_trial

    check_output_folder(out, "run", force, {"TRIAL": trial})
    chosen = resolve_trial(trial)
    checkpoint = chosen.checkpoint()
    if checkpoint is None:
        raise AamUserError(f"{chosen.path}: this trial kept no checkpoint with a model; pick another trial")
    _refuse_links(checkpoint)
    folds = sorted(p for p in (checkpoint / "folds").glob("*") if p.is_dir())  # a cross-validated trial
    # the bytes checked are the bytes written: a model swapped in after the check is not passed on
    models = {folder: read_verified(folder / "model.pt")[0] for folder in (folds or [checkpoint])}
    with staged_folder(out) as tmp:
        mark_output(tmp, "run")
        _copy_run_files(checkpoint, tmp, models, [n for n in EXPORTED if n != "folds"])
        for folder in folds:
            (tmp / "folds" / folder.name).mkdir(parents=True)
            _copy_run_files(folder, tmp / "folds" / folder.name, models, FOLD_EXPORTED)
    print(f"exported {chosen.path.name}: {_which_model(checkpoint, chosen.best_epoch)}, to {out}")


def _copy_run_files(source: Path, dest: Path, models: dict[Path, bytes], names) -> None:
    for name in names:
        src = source / name
        if name == "model.pt":
            if source in models:
                (dest / name).write_bytes(models[source])
        elif src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def _refuse_links(checkpoint: Path) -> None:
    """aam writes no links into a checkpoint: one there (a loop, or a path out of the folder) would
    make the export follow it, so the checkpoint is refused instead."""
    for name in EXPORTED:
        src = checkpoint / name
        links = [src] if src.is_symlink() else [p for p in src.rglob("*") if p.is_symlink()] if src.is_dir() else []
        if links:
            raise AamUserError(f"{links[0]}: a symbolic link inside the checkpoint {checkpoint}; aam writes none, "
                               "so this checkpoint was changed after it was written: export another trial")


def _which_model(checkpoint: Path, best_epoch: int) -> str:
    """Say which epoch's model this is. Tune numbers checkpoints from 0 and epochs count from 1, and
    a checkpoint carries the best model so far, so `checkpoint_000014` may hold epoch 13's model."""
    from aam._files import read_json

    try:
        saved = read_json(checkpoint / "metrics.json", "metrics file")
        best_epoch, after = saved.get("best_epoch", best_epoch), len(saved.get("history", ()))
    except (AamUserError, AttributeError, TypeError):  # only a description: a damaged file leaves it out
        after = None
    when = f", saved after epoch {after}" if after else ""
    return f"the model of its best epoch, epoch {best_epoch} (from {checkpoint.name}{when})"
