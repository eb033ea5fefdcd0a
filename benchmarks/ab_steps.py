"""Two checkouts' training step, before vs after, in lockstep: CPU and wall seconds per step.

Each checkout runs in its own process (its own `aam`), stepping `throughput.py`'s Trainer (the
step `fit` takes) on the same batches of the fast path, 1 torch thread; the two take turns step
by step, the first of each pair alternating, so the load of other processes on a shared machine
hits both alike. Process CPU time is reported beside wall time: it moves much less with the load.
The losses of the two are compared step by step (identical when the CPU numerics did not change).

    git worktree add /tmp/before 29c0f86
    python benchmarks/ab_steps.py --before /tmp/before --after . --data /tmp/bench/mouse --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(repo: str, data: str, n: int, sets: list[str]) -> None:
    """Step on command: a batch index per stdin line -> one JSON line (cpu_s, wall_s, loss)."""
    sys.path[:0] = [repo, str(Path(repo) / "benchmarks")]
    import torch

    torch.set_num_threads(1)
    import throughput
    from aam.config import RunConfig
    from aam.training.prepare import load_static

    base = RunConfig().replace(data=data, **throughput.parse_overrides(sets))
    static, rows = load_static(base)
    batches = throughput.training_batches(rows, base.batch_size, n, base.seed)
    trainer = throughput.Trainer(base, static, n + 1, torch.device("cpu"))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        c0, w0 = time.process_time(), time.perf_counter()
        loss = trainer.step(batches[int(line)], record=False)
        print(json.dumps({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0, "loss": loss}),
              flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="checkout (repository root) measured as 'before'")
    parser.add_argument("--after", required=True, help="checkout measured as 'after'")
    parser.add_argument("--data", required=True, help="dataset folder from `aam convert`")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config change")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.warmup + args.steps
    if args.worker:
        return worker(args.worker, args.data, n, args.set)
    sides = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    sets = [a for s in args.set for a in ("--set", s)]
    procs = {k: subprocess.Popen([sys.executable, __file__, "--worker", repo, "--before", "-", "--after", "-",
                                  "--data", args.data, "--steps", str(args.steps), "--warmup", str(args.warmup),
                                  *sets], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
             for k, repo in sides.items()}
    for p in procs.values():
        json.loads(p.stdout.readline())
    load_start = os.getloadavg()[0]
    steps: dict[str, list[dict]] = {k: [] for k in sides}
    for i in range(n):
        for k in (["before", "after"] if i % 2 == 0 else ["after", "before"]):
            procs[k].stdin.write(f"{i}\n")
            procs[k].stdin.flush()
            result = json.loads(procs[k].stdout.readline())
            if i >= args.warmup:
                steps[k].append(result)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    out = {k: {"cpu_s": sum(r["cpu_s"] for r in v), "wall_s": sum(r["wall_s"] for r in v),
               "median_cpu_s": statistics.median(r["cpu_s"] for r in v)} for k, v in steps.items()}
    payload = {"load": [load_start, os.getloadavg()[0]], "steps": args.steps,
               "identical_losses": [r["loss"] for r in steps["before"]] == [r["loss"] for r in steps["after"]],
               **out, **{f"after_over_before_{m}": out["after"][m] / out["before"][m]
                         for m in ("cpu_s", "wall_s", "median_cpu_s")}}
    print(json.dumps(payload, indent=1))
    return payload


if __name__ == "__main__":
    main()
