"""Test-split quality: the tuned model vs the Random Forest baseline, per dataset.

For every --data LABEL=DIR, three CLI steps as subprocesses (each `aam` command starts and stops
its own embedded Ray where it needs one):

  1. search    aam tune SPACE --data DIR --storage-path WORK/experiments --name quality-LABEL
  2. retrain   aam train --best-of WORK/experiments/quality-LABEL --data DIR --out WORK/runs/LABEL
               [--epochs N, given --retrain-epochs N]
               (the best trial's config, selected on val, trained again to completion; its best
               epoch on val is kept and scores the test split once; --train-seeds N trains N seeds
               and averages them)
  3. baseline  aam baseline rf --data DIR --out WORK/rf/LABEL [--max-features F]
               (fitted on the same train split, scored on the same test split)
  4. ensembles aam ensemble WORK/experiments/quality-LABEL --top K [--with-baseline WORK/rf/LABEL]
               and, with --folds, aam ensemble WORK/runs/LABEL [--with-baseline WORK/rf/LABEL]

With --config RUN.yaml in place of --space (the README's recipe without a search,
configs/quality.yaml) step 1 is skipped and step 2 is `aam train --config RUN.yaml`; the ensembles
are of its run only.

With --folds K (the recipe of search_spaces/quality.yaml) the retrain is `--folds K` (K models on
the folds of train+val, scored out of fold) and the forest is `--folds K` too, so the ensemble
with the forest is weighted on out-of-fold predictions of every non-test sample: the user's whole
path, from a converted table to the final model, as the README's Use block gives it.

The test split is never used for selection: the search ranks trials on val, the retrain picks
its epoch on val, the forest is fitted on train only. The table gives test MAE and R² of both
(the mean over targets, and each target in the JSON) and which one wins on each.

    python benchmarks/quality.py --space search_spaces/count_embed.yaml --data mouse_random=/tmp/e2e/mouse \\
        --rf-max-features 0.3 --keep /tmp/quality --out benchmarks/results/quality.json
    python benchmarks/quality.py --space TINY.yaml --data mini=/tmp/bench/mini --rf-n-estimators 50   # a smoke run
    python benchmarks/quality.py --space search_spaces/quality.yaml --folds 5 --data mouse_grouped=/tmp/q/mouse_grouped \
        --keep /tmp/path --out benchmarks/results/path-mouse_grouped.json                   # the user's path
    python benchmarks/quality.py --config configs/quality.yaml --folds 5 --train-workers 2 \
        --data emp_elev=/tmp/q/emp_elev --keep /tmp/nosearch --out benchmarks/results/nosearch-emp_elev.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_machine, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCORES = ("test_mae", "test_r2", "test_rmse", "val_mae", "val_r2")


def parse_data(values: list[str]) -> dict[str, Path]:
    """`LABEL=DIR` (or just `DIR`, labelled by its folder name) -> {label: absolute dir}."""
    out: dict[str, Path] = {}
    for value in values:
        label, sep, folder = value.partition("=")
        if not sep:
            label, folder = Path(value).name, value
        label = label.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise SystemExit(f"--data {value}: the label may hold letters, digits, '_', '-' and '.' only")
        if label in out:
            raise SystemExit(f"--data {value}: label '{label}' given twice")
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise SystemExit(f"--data {value}: no such dataset folder {path}")
        out[label] = path
    if not out:
        raise SystemExit("give at least one --data LABEL=DIR")
    return out


def winner(model: float | None, rf: float | None, higher_is_better: bool) -> str:
    if model is None or rf is None or math.isnan(model) or math.isnan(rf):
        return "n/a"
    if model == rf:
        return "tie"
    return "model" if (model > rf) == higher_is_better else "RF"


def step(name: str, cmd: list[str], log: Path) -> float:
    print(f"  {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    print(f"    {wall:.0f} s", flush=True)
    return wall


def model_scores(run: Path) -> dict:
    """Test (and val) scores of the retrained model: summary.json's mean over seeds (written by
    --best-of), else the last epoch's metrics of metrics.json."""
    summary = run / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        scores = dict(data.get("mean", {}))
        scores["seeds"] = len(data.get("seeds", {}))
        if "stdev" in data:
            scores["stdev"] = data["stdev"]
        if "trial" in data:
            scores["search_trial"] = data["trial"]
        return scores
    history = json.loads((run / "metrics.json").read_text())["history"]
    return {k: v for k, v in history[-1].items() if k.startswith(("val_", "test_"))}


