"""ema_decay: validation, test and model.pt use the averaged weights; resuming continues the average."""

import pandas as pd
import pytest
import torch

from aam.training.checkpoint import load_model
from aam.training.evaluation import predict_rows
from aam.training.loop import batch_spec, fit
from aam.training.optim import weight_average
from aam.training.resume import resume_state
from aam.training.session import Session
from aam.training.prepare import load_static

from test_loop import Interrupted, StopAfter, tiny_cfg


@pytest.fixture(scope="module")
def averaged(example_dataset):
    cfg = tiny_cfg(example_dataset, ema_decay=0.9, epochs=2)
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed, verbose=False)
    metrics = fit(cfg, static, session)
    return cfg, static, rows, session, metrics


def test_the_kept_model_is_the_average_not_the_last_step(example_dataset):
    cfg = tiny_cfg(example_dataset, ema_decay=0.9, epochs=1)  # one epoch: it is the best one
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed, verbose=False)
    fit(cfg, static, session)
    state = torch.load(session.last_checkpoint / "state.pt", map_location="cpu", weights_only=False)
    saved = load_model(session.last_checkpoint).model.state_dict()
    raw, ema = state["model"], state["ema"]
    assert int(ema["n_averaged"]) == len(range(0, static.n_train, cfg.batch_size))  # one update a step
    for name in ("sample_encoder.transformer.blocks.0.qkv.weight", "head.body.weight"):
        torch.testing.assert_close(saved[name], ema[f"module.{name}"])
        assert not torch.allclose(raw[name], saved[name])


def test_reported_val_and_test_scores_are_the_saved_models(averaged):
    cfg, static, rows, session, metrics = averaged
    folder = session.last_checkpoint
    bundle = load_model(folder)
    test = predict_rows(bundle.model, static.eval_rows["test"], batch_spec(cfg, static), torch.device("cpu"))
    written = pd.read_csv(folder / "test_predictions.tsv", sep="\t")
    assert abs(test.predicted[:, 0] - written["Age_wk_predicted"].to_numpy()).max() < 1e-4


def test_resuming_continues_the_average_to_the_same_weights(averaged):
    cfg, static, rows, session, metrics = averaged
    broken = StopAfter(rows, cfg.seed, n=1, verbose=False)
    with pytest.raises(Interrupted):
        fit(cfg, static, broken)
    resumed = Session(rows, cfg.seed, restore=resume_state(broken.last_checkpoint), verbose=False)
    final = fit(cfg, static, resumed)
    a = torch.load(session.last_checkpoint / "state.pt", weights_only=False)["ema"]
    b = torch.load(resumed.last_checkpoint / "state.pt", weights_only=False)["ema"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert final["test_mae"] == pytest.approx(metrics["test_mae"], rel=1e-5)


def test_zero_decay_means_no_average(example_dataset):
    assert weight_average(torch.nn.Linear(2, 2), tiny_cfg(example_dataset)) is None


@pytest.mark.parametrize("warmup", ["short", "mean"])
def test_the_warmed_up_average_forgets_its_start_and_then_settles_at_the_decay(example_dataset, warmup):
    """The start's share after n updates is prod_k (1 - w_k) over the later updates' weights w_k;
    plain EMA keeps decay^(n-1) of it, `short` uses w_k = max(1 - decay, 9/(10+k)), `mean` 1/(k+1)."""
    decay, n = 0.995, 90
    model = torch.nn.Linear(1, 1, bias=False)
    averages = {}
    for mode in ("off", warmup):
        with torch.no_grad():
            model.weight.fill_(1.0)  # the initial weights
        average = weight_average(model, tiny_cfg(example_dataset, ema_decay=decay, ema_warmup=mode))
        average.update_parameters(model)  # the first update copies the weights
        with torch.no_grad():
            model.weight.fill_(0.0)  # every later step's weights
        for _ in range(n - 1):
            average.update_parameters(model)
        averages[mode] = float(average.module.weight.detach())  # = the initial weights' remaining share
    assert averages["off"] == pytest.approx(decay ** (n - 1), rel=1e-5)
    expected = 1.0
    for k in range(1, n):
        weight = max(1 - decay, 9 / (10 + k)) if warmup == "short" else max(1 - decay, 1 / (k + 1))
        expected *= 1 - weight
    assert averages[warmup] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    if warmup == "mean":  # the plain mean of n updates, one of which was the start
        assert averages[warmup] == pytest.approx(1 / n, rel=1e-4)
    assert averages[warmup] < 0.02 < 0.6 < averages["off"]


def test_the_warm_up_continues_across_a_resume(example_dataset):
    """n_averaged is in the average's state: a resumed warm-up run ends on the same weights."""
    cfg = tiny_cfg(example_dataset, ema_decay=0.99, ema_warmup="short", epochs=2)
    static, rows = load_static(cfg)
    whole = Session(rows, cfg.seed, verbose=False)
    fit(cfg, static, whole)
    broken = StopAfter(rows, cfg.seed, n=1, verbose=False)
    with pytest.raises(Interrupted):
        fit(cfg, static, broken)
    resumed = Session(rows, cfg.seed, restore=resume_state(broken.last_checkpoint), verbose=False)
    fit(cfg, static, resumed)
    a = torch.load(whole.last_checkpoint / "state.pt", weights_only=False)["ema"]
    b = torch.load(resumed.last_checkpoint / "state.pt", weights_only=False)["ema"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
