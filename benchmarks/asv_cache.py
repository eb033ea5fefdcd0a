"""Trial time of a head/loss search on a FROZEN pretrained encoder, with and without the ASV cache.

With `freeze_encoder: true` the ASV encoder (the nucleotide transformer, nearly all of a
training step) never changes, so `cache_asv_vectors: true` computes every ASV vector of the
dataset once, in `aam.training.prepare.load_static`, and every epoch and trial reads them from
`static.asv_vectors` instead of running the encoder. This script measures what that saves:

(a) pretrain   a short `fit` on the dataset (default 1 epoch, d_model 32, token_limit 128, the
               other encoder settings at their defaults), whose run folder (`Session.last_checkpoint`)
               becomes `pretrained_encoder` (or pass --encoder RUN_FOLDER to reuse one);
(b) one-off    `load_static` with cache off and with cache on (after one untimed warm-up load):
               the difference is the cost of computing the cache, paid once per search;
(c) trials     --trials head/loss/lr configs (like a head/loss search would try), each trained
               with cache off and with cache on, in alternating order (off-on, on-off, ...), same
               config, same seed: `fit(cfg, static, Session(train_rows, seed, verbose=False))`.
               Both give the same model (tests/training/test_options_loop.py checks it; the val MAE
               of each pair is compared here too), so the ratio is pure cost.

Reports seconds per trial each way, the ratio uncached/cached (project target >= 10x), and the
ratio for a whole search of --trials trials with the one-off cache cost added to the cached side.
If the ratio misses the target (or with --profile always) one more trial of each kind is run
with timers around the loop's parts (training forward/backward/optimizer, BatchNorm
recalibration, val evaluation, checkpoint saving, the last epoch's test + figure, ...) to show
where a cached trial's time goes. One torch thread by default (the machine is usually shared).

    python benchmarks/asv_cache.py --data /tmp/e2e/mouse
    python benchmarks/asv_cache.py --data /tmp/bench/mini --trials 2 --epochs 1 --profile never   # a smoke run
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, print_machine, print_table, write_json  # noqa: E402

from aam.config import RunConfig  # noqa: E402
from aam.training.loop import fit  # noqa: E402
from aam.training.session import Session  # noqa: E402
from aam.training.prepare import load_static  # noqa: E402

TARGET_RATIO = 10.0
# the pretrained encoder: small, so that pretraining takes well under a minute on 2 cores
ENCODER_SET = {"d_model": "32", "token_limit": "128"}
# what a trial must share with the encoder it loads (load_encoder_weights checks the shapes)
ENCODER_KEYS = ("d_model", "n_heads", "nucleotide_patch", "asv_layers", "sample_layers", "ff_mult", "count_embed",
                "token_limit", "batch_size", "seed")
# what a head/loss search varies; trial i uses TRIALS[i % len(TRIALS)]
TRIALS = [
    {"head": "linear", "target_loss": "mse", "lr": 1e-3},
    {"head": "mlp", "head_hidden": [64], "target_loss": "huber", "huber_delta": 0.5, "lr": 3e-3},
    {"head": "residual", "head_hidden": [32], "target_loss": "mae", "lr": 5e-4},
    {"head": "moe", "head_hidden": [16], "moe_experts": 2, "target_loss": "quantile", "lr": 1e-3},
    {"head": "mlp", "head_hidden": [128, 64], "target_loss": "mse", "target_transform": "minmax", "lr": 2e-3},
]


def pretrain(cfg: RunConfig) -> tuple[str, float, dict]:
    """A short fit; returns its run folder (kept under tempfile.tempdir), the seconds and its metrics."""
    t0 = time.perf_counter()
    static, train_rows = load_static(cfg)
    session = Session(train_rows, cfg.seed, verbose=False)
    final = fit(cfg, static, session)
    return str(session.last_checkpoint), time.perf_counter() - t0, final


def timed_load_static(cfg: RunConfig):
    t0 = time.perf_counter()
    static, train_rows = load_static(cfg)
    return static, train_rows, time.perf_counter() - t0


def run_trial(cfg: RunConfig, static, train_rows) -> dict:
    t0 = time.perf_counter()
    session = Session(train_rows, cfg.seed, verbose=False)
    final = fit(cfg, static, session)
    return {"seconds": time.perf_counter() - t0, "val_mae": final.get("val_mae"),
            "best_val_score": final.get("best_val_score"), "test_mae": final.get("test_mae"),
            "epoch_seconds": [r.get("epoch_seconds") for r in session.reports]}


# --- where the time of a trial goes ------------------------------------------------------------
class Phases:
    """Timers around functions: a call is counted under its own name when no other timed call is
    running (top level), else under (the top-level name, its name): e.g. the sample encoder's time
    inside the training forward, inside the BatchNorm recalibration and inside the evaluations."""

    def __init__(self):
        self.top: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.nested: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.stack: list[str] = []
        self._undo: list = []

    def wrap(self, owner, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self.stack.append(name)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.stack.pop()
                if self.stack:
                    self.nested[(self.stack[0], name)] += dt
                else:
                    self.top[name] += dt
                    self.calls[name] += 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def profile_trial(cfg: RunConfig, static, train_rows) -> dict:
    """One trial with timers around the loop's parts; seconds per part (top level) + nested."""
    import aam.training.loop as loop
    from aam.models import model as model_module

    phases = Phases()
    phases.wrap(loop, "collate", "train: collate")
    phases.wrap(model_module.AAM, "forward", "train: forward")
    phases.wrap(loop, "total_loss", "train: loss")
    phases.wrap(torch.Tensor, "backward", "train: backward")
    phases.wrap(torch.optim.AdamW, "step", "train: optimizer step")
    phases.wrap(torch.nn.utils, "clip_grad_norm_", "train: grad clipping")
    phases.wrap(loop, "recalibrate_batchnorm", "BatchNorm recalibration (per epoch)")
    phases.wrap(loop, "evaluate", "val evaluation (per epoch)")
    phases.wrap(loop, "_test_best_epoch", "last epoch: test evaluation + predictions + figure")
    phases.wrap(torch, "save", "checkpoint saves (model.pt + state.pt per epoch)")
    phases.wrap(loop.artifacts, "write_tsv", "prediction files")
    phases.wrap(loop, "_log_epoch", "TensorBoard scalars")
    phases.wrap(loop, "_tensorboard", "TensorBoard writer start")
    phases.wrap(loop, "_write_static_files", "config + sample lists")
    phases.wrap(Session, "report", "session report (copies the checkpoint folder)")
    phases.wrap(loop, "load_encoder_weights", "load pretrained encoder")
    phases.wrap(model_module.AAM, "use_asv_cache", "attach ASV cache")
    phases.wrap(model_module.AAM, "__init__", "build model")
    # nested only (inside the forward passes above)
    phases.wrap(model_module.ASVEncoder, "forward", "ASV encoder")
    phases.wrap(model_module.SampleEncoder, "forward", "sample encoder")
    try:
        t0 = time.perf_counter()
        session = Session(train_rows, cfg.seed, verbose=False)
        fit(cfg, static, session)
        total = time.perf_counter() - t0
    finally:
        phases.restore()
    parts = dict(phases.top)
    parts["other (data shuffling/slicing, LR schedule, metrics, ...)"] = total - sum(parts.values())
    nested = {f"{top} > {name}": s for (top, name), s in phases.nested.items()
              if name in ("ASV encoder", "sample encoder")}
    return {"seconds": total, "parts": parts, "calls": dict(phases.calls), "encoders_inside": nested}


