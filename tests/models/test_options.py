"""Model options, unit by unit: output shapes, gradient flow, the unknown category, the
categorical parameter group, the moe balance term and the diagnostics logged to TensorBoard."""

import pytest
import torch

from aam.config import RunConfig
from aam.models import AAM
from aam.models.heads import MixtureOfExperts, TargetLayout
from aam.training.losses import target_loss, total_loss
from aam.training.optim import group_lrs, make_optimizer
from tests.models.synthetic import SEQ_LEN, learn_cfg, make_world

CATEGORIES = {"diet": ["chow", "fat", "fibre"], "study": ["s1", "s2"]}


def batch_with_codes(n=8, targets=2):
    world = make_world(n_samples=n, n_train=n)
    batch = dict(world.batch)
    g = torch.Generator().manual_seed(0)
    batch["categoricals"] = torch.stack([torch.randint(0, 4, (n,), generator=g),
                                         torch.randint(0, 3, (n,), generator=g)], dim=1)
    batch["targets"] = torch.randn(n, targets, generator=g)
    return batch


def model_for(**changes):
    torch.manual_seed(0)
    return AAM(learn_cfg(**changes), ["a", "b"], SEQ_LEN, CATEGORIES)


def _grads_reach(model, module):
    batch = batch_with_codes()
    loss, _ = total_loss(model.train()(batch), batch, model.cfg, None)
    loss.backward()
    params = list(module.parameters())
    assert params
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]


@pytest.mark.parametrize("fusion", ["concat", "add", "gmu", "cross-attention", "perceiver"])
def test_each_fusion_keeps_the_shapes_and_every_parameter_learns(fusion):
    model = model_for(categorical_fusion=fusion)
    out = model.eval()(batch_with_codes())
    assert out["prediction"].shape == (8, 2) and out["sample_embedding"].shape == (8, 16)
    assert all(_grads_reach(model, model.fusion))
    diagnostics = model.eval()(batch_with_codes())["diagnostics"]
    if fusion == "gmu":
        assert diagnostics["gate"].shape == (8,) and ((0 < diagnostics["gate"]) & (diagnostics["gate"] < 1)).all()
    if fusion in ("cross-attention", "perceiver"):
        weights = diagnostics["column_attention"]
        assert weights.shape == (8, 2)  # one weight per column: they mean something
    if fusion == "cross-attention":
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(8))
    if fusion == "perceiver":
        total = weights.sum(dim=1) + diagnostics["asv_attention"]
        torch.testing.assert_close(total, torch.ones(8))


def test_the_perceiver_never_attends_to_padding():
    model = model_for(categorical_fusion="perceiver").eval()
    batch = batch_with_codes()
    batch["asv_mask"] = batch["asv_mask"].clone()
    batch["asv_mask"][:, 3:] = False
    out = model(batch)
    changed = dict(batch, asv_index=batch["asv_index"].clone())
    changed["asv_index"][:, 3:] = (changed["asv_index"][:, 3:] + 1) % 10  # other ASVs behind the padding
    torch.testing.assert_close(model(changed)["prediction"], out["prediction"])


@pytest.mark.parametrize("head,hidden", [("linear", []), ("mlp", [12]), ("residual", [12]), ("moe", [12]), ("moe", [])])
def test_each_head_learns_in_every_parameter(head, hidden):
    model = model_for(head=head, head_hidden=hidden)
    assert all(_grads_reach(model, model.head.body))


def test_the_residual_head_is_its_linear_path_plus_its_mlp():
    model = model_for(head="residual", head_hidden=[12]).eval()
    x = torch.randn(5, 16)
    body = model.head.body
    torch.testing.assert_close(body(x), body.linear(x) + body.mlp(x))


def test_unknown_and_unseen_categories_get_the_zero_unknown_embedding():
    model = model_for(categorical_fusion="concat")
    embeddings = model.fusion.embeddings
    codes = torch.tensor([[0, 0], [9, 7], [1, 2]])  # unknown; beyond the vocabulary; known
    out = embeddings(codes)
    assert (out[0] == 0).all() and (out[1] == 0).all() and (out[2].abs().sum(dim=-1) > 0).all()
    # and training never moves the unknown row
    assert all(_grads_reach(model, model.fusion))
    assert all(bool((t.weight.grad[0] == 0).all()) for t in embeddings.tables)


def test_unknown_category_routes_to_an_even_mixture_and_no_affine_change():
    model = model_for(head="moe", moe_router="diet", category_affine="study")
    assert all(_grads_reach(model, model.head.body.experts))
    # the unknown rows (code 0) never learn: they stay an even mixture and scale 1, bias 0
    assert (model.head.affine.weight.grad[0] == 0).all()
    assert (model.head.body.category_router.weight.grad[0] == 0).all()
    batch = batch_with_codes()
    batch["categoricals"][:] = 0
    gates = model.eval()(batch)["diagnostics"]["gates"]
    torch.testing.assert_close(gates, torch.full_like(gates, 1 / gates.shape[1]))


