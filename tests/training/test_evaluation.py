"""recalibrate_batchnorm: BatchNorm's statistics are those of all calibration rows, in any order."""

import numpy as np
import torch

from aam.data.collate import collate
from aam.training.evaluation import recalibrate_batchnorm
from aam.training.loop import batch_spec, build_model
from aam.training.prepare import load_static

from test_loop import tiny_cfg


def head_inputs(model, rows, spec) -> torch.Tensor:
    """What the head's BatchNorm sees for every row, in one batch, in evaluation mode."""
    seen = []
    hook = model.head.norm.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    model.eval()
    with torch.no_grad():
        model(collate(rows, spec))
    hook.remove()
    return seen[0].double()


def untrained(example_dataset):
    """A fresh model, its batch spec, and its calibration rows sorted by the head's first input
    feature (so that neighbouring rows are alike in it, as table order makes them), with those
    inputs."""
    cfg = tiny_cfg(example_dataset)
    static, _ = load_static(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, static)
    spec = batch_spec(cfg, static)
    rows = static.calibration_rows
    rows = rows.take(np.argsort(head_inputs(model, rows, spec)[:, 0].numpy()))
    return model, spec, rows, head_inputs(model, rows, spec)


def test_statistics_are_the_populations_when_neighbouring_rows_are_alike(example_dataset):
    # Rows sorted by the head's first input feature make each batch of 8 alike in it (as table
    # order does with studies and time points): an average of per-batch statistics would give a
    # variance several times too small there, and evaluation would scale that feature up.
    model, spec, rows, x = untrained(example_dataset)
    within = np.mean([x[i:i + 8, 0].var().item() for i in range(0, len(x) - 1, 8)])
    assert within < 0.2 * x[:, 0].var().item()  # the case the test is about

    model.train()
    recalibrate_batchnorm(model, rows, spec, torch.device("cpu"), batch_size=8)
    norm = model.head.norm
    torch.testing.assert_close(norm.running_mean.double(), x.mean(dim=0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm.running_var.double(), x.var(dim=0), rtol=1e-4, atol=1e-6)
    assert model.training  # the mode the caller had is restored
    assert norm.momentum == 0.1  # and so is BatchNorm's own


def test_evaluation_uses_the_recalibrated_statistics_whatever_the_row_order(example_dataset):
    model, spec, rows, _ = untrained(example_dataset)
    outputs = []
    shuffled = np.random.default_rng(0).permutation(rows.num_rows)
    for ordered in (rows, rows.take(shuffled)):
        recalibrate_batchnorm(model, ordered, spec, torch.device("cpu"), batch_size=8)
        with torch.no_grad():
            outputs.append(model(collate(rows, spec))["prediction"])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
