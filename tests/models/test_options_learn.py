"""Each model option learns the synthetic problem that only it can solve (and the model without
it does not). Real training runs of the real model and losses on tiny seeded data."""

import numpy as np
import pytest
import torch

from aam.data.transforms import TargetTransform
from tests.models.synthetic import learn_cfg, make_world, r2, train_and_predict


def _fit(cfg, world, y, steps=200):
    train, test = world.split(y)
    model, out = train_and_predict(cfg, train, test, steps=steps)
    return out, test["targets"].numpy()


@pytest.mark.parametrize("count_embed", ["add", "concat", "film"])
def test_a_target_of_abundance_alone_needs_a_count_embedding(count_embed):
    world = make_world(same_asvs=True)  # every sample holds the same ASVs: only counts differ
    y = world.abundance
    with_counts, actual = _fit(learn_cfg(count_embed=count_embed), world, y)
    without, _ = _fit(learn_cfg(count_embed="off"), world, y)
    assert r2(with_counts["prediction"], actual) > 0.8
    assert r2(without["prediction"], actual) < 0.1


def test_a_share_of_reads_beyond_the_slots_needs_relative_counts():
    """The model sees only its slots' counts (token_limit cuts the rest); `relative` divides by the
    whole sample's depth, so a share of all reads is learnable, and from raw counts it is not."""
    world = make_world(same_asvs=True, unseen_reads=True)
    relative, actual = _fit(learn_cfg(count_embed="concat", count_feature="relative"), world, world.share)
    raw, _ = _fit(learn_cfg(count_embed="concat", count_feature="log1p"), world, world.share)
    assert r2(relative["prediction"], actual) > 0.9
    assert r2(raw["prediction"], actual) < 0.5


def test_a_sign_that_flips_with_a_category_is_learned_by_moe_routed_on_it():
    world = make_world()
    y = world.presence * np.where(world.category == 1, 1.0, -1.0)
    routed, actual = _fit(learn_cfg(head="moe", moe_experts=2, moe_router="group", head_hidden=[]), world, y)
    plain, _ = _fit(learn_cfg(head="linear"), world, y)
    assert r2(routed["prediction"], actual) > 0.8
    assert r2(plain["prediction"], actual) < 0.2
    usage = routed["diagnostics"]["gates"].mean(dim=0)
    assert torch.allclose(usage.sum(), torch.tensor(1.0)) and usage.min() > 0.2  # both experts carry work


def test_the_embedding_router_also_learns_and_balances():
    world = make_world()
    y = world.presence
    out, actual = _fit(learn_cfg(head="moe", moe_experts=3, moe_router="embedding", moe_balance_weight=0.1), world, y)
    assert r2(out["prediction"], actual) > 0.8
    assert out["diagnostics"]["gates"].mean(dim=0).max() < 0.8  # no expert takes everything


@pytest.mark.parametrize("fusion", ["concat", "add", "gmu", "cross-attention", "perceiver"])
def test_a_category_offset_is_learned_through_each_fusion(fusion):
    world = make_world()
    y = 0.5 * world.presence + 1.5 * np.where(world.category == 1, 1.0, -1.0)
    fused, actual = _fit(learn_cfg(categorical_fusion=fusion), world, y, steps=300)
    blind, _ = _fit(learn_cfg(), world, y)
    assert r2(fused["prediction"], actual) > 0.8, fusion
    assert r2(blind["prediction"], actual) < 0.2


def test_a_per_category_output_scale_learns_a_sign_flip():
    world = make_world()
    y = world.presence * np.where(world.category == 1, 1.0, -1.0)
    # the per-category scale has to travel from 1 to -1: its own, higher learning rate gets it there
    out, actual = _fit(learn_cfg(category_affine="group", categorical_lr=0.05), world, y)
    assert r2(out["prediction"], actual) > 0.8


def test_zscore_by_category_restores_each_category_mean_without_any_categorical_input():
    world = make_world()
    y = 50.0 * np.where(world.category == 1, 1.0, -1.0) + world.presence
    codes, cut = world.category[:, None], world.n_train
    maes = {}
    for kind, by in (("zscore-category", ["group"]), ("zscore", [])):
        transform = TargetTransform.fit(kind, ["y"], y[:cut, None], by, codes[:cut])
        out, _ = _fit(learn_cfg(), world, transform.forward(y[:, None], codes))
        predicted = transform.inverse(out["prediction"].numpy(), codes[cut:])
        maes[kind] = float(np.abs(predicted[:, 0] - y[cut:]).mean())
    assert maes["zscore-category"] < 0.5
    assert maes["zscore"] > 20


def test_quantile_outputs_bracket_a_noisy_target():
    world = make_world(n_samples=384, n_train=256)
    noise = np.random.default_rng(1).normal(0, 0.5, len(world.presence))
    y = world.presence + noise
    out, actual = _fit(learn_cfg(target_loss="quantile", quantiles=[0.1, 0.5, 0.9]), world, y)
    q = out["quantiles"][:, 0].numpy()  # [N, 3]
    below = (actual[:, 0][:, None] < q).mean(axis=0)
    assert 0.0 < below[0] < 0.25 and 0.3 < below[1] < 0.7 and 0.75 < below[2] < 1.0
    assert (np.diff(q, axis=1) > 0).mean() > 0.95  # quantiles in order
    torch.testing.assert_close(out["prediction"][:, 0], out["quantiles"][:, 0, 1])  # the median is the prediction


def test_an_asymmetric_loss_leans_to_the_cheaper_side():
    world = make_world(n_samples=384, n_train=256)
    y = world.presence + np.random.default_rng(2).normal(0, 1.0, len(world.presence))
    bias = {}
    for name, over, under in (("under_costly", 1.0, 9.0), ("over_costly", 9.0, 1.0)):
        out, actual = _fit(learn_cfg(target_loss="asymmetric", asymmetric_over=over, asymmetric_under=under), world, y)
        bias[name] = float((out["prediction"].numpy() - actual).mean())
    # the optimum is the under/(over+under) quantile: ~ +1.28 and -1.28 noise sds
    assert bias["under_costly"] > 0.7 and bias["over_costly"] < -0.7
