"""Training throughput (samples/s): the fast batch path against the reference (slow) paths.

One training step is what `aam.training.loop.fit` does per batch: collate -> forward (with the
masked-nucleotide and count tasks) -> `total_loss` -> backward -> gradient clipping -> AdamW
step -> LR schedule step. Variants (each a run-config switch, see `aam.data.collate`):

    fast        defaults: pad to the batch's longest sample, each distinct ASV encoded once
    pad_limit   pad_to_token_limit=true (every sample padded to token_limit, full token width)
    no_dedupe   dedupe_asvs=false (one encoder row per ASV slot, shared ASVs encoded again)
    reference   both switches: the straightforward implementation
    fast_bf16   the fast path under bf16 autocast (precision=bf16; on a CPU with AMX/AVX512-BF16
                the matrix products run in bf16; not in the default list on CPU, --variants adds it)
    fast_compile the fast path with compile=on (torch.compile of the transformer layers; for a
                GPU, where it decides what `compile: auto` should mean; --variants adds it)

Every variant gets its own model (same seed, so the same initial weights) and optimizer, and
sees the same batches (the same rows in the same order). The variants take turns step by step,
in a rotating order, so noise from other processes on the machine hits all of them alike.
The first --warmup steps of each variant are not counted.

On a GPU (--device cuda, the default when torch sees one) each step is synchronized before it is
timed, peak memory per variant is reported, and `precision: auto` means bf16 autocast as in `fit`.
After the measured steps every variant runs one more step under `torch.utils.flop_counter`'s
FlopCounterMode (matmuls and attention, forward and backward), so achieved TFLOP/s = FLOPs per
sample x samples/s. The GPU figures of the performance issue (D=128 and 256, token_limit 1024):

    python benchmarks/throughput.py --data DIR --device cuda --variants fast,reference \
        --set d_model=128 --set token_limit=1024 --set batch_size=32

With --batch-sizes 16,32,64,... it sweeps the batch size instead (one variant, the first of
--variants): samples/s and, on a GPU, peak memory per size, going up until a size runs out of
device memory. The largest size that fits under 90% of the device's memory is the batch that
fills it; the fastest size is reported beside it (they differ when a bigger batch stops paying):

    python benchmarks/throughput.py --data DIR --device cuda --variants fast \
        --set d_model=128 --set token_limit=1024 --batch-sizes 16,32,64,128,256,512

With --profile, after the measured steps each variant runs --profile-steps more under
torch.profiler (CPU and, on a GPU, CUDA activity) and the overhead is printed without reading a
trace: the top operators by self CPU time and by self CUDA time (per step), the kernel launches
per step (CUDA runtime/driver launch calls: cudaLaunchKernel, cudaLaunchKernelExC, cuLaunchKernel,
...) and "GPU busy", the CUDA kernel time over the wall time of those steps. On CPU the CUDA
columns read n/a:

    python benchmarks/throughput.py --data DIR --device cuda --variants fast,reference --profile

On a GPU the batches are cut to the collate's shape buckets as `fit` cuts them, and `--set
compile=on` compiles the transformer layers as `fit` would.

    python benchmarks/throughput.py --data /tmp/bench/mouse --steps 10
    python benchmarks/throughput.py --data /tmp/bench/mini --steps 2 --warmup 1   # a smoke run
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_machine, print_table, write_json  # noqa: E402

from aam.config import RunConfig  # noqa: E402
from aam.data.collate import collate, move_to  # noqa: E402
from aam.training.losses import total_loss  # noqa: E402
from aam.training.loop import batch_spec, mixed_precision  # noqa: E402

try:  # the compile switch (absent before the GPU-step work; kept so the script runs on older commits)
    from aam.training.loop import compiles  # noqa: E402
except ImportError:
    compiles = None
from aam.training.optim import make_optimizer, warmup_cosine  # noqa: E402
from aam.training.prepare import load_static  # noqa: E402

VARIANTS = {
    "fast": {},
    "pad_limit": {"pad_to_token_limit": True},
    "no_dedupe": {"dedupe_asvs": False},
    "reference": {"pad_to_token_limit": True, "dedupe_asvs": False},
    "fast_bf16": {"precision": "bf16"},
    "fast_compile": {"compile": "on"},
}
DEFAULT_VARIANTS = ("fast", "pad_limit", "no_dedupe", "reference")
REPORTED_CONFIG = ("d_model", "n_heads", "asv_layers", "sample_layers", "ff_mult", "nucleotide_patch",
                   "token_limit", "batch_size", "count_embed", "mask_prob", "count_head", "precision", "compile")


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE, e.g. --set d_model=32")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def training_batches(train_rows, batch_size: int, n: int, seed: int) -> list:
    """`n` full batches of training rows, shuffled per epoch as the loop's `Session` does."""
    if train_rows.num_rows < 2:
        raise SystemExit("the train split has fewer than 2 samples")
    size = min(batch_size, train_rows.num_rows)
    out, epoch = [], 0
    while len(out) < n:
        order = np.random.default_rng([seed, epoch, 0]).permutation(train_rows.num_rows)
        for start in range(0, len(order) - size + 1, size):
            out.append(train_rows.take(order[start : start + size]))
            if len(out) == n:
                break
        epoch += 1
    return out


