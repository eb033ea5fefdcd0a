"""`aam train`: one training run on Ray Train (1..N workers, CPU or GPU)."""

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from aam._files import atomic_write, check_output_folder, mark_output, replacing_folder
from aam.cli._app import app
from aam.cli._config_options import with_config_options
from aam.config import RunConfig
from aam.errors import AamUserError


def load_run_file(path: Path) -> dict:
    """A run config as YAML or JSON (JSON is YAML): the same keys as the flags."""
    if not path.is_file():
        raise AamUserError(f"--config {path}: no such file")
    from aam._yaml import TooManyNodes, load_strict

    try:
        values = load_strict(path.read_text())
    except TooManyNodes as e:
        raise AamUserError(f"--config {path}: {e}; a run config needs far fewer") from None
    except UnicodeDecodeError:
        raise AamUserError(f"--config {path}: not a text file") from None
    except yaml.YAMLError as e:
        raise AamUserError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise AamUserError(f"--config {path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def resolve_config(base: dict, overrides: dict, where: str) -> RunConfig:
    """Base (defaults, a file, a checkpoint) + the flags typed; validated in one place."""
    return RunConfig.from_dict({**base, **overrides}, where=where)


def _categorical_help(value: bool) -> None:
    if value:
        from aam.models import FUSION_GUIDE

        print(FUSION_GUIDE, end="")
        raise typer.Exit()


@app.command()
@with_config_options
def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder to write (model, predictions, TensorBoard).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Run config (YAML/JSON) to start from; flags override it.")] = None,
    resume_from: Annotated[Optional[Path], typer.Option("--resume-from", help="Run folder to continue; flags such as --epochs or --lr override its config.")] = None,
    best_of: Annotated[Optional[Path], typer.Option("--best-of", help="Retrain a searched config: STORAGE/NAME (its best trial) or STORAGE/NAME/TRIAL; flags override it.")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Train this many seeds (seed, seed+1, ...) into OUT/seed_K and summarise them.")] = 1,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster to use (default: RAY_ADDRESS, else an embedded local Ray).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an --out run folder that aam wrote.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Also show Ray Train's start-up lines (resources, worker group, each worker's ip and pid).")] = False,
    categorical_help: Annotated[bool, typer.Option("--categorical-help", is_eager=True, callback=_categorical_help,
                                                   help="Print when to use which categorical fusion, and exit.")] = False,
    overrides: dict = None,
):
    """Train the AAM model on a dataset folder made by `aam convert`."""
    cfg, restore, trial = _starting_config(config, best_of, resume_from, overrides or {}, seeds)
    replace = check_output_folder(out, "run", force, {"--data": cfg.data, "--config": config, "--best-of": best_of,
                                                      "--resume-from": resume_from,
                                                      "pretrained_encoder": cfg.pretrained_encoder},
                                  continuing=resume_from)
    with replacing_folder(out, replace):
        results = _train_seeds(cfg, out, seeds, restore, address, verbose)
        mark_output(out, "run")  # a --seeds folder holds runs: one more run to --force over
        if trial is not None or seeds > 1:
            _write_comparison(out, results, trial)


def _starting_config(config: Path | None, best_of: Path | None, resume_from: Path | None, overrides: dict,
                     seeds: int) -> tuple[RunConfig, dict | None, object]:
    """(the run's config, the state to resume, the search trial retrained): the defaults, then
    --config, then the --best-of trial's or the --resume-from run's config, then the flags typed."""
    base: dict = {}
    where, restore, trial = "command line", None, None
    if config is not None:
        base = load_run_file(config)
        where = f"--config {config} + flags"
    if best_of is not None:
        from aam.search import resolve_trial

        if resume_from is not None:
            raise AamUserError("--best-of and --resume-from start from different configs; give one of them")
        trial = resolve_trial(best_of)
        if not trial.config:
            raise AamUserError(f"--best-of {best_of}: trial {trial.path.name} has no config.json yet")
        base, where = {**base, **trial.config}, f"--best-of {trial.path} + flags"
    if resume_from is not None:
        restore = _load_resume_state(resume_from)
        base, where = {**base, **restore["config"]}, f"--resume-from {resume_from} + flags"
    cfg = resolve_config(base, overrides, where)
    if restore is not None and restore["epoch"] >= cfg.epochs:
        raise AamUserError(f"--resume-from {resume_from}: it already trained {restore['epoch']} of "
                           f"epochs={cfg.epochs}; pass a larger --epochs to continue")
    if seeds > 1 and restore is not None:
        raise AamUserError("--seeds starts new runs; it cannot be combined with --resume-from")
    return cfg, restore, trial


