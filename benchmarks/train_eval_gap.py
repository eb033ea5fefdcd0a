"""Does the evaluated model fit the rows it trained on? Per epoch: the training loss (train mode),
MAE on training rows and on val in evaluation mode, and how wide the val predictions spread.

A model that learns but is scored by a broken evaluation path shows a falling training loss and
an evaluation-mode MAE on its own training rows as bad as val's; a model that memorises shows a
low training-row MAE and a high val MAE. This told the two apart on mouse_age (BENCHMARKS.md §9,
"BatchNorm statistics"). Both the weight average (when ema_decay > 0) and the raw weights are
scored; the training rows are the run's BatchNorm calibration rows (up to 256).

    python benchmarks/train_eval_gap.py --data /tmp/q/mouse_random --set d_model=32 --set epochs=8 \\
        --set ema_decay=0.99 --out /tmp/gap.json

To see an earlier commit's behaviour, run the script with PYTHONPATH at a worktree of that commit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_machine, print_table, write_json  # noqa: E402
from throughput import parse_overrides  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder written by `aam convert` (one target)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config field")
    parser.add_argument("--out", help="results JSON (default: benchmarks/results/train_eval_gap.json)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from aam.config import RunConfig
    from aam.training import loop
    from aam.training.evaluation import evaluate, recalibrate_batchnorm
    from aam.training.prepare import load_static
    from aam.training.session import Session

    # lists as `head_hidden=32;16`, as levers.py takes them
    fields = {k: (v.split(";") if ";" in v else v) for k, v in parse_overrides(args.set).items()}
    cfg = RunConfig.from_dict({"data": args.data, "patience": 0, **fields}, where="--set")
    static, rows = load_static(cfg)
    info = machine_info()
    print_machine(info)
    epochs: list[dict] = []
    scored = loop._evaluate_epoch

    def with_gap(run, epoch, metrics, started):
        row = {"epoch": epoch + 1, "train_loss": metrics.get("train_loss")}
        models = {"average": run.evaluated, "raw": run.model} if run.ema is not None else {"raw": run.model}
        for name, model in models.items():
            recalibrate_batchnorm(model, static.calibration_rows, run.spec, run.device)
            seen = evaluate(model, static.calibration_rows, run.spec, cfg, run.unifrac, run.device)
            val = evaluate(model, static.eval_rows["val"], run.spec, cfg, run.unifrac, run.device)
            row[name] = {"train_rows_mae": seen.metrics["mae"], "val_mae": val.metrics["mae"],
                         "val_prediction_sd": float(np.std(val.predicted)), "val_target_sd": float(np.std(val.actual))}
        epochs.append(row)
        print(row, flush=True)
        scored(run, epoch, metrics, started)

    loop._evaluate_epoch = with_gap  # the loop's own evaluation runs after, unchanged
    final = loop.fit(cfg, static, Session(rows, cfg.seed, verbose=False))
    table = []
    for row in epochs:
        for name in ("average", "raw"):
            if name in row:
                r = row[name]
                table.append([row["epoch"], name, round(row["train_loss"], 4), round(r["train_rows_mae"], 3),
                              round(r["val_mae"], 3), f"{r['val_prediction_sd']:.1f} / {r['val_target_sd']:.1f}"])
    print_table(["epoch", "weights", "train loss", "MAE training rows (eval)", "val MAE", "val pred sd / target sd"],
                table)
    print(f"test MAE of the kept epoch: {final.get('test_mae')}")
    payload = {"machine": info, "config": cfg.to_dict(), "epochs": epochs, "test_mae": final.get("test_mae")}
    write_json(args.out, "train_eval_gap.json", payload)


if __name__ == "__main__":
    main()
