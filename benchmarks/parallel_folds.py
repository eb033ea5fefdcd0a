"""The `--folds K` step of the user's path on Ray Train worker layouts: folds one after another in
one worker, against whole fold models spread over W workers (aam.training.folds).

Each layout runs `aam train --best-of EXPERIMENT --folds K --workers W --cpus-per-worker C` as a
subprocess (Ray start and stop included) and reports its wall time, the CV model's out-of-fold
(val) and test MAE, and the largest difference of its out-of-fold predictions from the first
layout's. Layouts with the same CPUs per worker train the same K models (each fold has its own
RNG stream), so that difference is 0 there: only where they run changes. A layout with more CPUs
per worker sums floats in another order, so its models differ by rounding.

    python benchmarks/parallel_folds.py --experiment /tmp/run/m20-mouse_random/experiments/quality-mouse_random \
        --folds 5 --layouts 1x1,1x2,2x1 --work /tmp/pfolds
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, print_machine, print_table, write_json  # noqa: E402


def run_layout(experiment: Path, folds: int, workers: int, cpus: float, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own work folder
    cmd = [str(Path(sys.executable).with_name("aam")), "train", "--best-of", str(experiment), "--folds", str(folds),
           "--workers", str(workers), "--cpus-per-worker", str(cpus), "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    saved = json.loads((out / "metrics.json").read_text())
    history = saved["history"]
    return {"workers": workers, "cpus_per_worker": cpus, "wall_s": round(wall, 1), "epochs": len(history),
            "val_mae": history[-1]["val_mae"], "test_mae": history[-1].get("test_mae"),
            "fold_workers": saved.get("fold_workers")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=Path, required=True, help="a search (STORAGE/NAME) to retrain the best of")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--layouts", default="1x1,1x2,2x1", help="WORKERSxCPUS_PER_WORKER, comma-separated")
    parser.add_argument("--work", type=Path, required=True, help="a folder for the runs (replaced)")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS}/parallel_folds.json)")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    rows, first = [], None
    for layout in args.layouts.split(","):
        workers, cpus = layout.split("x")
        out = args.work / layout
        row = run_layout(args.experiment, args.folds, int(workers), float(cpus), out)
        oof = pd.read_csv(out / "val_predictions.tsv", sep="\t").sort_values("sample_id", ignore_index=True)
        predicted = [c for c in oof.columns if c.endswith("_predicted")]
        if first is None:
            first, base = oof, row["wall_s"]
        row["speedup"] = round(base / row["wall_s"], 2)
        row["max_oof_diff_vs_first"] = float((oof[predicted] - first[predicted]).abs().to_numpy().max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = ["workers", "cpus_per_worker", "wall_s", "speedup", "epochs", "val_mae", "test_mae",
               "max_oof_diff_vs_first"]
    print_table(columns, [[row[c] for c in columns] for row in rows], f"--folds {args.folds} by worker layout")
    write_json(args.out, "parallel_folds.json", {"benchmark": "parallel_folds", "machine": info,
                                                 "experiment": str(args.experiment), "folds": args.folds,
                                                 "results": rows})


if __name__ == "__main__":
    main()