def _train_seeds(cfg: RunConfig, out: Path, seeds: int, restore: dict | None, address: str | None,
                 verbose: bool) -> dict:
    """seed -> final metrics: one run in OUT, or with --seeds one per seed in OUT/seed_K."""
    from aam.distributed import run_training

    if seeds == 1:
        results = {cfg.seed: run_training(cfg, out, restore=restore, address=address, verbose=verbose)}
        _print_summary(out, results[cfg.seed])
        return results
    results = {}
    for k in range(seeds):
        seeded = cfg.replace(f"--seeds {seeds}", seed=cfg.seed + k)
        results[seeded.seed] = run_training(seeded, out / f"seed_{seeded.seed}", address=address, verbose=verbose)
        _print_summary(out / f"seed_{seeded.seed}", results[seeded.seed])
    return results


def _load_resume_state(run_dir: Path) -> dict:
    from aam.training.resume import resume_state

    folder = newest_checkpoint(run_dir)
    if folder != run_dir:
        print(f"--resume-from {run_dir}: continuing from its newest checkpoint, {folder}", flush=True)
    return resume_state(folder)


def newest_checkpoint(run_dir: Path) -> Path:
    """The folder of the newest `state.pt` a run left, whichever path wrote it.

    A finished run has its last state at RUN/state.pt; a run that stopped early (killed, or its
    workers failed for good) left it only in Ray Train's checkpoints, RUN/ray/train/checkpoint_*/;
    `--resume-from` also takes such a checkpoint folder itself. The newest is the one furthest in
    training (the epochs its metrics.json records, read as plain JSON), then the last written.
    """
    import json

    from aam.training.checkpoint import STATE_FILE

    if not run_dir.is_dir():
        raise AamUserError(f"--resume-from {run_dir}: no such folder; pass a run folder written by `aam train`")
    found = [p.parent for p in [run_dir / STATE_FILE, *sorted(run_dir.glob(f"ray/*/checkpoint_*/{STATE_FILE}"))]
             if p.is_file()]
    if not found:
        raise AamUserError(f"--resume-from {run_dir}: no {STATE_FILE} there nor in its ray/*/checkpoint_* folders; "
                           "pass a run folder written by `aam train`")

    def progress(folder: Path) -> tuple[int, float]:
        try:
            history = json.loads((folder / "metrics.json").read_text())["history"]
            epoch = int(history[-1]["epoch"])
        except (OSError, ValueError, KeyError, IndexError, TypeError, RecursionError):  # damaged: least progress
            epoch = -1
        return epoch, (folder / STATE_FILE).stat().st_mtime

    return max(found, key=progress)


def _print_summary(out: Path, metrics: dict) -> None:
    # val scores of the last epoch are not the model's: show the best epoch's (the kept model)
    keys = [k for k in ("best_epoch", "best_val_score", "test_mae", "test_rmse", "test_r2", "test_loss") if k in metrics]
    shown = "  ".join(f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}" for k in keys)
    print(f"done: {shown}")
    print(f"run folder: {out}")


def _write_comparison(out: Path, results: dict, trial) -> None:
    """summary.json: each seed's scores, their mean and spread, and the search trial's own score."""
    import json
    import statistics

    keys = sorted({k for m in results.values() for k in m if k.startswith(("val_", "test_"))
                   and isinstance(m[k], (int, float))})
    summary: dict = {"seeds": {str(s): {k: m.get(k) for k in keys} for s, m in results.items()}}
    summary["mean"] = {k: statistics.fmean(m[k] for m in results.values() if k in m) for k in keys}
    if len(results) > 1:
        summary["stdev"] = {k: statistics.stdev([m[k] for m in results.values() if k in m]) for k in keys}
    if trial is not None:
        from aam.search import read_experiment

        metric = read_experiment(trial.path.parent).metric
        summary["trial"] = {"path": str(trial.path), "metric": metric, "score": trial.best, "epoch": trial.best_epoch}
        retrained = [m.get("best_val_score") if metric == "val_mae" else m.get(metric) for m in results.values()]
        retrained = [r for r in retrained if r is not None]
        if retrained:
            mean = statistics.fmean(retrained)
            summary["trial"]["retrained"] = mean
            print(f"{metric}: search trial {trial.best:.4g} (epoch {trial.best_epoch}), retrained {mean:.4g}")
    atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    for key in ("test_mae", "test_r2"):
        if key in summary["mean"]:
            spread = f" ± {summary['stdev'][key]:.3g}" if "stdev" in summary else ""
            print(f"{key}: {summary['mean'][key]:.4g}{spread} over {len(results)} seed(s)")