def test_the_balance_loss_is_zero_when_even_and_e_minus_one_when_one_expert_takes_all():
    even = torch.full((6, 4), 0.25)
    one = torch.zeros(6, 4)
    one[:, 2] = 1
    assert float(MixtureOfExperts.balance_loss(even)) == pytest.approx(0.0, abs=1e-6)
    assert float(MixtureOfExperts.balance_loss(one)) == pytest.approx(3.0)


def test_the_categorical_learning_rate_drives_every_categorical_parameter_and_only_those():
    model = model_for(categorical_fusion="gmu", head="moe", moe_router="diet", category_affine="study",
                      categorical_lr=0.02)
    optimizer = make_optimizer(model, model.cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    categorical = {id(p) for p in groups["categorical"]["params"]}
    expected = {id(p) for m in (model.fusion, model.head.affine, model.head.body.category_router) for p in m.parameters()}
    assert categorical == expected
    assert not categorical & {id(p) for p in model.asv_encoder.parameters()}
    assert group_lrs(optimizer) == {"lr": pytest.approx(1e-2), "lr_categorical": pytest.approx(0.02)}
    assert len(make_optimizer(model, model.cfg.replace(categorical_lr=0.0)).param_groups) == 1


def test_quantile_targets_get_one_output_per_quantile_and_the_map_picks_each_targets_loss():
    cfg = learn_cfg(target_loss="mse", target_loss_map={"b": "quantile"}, quantiles=[0.25, 0.5, 0.75])
    layout = TargetLayout.from_config(cfg, ["a", "b"])
    assert layout.n_outputs == 4 and layout.quantile_targets == [1]
    model = AAM(cfg, ["a", "b"], SEQ_LEN, CATEGORIES).eval()
    batch = batch_with_codes()
    out = model(batch)
    raw = out["raw_prediction"]
    assert out["prediction"].shape == (8, 2) and out["quantiles"].shape == (8, 1, 3)
    torch.testing.assert_close(out["prediction"][:, 1], raw[:, 2])  # b's median
    loss, parts = total_loss(out, batch, cfg, None)
    t = batch["targets"]
    expected = (target_loss(raw[:, :1], t[:, :1], "mse")
                + target_loss(raw[:, 1:], t[:, 1:], "quantile", quantiles=(0.25, 0.5, 0.75))) / 2
    torch.testing.assert_close(parts["target"], expected)


def test_the_pinball_loss_matches_its_definition():
    pred = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    y = torch.tensor([[1.0], [1.0]])
    # errors y - pred: [[1, 0], [-1, -1]]; q = (0.2, 0.8): [[0.2, 0], [0.8, 0.2]] -> mean 0.3
    assert float(target_loss(pred, y, "quantile", quantiles=(0.2, 0.8))) == pytest.approx(0.3)


def test_the_asymmetric_loss_charges_each_side_its_own_price():
    pred, y = torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0], [1.0]])
    assert float(target_loss(pred, y, "asymmetric", over=3.0, under=0.5)) == pytest.approx((3.0 + 0.5) / 2)


def test_a_model_without_count_head_builds_and_runs_none():
    model = model_for(count_head=False, count_weight=0.1, count_embed="add")
    assert model.count_head is None
    assert "count_prediction" not in model.train()(batch_with_codes(), mask_nucleotides=True)


def test_config_rejects_bad_quantiles_and_loss_maps_with_the_value():
    from aam.errors import AamUserError

    for bad in ([0.9, 0.5], [0.1, 0.9], [0.0, 0.5], [0.5, 1.2]):
        with pytest.raises(AamUserError, match="quantiles"):
            RunConfig().replace(target_loss="quantile", quantiles=bad)
    with pytest.raises(AamUserError, match="ph='mean'"):
        RunConfig().replace(target_loss_map={"ph": "mean"})
    with pytest.raises(AamUserError, match="transform_by"):
        RunConfig().replace(target_transform="zscore-category")
    with pytest.raises(AamUserError, match="head_hidden"):
        RunConfig().replace(head="residual", head_hidden=[])


def test_dataset_names_are_checked_with_a_did_you_mean():
    from aam.errors import AamUserError

    cfg = RunConfig().replace(head="moe", moe_router="Deit")
    with pytest.raises(AamUserError, match="moe_router: 'Deit'.*did you mean 'Diet'"):
        cfg.check_dataset(["age"], ["Diet", "study"])
    with pytest.raises(AamUserError, match="target_loss_map: 'ph'"):
        RunConfig().replace(target_loss_map={"ph": "mae"}).check_dataset(["age"], [])


def test_redundant_combinations_are_named():
    cfg = RunConfig().replace(head="moe", moe_router="Diet", categorical_fusion="concat",
                              category_affine="study", target_transform="zscore-category", transform_by=["study"])
    warnings = " | ".join(cfg.redundancy_warnings(["Diet", "study"]))
    assert "moe_router=Diet" in warnings and "category_affine=study" in warnings
    assert RunConfig().redundancy_warnings(["Diet"]) == []
    assert "no effect" in RunConfig().replace(categorical_lr=0.01).redundancy_warnings(["Diet"])[0]
