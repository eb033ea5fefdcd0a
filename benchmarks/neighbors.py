"""A nearest-neighbour bar: `aam baseline knn` beside the forest, and in the ensemble with AAM.

Test samples of a random split often have near twins in training (the same mouse a week later,
another sample of the same site). A k-nearest-neighbour regressor on which ASVs two samples
share (Jaccard distance; k chosen by cross-validation on train) finds them directly. This
measures, per dataset: the forest (`aam baseline rf --folds K`, an existing folder), the
neighbours (`aam baseline knn --folds K`, fitted here) and, where an AAM cross-validated run is
given, `aam ensemble RUN --with-baseline` with each baseline and with both, weighted on
out-of-fold predictions of every non-test sample; test is scored once.

    python benchmarks/neighbors.py --case mouse_random /tmp/q/mouse_random /tmp/run/transfer/mouse_random/run \\
        /tmp/run/e30-mouse_random/rf/mouse_random --keep /tmp/run/knn --out benchmarks/results/neighbors.json
    python benchmarks/neighbors.py --case emp_lat /tmp/q/emp_lat - /tmp/run/rf-emp_lat ...   # no AAM run: bars only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_machine, print_table, write_json  # noqa: E402
from quality import model_scores, step  # noqa: E402


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def run_case(label: str, data: Path, run: Path | None, forest: Path, work: Path, folds: int) -> dict:
    aam = str(Path(sys.executable).with_name("aam"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    knn = work / "knn" / label
    walls, commands = {}, {}
    if not (knn / "metrics.json").is_file():
        cmd = [aam, "baseline", "knn", "--data", str(data), "--folds", str(folds), "--out", str(knn)]
        walls["knn_s"], commands["knn"] = step("knn", cmd, logs / f"{label}-knn.log"), " ".join(cmd)
    out = {"data": str(data), "run": str(run) if run else None, "forest": str(forest), "knn": str(knn),
           "rf": _metrics(forest), "knn_metrics": _metrics(knn),
           "knn_chosen": json.loads((knn / "baseline.json").read_text())["chosen"], "ensembles": {}}
    if run is not None:
        out["aam"] = model_scores(run)
        for key, baselines in {"aam-rf": [forest], "aam-knn": [knn], "aam-rf-knn": [forest, knn]}.items():
            folder = work / "ensembles" / label / key
            if not (folder / "metrics.json").is_file():
                cmd = [aam, "ensemble", str(run), "--out", str(folder)]
                for b in baselines:
                    cmd += ["--with-baseline", str(b)]
                walls[f"ensemble_{key}_s"] = step(f"ensemble {key}", cmd, logs / f"{label}-{key}.log")
                commands[key] = " ".join(cmd)
            info = json.loads((folder / "ensemble.json").read_text())
            out["ensembles"][key] = {**_metrics(folder), "weights": {m["name"]: m["weight"] for m in info["members"]
                                                                     if m["kind"] != "model"}}
    out.update({"wall": walls, "commands": commands})
    return out


def print_results(results: dict) -> None:
    rows = []
    for label, r in results.items():
        rf, knn = r["rf"]["test_mae"], r["knn_metrics"]["test_mae"]
        chosen = "; ".join(f"k={p['n_neighbors']} {p['weights']}" for p in r["knn_chosen"].values())
        ens = r["ensembles"]
        rows.append([label, rf, knn, knn / rf, chosen, r.get("aam", {}).get("test_mae"),
                     *(ens.get(k, {}).get("test_mae") for k in ("aam-rf", "aam-knn", "aam-rf-knn"))])
    print_table(["dataset", "forest", "knn", "knn / forest", "knn chose", "AAM cv", "AAM+rf", "AAM+knn", "AAM+rf+knn"],
                rows, title="test MAE (ensembles weighted out of fold)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs=4, action="append", required=True, metavar=("LABEL", "DATA", "RUN", "FOREST"),
                        help="a dataset folder, its AAM `--folds K` run folder (- for none) and its `aam baseline rf "
                        "--folds K` folder (repeatable)")
    parser.add_argument("--folds", type=int, default=5, help="folds of the knn baseline (the runs' own; default 5)")
    parser.add_argument("--keep", required=True, help="folder for the knn baselines, ensembles and logs (kept: "
                        "a second call reuses what is there)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/neighbors-<labels>.json)")
    args = parser.parse_args(argv)
    cases = {}
    for label, data, run, forest in args.case:
        paths = {"DATA": Path(data), "FOREST": Path(forest), **({"RUN": Path(run)} if run != "-" else {})}
        for what, path in paths.items():
            if not path.is_dir():
                raise SystemExit(f"--case {label}: {what} {path} is no folder")
        cases[label] = (paths["DATA"].resolve(), paths.get("RUN"), paths["FOREST"].resolve())
    info = machine_info()
    print_machine(info)
    work = Path(args.keep).resolve()
    started = time.perf_counter()
    results = {label: run_case(label, *case, work, args.folds) for label, case in cases.items()}
    print_results(results)
    payload = {"benchmark": "neighbors", "folds": args.folds, "results": results,
               "wall_s": time.perf_counter() - started, "machine": info, "load_average_end": load_average()}
    write_json(args.out, f"neighbors-{'-'.join(cases)}.json", payload)
    return payload


if __name__ == "__main__":
    main()
