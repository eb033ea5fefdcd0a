"""What Ray costs a training run: the same training direct in-process vs as a one-trial `aam tune`.

(a) direct     `aam.training.loop.fit` with a plain `Session`, in a fresh Python process (so the
               wall time includes interpreter start and imports, like the CLI); the process also
               reports the time inside load_static + fit alone.
               It uses one torch thread by default, as the Tune trial does: the trial reserves 1 CPU
               and Ray sets OMP_NUM_THREADS=1 in it (part (c) checks that), so one thread is the
               like-for-like base. `--direct-threads 0,1` adds a run at torch's default (2 threads
               here; on a shared 2-core machine that one can be several times slower).
(b) tune       `aam tune SPACE --data DIR --storage-path TMP --name X` as a subprocess: a search
               space with the same config under `fixed:`, one single-choice key under `search:`,
               num_samples 1, no scheduler, random searcher. Its wall time includes starting and
               stopping the embedded Ray; the trial's own `epoch_seconds` are read back from the
               experiment folder, which splits the overhead into fixed (outside the epochs) and
               in-trial (epochs running slower inside Ray).
(b')           the same with `aam tune --no-dashboard` (allowed because the trial runs in-process).
(d)            the same space with --trials identical trials run one after another: what each trial
               after the first adds outside its epochs, i.e. the per-trial cost of a real search,
               where Ray starts and stops once.
(c) fixed      in this process: `ray_runtime()` (the project's embedded Ray start, dashboard on)
               until ready, one trivial Tune function trial (reports once), and `ray.shutdown()`;
               then `ray.init(num_cpus=2, include_dashboard=False)` and its shutdown, to compare.

Overhead % = (tune wall - direct wall) / direct wall, against the direct run with as many torch
threads as the trial. Because epoch times swing with other load on a shared machine, the fixed
part is also given on its own: (tune wall - its epochs) - (direct wall - its epochs), the time
Ray adds outside the training epochs, as a share of a 60 s trial (target <= 10%).

    python benchmarks/ray_overhead.py --data /tmp/bench/mouse
    python benchmarks/ray_overhead.py --data /tmp/bench/mini --epochs 1 --direct-threads 0   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_machine, print_table, write_json  # noqa: E402

# a small model so that the direct run takes ~30-60 s on 2 cores on mouse_age
DEFAULT_SET = {"d_model": "32", "n_heads": "4", "asv_layers": "1", "sample_layers": "1", "token_limit": "128",
               "batch_size": "16"}
REPO = Path(__file__).resolve().parent.parent


def _config(args) -> dict:
    from throughput import parse_overrides

    values = {**DEFAULT_SET, **parse_overrides(args.set), "epochs": str(args.epochs)}
    from aam.config import RunConfig

    cfg = RunConfig().replace(**values)  # validated here, before any run
    return {k: getattr(cfg, k) for k in values}


def child_direct(config_json: str, data: str, threads: int) -> None:
    """Run in a fresh process: load_static + fit, print one JSON line of timings."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from aam.config import RunConfig
    from aam.training.loop import fit
    from aam.training.session import Session
    from aam.training.prepare import load_static

    cfg = RunConfig.from_dict({**json.loads(config_json), "data": data})
    t0 = time.perf_counter()
    static, train_rows = load_static(cfg)
    t1 = time.perf_counter()
    session = Session(train_rows, cfg.seed, verbose=False)
    final = fit(cfg, static, session)
    t2 = time.perf_counter()
    print("RESULT " + json.dumps({
        "load_static_s": t1 - t0, "fit_s": t2 - t1, "torch_threads": torch.get_num_threads(),
        "epoch_seconds": [r.get("epoch_seconds") for r in session.reports],
        "val_mae": final.get("val_mae"), "epochs": len(session.reports),
    }), flush=True)


