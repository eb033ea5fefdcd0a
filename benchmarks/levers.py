"""Ablate the quality levers: each on vs off with everything else fixed, over seeds, beside the forest.

Every run is the training loop itself (`aam.training.fit`, in-process, one torch thread), the
same code `aam train` runs on a Ray worker; the forest is `aam baseline rf` on the same split.
For each dataset and variant it trains one model per seed, keeps the epoch that is best on
val, and scores the test split once. The table gives mean ± sd over seeds of test MAE and R²
(and val MAE), beside the forest's test MAE on the same split.

    python benchmarks/levers.py --data mouse_random=/tmp/q/mouse_random \\
        --base d_model=32 --base token_limit=128 --base epochs=20 \\
        --variant base --variant ema:ema_decay=0.99 --variant identity:asv_identity=true \\
        --seeds 0,1,2 --jobs 2 --rf /tmp/q/rf --keep /tmp/q/runs --out benchmarks/results/levers-mouse.json

A variant is `NAME` (the base alone) or `NAME:KEY=VALUE[,KEY=VALUE...]` (run-config keys, as in
a run YAML; lists as `head_hidden=32;16`). `--rf DIR` fits the forest (500 trees, seed 0) into
DIR/LABEL once per dataset and reuses it when it is already there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_machine, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def parse_pairs(text: str) -> dict:
    """`a=1,b=x,c=1;2` -> {"a": "1", "b": "x", "c": ["1", "2"]} (RunConfig coerces the strings)."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"'{item}': expected KEY=VALUE")
        out[key.strip()] = value.split(";") if ";" in value else value
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, pairs = text.partition(":")
    return name, parse_pairs(pairs)


def train_one(job: dict) -> dict:
    """One seed of one variant, in a fresh process (one torch thread: two jobs share two cores)."""
    import torch

    torch.set_num_threads(1)
    from aam.config import RunConfig
    from aam.training.loop import fit
    from aam.training.session import Session
    from aam.training.prepare import load_static

    cfg = RunConfig.from_dict(job["config"], where=f"{job['label']}/{job['variant']}")
    started = time.perf_counter()
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed, verbose=False)
    final = fit(cfg, static, session)
    wall = time.perf_counter() - started
    best = max(session.reports, key=lambda m: m["epoch"])
    if job.get("keep"):
        dest = Path(job["keep"])
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(session.last_checkpoint, dest)
    return {
        "label": job["label"], "variant": job["variant"], "seed": cfg.seed, "wall_s": round(wall, 1),
        "best_epoch": best["best_epoch"], "val_mae": best["best_val_score"],
        "test_mae": final.get("test_mae"), "test_r2": final.get("test_r2"), "run": job.get("keep"),
        # the val curve, to read where early stopping (patience) would have stopped this run
        "val_curve": [m.get("val_mae") for m in session.reports], "epochs_run": len(session.reports),
    }


def forest(label: str, data: Path, rf_root: Path | None) -> dict | None:
    if rf_root is None:
        return None
    out = rf_root / label
    if not (out / "metrics.json").is_file():
        aam = str(Path(sys.executable).with_name("aam"))
        cmd = [aam, "baseline", "rf", "--data", str(data), "--out", str(out), "--n-estimators", "500",
               "--n-jobs", "1", "--seed", "0"]
        print("  forest:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"test_mae": metrics.get("test_mae"), "test_r2": metrics.get("test_r2"), "val_mae": metrics.get("val_mae"),
            "folder": str(out)}


