"""`aam ensemble`: greedy ensemble selection on val over a search's best trials or a run's seeds."""

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from aam._files import check_output_folder
from aam.cli._app import app
from aam.errors import AamUserError


def _candidates(sources: list[Path], top: int) -> tuple[list[tuple[str, Path]], Path | None]:
    """(name, folder holding model.pt) per candidate, and the experiment folder when one was given."""
    from aam.search import SPACE_FILE, read_experiment
    from aam.training.ensemble import holds_model

    if len(sources) == 1 and (sources[0] / SPACE_FILE).is_file():
        experiment = read_experiment(sources[0])
        ranked = [t for t in experiment.ranked() if t.checkpoint() is not None and not math.isnan(t.best)]
        if not ranked:
            raise AamUserError(f"{sources[0]}: no trial kept a checkpoint with a model yet")
        return [(t.path.name, t.checkpoint()) for t in ranked[:top]], sources[0]
    found = []
    for source in sources:
        if holds_model(source):
            found.append((source.name, source))
        elif source.is_dir() and (runs := [p for p in sorted(source.glob("*")) if holds_model(p)]):
            found.extend((f"{source.name}/{p.name}", p) for p in runs)  # `aam train --seeds K` writes OUT/seed_K
        else:
            raise AamUserError(f"{source}: neither an experiment folder (STORAGE/NAME), a run folder with a "
                               "model.pt, nor a folder of run folders (`aam train --seeds K --out OUT`)")
    return _distinct_names(found), None


def _distinct_names(found: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Runs of several recipes are often all called seed_0, seed_1...: name those that clash by
    as many trailing parts of their paths as tell them apart (a/seed_0, b/seed_0)."""
    names = [name for name, _ in found]
    if len(set(names)) == len(names):
        return found
    folders = [folder.resolve() for _, folder in found]
    for depth in range(2, max(len(f.parts) for f in folders) + 1):
        names = ["/".join(f.parts[-depth:]) for f in folders]
        if len(set(names)) == len(names):
            break
    return list(zip(names, (folder for _, folder in found)))


@app.command()
def ensemble(
    sources: Annotated[list[Path], typer.Argument(help="STORAGE/NAME (its best trials), or run folders, or the "
                                                  "--out of `aam train --best-of ... --seeds K`.")],
    top: Annotated[int, typer.Option("--top", min=1, help="With an experiment: its K best trials on val are the "
                                     "candidates.")] = 5,
    with_baseline: Annotated[Optional[list[Path]], typer.Option("--with-baseline", help="Folder of `aam baseline rf` "
                                                                "or `aam baseline knn` on the same dataset: the "
                                                                "baseline becomes a candidate (the result is labelled "
                                                                "as including it). Repeatable.")] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Greedy additions (with replacement); the best "
                                        "prefix on val is kept.")] = 20,
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder (default: the one the members "
                                                 "were trained on).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Ensemble folder to write (default, for an "
                                                "experiment: STORAGE/NAME/ensembles/topK[-rf]).")] = None,
):
    """Combine trained models (and optionally baselines) by greedy selection on val; score test once."""
    from aam.training.ensemble_build import build_ensemble

    baselines = _distinct_baselines(with_baseline or [])
    candidates, experiment = _candidates(list(sources), top)
    out = _ensemble_folder(out, experiment, top, baselines)
    inputs = {**{f"SOURCE {s}": s for s in sources}, **{f"--with-baseline {b}": b for b in baselines}, "--data": data}
    check_output_folder(out, "ensemble", False, inputs,
                        allowed=() if experiment is None else (experiment / "ensembles",))
    members, selection, metrics = build_ensemble(candidates, out, data, baselines, rounds)
    _report(out, members, selection, metrics)


def _distinct_baselines(folders: list[Path]) -> list[Path]:
    """Each --with-baseline once, each one an `aam baseline` folder of a kind aam ensemble takes."""
    from aam.training.ensemble import baseline_kind

    seen = set()
    for folder in folders:
        if folder.resolve() in seen:
            raise AamUserError(f"--with-baseline {folder}: given twice; give each baseline folder once")
        seen.add(folder.resolve())
        baseline_kind(folder)
    return folders


def _ensemble_folder(out: Path | None, experiment: Path | None, top: int, baselines: list[Path]) -> Path:
    """--out, by default STORAGE/NAME/ensembles/topK[-rf][-knn] for an experiment; never an existing ensemble."""
    if out is None:
        if experiment is None:
            raise AamUserError("--out: give the ensemble folder to write (needed unless the source is an experiment)")
        from aam.training.ensemble import baseline_kind

        shorts = [baseline_kind(folder)[1].removeprefix("baseline:") for folder in baselines]
        out = experiment / "ensembles" / "-".join([f"top{top}", *shorts])
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        raise AamUserError(f"--out {out}: already exists; choose a new folder (an ensemble is never overwritten)")
    return out


def _report(out: Path, members, selection, metrics: dict) -> None:
    picked = ", ".join(f"{m.name} {w:.2f}" for m, w in zip(members, selection.weights) if w > 0)
    from aam.training.ensemble import BASELINE_LABELS

    included = metrics["includes_baselines"]
    label = f" (includes {' and '.join(BASELINE_LABELS[k] for k in included)})" if included else ""
    print(f"ensemble{label}: {picked}")
    scored = "out-of-fold MAE (every train and val sample)" if any(m.kind == "cross-validated" for m in members) \
        else "val_mae"
    print(f"{scored} {metrics['val_mae']:.4g}  test_mae {metrics['test_mae']:.4g}  test_r2 {metrics['test_r2']:.3g}")
    print(f"wrote {out}")
