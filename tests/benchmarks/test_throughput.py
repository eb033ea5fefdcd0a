"""benchmarks/throughput.py on the bundled example: the paths it compares do different amounts of
work, and its FLOP count sees that (a real model, real batches, one step each)."""

import importlib.util
import sys
from pathlib import Path

import torch

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_DIR))  # throughput.py imports its sibling _common
_spec = importlib.util.spec_from_file_location("throughput", _DIR / "throughput.py")
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)

from aam.config import RunConfig  # noqa: E402

TINY = {"d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1, "token_limit": 48, "batch_size": 16}


def test_reference_path_costs_more_flops_per_sample_than_the_fast_path(example_dataset):
    base = RunConfig().replace(data=str(example_dataset), **TINY)
    variants = {name: throughput.VARIANTS[name] for name in ("fast", "reference")}
    results = throughput.measure(base, variants, steps=1, warmup=0, verbose=False,
                                 device=torch.device("cpu"), flops=True)
    fast, reference = results["fast"], results["reference"]
    # the reference encodes one row per ASV slot; the fast path each distinct ASV once
    assert reference["mean_token_rows"] > fast["mean_token_rows"]
    assert reference["flops_per_sample"] > 1.5 * fast["flops_per_sample"] > 0
    assert fast["achieved_tflops"] > 0 and fast["peak_memory_gib"] is None  # no GPU memory on CPU


def test_batch_sweep_steps_at_every_size_and_picks_the_largest_that_fits(example_dataset):
    base = RunConfig().replace(data=str(example_dataset), **TINY)
    sweep = throughput.sweep_batch_sizes(base, "fast", [8, 4], steps=1, warmup=0, static=None, train_rows=None,
                                         device=torch.device("cpu"), verbose=False)
    assert [r["batch_size"] for r in sweep] == [4, 8]  # smallest first
    assert [r["samples_per_step"] for r in sweep] == [4, 8]  # each size really trained at that size
    assert all(r["fits"] and r["samples_per_s"] > 0 for r in sweep)
    choice = throughput.fill_choice(sweep, device_gib=None)  # no device memory to fill on a CPU
    assert choice["fills_device"] == 8 and choice["fastest"] in (4, 8)


def test_fill_choice_keeps_headroom_and_stops_at_out_of_memory():
    sweep = [{"batch_size": 16, "fits": True, "samples_per_s": 100.0, "peak_memory_gib": 20.0},
             {"batch_size": 32, "fits": True, "samples_per_s": 180.0, "peak_memory_gib": 40.0},
             {"batch_size": 64, "fits": True, "samples_per_s": 170.0, "peak_memory_gib": 75.0},
             {"batch_size": 128, "fits": False}]
    # 75 GiB is over 90% of an 80 GiB device: 32 fills it; 32 is also the fastest
    assert throughput.fill_choice(sweep, device_gib=80.0) == {"fills_device": 32, "fastest": 32}
    assert throughput.fill_choice(sweep, device_gib=141.0) == {"fills_device": 64, "fastest": 32}
    assert throughput.fill_choice([{"batch_size": 16, "fits": False}], 80.0) == {"fills_device": None,
                                                                                 "fastest": None}


def test_profile_prints_the_top_operators_and_says_n_a_for_cuda_on_a_cpu(example_dataset, tmp_path, capsys):
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    payload = throughput.main(["--data", str(example_dataset), "--device", "cpu", "--variants", "fast",
                               "--steps", "1", "--warmup", "0", "--no-flops", "--profile", "--profile-steps", "2",
                               "--out", str(tmp_path / "t.json"), *sets])
    prof = payload["results"]["fast"]["profile"]
    assert prof["steps"] == 2 and prof["wall_s_per_step"] > 0
    top = prof["top_cpu"]
    assert len(top) == throughput.PROFILE_TOP
    assert [e["self_cpu_ms_per_step"] for e in top] == sorted((e["self_cpu_ms_per_step"] for e in top), reverse=True)
    assert top[0]["self_cpu_ms_per_step"] > 0 and all(e["calls_per_step"] > 0 for e in top)
    assert any(e["name"].startswith("aten::") for e in top)
    assert prof["top_cuda"] is None and prof["gpu_busy"] is None and prof["kernel_launches_per_step"] is None
    printed = capsys.readouterr().out
    assert "top operators by self CPU time" in printed
    # every operator row of the CPU table: the name, then numbers
    table = printed.split("top operators by self CPU time")[1].split("\n\n")[0].splitlines()[3:]
    assert len(table) == throughput.PROFILE_TOP
    for line, e in zip(table, top):
        name, calls, cpu_ms, cuda_ms = line.rsplit(None, 3)  # a name may hold spaces ("evaluate_function: ...")
        assert name.strip() == e["name"][:60] and float(calls) > 0 and float(cpu_ms) > 0 and cuda_ms == "n/a"
    summary = printed.split("step overhead under torch.profiler")[1].splitlines()
    fast = next(line for line in summary if line.startswith("fast"))
    assert fast.split()[-3:] == ["n/a", "n/a", "n/a"]  # CUDA time, launches, GPU busy


def test_profile_summary_counts_launches_and_gpu_busy_from_cuda_events():
    """The GPU arithmetic, on profiler averages as a CUDA run yields them (kernel events of device
    type CUDA, launch calls on the host)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEventAvg

    def event(key, count, self_cpu_us, self_cuda_us, device_type):
        e = FunctionEventAvg()
        e.key, e.count, e.self_cpu_time_total, e.self_device_time_total = key, count, self_cpu_us, self_cuda_us
        e.device_type, e.is_user_annotation = device_type, False
        return e

    averages = [event("aten::mm", 40, 4000, 3000, DeviceType.CPU),
                event("aten::_efficient_attention_forward", 20, 2000, 5000, DeviceType.CPU),
                event("cudaLaunchKernel", 300, 1500, 0, DeviceType.CPU),
                event("cuLaunchKernel", 20, 100, 0, DeviceType.CPU),
                event("sm90_gemm_kernel", 40, 0, 3000, DeviceType.CUDA),
                event("fmha_cutlassF", 20, 0, 5000, DeviceType.CUDA)]
    out = throughput.profile_summary(averages, steps=2, wall_s=0.04, on_gpu=True)
    assert out["kernel_launches_per_step"] == 160
    assert out["cuda_ms_per_step"] == 4.0 and out["gpu_busy"] == 0.2  # 8 ms of kernels in 40 ms
    assert [e["name"] for e in out["top_cuda"]] == ["aten::_efficient_attention_forward", "aten::mm"]
    assert [e["name"] for e in out["top_cpu"]] == ["aten::mm", "aten::_efficient_attention_forward"]
