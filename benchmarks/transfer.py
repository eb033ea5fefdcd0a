"""No search on the table itself: a config carried over from the other datasets' searches.

The user's path spends most of its time in the search (`aam tune search_spaces/quality.yaml`:
1,378 s of mouse_age random's 2,159 s at 30 epochs). This asks whether a search on the user's
own table pays for itself, leave-one-dataset-out: for each dataset left out, its config is the
consensus of the *other* datasets' search picks (each float the median, each choice the majority,
restricted to the choices the left-out dataset's own space allows), trained with `--folds K`
exactly as the path trains its search's pick; the forest's folds and the ensemble with it are the
path's own. Nothing of the left-out dataset chooses its config, so its scores say how a config
carried to a new table does.

The picks and the path's scores come from `benchmarks/quality.py --folds K` result files; a file
given as --voter adds its pick to every consensus without being left out itself (a dataset whose
path has not been run at the current recipe).

    python benchmarks/transfer.py --path /tmp/run/path-e30-mouse_random.json --path /tmp/run/path-e30-emp_ph.json \\
        --path /tmp/run/path-e30-emp_temp.json --voter /tmp/run/path-p6-mouse_grouped.json \\
        --keep /tmp/run/transfer --out benchmarks/results/transfer.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_machine, print_table, write_json  # noqa: E402
from quality import model_scores, step  # noqa: E402


def load_paths(files: list[Path]) -> dict[str, dict]:
    """{label: that dataset's quality.py result, with the space text it searched}."""
    out: dict[str, dict] = {}
    for file in files:
        data = json.loads(file.read_text())
        if data.get("folds", 1) < 2:
            raise SystemExit(f"{file}: not a --folds run of benchmarks/quality.py; the comparison needs its CV model")
        for label, result in data["results"].items():
            if label in out:
                raise SystemExit(f"{file}: dataset '{label}' given twice")
            out[label] = {**result, "space_text": data["space_text"], "folds": data["folds"], "file": str(file)}
    return out


def consensus(picks: list[dict], space: dict) -> dict:
    """One config from several searches' picks, within `space` (a search space's `search` section):
    a float is the median of the picks that sampled it, a choice the most common pick among the
    values this space allows (ties: the space's first listed), a field no pick sampled is left out
    (the run config's default). Conditional fields follow their parent: a field whose `when` does
    not hold for the consensus so far is dropped."""
    from aam.search.space import when_holds

    config: dict = {}
    for name, spec in space.items():
        if not when_holds(spec.get("when") or {}, config):
            continue
        values = [p[name] for p in picks if name in p]
        if not values:
            continue
        if spec["type"] == "categorical":
            allowed = list(spec["choices"])
            votes = Counter(v for v in values if v in allowed)
            if not votes:
                config[name] = allowed[0]
                continue
            top = max(votes.values())
            config[name] = next(c for c in allowed if votes.get(c) == top)
        elif spec["type"] == "int":
            config[name] = round(statistics.median(values))
        else:
            config[name] = float(statistics.median(values))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", action="append", type=Path, default=[], required=True,
                        help="a `quality.py --folds K` result JSON: its datasets are left out in turn")
    parser.add_argument("--voter", action="append", type=Path, default=[],
                        help="a result JSON whose picks vote in every consensus; never left out")
    parser.add_argument("--only", action="append", default=[], help="leave out only these labels")
    parser.add_argument("--workers", type=int, default=2, help="`aam train --workers N` (default 2, as the path)")
    parser.add_argument("--keep", required=True, type=Path, help="folder for configs, runs, ensembles and logs")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/transfer.json)")
    args = parser.parse_args()

    from aam._yaml import load_strict

    paths, voters = load_paths(args.path), load_paths(args.voter)
    if set(paths) & set(voters):
        raise SystemExit(f"--path and --voter both give {sorted(set(paths) & set(voters))}")
    info = machine_info()
    print_machine(info)
    aam = str(Path(sys.executable).with_name("aam"))
    results, t0 = {}, time.perf_counter()
    for label, own in paths.items():
        if args.only and label not in args.only:
            continue
        others = {k: v for k, v in {**paths, **voters}.items() if k != label}
        space = load_strict(own["space_text"])
        config = {**space.get("fixed", {}), **consensus([o["best_trial"]["searched"] for o in others.values()],
                                                        space["search"])}
        work = args.keep / label
        (work / "logs").mkdir(parents=True, exist_ok=True)
        config_file = work / "config.json"
        config_file.write_text(json.dumps(config, indent=1))
        print(f"{label}: config from {sorted(others)}: {config}", flush=True)
        # quality.py's layout: KEEP/experiments/quality-LABEL beside KEEP/rf/LABEL
        run, rf = work / "run", Path(own["experiment"]).parents[1] / "rf" / label
        folds = str(own["folds"])
        train_cmd = [aam, "train", "--config", str(config_file), "--data", own["data"], "--out", str(run),
                     "--workers", str(args.workers), "--folds", folds]
        wall = {"train_s": step("train", train_cmd, work / "logs" / "train.log")}
        ensembles = {}
        for key, extra in (("cv", []), ("cv-rf", ["--with-baseline", str(rf)])):
            folder = work / "ensembles" / key
            cmd = [aam, "ensemble", str(run), "--out", str(folder), *extra]
            wall[f"ensemble_{key}_s"] = step(f"ensemble {key}", cmd, work / "logs" / f"ensemble-{key}.log")
            ensembles[key] = json.loads((folder / "metrics.json").read_text())
        results[label] = {"config": config, "voters": sorted(others), "model": model_scores(run),
                          "ensembles": ensembles, "wall": wall, "path": {
                              "file": own["file"], "model": own["model"], "rf": own["rf"],
                              "ensembles": own["ensembles"], "wall": own["wall"]},
                          "load_average_end": load_average()}
    rows = []
    for label, r in results.items():
        p, rf_test = r["path"], r["path"]["rf"]["test_mae"]
        search_s = sum(v for k, v in p["wall"].items() if k in ("tune_s", "train_s") and v)
        rows.append([label, p["model"]["val_mae"], r["model"]["val_mae"], p["rf"]["val_mae"],
                     p["model"]["test_mae"], r["model"]["test_mae"], p["ensembles"]["cv5-rf"]["test_mae"]
                     if "cv5-rf" in p["ensembles"] else None, r["ensembles"]["cv-rf"]["test_mae"], rf_test,
                     search_s, r["wall"]["train_s"]])
    print_table(["left out", "searched: out-of-fold MAE", "carried over: out-of-fold MAE", "forest: out-of-fold",
                 "searched: test", "carried over: test", "searched + forest: test", "carried over + forest: test",
                 "forest: test", "search + folds s", "folds s"], rows,
                title="the path's search vs a config carried over from the other datasets (CV models)")
    write_json(args.out, "transfer.json", {"benchmark": "transfer", "results": results, "wall_s": time.perf_counter() - t0,
                     "machine": info})


if __name__ == "__main__":
    main()