def run_direct(config: dict, data: str, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-direct", json.dumps(config), "--data", data,
           "--child-threads", str(threads)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"direct run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return {"threads": threads, "wall_s": wall, **json.loads(line[len("RESULT "):])}


def space_yaml(config: dict, data: str, storage: str, name: str, trials: int = 1) -> str:
    import yaml

    fixed = {k: v for k, v in config.items() if k != "seed"}
    return yaml.safe_dump({
        "data": data,
        "storage_path": storage,
        "name": name,
        "objective": {"metric": "val_mae", "mode": "min"},
        "fixed": fixed,
        "search": {"seed": {"type": "categorical", "choices": [int(config.get("seed", 0))]}},
        "tune": {
            "num_samples": trials,
            "max_concurrent_trials": 1,  # one after another: what each further trial adds is visible
            "scheduler": {"type": "none"},
            "searcher": {"type": "random", "seed": 0},
            "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
            "keep_checkpoints": 1,
        },
    }, sort_keys=False)


def run_tune(config: dict, data: str, keep: str | None, dashboard: bool = True, trials: int = 1) -> dict:
    tmp = keep or tempfile.mkdtemp(prefix="aam-bench-tune-")
    try:
        return _run_tune(tmp, config, data, dashboard, trials)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _run_tune(tmp: str, config: dict, data: str, dashboard: bool, trials: int) -> dict:
    storage = str(Path(tmp).resolve() / "experiments")
    name = f"overhead-{int(time.time())}-{'dash' if dashboard else 'nodash'}-{trials}"
    space = Path(tmp) / "space.yaml"
    space.write_text(space_yaml(config, data, storage, name, trials))
    aam = Path(sys.executable).with_name("aam")
    cmd = [str(aam), "tune", str(space), "--data", data, "--storage-path", storage, "--name", name]
    if not dashboard:
        cmd.append("--no-dashboard")
    # read its output line by line, with arrival times, to split the wall time into phases
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
    proc.wait()
    wall = time.perf_counter() - t0
    text = "\n".join(line for _, line in lines)
    if proc.returncode != 0:
        raise SystemExit(f"aam tune failed ({proc.returncode}):\n{text[-4000:]}")

    def first(marker: str) -> float | None:
        return next((t for t, line in lines if marker in line), None)

    phases = {"ray_dashboard_line_s": first("Ray dashboard:"), "trial_started_s": first(" started ("),
              "trial_finished_s": first(" finished after "), "exit_s": wall}
    per_trial = []
    for result in sorted((Path(storage) / name).rglob("result.json")):
        per_trial.append([json.loads(x) for x in result.read_text().splitlines() if x.strip()])
    if len(per_trial) != trials or not all(per_trial):
        raise SystemExit(f"aam tune left {len(per_trial)} trial results under {storage}/{name}, expected {trials}")
    reports = [r for trial in per_trial for r in trial]
    epoch_seconds = [r.get("epoch_seconds") for r in reports]
    return {
        "wall_s": wall,
        "command": " ".join(cmd),
        "space": space.read_text(),
        "trials": trials,
        "epochs": len(reports),
        "epoch_seconds": epoch_seconds,
        "trial_time_total_s": sum(trial[-1].get("time_total_s") or 0.0 for trial in per_trial),
        "val_mae": reports[-1].get("val_mae"),
        "phases": phases,
        "output_tail": text[-1500:],
    }


def fixed_costs() -> dict:
    """Project-style Ray start, one no-op Tune trial, shutdown: all in this process."""
    from aam.distributed.cluster import ray_runtime

    timings = {}
    t0 = time.perf_counter()
    with ray_runtime(None, cpus_needed=1, quiet=True) as ray:
        import ray.tune

        timings["ray_init_s"] = time.perf_counter() - t0

        @ray.remote(num_cpus=1)
        def omp_threads():
            return os.environ.get("OMP_NUM_THREADS")

        timings["omp_num_threads_in_1cpu_task"] = ray.get(omp_threads.remote())

        def noop(config):
            ray.tune.report({"x": 1.0})

        with tempfile.TemporaryDirectory(prefix="aam-bench-noop-") as tmp:
            t1 = time.perf_counter()
            grid = ray.tune.Tuner(
                noop, run_config=ray.tune.RunConfig(name="noop", storage_path=tmp, verbose=0),
                tune_config=ray.tune.TuneConfig(num_samples=1),
            ).fit()
            timings["noop_trial_s"] = time.perf_counter() - t1
            timings["noop_trial_ok"] = not grid.errors
        t2 = time.perf_counter()
    timings["ray_shutdown_s"] = time.perf_counter() - t2
    # the same start without the dashboard, for comparison (the project keeps it on: it is how a user watches a search)
    import ray

    t3 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    timings["ray_init_no_dashboard_s"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    ray.shutdown()
    timings["ray_shutdown_no_dashboard_s"] = time.perf_counter() - t4
    return timings


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder from `aam convert`")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the run (default 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config changes on top of the small default "
                             + ", ".join(f"{k}={v}" for k, v in DEFAULT_SET.items()))
    parser.add_argument("--direct-threads", default="1",
                        help="torch threads of the direct runs, comma list (0: torch's default; default 1, "
                             "as in the 1-CPU trial)")
    parser.add_argument("--skip-fixed", action="store_true", help="skip (c)")
    parser.add_argument("--trials", type=int, default=4,
                        help="(d): a search of this many identical trials, one at a time, to get what each further "
                             "trial adds (default 4; 1 skips it)")
    parser.add_argument("--keep", help="folder for the search space and experiment (default: a temp folder)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/ray_overhead-<data>.json)")
    parser.add_argument("--child-direct", help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data = str(Path(args.data).resolve())
    if args.child_direct:
        child_direct(args.child_direct, data, args.child_threads)
        return {}

    info = machine_info()
    info["RAY_ADDRESS"] = os.environ.get("RAY_ADDRESS")
    print_machine(info)
    config = _config(args)
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))

    threads = [int(t) for t in args.direct_threads.split(",") if t.strip()]
    direct = []
    for t in threads:
        print(f"(a) direct fit, threads={t or 'default'} ...", flush=True)
        direct.append(run_direct(config, data, t))
        print(f"    {direct[-1]['wall_s']:.1f} s wall, fit {direct[-1]['fit_s']:.1f} s", flush=True)
    print("(b) aam tune, one trial ...", flush=True)
    tune = run_tune(config, data, args.keep)
    print(f"    {tune['wall_s']:.1f} s wall", flush=True)
    print("(b') aam tune --no-dashboard, one trial ...", flush=True)
    tune_nodash = run_tune(config, data, args.keep, dashboard=False)
    print(f"    {tune_nodash['wall_s']:.1f} s wall", flush=True)
    many = None
    if args.trials > 1:
        print(f"(d) aam tune, {args.trials} identical trials one after another ...", flush=True)
        many = run_tune(config, data, args.keep, trials=args.trials)
        print(f"    {many['wall_s']:.1f} s wall", flush=True)
    fixed = {} if args.skip_fixed else fixed_costs()

    def outside_epochs(run: dict) -> float:
        return run["wall_s"] - sum(run["epoch_seconds"])

    trial_threads = 1  # cpus_per_worker 1 in the space -> OMP_NUM_THREADS=1 in the trial
    base = next((d for d in direct if d["torch_threads"] == trial_threads), direct[0])
    rows = []
    for d in direct:
        rows.append([f"(a) direct, {d['torch_threads']} torch threads", d["wall_s"], d["load_static_s"] + d["fit_s"],
                     sum(d["epoch_seconds"]), outside_epochs(d),
                     100 * (d["wall_s"] - base["wall_s"]) / base["wall_s"]])
        if d is base:
            rows[-1][0] += " (base)"
    runs = [("(b) aam tune, 1 trial", tune), ("(b') aam tune --no-dashboard, 1 trial", tune_nodash)]
    if many:
        runs.append((f"(d) aam tune, {many['trials']} trials", many))
    for label, t in runs:
        rows.append([label, t["wall_s"], t["trial_time_total_s"], sum(t["epoch_seconds"]),
                     outside_epochs(t), 100 * (t["wall_s"] - base["wall_s"]) / base["wall_s"]])
    print_table(["run", "wall s", "in-process s", "sum of epochs s", "outside epochs s", "vs direct %"],
                rows, title=f"Ray overhead on {args.data} ({config['epochs']} epochs)")
    ph = tune["phases"]
    print("aam tune phases (s since launch): " + ", ".join(
        f"{k.removesuffix('_s')} {v:.1f}" for k, v in ph.items() if v is not None))
    if fixed:
        print_table(["fixed cost", "seconds"], [["ray_runtime() start (dashboard on)", fixed["ray_init_s"]],
                                                ["one no-op Tune trial", fixed["noop_trial_s"]],
                                                ["ray.shutdown()", fixed["ray_shutdown_s"]],
                                                ["ray.init(include_dashboard=False)", fixed["ray_init_no_dashboard_s"]],
                                                ["its ray.shutdown()", fixed["ray_shutdown_no_dashboard_s"]]])
        print(f"OMP_NUM_THREADS in a 1-CPU Ray task: {fixed['omp_num_threads_in_1cpu_task']}")
    fixed_overhead = outside_epochs(tune) - outside_epochs(base)
    overhead_pct = 100 * (tune["wall_s"] - base["wall_s"]) / base["wall_s"]
    fixed_nodash = outside_epochs(tune_nodash) - outside_epochs(base)
    print(f"\naam tune vs direct: {overhead_pct:+.1f}% wall; fixed part (outside the epochs, beyond the direct "
          f"run's own) {fixed_overhead:.1f} s = {100 * fixed_overhead / 60:.1f}% of a 60 s trial (target <= 10%)")
    print(f"with --no-dashboard: fixed part {fixed_nodash:.1f} s = {100 * fixed_nodash / 60:.1f}% of a 60 s trial")
    per_trial = None
    if many:
        # what each further trial of a search costs outside its epochs (Ray's start and stop are paid once)
        per_trial = (outside_epochs(many) - outside_epochs(tune)) / (many["trials"] - 1)
        print(f"each further trial of a search: {per_trial:.1f} s outside its epochs = {100 * per_trial / 60:.1f}% "
              f"of a 60 s trial ({many['trials']} trials vs 1)")
    payload = {
        "benchmark": "ray_overhead",
        "data": data,
        "config": config,
        "direct": direct,
        "direct_base_threads": base["torch_threads"],
        "tune": tune,
        "tune_no_dashboard": tune_nodash,
        "tune_many": many,
        "per_further_trial_s": per_trial,
        "per_further_trial_pct_of_60s": None if per_trial is None else 100 * per_trial / 60,
        "fixed_overhead_no_dashboard_s": fixed_nodash,
        "fixed_overhead_no_dashboard_pct_of_60s": 100 * fixed_nodash / 60,
        "fixed": fixed,
        "overhead_pct_vs_direct": overhead_pct,
        "fixed_overhead_s": fixed_overhead,
        "fixed_overhead_pct_of_60s": 100 * fixed_overhead / 60,
        "machine": info,
    }
    write_json(args.out, f"ray_overhead-{Path(args.data).name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
