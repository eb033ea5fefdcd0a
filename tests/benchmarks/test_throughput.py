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