def ensembles(label: str, variant: str, keep: Path, forest_folder: str | None) -> list[dict]:
    """`aam ensemble` over the seeds of one variant: AAM alone, and with the forest as a candidate."""
    aam = str(Path(sys.executable).with_name("aam"))
    seeds = sorted(str(p) for p in (keep / label / variant).glob("seed*"))
    out = []
    for with_forest in ([False, True] if forest_folder else [False]):
        dest = keep / label / variant / ("ensemble-rf" if with_forest else "ensemble")
        if dest.exists():
            shutil.rmtree(dest)
        cmd = [aam, "ensemble", *seeds, "--out", str(dest)] + (["--with-baseline", forest_folder] if with_forest else [])
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        metrics = json.loads((dest / "metrics.json").read_text())
        info = json.loads((dest / "ensemble.json").read_text())
        out.append({"label": label, "variant": variant, "with_forest_candidate": with_forest,
                    "includes_forest": info["includes_forest"], "val_mae": metrics["val_mae"],
                    "test_mae": metrics["test_mae"], "test_r2": metrics["test_r2"],
                    "weights": {m["name"]: round(m["weight"], 3) for m in info["members"]}, "command": " ".join(cmd)})
        print(f"  {label} {variant} ensemble{' (forest a candidate)' if with_forest else ''}: val {metrics['val_mae']:.4g} "
              f"test {metrics['test_mae']:.4g} weights {out[-1]['weights']}", flush=True)
    return out


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3g} ± {sd:.2g}"


def summarise(runs: list[dict], forests: dict) -> list[list[str]]:
    table = []
    for (label, variant) in dict.fromkeys((r["label"], r["variant"]) for r in runs):
        mine = [r for r in runs if r["label"] == label and r["variant"] == variant]
        rf = forests.get(label) or {}
        table.append([label, variant, str(len(mine)), mean_sd([r["val_mae"] for r in mine]),
                      mean_sd([r["test_mae"] for r in mine]), mean_sd([r["test_r2"] for r in mine]),
                      f"{rf['test_mae']:.3g}" if rf.get("test_mae") is not None else "-",
                      f"{statistics.mean(r['wall_s'] for r in mine):.0f}"])
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="LABEL=DATASET_DIR (repeatable)")
    parser.add_argument("--base", action="append", default=[], help="KEY=VALUE of the fixed recipe (repeatable)")
    parser.add_argument("--variant", action="append", required=True, help="NAME or NAME:KEY=VALUE,... (repeatable)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default 2)")
    parser.add_argument("--rf", type=Path, help="folder for the forests (fitted once per dataset)")
    parser.add_argument("--keep", type=Path, help="copy every run folder to KEEP/LABEL/VARIANT/seedN")
    parser.add_argument("--ensemble", action="append", default=[], help="VARIANT whose seeds `aam ensemble` "
                        "combines, alone and with the forest as a candidate (needs --keep; repeatable)")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args(argv)

    datasets = {}
    for item in args.data:
        label, _, folder = item.partition("=")
        datasets[label] = Path(folder).resolve()
    base = parse_pairs(",".join(args.base))
    variants = [parse_variant(v) for v in args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    info = machine_info()
    print_machine(info)

    forests = {label: forest(label, data, args.rf) for label, data in datasets.items()}
    jobs = []
    for label, data in datasets.items():
        for name, changes in variants:
            for seed in seeds:
                keep = str(args.keep / label / name / f"seed{seed}") if args.keep else None
                jobs.append({"label": label, "variant": name, "keep": keep,
                             "config": {**base, **changes, "data": str(data), "seed": seed}})
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(train_one, jobs):
            runs.append(result)
            print(f"  {result['label']} {result['variant']} seed {result['seed']}: val {result['val_mae']:.4g} "
                  f"test {result['test_mae']:.4g} (epoch {result['best_epoch']}, {result['wall_s']:.0f}s)", flush=True)
    combined = []
    if args.ensemble and not args.keep:
        raise SystemExit("--ensemble needs --keep (the ensembles are built from the kept run folders)")
    for label in datasets:
        for name in args.ensemble:
            combined += ensembles(label, name, args.keep, (forests.get(label) or {}).get("folder"))
    header = ["dataset", "variant", "seeds", "val MAE", "test MAE", "test R²", "forest test MAE", "wall s/run"]
    print_table(header, summarise(runs, forests))
    write_json(args.out, "levers.json", {"machine": info, "base": base, "variants": dict(variants),
                                         "seeds": seeds, "forests": forests, "runs": runs, "ensembles": combined})


if __name__ == "__main__":
    main()
