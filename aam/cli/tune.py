"""`aam tune`: a Ray Tune + Optuna search described by a YAML file under search_spaces/."""

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from aam.cli._app import app
from aam.errors import AamUserError

# `aam tune`'s exit code when the search ran to its end but a trial failed for good (its retries
# spent): the other trials' results stand, and scripts can tell this from a user error (2)
SEARCH_HAD_FAILURES = 3


@app.command()
def tune(
    space: Annotated[Optional[Path], typer.Argument(help="Search-space YAML (see search_spaces/README.md).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset folder; overrides the file's data:.")] = None,
    storage_path: Annotated[Optional[str], typer.Option("--storage-path", help="Where experiments go (folder or URI); overrides the file.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Experiment name (default: from the file).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster (default: RAY_ADDRESS, else an embedded local Ray).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted search: STORAGE/NAME.")] = None,
    dashboard: Annotated[bool, typer.Option("--dashboard/--no-dashboard", help="Start the Ray dashboard with an embedded Ray (off saves ~9 processes and ~0.3 GB of memory; only for trials with one CPU worker).")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", help="Also show Ray Train's start-up lines of trials with several workers or GPUs.")] = False,
):
    """Search the run config space of SPACE; leaves the experiment in STORAGE/NAME."""
    from aam.distributed.cluster import set_ray_env

    set_ray_env()  # before Ray is imported: workers inherit it
    from aam.search import load_experiment_space, load_space
    from aam.distributed.tune import run_search

    if resume is not None:
        if space is not None:
            raise AamUserError("--resume continues the search an experiment was started with; give no SPACE file")
        if not resume.is_dir():
            raise AamUserError(f"--resume {resume}: no such experiment folder")
        loaded = load_experiment_space(resume.resolve())
        loaded.storage_path, loaded.name = str(resume.resolve().parent), resume.resolve().name
        with _one_driver(loaded):
            experiment = run_search(loaded, address=address, resume=True, dashboard=dashboard, verbose=verbose)
    else:
        if space is None:
            raise AamUserError("give a search-space file, e.g. `aam tune search_spaces/demo.yaml`, or --resume STORAGE/NAME")
        if not space.is_file():
            raise AamUserError(f"{space}: no such search-space file")
        loaded = load_space(space, data_override=data, storage_override=storage_path, name_override=name)
        with _one_driver(loaded):
            experiment = run_search(loaded, address=address, dashboard=dashboard, verbose=verbose)
    if not isinstance(experiment, Path):
        print(f"experiment: {experiment}")
        return
    _print_search_end(experiment)


def _one_driver(loaded):
    """The experiment's lock, held while this driver runs: a second driver on it (another --name of
    it, or a --resume while it runs) would sample duplicate trials and delete the other's
    checkpoints. A storage that is a URI, or a path run_search will refuse, is not locked here."""
    from aam._files import driver_lock

    if "://" in loaded.storage_path:
        return contextlib.nullcontext()
    storage = Path(loaded.storage_path)
    existing = next(p for p in (storage, *storage.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return contextlib.nullcontext()
    return _locked_storage(storage, loaded.name, driver_lock)


@contextlib.contextmanager
def _locked_storage(storage: Path, name: str, driver_lock):
    """The lock of STORAGE/NAME, creating STORAGE for it when it is new (two drivers started at once
    on a new storage folder race like any others); a storage folder made here and left holding only
    the lock (the search was refused before it wrote anything) is removed again."""
    made = []
    for folder in reversed([storage, *storage.parents]):
        if not folder.exists():
            with contextlib.suppress(FileExistsError):  # another driver made it first: not ours to remove
                folder.mkdir()
                made.append(folder)
    with driver_lock(storage / name) as lock:
        try:
            yield lock
        finally:
            if made and {p.name for p in storage.iterdir()} == {lock.name}:
                lock.unlink()
                for folder in reversed(made):
                    with contextlib.suppress(OSError):  # not empty: something else was written there since
                        folder.rmdir()


def _print_search_end(experiment: Path) -> None:
    """The leaderboard, the best trial and its report, the tally; exit code 3 when a trial failed for good."""
    from aam.cli.runs import print_leaderboard
    from aam.search import read_experiment

    result = read_experiment(experiment)
    print()
    print_leaderboard(result, "table")
    try:
        best = result.best()
    except AamUserError:  # every trial failed before its first checkpoint: the counts below say so
        best = None
    if best is not None:
        print(f"\nbest trial: {best.path}  ({result.metric} {best.best:.4g} at epoch {best.best_epoch})")
        from aam.search import write_report

        try:
            print(f"report: {write_report(experiment)}")
        except Exception as e:  # the search is done and saved: a report that fails must not hide that
            print(f"report not written ({type(e).__name__}: {e}); `aam report {experiment}` tries again")
    print(f"experiment: {experiment}")
    statuses = [t.status for t in result.trials]
    counts = {kind: statuses.count(kind) for kind in ("finished", "stopped early", "failed")}
    others = len(statuses) - sum(counts.values())  # a time budget can leave sampled trials unstarted
    print(f"search ended: {', '.join(f'{n} {kind}' for kind, n in counts.items())}"
          + (f", {others} not run" if others else ""))
    if counts["failed"]:
        failed = [t for t in result.trials if t.status == "failed"]
        print(f"aam: {counts['failed']} trial(s) failed after their retries (first: {failed[0].path.name}: "
              f"{failed[0].error or 'see its error.txt'}); `aam tune --resume {experiment}` tries them again",
              file=sys.stderr)
        raise typer.Exit(SEARCH_HAD_FAILURES)
