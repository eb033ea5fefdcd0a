"""Resuming a run. The one owner of `state.pt`'s layout: `save_training_state` writes it each
epoch, `resume_state` reads it back (with the run folder's files it carries on with), and
`restore_training` puts it into a new `fit`."""

from __future__ import annotations

from pathlib import Path

import torch

from aam._files import load_torch, save_torch
from aam.config import RunConfig
from aam.errors import AamUserError
from aam.training.checkpoint import MODEL_FILE, STATE_FILE
from aam.training.optim import set_peak_lr


def save_training_state(folder: Path, epoch: int, cfg: RunConfig, *, model, ema, optimizer, scheduler,
                        masking: torch.Generator, best, history: list) -> None:
    """Write `state.pt` into a run's folder after `epoch` (1-based): everything `restore_training`
    needs to continue as if the run had not stopped (`best` has epoch, score and metrics)."""
    save_torch(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best": {"epoch": best.epoch, "score": best.score, "metrics": best.metrics},
            "history": history,
            "config": cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "masking_rng": masking.get_state(),
        },
        Path(folder) / STATE_FILE,
    )


def restore_training(state: dict, cfg: RunConfig, workdir: Path, *, model, ema, optimizer, scheduler,
                     masking: torch.Generator, best, history: list, rank: int) -> int:
    """Put `state` (a `resume_state`) back into a new run: its model, weight average, optimizer,
    scheduler, RNGs, best epoch, history and (into `workdir`) the files it carries on with;
    returns the epoch to continue after. A changed `lr` replaces the saved peak rate and says so."""
    if (state["config"].get("categorical_lr", 0.0) > 0) != (cfg.categorical_lr > 0):
        raise AamUserError("resume: categorical_lr can change its value but not be switched on or off "
                           "(that changes the optimizer's parameter groups); start a new run instead")
    model.load_state_dict(state["model"])
    if ema is not None and state.get("ema") is not None:  # a run that switches the average on starts it here
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    saved_lr, saved_cat_lr = state["config"]["lr"], state["config"].get("categorical_lr", 0.0)
    if saved_lr != cfg.lr or saved_cat_lr != cfg.categorical_lr:
        set_peak_lr(optimizer, scheduler, cfg.lr, cfg.categorical_lr)
        if rank == 0:
            also = (f" (categorical {cfg.categorical_lr:g} replaces {saved_cat_lr:g})"
                    if cfg.categorical_lr != saved_cat_lr else "")
            print(f"resume: peak learning rate {cfg.lr:g} replaces the checkpoint's {saved_lr:g}{also}", flush=True)
    best.epoch, best.score, best.metrics = state["best"]["epoch"], state["best"]["score"], state["best"]["metrics"]
    history.extend(state["history"])
    torch.set_rng_state(state["torch_rng"])
    if rank == 0:  # other ranks' masking streams differ; rank 0's is the one saved
        masking.set_state(state["masking_rng"])
        print(f"resume: continuing after epoch {state['epoch']} of {cfg.epochs}", flush=True)
    if state.get("workdir_files"):
        unpack_files(state["workdir_files"], workdir)
    return int(state["epoch"])


RESUMED_FILES = (MODEL_FILE, "val_predictions.tsv", "metrics.json", "tb")


def pack_files(folder: Path) -> dict[str, bytes]:
    """The files of a run folder that resuming carries on with (best model, predictions, TensorBoard)."""
    folder = Path(folder)
    files = {}
    for name in RESUMED_FILES:
        path = folder / name
        for p in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
            if p.is_file():
                files[str(p.relative_to(folder))] = p.read_bytes()
    return files


def resume_state(folder: Path) -> dict:
    """What `fit` needs to continue a run from its checkpoint or run folder."""
    state = load_torch(Path(folder) / STATE_FILE, "aam training state")
    state["workdir_files"] = pack_files(Path(folder))
    return state


def checkpoint_resume_state(checkpoint) -> dict | None:
    """`resume_state` of a Ray Train/Tune Checkpoint (None: nothing to resume)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return resume_state(Path(folder))


def unpack_files(files: dict[str, bytes], folder: Path) -> None:
    """Write `pack_files`' files back into a run's work folder."""
    for rel, data in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