def _optimizer(model, cfg: RunConfig):
    """`make_optimizer` as `fit` calls it (its signature changed from (params, lr, wd) to (model, cfg))."""
    if "cfg" in inspect.signature(make_optimizer).parameters:
        return make_optimizer(model, cfg)
    return make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)


def _compiles(cfg: RunConfig, device: torch.device) -> bool:
    """`compiles` as `fit` calls it (it took the device until the `auto` choice, which ignored it, went)."""
    if "device" in inspect.signature(compiles).parameters:
        return compiles(cfg, device)
    return compiles(cfg)


def _batch_spec(cfg: RunConfig, static, device: torch.device):
    """`batch_spec` as `fit` calls it (with the device, which turns the shape buckets on on a GPU)."""
    if "device" in inspect.signature(batch_spec).parameters:
        return batch_spec(cfg, static, device)
    return batch_spec(cfg, static)


# CUDA runtime and driver calls that launch work on the device: one per kernel (or graph) launched
LAUNCH_CALLS = frozenset({"cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel",
                          "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch"})
PROFILE_TOP = 10


def profile_summary(averages, steps: int, wall_s: float, on_gpu: bool, top: int = PROFILE_TOP) -> dict:
    """What a profile of `steps` training steps says, from `prof.key_averages()`: the top
    operators by self CPU and self CUDA time (ms per step), kernel launches per step and GPU busy
    (CUDA kernel time / wall time). The CUDA figures are None on CPU."""
    from torch.autograd import DeviceType

    host_ops = [e for e in averages if e.device_type == DeviceType.CPU and e.key not in LAUNCH_CALLS]

    def row(e) -> dict:
        return {"name": e.key, "calls_per_step": e.count / steps,
                "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                "self_cuda_ms_per_step": e.self_device_time_total / 1e3 / steps if on_gpu else None}

    by_cpu = sorted(host_ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    out = {"steps": steps, "wall_s_per_step": wall_s / steps,
           "cpu_ms_per_step": sum(e.self_cpu_time_total for e in host_ops) / 1e3 / steps,
           "top_cpu": [row(e) for e in by_cpu], "top_cuda": None, "cuda_ms_per_step": None,
           "kernel_launches_per_step": None, "gpu_busy": None}
    if on_gpu:
        kernels_us = sum(e.self_device_time_total for e in averages
                         if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
        by_cuda = sorted((e for e in host_ops if e.self_device_time_total > 0),
                         key=lambda e: e.self_device_time_total, reverse=True)[:top]
        out.update(top_cuda=[row(e) for e in by_cuda], cuda_ms_per_step=kernels_us / 1e3 / steps,
                   kernel_launches_per_step=sum(e.count for e in averages if e.key in LAUNCH_CALLS) / steps,
                   gpu_busy=kernels_us / 1e6 / wall_s if wall_s > 0 else None)
    return out


class Trainer:
    """One variant's model + optimizer, stepping exactly as `fit` does."""

    def __init__(self, cfg: RunConfig, static, total_steps: int, device: torch.device):
        from aam.models import AAM

        self.cfg = cfg
        self.device = device
        torch.manual_seed(cfg.seed)
        self.model = AAM(cfg, static.targets, static.token_width).train().to(device)
        if compiles is not None and _compiles(cfg, device):  # as fit does
            self.model.compile_transformers()
        self.optimizer = _optimizer(self.model, cfg)
        self.scheduler = warmup_cosine(self.optimizer, total_steps, cfg.warmup_frac)
        self.spec = _batch_spec(cfg, static, device)
        self.unifrac = torch.tensor(static.unifrac, device=device) if static.unifrac is not None else None
        self.masking = torch.Generator().manual_seed(cfg.seed * 7919)
        self.collate_s: list[float] = []
        self.step_s: list[float] = []
        self.samples: list[int] = []
        self.shapes: list[tuple[int, int, int]] = []  # tokens rows, token width, slots per sample
        self.on_gpu = device.type == "cuda"
        self.peak_bytes = 0
        self.flops_per_sample: float | None = None

    def step(self, rows, record: bool) -> float:
        if self.on_gpu:  # time this step's kernels only, and its own peak
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        batch = move_to(collate(rows, self.spec), self.device)
        t1 = time.perf_counter()
        with mixed_precision(self.cfg, self.device):  # as fit does: autocast forward and loss
            outputs = self.model(batch, mask_nucleotides=True, generator=self.masking)
            loss, _ = total_loss(outputs, batch, self.cfg, self.unifrac, None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        value = float(loss.detach())  # waits for the device
        t2 = time.perf_counter()
        if self.on_gpu:
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
        if record:
            self.collate_s.append(t1 - t0)
            self.step_s.append(t2 - t1)
            self.samples.append(rows.num_rows)
            self.shapes.append((*batch["tokens"].shape, batch["asv_mask"].shape[1]))
        return value

    def profile(self, batches: list) -> dict:
        """`len(batches)` more (uncounted) steps under torch.profiler: see `profile_summary`."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.on_gpu else [])
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            for rows in batches:
                self.step(rows, record=False)
            if self.on_gpu:
                torch.cuda.synchronize(self.device)
            wall = time.perf_counter() - started
        return profile_summary(prof.key_averages(), len(batches), wall, self.on_gpu)

    def count_flops(self, rows) -> None:
        """One more (uncounted) step under FlopCounterMode: FLOPs per sample of a training step."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step(rows, record=False)
        self.flops_per_sample = counter.get_total_flops() / rows.num_rows

    def summary(self) -> dict:
        total = sum(self.collate_s) + sum(self.step_s)
        per_step = [c + s for c, s in zip(self.collate_s, self.step_s)]
        return {
            "steps": len(per_step),
            "samples": sum(self.samples),
            "seconds": total,
            "samples_per_s": sum(self.samples) / total if total else float("nan"),
            "median_step_s": statistics.median(per_step) if per_step else float("nan"),
            "collate_s_per_step": sum(self.collate_s) / max(len(per_step), 1),
            "mean_token_rows": float(np.mean([s[0] for s in self.shapes])) if self.shapes else None,
            "mean_token_width": float(np.mean([s[1] for s in self.shapes])) if self.shapes else None,
            "mean_slots": float(np.mean([s[2] for s in self.shapes])) if self.shapes else None,
            "peak_memory_gib": self.peak_bytes / 2**30 if self.on_gpu else None,
            "flops_per_sample": self.flops_per_sample,
            "achieved_tflops": (self.flops_per_sample * sum(self.samples) / total / 1e12
                                if self.flops_per_sample and total else None),
        }


def measure(base: RunConfig, variants: dict[str, dict], steps: int, warmup: int, static=None, train_rows=None,
            verbose: bool = True, device: torch.device | None = None, flops: bool = False,
            profile_steps: int = 0) -> dict[str, dict]:
    """samples/s of each variant over the same `warmup + steps` batches, the variants interleaved;
    with `profile_steps`, each variant's summary gets a "profile" (see `profile_summary`) of that
    many more steps on the first measured batches."""
    if static is None:
        static, train_rows = load_static(base)
    batches = training_batches(train_rows, base.batch_size, warmup + steps, base.seed)
    device = device or torch.device("cpu")
    trainers = {name: Trainer(base.replace(**changes), static, warmup + steps + 1, device)
                for name, changes in variants.items()}
    names = list(trainers)
    for i, rows in enumerate(batches):
        order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            trainers[name].step(rows, record=i >= warmup)
        if verbose:
            done = "warm-up" if i < warmup else f"step {i - warmup + 1}/{steps}"
            last = "  ".join(f"{n} {trainers[n].step_s[-1]:.2f}s" for n in names if trainers[n].step_s and i >= warmup)
            print(f"  {done}  {last}", flush=True)
    if flops:
        for trainer in trainers.values():
            trainer.count_flops(batches[warmup] if len(batches) > warmup else batches[0])
    out = {name: t.summary() for name, t in trainers.items()}
    if profile_steps:
        measured = batches[warmup:] or batches
        chosen = [measured[i % len(measured)] for i in range(profile_steps)]
        for name, trainer in trainers.items():
            out[name]["profile"] = trainer.profile(chosen)
    return out


def na(value, fmt: str = "{:.3g}") -> str:
    return "n/a" if value is None else fmt.format(value)


def print_profiles(results: dict[str, dict]) -> None:
    """Per variant: its top operators by CPU and by CUDA time, then one line per variant with
    kernel launches per step and GPU busy."""
    for name, r in results.items():
        prof = r["profile"]
        for key, label in (("top_cpu", "self CPU"), ("top_cuda", "self CUDA")):
            if prof[key] is None:
                print(f"\n'{name}': top operators by {label} time: n/a (no CUDA activity on this device)")
                continue
            print_table(["operator", "calls/step", "self CPU ms/step", "self CUDA ms/step"],
                        [[e["name"][:60], e["calls_per_step"], e["self_cpu_ms_per_step"],
                          na(e["self_cuda_ms_per_step"])] for e in prof[key]],
                        title=f"'{name}': top operators by {label} time ({prof['steps']} profiled steps)")
    print_table(["variant", "wall ms/step", "CPU ms/step", "CUDA ms/step", "kernel launches/step", "GPU busy"],
                [[name, r["profile"]["wall_s_per_step"] * 1e3, r["profile"]["cpu_ms_per_step"],
                  na(r["profile"]["cuda_ms_per_step"]), na(r["profile"]["kernel_launches_per_step"], "{:.0f}"),
                  na(r["profile"]["gpu_busy"], "{:.1%}")] for name, r in results.items()],
                title="step overhead under torch.profiler (GPU busy = CUDA kernel time / wall time)")


FILL_FRACTION = 0.9  # of the device's memory: headroom for batches longer than the measured ones


def sweep_batch_sizes(base: RunConfig, variant: str, sizes: list[int], steps: int, warmup: int, static, train_rows,
                      device: torch.device, verbose: bool = True) -> list[dict]:
    """One variant at each batch size, smallest first, until a size runs out of device memory."""
    out = []
    for size in sorted(set(sizes)):
        cfg = base.replace(batch_size=size)
        try:
            result = measure(cfg, {variant: VARIANTS[variant]}, steps, warmup, static, train_rows, verbose=False,
                             device=device)[variant]
        except torch.OutOfMemoryError:
            out.append({"batch_size": size, "fits": False})
            torch.cuda.empty_cache()
            break  # every larger size needs more
        out.append({"batch_size": size, "fits": True, "samples_per_step": result["samples"] / result["steps"],
                    **result})
        if verbose:
            peak = result["peak_memory_gib"]
            print(f"  batch {size}: {result['samples_per_s']:.1f} samples/s"
                  + (f", peak {peak:.2f} GiB" if peak is not None else ""), flush=True)
    return out


def fill_choice(sweep: list[dict], device_gib: float | None) -> dict:
    """The largest batch under FILL_FRACTION of the device's memory, and the fastest batch."""
    fitting = [r for r in sweep if r["fits"]]
    if not fitting:
        return {"fills_device": None, "fastest": None}
    under = [r for r in fitting
             if device_gib is None or r["peak_memory_gib"] is None or r["peak_memory_gib"] <= FILL_FRACTION * device_gib]
    return {"fills_device": under[-1]["batch_size"] if under else None,
            "fastest": max(fitting, key=lambda r: r["samples_per_s"])["batch_size"]}


def dataset_stats(train_rows, token_limit: int) -> dict:
    lengths = np.diff(train_rows.column("asv_idx").combine_chunks().offsets.to_numpy())
    return {
        "train_samples": int(train_rows.num_rows),
        "asvs_per_sample_median": float(np.median(lengths)),
        "asvs_per_sample_max": int(lengths.max()),
        "samples_over_token_limit": int((lengths > token_limit).sum()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder from `aam convert`")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="steps per variant not counted (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when torch sees a GPU)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra step per variant)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma list of {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the reference config (run-config key), e.g. --set d_model=32")
    parser.add_argument("--batch-sizes", help="comma list: sweep the batch size of the first variant instead "
                        "(stops at the first size that runs out of device memory)")
    parser.add_argument("--profile", action="store_true",
                        help="profile --profile-steps more steps per variant: top operators, launches, GPU busy")
    parser.add_argument("--profile-steps", type=int, default=6, help="steps profiled per variant (default 6)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/throughput-<data>.json)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    base = RunConfig().replace(data=args.data, **parse_overrides(args.set))
    info = machine_info()
    print_machine(info)
    config = {k: getattr(base, k) for k in REPORTED_CONFIG}
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    static, train_rows = load_static(base)
    stats = dataset_stats(train_rows, base.token_limit)
    print(f"data: {args.data}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    print(f"{args.warmup} warm-up + {args.steps} measured steps per variant, variants interleaved")

    device = torch.device(args.device)
    if args.batch_sizes:
        return batch_sweep_main(args, base, chosen[0], static, train_rows, stats, config, device, info)
    started = time.perf_counter()
    results = measure(base, {v: VARIANTS[v] for v in chosen}, args.steps, args.warmup, static, train_rows,
                      device=device, flops=not args.no_flops, profile_steps=args.profile_steps if args.profile else 0)
    wall = time.perf_counter() - started

    fast = results.get("fast", {}).get("samples_per_s")
    rows = []
    for name, r in results.items():
        speedup = fast / r["samples_per_s"] if fast else None
        rows.append([name, r["samples_per_s"], r["median_step_s"], r["collate_s_per_step"],
                     r["mean_token_rows"], r["mean_token_width"], r["mean_slots"],
                     "-" if r["achieved_tflops"] is None else f"{r['achieved_tflops']:.3g}",
                     "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}",
                     f"{speedup:.2f}x" if speedup else "-"])
    print_table(["variant", "samples/s", "median step s", "collate s/step", "tokens rows", "token width",
                 "slots", "TFLOP/s", "peak GiB", "fast/this"], rows,
                title=f"training throughput on {args.data}, {device} ({args.steps} steps each)")
    ratio = None
    if fast and "reference" in results:
        ratio = fast / results["reference"]["samples_per_s"]
        print(f"\nfast / reference = {ratio:.2f}x")
    bf16_ratio = None
    if "fast_bf16" in results and "reference" in results:
        bf16_ratio = results["fast_bf16"]["samples_per_s"] / results["reference"]["samples_per_s"]
        print(f"fast_bf16 / reference = {bf16_ratio:.2f}x")
    if args.profile:
        print_profiles(results)
    payload = run_record("throughput", args, stats, config, device, wall, info,
                         variants={v: VARIANTS[v] for v in chosen}, results=results,
                         fast_over_reference=ratio, fast_bf16_over_reference=bf16_ratio)
    write_json(args.out, f"throughput-{Path(args.data).name}.json", payload)
    return payload


def run_record(benchmark: str, args, stats: dict, config: dict, device: torch.device, wall: float, info: dict,
               **measured) -> dict:
    """The results JSON of either mode: what was run, where, and what it measured."""
    return {
        "benchmark": benchmark,
        "data": str(Path(args.data).resolve()),
        "dataset": stats,
        "config": config,
        "steps": args.steps,
        "warmup": args.warmup,
        **measured,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "wall_s": wall,
        "machine": info,
    }


def batch_sweep_main(args, base: RunConfig, variant: str, static, train_rows, stats: dict, config: dict,
                     device: torch.device, info: dict) -> dict:
    try:
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--batch-sizes {args.batch_sizes!r}: expected whole numbers, e.g. 16,32,64") from None
    if not sizes or min(sizes) < 2:
        raise SystemExit(f"--batch-sizes {args.batch_sizes!r}: give sizes of 2 or more, e.g. 16,32,64")
    if max(sizes) > train_rows.num_rows:  # a batch cannot hold more samples than the split has
        raise SystemExit(f"--batch-sizes: {max(sizes)} is more than the {train_rows.num_rows} training samples "
                         f"of {args.data}; give sizes up to {train_rows.num_rows}")
    started = time.perf_counter()
    sweep = sweep_batch_sizes(base, variant, sizes, args.steps, args.warmup, static, train_rows, device)
    wall = time.perf_counter() - started
    device_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    choice = fill_choice(sweep, device_gib)
    print_table(["batch", "samples/step", "samples/s", "median step s", "peak GiB"],
                [[r["batch_size"], r.get("samples_per_step", "-"),
                  r["samples_per_s"] if r["fits"] else "out of memory", r.get("median_step_s", "-"),
                  "-" if r.get("peak_memory_gib") is None else f"{r['peak_memory_gib']:.2f}"] for r in sweep],
                title=f"batch-size sweep of '{variant}' on {args.data}, {device} ({args.steps} steps each)")
    if device_gib is not None:
        print(f"\nfills the device (peak <= {FILL_FRACTION:.0%} of {device_gib:.0f} GiB): batch {choice['fills_device']}")
    print(f"fastest: batch {choice['fastest']}")
    payload = run_record("throughput-batch-sweep", args, stats, config, device, wall, info,
                         variant=variant, sweep=sweep, **choice, device_memory_gib=device_gib)
    write_json(args.out, f"throughput-batches-{Path(args.data).name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