def rf_scores(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    info = json.loads((folder / "baseline.json").read_text())
    return {**{k: v for k, v in metrics.items() if v is not None}, "baseline": info}


def _started_at(trial) -> float:
    """When a trial's first epoch began (Tune's timestamp is the end of an epoch); never: last."""
    if not trial.history:
        return math.inf
    first = trial.history[0]
    return first.get("timestamp", math.inf) - first.get("time_this_iter_s", 0.0)


def best_trial(experiment: Path) -> dict:
    """The search's pick, its own test score at the epoch it was picked at, and how many trials the
    search needed to find it: `best_of_first[k - 1]` is the best score among the first k trials
    to start (what a search of k trials would have picked, had it drawn the same ones)."""
    from aam.search import read_experiment

    exp = read_experiment(experiment)
    best = exp.best()
    # a trial that ran to its end (or out of patience) scored its best epoch's weights on test once,
    # in its last row; one ASHA stopped has no test score
    last = best.history[-1] if best.history else {}
    started = sorted((t for t in exp.trials if not math.isnan(t.best)), key=_started_at)
    best_of_first = list(itertools.accumulate((t.best for t in started), min if exp.mode == "min" else max))
    return {"trial": best.path.name, "metric": exp.metric, "score": best.best, "epoch": best.best_epoch,
            "trials": len(exp.trials), "searched": exp.sampled(best),
            "test_at_best_epoch": {k: v for k, v in last.items() if k.startswith("test_")},
            "found_at": started.index(best) + 1, "best_of_first": best_of_first}


def run_dataset(label: str, data: Path, args, work: Path) -> dict:
    aam = str(Path(sys.executable).with_name("aam"))
    experiment = work / "experiments" / f"quality-{label}"
    run, rf = work / "runs" / label, work / "rf" / label
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    walls = {}
    search_cmd = [aam, "tune", str(args.space), "--data", str(data), "--storage-path", str(experiment.parent),
                  "--name", experiment.name] if args.space else None
    if args.config:
        walls["tune_s"], best = 0.0, None  # the README's recipe: no search on this table
    elif args.reuse_search and experiment.is_dir():
        # the search of an earlier run of this command (its wall time is in that run's log)
        print(f"  search: reused {experiment}", flush=True)
        walls["tune_s"], best = None, best_trial(experiment)
    else:
        walls["tune_s"] = step("search", search_cmd, logs / f"{label}-tune.log")
        best = best_trial(experiment)
    source = ["--config", str(args.config)] if args.config else ["--best-of", str(experiment)]
    train_cmd = [aam, "train", *source, "--data", str(data), "--out", str(run)]
    if args.target_transform:
        train_cmd += ["--target-transform", args.target_transform]
    if args.train_seeds > 1:
        train_cmd += ["--seeds", str(args.train_seeds)]
    if args.retrain_epochs:
        train_cmd += ["--epochs", str(args.retrain_epochs)]
    rf_cmd = [aam, "baseline", "rf", "--data", str(data), "--out", str(rf), "--n-estimators",
              str(args.rf_n_estimators), "--n-jobs", str(args.rf_n_jobs), "--seed", str(args.rf_seed)]
    if args.rf_max_features:
        rf_cmd += ["--max-features", args.rf_max_features]
    if args.train_workers > 1:
        train_cmd += ["--workers", str(args.train_workers)]
    if args.folds > 1:
        train_cmd += ["--folds", str(args.folds)]
        rf_cmd += ["--folds", str(args.folds)]
    walls["train_s"] = step("retrain", train_cmd, logs / f"{label}-train.log")
    walls["rf_s"] = step("baseline", rf_cmd, logs / f"{label}-rf.log")
    model, forest = model_scores(run), rf_scores(rf)
    ensembles, ensemble_cmds = {}, {}
    sources = {} if args.config else {f"top{args.ensemble_top}": [str(experiment), "--top", str(args.ensemble_top)]}
    if args.folds > 1 or args.config:
        sources[f"cv{args.folds}"] = [str(run)]
    for name, source in sources.items():
        for with_rf in (False, True):
            key = f"{name}-rf" if with_rf else name
            folder = work / "ensembles" / label / key
            cmd = [aam, "ensemble", *source, "--out", str(folder)]
            if with_rf:
                cmd += ["--with-baseline", str(rf)]
            walls[f"ensemble_{key}_s"] = step(f"ensemble {key}", cmd, logs / f"{label}-ensemble-{key}.log")
            ensembles[key] = json.loads((folder / "metrics.json").read_text())
            ensemble_cmds[key] = " ".join(cmd)
    return {
        "data": str(data),
        "experiment": None if args.config else str(experiment),
        "best_trial": best,
        "model": model,
        "rf": forest,
        "ensembles": ensembles,
        "winner_mae": winner(model.get("test_mae"), forest.get("test_mae"), higher_is_better=False),
        "winner_r2": winner(model.get("test_r2"), forest.get("test_r2"), higher_is_better=True),
        "wall": walls,
        "path_wall_s": sum(w for w in walls.values() if w),  # search, train, forest and ensembles
        "commands": {"search": " ".join(search_cmd) if search_cmd else None, "train": " ".join(train_cmd), "rf": " ".join(rf_cmd),
                     **ensemble_cmds},
        "load_average_end": load_average(),
    }


def print_results(results: dict, space_name: str, train_seeds: int) -> None:
    rows = []
    picks = [r["best_trial"] for r in results.values() if r["best_trial"]]
    metric = picks[0]["metric"] if picks else "val"
    for label, r in results.items():
        m, f = r["model"], r["rf"]
        # the retrain's val score at its kept (best) epoch; summary.json's val_mae is the last epoch's
        retrained_val = m.get("search_trial", {}).get("retrained", m.get("val_mae"))
        best = r["best_trial"] or {}
        rows.append([label, m.get("test_mae"), m.get("test_r2"), f.get("test_mae"), f.get("test_r2"),
                     r["winner_mae"], r["winner_r2"], best.get("score"),
                     best.get("test_at_best_epoch", {}).get("test_mae"),
                     f"{best['found_at']} of {best['trials']}" if best else None, retrained_val, f.get("val_mae")])
    print_table(["dataset", "model test MAE", "model test R²", "RF test MAE", "RF test R²", "MAE winner",
                 "R² winner", f"search best {metric}", "its test MAE", "started as", f"retrained {metric}",
                 "RF val MAE"], rows,
                title=f"test split: {'tuned model (' + space_name + ', best trial retrained' if picks else space_name + ' (no search'}"
                      f"{f', {train_seeds} seeds' if train_seeds > 1 else ''}) vs Random Forest")
    rows = []
    for label, r in results.items():
        rf_test = r["rf"].get("test_mae")
        for key, metrics in r.get("ensembles", {}).items():
            test = metrics.get("test_mae")
            rows.append([label, key, metrics.get("val_mae"), test, rf_test,
                         test / rf_test if test is not None and rf_test else None])
    if rows:
        print_table(["dataset", "ensemble", "val MAE (selected on)", "test MAE", "RF test MAE", "ratio to RF"], rows,
                    title="test split: `aam ensemble` (-rf: the forest a candidate)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", default=[], metavar="LABEL=DIR",
                        help="dataset folder from `aam convert`, with a label (repeatable)")
    recipe = parser.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--space", type=Path, help="search-space YAML for `aam tune`")
    recipe.add_argument("--config", type=Path, help="run config for `aam train --config` in place of a search "
                        "(configs/quality.yaml: the README's recipe)")
    parser.add_argument("--target-transform", help="`aam train --target-transform` over the config's (with "
                        "--config: zscore for a target with values <= -1)")
    parser.add_argument("--train-seeds", type=int, default=1, help="seeds of the best-of retrain, averaged "
                        "(`aam train --seeds`; default 1)")
    parser.add_argument("--retrain-epochs", type=int, help="train the best config this many epochs instead of "
                        "the search's (a search on 2 CPUs stops at a few epochs; the winner gets longer)")
    parser.add_argument("--folds", type=int, default=1, help="retrain the best trial with `--folds K` and fit the "
                        "forest with `--folds K` (default 1: one model, the forest on train)")
    parser.add_argument("--train-workers", type=int, default=1, help="`aam train --workers N` for the retrain (with "
                        "--folds: whole fold models on N workers in parallel; default 1)")
    parser.add_argument("--reuse-search", action="store_true", help="skip the search where KEEP already holds "
                        "its experiment (the later steps read it as they would a new one)")
    parser.add_argument("--ensemble-top", type=int, default=5, help="`aam ensemble EXP --top K` (default 5)")
    parser.add_argument("--rf-max-features", help="`aam baseline rf --max-features` (default: sklearn's, all ASVs)")
    parser.add_argument("--rf-n-estimators", type=int, default=500, help="trees per forest (default 500)")
    parser.add_argument("--rf-n-jobs", type=int, default=1, help="cores the forest grows trees on (default 1)")
    parser.add_argument("--rf-seed", type=int, default=0, help="seed of the forest (default 0)")
    parser.add_argument("--keep", help="folder for experiments, runs, forests and logs (default: a temp folder, "
                        "removed at the end)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/quality-<labels>.json)")
    args = parser.parse_args(argv)
    datasets = parse_data(args.data)
    recipe = (args.space or args.config).resolve()
    if not recipe.is_file():
        raise SystemExit(f"--{'space' if args.space else 'config'} {recipe}: no such file")
    from aam.errors import AamUserError

    try:  # every check of `aam tune` or `aam train --config`, before any run (data comes per dataset)
        if args.space:
            from aam.search import load_space

            args.space = recipe
            load_space(recipe)
        else:
            from aam.cli.train import load_run_file
            from aam.config import RunConfig

            args.config = recipe
            RunConfig.from_dict(load_run_file(recipe), where=str(recipe))
    except AamUserError as e:
        raise SystemExit(str(e)) from None

    info = machine_info()
    info["RAY_ADDRESS"] = os.environ.get("RAY_ADDRESS")
    print_machine(info)
    work = Path(args.keep or tempfile.mkdtemp(prefix="aam-bench-quality-")).resolve()
    held = (work / "experiments").is_dir() and any((work / "experiments").iterdir())
    if args.keep and held and not args.reuse_search:
        raise SystemExit(f"--keep {work}: already holds experiments; choose a new folder")
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'space' if args.space else 'config'} {recipe}; work folder {work}")
    started = time.perf_counter()
    results = {}
    try:
        for label, data in datasets.items():
            print(f"{label}: {data}", flush=True)
            results[label] = run_dataset(label, data, args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started

    print_results(results, recipe.name, args.train_seeds)
    print(f"\nwall: {wall:.0f} s in all")
    payload = {
        "benchmark": "quality",
        "space": str(args.space) if args.space else None,
        "config": str(args.config) if args.config else None,
        "space_text" if args.space else "config_text": recipe.read_text(),
        "target_transform": args.target_transform,
        "rf": {"max_features": args.rf_max_features, "n_estimators": args.rf_n_estimators, "seed": args.rf_seed},
        "train_seeds": args.train_seeds,
        "folds": args.folds,
        "train_workers": args.train_workers,
        "results": results,
        "wall_s": wall,
        "machine": info,
    }
    write_json(args.out, f"quality-{'-'.join(datasets)}.json", payload)
    return payload


if __name__ == "__main__":
    main()
