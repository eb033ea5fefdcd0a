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
