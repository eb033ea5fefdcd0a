"""Decide recipe levers leave-one-dataset-out, from the results of `benchmarks/levers.py`.

A lever that wins only where it was chosen is fitting, not generalising. For every dataset left
out, each variant is scored on the *other* datasets by its mean ratio to the forest on val (the
mean over seeds of val MAE / the forest's val MAE, averaged over datasets), the best variant is
chosen, and then scored on the left-out dataset's test split, beside the base's test score there.
Test splits never take part in a decision. The last row is the decision on every dataset, which
is what the recipe (search_spaces/quality.yaml) fixes.

    python benchmarks/lodo.py /tmp/q/results/ablate2.json [more levers JSONs ...] --base base
    python benchmarks/lodo.py a.json b.json --only base,bs32   # one lever against the base
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402


def ratios(runs: list[dict], forests: dict) -> dict[tuple[str, str], dict[str, float]]:
    """(dataset, variant) -> mean val and test MAE over seeds, each divided by the forest's."""
    out: dict = {}
    for key in dict.fromkeys((r["label"], r["variant"]) for r in runs):
        mine = [r for r in runs if (r["label"], r["variant"]) == key and r["test_mae"] is not None]
        forest = forests[key[0]]
        out[key] = {"val": statistics.mean(r["val_mae"] for r in mine) / forest["val_mae"],
                    "test": statistics.mean(r["test_mae"] for r in mine) / forest["test_mae"], "n": len(mine)}
    return out


def decide(scores: dict, datasets: list[str], variants: list[str]) -> str:
    """The variant with the lowest mean val ratio over `datasets` (only variants run on all of them)."""
    complete = [v for v in variants if all((d, v) in scores for d in datasets)]
    return min(complete, key=lambda v: statistics.mean(scores[(d, v)]["val"] for d in datasets))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="levers.py --out JSON files")
    parser.add_argument("--base", default="base", help="the variant every lever is compared with")
    parser.add_argument("--only", default=None, metavar="A,B,...",
                        help="decide among these variants only (e.g. one lever against the base)")
    args = parser.parse_args(argv)
    runs, forests = [], {}
    for path in args.results:
        result = json.loads(path.read_text())
        runs += result["runs"]
        forests.update({k: v for k, v in result["forests"].items() if v})
    if args.only:
        wanted = set(filter(None, args.only.split(",")))
        missing = wanted - {r["variant"] for r in runs}
        if missing:
            raise SystemExit(f"--only {args.only}: no runs of {', '.join(sorted(missing))} in these results")
        runs = [r for r in runs if r["variant"] in wanted]
    scores = ratios(runs, forests)
    datasets = list(dict.fromkeys(d for d, _ in scores))
    variants = list(dict.fromkeys(v for _, v in scores))
    rows = []
    for left_out in datasets:
        others = [d for d in datasets if d != left_out]
        chosen = decide(scores, others, variants)
        base = scores.get((left_out, args.base), {})
        rows.append([left_out, chosen, f"{scores[(left_out, chosen)]['test']:.3f}",
                     f"{base['test']:.3f}" if base else "-", f"{scores[(left_out, chosen)]['val']:.3f}"])
    rows.append(["(all datasets)", decide(scores, datasets, variants), "", "", ""])
    print_table(["left out", "chosen on the others (val)", "its test / forest", f"{args.base} test / forest",
                 "its val / forest"], rows)
    table = [[d, v, str(s["n"]), f"{s['val']:.3f}", f"{s['test']:.3f}"] for (d, v), s in scores.items()]
    print_table(["dataset", "variant", "seeds", "val / forest", "test / forest"], table)


if __name__ == "__main__":
    main()
