"""TPE + ASHA vs random search without early stopping: the compute each needs to reach the score
that the random search ends with.

For every seed S (--seeds of them, S = --first-seed, +1, ...) two searches run as `aam tune`
subprocesses (each starts and stops its own embedded Ray), on the same dataset with the same
`fixed:` and `search:` sections (small model, search over lr, dropout, count_embed, d_model;
`seed: S` in `fixed:`); their `tune:` sections differ only in

    tpe_asha   searcher {type: optuna, seed: S, n_startup_trials: --startup, multivariate: true}
               scheduler {type: asha, grace_period: --grace, reduction_factor: --reduction-factor}
    random     searcher {type: random, seed: S}, scheduler {type: none} (every trial runs every epoch)

The compute unit is the trial-epoch (one epoch of one trial). Each experiment folder is read with
`aam.search.read_experiment` (per-epoch val scores from each trial's
result.json) and its trials are put in the order they started (the `start_time` Tune keeps in
experiment_state-*.json). The compute to reach a score is the number of trial-epochs, trial
after trial in that order, up to and including the first epoch that scores at least as well.
The bar is the random search's best val score (any trial, any epoch), so the random search
needs at most all of its trials x epochs; the ratio per seed is

    ratio = compute(tpe_asha reaches bar) / compute(random reaches bar)      (target: mean <= 50%)

A seed where TPE + ASHA never reaches the bar has no ratio (counted as not reached; the mean is
then over the seeds that reached it, and the bound from its whole compute is shown). Also
given: each search's total compute, the ratio against the random search's total (what a random
search without early stopping costs in full) and the wall seconds.

Trials run 2 at a time (--concurrent), 1 CPU each, so on a 2-core machine the trial-start order
is close to, but not exactly, the order in which the compute was spent.

    python benchmarks/search_efficiency.py --data /tmp/e2e/mouse                     # the full measurement
    python benchmarks/search_efficiency.py --data /tmp/bench/mini --trials 4 --epochs 2 --seeds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_machine, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.5
# the model every trial trains: small, ~10-20 s an epoch on mouse_age on one core
FIXED = {"n_heads": 4, "asv_layers": 1, "sample_layers": 1, "token_limit": 128, "batch_size": 16}
SEARCH = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "count_embed": {"type": "categorical", "choices": ["off", "add", "film"]},
    "d_model": {"type": "categorical", "choices": [16, 32]},
}
SEARCHES = ("tpe_asha", "random")


# --- the calculation (pure: tests/benchmarks/test_search_efficiency.py) --------------------------
def better_or_equal(score: float, bar: float, mode: str) -> bool:
    if score is None or math.isnan(score):
        return False
    return score <= bar if mode == "min" else score >= bar


def best_score(histories: list[list[float]], mode: str) -> float:
    """The best score of any epoch of any trial (NaN if none reported one)."""
    scores = [s for h in histories for s in h if s is not None and not math.isnan(s)]
    if not scores:
        return math.nan
    return min(scores) if mode == "min" else max(scores)


def compute_to_reach(histories: list[list[float]], bar: float, mode: str) -> int | None:
    """Trial-epochs spent, trial after trial in the given (start) order, up to and including the
    first epoch that scores `bar` or better; None when no epoch does. An epoch without a score
    (NaN) costs its epoch but reaches nothing."""
    spent = 0
    for history in histories:
        for score in history:
            spent += 1
            if better_or_equal(score, bar, mode):
                return spent
    return None


def compare(random_histories: list[list[float]], tpe_histories: list[list[float]], mode: str) -> dict:
    """One seed: the bar (random's best) and what each search spent to reach it."""
    bar = best_score(random_histories, mode)
    out = {
        "bar": bar,
        "random_to_bar": compute_to_reach(random_histories, bar, mode),
        "tpe_asha_to_bar": compute_to_reach(tpe_histories, bar, mode),
        "random_total": sum(len(h) for h in random_histories),
        "tpe_asha_total": sum(len(h) for h in tpe_histories),
        "tpe_asha_best": best_score(tpe_histories, mode),
    }
    reached = out["tpe_asha_to_bar"] is not None and out["random_to_bar"]
    out["ratio"] = out["tpe_asha_to_bar"] / out["random_to_bar"] if reached else None
    # never reached: at least its whole compute would have been needed
    out["ratio_lower_bound"] = (out["ratio"] if reached else
                                out["tpe_asha_total"] / out["random_to_bar"] if out["random_to_bar"] else None)
    out["ratio_vs_random_total"] = (out["tpe_asha_to_bar"] / out["random_total"]
                                    if out["tpe_asha_to_bar"] is not None and out["random_total"] else None)
    return out


def summarize(per_seed: list[dict]) -> dict:
    ratios = [s["ratio"] for s in per_seed if s["ratio"] is not None]
    vs_total = [s["ratio_vs_random_total"] for s in per_seed if s["ratio_vs_random_total"] is not None]
    return {
        "seeds": len(per_seed),
        "reached": len(ratios),
        "mean_ratio": statistics.fmean(ratios) if ratios else None,
        "mean_ratio_all_seeds": statistics.fmean(ratios) if per_seed and len(ratios) == len(per_seed) else None,
        "mean_ratio_lower_bound": (statistics.fmean(s["ratio_lower_bound"] for s in per_seed)
                                   if per_seed and all(s["ratio_lower_bound"] is not None for s in per_seed) else None),
        "mean_ratio_vs_random_total": statistics.fmean(vs_total) if vs_total else None,
    }


# --- running and reading the searches ------------------------------------------------------------
def space_dict(kind: str, seed: int, args, storage: str, name: str) -> dict:
    if kind == "tpe_asha":
        searcher = {"type": "optuna", "seed": seed, "n_startup_trials": args.startup, "multivariate": True}
        scheduler = {"type": "asha", "grace_period": args.grace, "reduction_factor": args.reduction_factor,
                     "max_t": None}
    else:
        searcher = {"type": "random", "seed": seed}
        scheduler = {"type": "none"}
    return {
        "data": args.data,
        "storage_path": storage,
        "name": name,
        "objective": {"metric": args.metric, "mode": args.mode},
        "fixed": {**FIXED, **args.fixed, "epochs": args.epochs, "seed": seed},
        "search": SEARCH,
        "tune": {
            "num_samples": args.trials,
            "max_concurrent_trials": args.concurrent,
            "time_budget_s": None,
            "scheduler": scheduler,
            "searcher": searcher,
            "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
            "keep_checkpoints": 1,
        },
    }


def run_search(space: Path, data: str, storage: str, name: str, log: Path) -> float:
    aam = Path(sys.executable).with_name("aam")
    cmd = [str(aam), "tune", str(space), "--data", data, "--storage-path", storage, "--name", name]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"aam tune failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    return wall


def start_times(experiment: Path) -> dict[str, float]:
    """trial_id -> the start time Tune recorded (experiment_state-*.json), where it has one."""
    files = sorted(Path(experiment).glob("experiment_state-*.json"))
    if not files:
        return {}
    out = {}
    for trial_json, runtime_json in json.loads(files[-1].read_text()).get("trial_data", []):
        start = json.loads(runtime_json).get("start_time")
        if start is not None:
            out[json.loads(trial_json)["trial_id"]] = float(start)
    return out


def _first_report_start(trial) -> float:
    """Fallback start time: the first report's timestamp less its epoch's duration."""
    if not trial.history:
        return math.inf
    first = trial.history[0]
    return float(first.get("timestamp", math.inf)) - float(first.get("time_this_iter_s", 0.0))


def read_search(experiment: Path, metric: str) -> dict:
    """The experiment's trials in start order: their per-epoch scores, status and epoch seconds."""
    from aam.search import read_experiment

    exp = read_experiment(experiment)
    starts = start_times(experiment)
    trials = sorted(exp.trials, key=lambda t: (starts.get(t.trial_id, _first_report_start(t)), t.trial_id))
    return {
        "metric": exp.metric,
        "mode": exp.mode,
        "trials": [{"trial": t.trial_id, "status": t.status, "config": {k: t.config.get(k) for k in SEARCH},
                    "scores": [float(h.get(metric, math.nan)) for h in t.history],
                    "epoch_seconds": [h.get("epoch_seconds") for h in t.history]} for t in trials],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder from `aam convert`")
    parser.add_argument("--trials", type=int, default=12, help="trials per search (default 12)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial, ASHA's max_t (default 6)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds, each a pair of searches (default 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--concurrent", type=int, default=2, help="max_concurrent_trials (default 2)")
    parser.add_argument("--startup", type=int, default=4, help="TPE's n_startup_trials (default 4)")
    parser.add_argument("--grace", type=int, default=2, help="ASHA grace_period in epochs (default 2)")
    parser.add_argument("--reduction-factor", type=int, default=2, help="ASHA reduction_factor (default 2)")
    parser.add_argument("--metric", default="val_mae", help="objective metric (default val_mae)")
    parser.add_argument("--mode", default="min", choices=("min", "max"), help="objective mode (default min)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a fixed: value of both searches (run-config key), e.g. --set token_limit=64; "
                             "defaults " + ", ".join(f"{k}={v}" for k, v in FIXED.items()))
    parser.add_argument("--keep", help="folder for the spaces, logs and experiments (default: a temp folder, "
                        "removed at the end)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/search_efficiency-<data>.json)")
    args = parser.parse_args(argv)
    if min(args.trials, args.epochs, args.seeds, args.concurrent) < 1:
        raise SystemExit("--trials, --epochs, --seeds and --concurrent must be at least 1")
    from throughput import parse_overrides

    args.fixed = parse_overrides(args.set)
    args.data = str(Path(args.data).resolve())
    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data}: no such dataset folder")

    import yaml

    info = machine_info()
    info["RAY_ADDRESS"] = os.environ.get("RAY_ADDRESS")
    print_machine(info)
    work = Path(args.keep or tempfile.mkdtemp(prefix="aam-bench-search-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    storage = str(work / "experiments")
    print(f"{args.seeds} seed(s) x 2 searches of {args.trials} trials x {args.epochs} epochs on {args.data}; "
          f"work folder {work}")
    started = time.perf_counter()
    per_seed, searches, loads = [], {}, {"start": load_average()}
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            read = {}
            for kind in SEARCHES:
                name = f"{kind}-seed{seed}"
                space = work / f"{name}.yaml"
                space.write_text(yaml.safe_dump(space_dict(kind, seed, args, storage, name), sort_keys=False))
                print(f"seed {seed}: {kind} ...", flush=True)
                wall = run_search(space, args.data, storage, name, work / f"{name}.log")
                read[kind] = read_search(Path(storage) / name, args.metric)
                read[kind]["wall_s"] = wall
                read[kind]["space"] = space.read_text()
                spent = sum(len(t["scores"]) for t in read[kind]["trials"])
                print(f"    {wall:.0f} s wall, {len(read[kind]['trials'])} trials, {spent} trial-epochs, best "
                      f"{best_score([t['scores'] for t in read[kind]['trials']], args.mode):.4g}", flush=True)
                loads[name] = load_average()
            result = compare([t["scores"] for t in read["random"]["trials"]],
                             [t["scores"] for t in read["tpe_asha"]["trials"]], args.mode)
            result.update(seed=seed, random_wall_s=read["random"]["wall_s"], tpe_asha_wall_s=read["tpe_asha"]["wall_s"])
            per_seed.append(result)
            searches[str(seed)] = read
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started
    summary = summarize(per_seed)

    def fmt_ratio(value) -> str:
        return "not reached" if value is None else f"{100 * value:.0f}%"

    rows = [[s["seed"], s["bar"], s["random_to_bar"], s["random_total"],
             "-" if s["tpe_asha_to_bar"] is None else s["tpe_asha_to_bar"], s["tpe_asha_total"], s["tpe_asha_best"],
             fmt_ratio(s["ratio"]), fmt_ratio(s["ratio_vs_random_total"]), s["random_wall_s"], s["tpe_asha_wall_s"]]
            for s in per_seed]
    print_table(["seed", f"bar (random best {args.metric})", "random: to bar", "random: total",
                 "tpe_asha: to bar", "tpe_asha: total", "tpe_asha best", "ratio", "vs random total",
                 "random wall s", "tpe_asha wall s"], rows,
                title=f"compute in trial-epochs to reach random search's best ({args.trials} trials x {args.epochs} "
                      f"epochs, {args.concurrent} at a time)")
    if summary["mean_ratio"] is not None:
        all_seeds = summary["mean_ratio_all_seeds"]
        verdict = "met" if all_seeds is not None and all_seeds <= TARGET_RATIO else "MISSED"
        print(f"\nmean ratio over the {summary['reached']} of {summary['seeds']} seed(s) where TPE + ASHA reached the "
              f"bar: {100 * summary['mean_ratio']:.0f}% (target <= {100 * TARGET_RATIO:.0f}% over all seeds: "
              f"{verdict})")
    else:
        print(f"\nTPE + ASHA reached random search's best in none of the {summary['seeds']} seed(s)")
    if summary["mean_ratio_lower_bound"] is not None and summary["reached"] < summary["seeds"]:
        print(f"counting a seed that never reached it at its whole compute: mean ratio >= "
              f"{100 * summary['mean_ratio_lower_bound']:.0f}%")
    print(f"wall: {wall:.0f} s in all; load average {loads}")
    payload = {
        "benchmark": "search_efficiency",
        "data": args.data,
        "trials": args.trials,
        "epochs": args.epochs,
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
        "concurrent": args.concurrent,
        "metric": args.metric,
        "mode": args.mode,
        "fixed": {**FIXED, **args.fixed},
        "search": SEARCH,
        "tpe": {"n_startup_trials": args.startup},
        "asha": {"grace_period": args.grace, "reduction_factor": args.reduction_factor},
        "per_seed": per_seed,
        "summary": summary,
        "target_ratio": TARGET_RATIO,
        "searches": searches,
        "wall_s": wall,
        "load_averages": loads,
        "machine": info,
    }
    write_json(args.out, f"search_efficiency-{Path(args.data).name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
