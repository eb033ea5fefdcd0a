"""`aam baseline rf` and `aam baseline knn`: the bars a tuned model has to clear, on the same dataset and split."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from aam.cli._app import app
from aam.errors import AamUserError

baseline_app = typer.Typer(
    name="baseline",
    help="Fit a baseline on a dataset folder; compare it with trials via `aam runs EXPERIMENT --baseline DIR`.",
    no_args_is_help=True,
)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("rf")
def random_forest(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder made by `aam convert`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (predictions, metrics, baseline.json).")],
    targets: Annotated[Optional[str], typer.Option("--targets", help="Comma-separated targets (default: all of the dataset's).")] = None,
    n_estimators: Annotated[int, typer.Option("--n-estimators", help="Trees per forest.")] = 500,
    max_features: Annotated[Optional[str], typer.Option("--max-features", help="ASVs tried per split: sqrt, log2, a fraction or a count (default: sklearn's, all).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the forest (same seed, same predictions).")] = 0,
    n_jobs: Annotated[int, typer.Option("--n-jobs", help="CPU cores to grow trees on (-1: all).")] = 1,
    train_on_val: Annotated[bool, typer.Option("--train-on-val", help="Fit on train+val (val scores are then in-sample).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an --out folder that aam wrote as a baseline.")] = False,
    folds: Annotated[int, typer.Option("--folds", min=1, max=20, help="Also predict every train and val sample out "
                                       "of fold (K more forests), for `aam ensemble --with-baseline` over "
                                       "cross-validated runs.")] = 1,
):
    """Random Forest on relative abundances: one forest per target, fitted on the train split."""
    from aam.baselines import run_random_forest

    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    result = run_random_forest(data, out, targets=names, n_estimators=n_estimators, seed=seed, n_jobs=n_jobs,
                               max_features=max_features, train_on_val=train_on_val, force=force,
                               folds=folds)
    _print_summary(result)


@baseline_app.command("knn")
def nearest_neighbors(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder made by `aam convert`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (predictions, metrics, baseline.json).")],
    targets: Annotated[Optional[str], typer.Option("--targets", help="Comma-separated targets (default: all of the dataset's).")] = None,
    neighbors: Annotated[str, typer.Option("--neighbors", help="Numbers of neighbours to choose among, comma-separated "
                                           "(by cross-validation on the training rows).")] = "1,2,3,5,8,13,21",
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the folds k is chosen on.")] = 0,
    train_on_val: Annotated[bool, typer.Option("--train-on-val", help="Fit on train+val (val scores are then in-sample).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an --out folder that aam wrote as a baseline.")] = False,
    folds: Annotated[int, typer.Option("--folds", min=1, max=20, help="Also predict every train and val sample out "
                                       "of fold, for `aam ensemble --with-baseline` over cross-validated runs.")] = 1,
):
    """Nearest neighbours in Jaccard distance (which ASVs two samples share): the mean target of the k
    closest training samples, k chosen by cross-validation on the train split (groups kept whole)."""
    from aam.baselines import run_nearest_neighbors

    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    result = run_nearest_neighbors(data, out, targets=names, neighbors=_whole_numbers(neighbors, "--neighbors"),
                                   seed=seed, train_on_val=train_on_val, force=force, folds=folds)
    _print_summary(result)


def _whole_numbers(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise AamUserError(f"{flag} {text}: give whole numbers separated by commas, such as 1,3,5,10") from None


def _print_summary(result) -> None:
    info = result.info
    if info["kind"] == "random_forest":
        what = f"random forest: {info['n_estimators']} trees, max_features={info['max_features']}, seed {info['seed']}"
    else:
        chosen = ", ".join(f"{name} k={p['n_neighbors']} {p['weights']}" for name, p in info["chosen"].items())
        what = f"nearest neighbours (Jaccard): {chosen}"
    print(f"{what}, fit on {info['n_train']} samples ({'train+val' if info['train_on_val'] else 'train'}) "
          f"in {info['fit_seconds']:.1f} s")
    for name in result.targets:
        scores = "  ".join(f"{split} MAE {_fmt(result.metrics[f'{split}_{name}/mae'])} "
                           f"R² {_fmt(result.metrics[f'{split}_{name}/r2'])}" for split in ("val", "test"))
        print(f"{name}: {scores}")
    if info.get("folds"):
        oof = "  ".join(f"{name} {_fmt(result.metrics[f'oof_{name}/mae'])}" for name in result.targets)
        print(f"out of {info['folds']} folds (train+val), MAE: {oof}")
    if info["train_on_val"]:
        print("note: val was part of the fit, so its scores are in-sample")
    print(f"baseline folder: {result.out}")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"