def print_profile(profiles: dict[str, dict]) -> None:
    names = list(dict.fromkeys(n for p in profiles.values() for n in p["parts"]))
    names.sort(key=lambda n: -profiles.get("cached", next(iter(profiles.values())))["parts"].get(n, 0.0))
    rows = []
    for n in names:
        row = [n]
        for kind, p in profiles.items():
            s = p["parts"].get(n, 0.0)
            row += [s, f"{100 * s / p['seconds']:.1f}%"]
        rows.append(row)
    rows.append(["total", *[x for p in profiles.values() for x in (p["seconds"], "100%")]])
    headers = ["part of one trial"] + [h for kind in profiles for h in (f"{kind} s", f"{kind} %")]
    print_table(headers, rows, title="where a trial's time goes (one trial each, with timers)")
    nested = sorted({k for p in profiles.values() for k in p["encoders_inside"]})
    if nested:
        print_table(["encoder time inside", *[f"{kind} s" for kind in profiles]],
                    [[k, *[p["encoders_inside"].get(k, 0.0) for p in profiles.values()]] for k in nested])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder from `aam convert`")
    parser.add_argument("--trials", type=int, default=3, help="trials of the head/loss search, each run both ways "
                        "(default 3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument("--pretrain-epochs", type=int, default=1, help="epochs of the pretraining fit (default 1)")
    parser.add_argument("--encoder", help="reuse this run folder as the pretrained encoder (skips pretraining; "
                        "--set must then match its encoder settings)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1; 0: torch's default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config changes for the encoder and every trial, on top of "
                             + ", ".join(f"{k}={v}" for k, v in ENCODER_SET.items()))
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                        help="time the parts of one more trial each way: auto = when the ratio misses "
                             f"{TARGET_RATIO:g}x (default)")
    parser.add_argument("--keep", help="folder for the run folders (default: a temp folder, removed at the end)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/asv_cache-<data>.json)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epochs < 1:
        raise SystemExit("--trials and --epochs must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    data = str(Path(args.data).resolve())
    work = Path(args.keep or tempfile.mkdtemp(prefix="aam-bench-asv-cache-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(work)  # fit's run folders and Session's checkpoint copies go here
    info = machine_info()
    print_machine(info)
    try:
        payload = _run(args, data, info)
    finally:
        tempfile.tempdir = None
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, f"asv_cache-{Path(args.data).name}.json", payload)
    return payload


def _run(args, data: str, info: dict) -> dict:
    from throughput import parse_overrides

    base = RunConfig().replace(data=data, **{**ENCODER_SET, **parse_overrides(args.set)})
    encoder_values = {k: getattr(base, k) for k in ENCODER_KEYS}
    print("encoder: " + ", ".join(f"{k}={v}" for k, v in encoder_values.items()))
    loads = {"start": load_average()}

    # (a) the pretrained encoder
    pretraining = None
    if args.encoder:
        encoder = str(Path(args.encoder).resolve())
        print(f"(a) pretrained encoder: {encoder} (given)")
    else:
        print(f"(a) pretraining {args.pretrain_epochs} epoch(s) ...", flush=True)
        encoder, seconds, final = pretrain(base.replace(epochs=args.pretrain_epochs))
        pretraining = {"epochs": args.pretrain_epochs, "seconds": seconds, "val_mae": final.get("val_mae")}
        print(f"    {seconds:.1f} s, val_mae {final.get('val_mae'):.4g}")

    frozen = base.replace(pretrained_encoder=encoder, freeze_encoder=True, epochs=args.epochs)
    configs = [frozen.replace(**TRIALS[i % len(TRIALS)]) for i in range(args.trials)]

    # (b) the one-off cost: load_static with and without the cache
    print("(b) load_static, cache off and on ...", flush=True)
    timed_load_static(frozen.replace(cache_asv_vectors=False))  # warm-up: file cache, imports
    static_off, train_rows, load_off = timed_load_static(frozen.replace(cache_asv_vectors=False))
    static_on, _, load_on = timed_load_static(frozen.replace(cache_asv_vectors=True))
    assert static_off.asv_vectors is None and static_on.asv_vectors is not None
    cache_cost = load_on - load_off
    n_asvs, width = static_on.asv_vectors.shape
    print(f"    off {load_off:.2f} s, on {load_on:.2f} s: the cache ({n_asvs} ASVs x {width}) costs {cache_cost:.2f} s")
    loads["after_setup"] = load_average()

    # (c) the trials, alternating which kind goes first
    print(f"(c) {args.trials} trials x {args.epochs} epochs, each uncached and cached ...", flush=True)
    trials = []
    for i, cfg in enumerate(configs):
        order = ("uncached", "cached") if i % 2 == 0 else ("cached", "uncached")
        result = {"trial": i, "changes": TRIALS[i % len(TRIALS)], "order": list(order)}
        for kind in order:
            cached = kind == "cached"
            result[kind] = run_trial(cfg.replace(cache_asv_vectors=cached), static_on if cached else static_off,
                                     train_rows)
        u, c = result["uncached"], result["cached"]
        result["ratio"] = u["seconds"] / c["seconds"]
        result["val_mae_rel_diff"] = (abs(u["val_mae"] - c["val_mae"]) / abs(u["val_mae"])
                                      if u["val_mae"] and c["val_mae"] is not None else None)
        trials.append(result)
        print(f"    trial {i} ({', '.join(f'{k}={v}' for k, v in result['changes'].items())}): uncached "
              f"{u['seconds']:.1f} s, cached {c['seconds']:.2f} s -> {result['ratio']:.1f}x; val_mae "
              f"{u['val_mae']:.4g} vs {c['val_mae']:.4g}", flush=True)
    loads["after_trials"] = load_average()

    uncached_s = [t["uncached"]["seconds"] for t in trials]
    cached_s = [t["cached"]["seconds"] for t in trials]
    ratio = sum(uncached_s) / sum(cached_s)
    search_ratio = sum(uncached_s) / (sum(cached_s) + cache_cost)
    rows = [[t["trial"], ", ".join(f"{k}={v}" for k, v in t["changes"].items()), t["uncached"]["seconds"],
             t["cached"]["seconds"], f"{t['ratio']:.1f}x", t["uncached"]["val_mae"], t["cached"]["val_mae"]]
            for t in trials]
    print_table(["trial", "changes", "uncached s", "cached s", "ratio", "val_mae uncached", "val_mae cached"], rows,
                title=f"frozen-encoder trials on {args.data} ({args.epochs} epochs each, {torch.get_num_threads()} "
                      f"torch thread(s))")
    print(f"\none-off cache cost (load_static on - off): {cache_cost:.2f} s")
    print(f"seconds per trial: uncached {statistics.fmean(uncached_s):.2f}, cached {statistics.fmean(cached_s):.2f}")
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"uncached / cached = {ratio:.1f}x (target >= {TARGET_RATIO:g}x: {verdict}); "
          f"a search of {args.trials} trials with the cache cost counted: {search_ratio:.1f}x")
    print(f"load average: {loads}")

    profiles = {}
    if args.profile == "always" or (args.profile == "auto" and ratio < TARGET_RATIO):
        print("\nprofiling one more trial each way (trial 0's config) ...", flush=True)
        profiles["uncached"] = profile_trial(configs[0].replace(cache_asv_vectors=False), static_off, train_rows)
        profiles["cached"] = profile_trial(configs[0].replace(cache_asv_vectors=True), static_on, train_rows)
        print_profile(profiles)
        loads["after_profile"] = load_average()

    return {
        "benchmark": "asv_cache",
        "data": data,
        "dataset": {"train_samples": int(train_rows.num_rows), "asvs": int(n_asvs)},
        "encoder": {"path": encoder if args.encoder else "(temporary)", "config": encoder_values,
                    "pretraining": pretraining},
        "epochs_per_trial": args.epochs,
        "trial_changes": [TRIALS[i % len(TRIALS)] for i in range(args.trials)],
        "load_static_s": {"cache_off": load_off, "cache_on": load_on},
        "cache_cost_s": cache_cost,
        "trials": trials,
        "seconds_per_trial": {"uncached": statistics.fmean(uncached_s), "cached": statistics.fmean(cached_s)},
        "uncached_over_cached": ratio,
        "search_ratio_with_cache_cost": search_ratio,
        "target_ratio": TARGET_RATIO,
        "profiles": profiles,
        "load_averages": loads,
        "machine": info,
    }


if __name__ == "__main__":
    main()
