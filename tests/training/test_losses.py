"""Losses: NaN targets ignored, UniFrac over known pairs only, and how total_loss combines terms."""

import math

import pytest
import torch
import torch.nn.functional as F

from aam.config import RunConfig
from aam.training.losses import count_loss, nucleotide_loss, target_loss, total_loss, unifrac_loss

NAN = float("nan")


@pytest.mark.parametrize("kind", ["mse", "mae", "huber"])
def test_target_loss_ignores_nan_targets(kind):
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    target = torch.tensor([[1.5, NAN], [NAN, 2.0], [3.0, NAN]])
    loss = target_loss(pred, target, kind, huber_delta=1.0)
    p, t = torch.tensor([1.0, 4.0, 5.0]), torch.tensor([1.5, 2.0, 3.0])
    expected = {"mse": F.mse_loss(p, t), "mae": F.l1_loss(p, t), "huber": F.huber_loss(p, t, delta=1.0)}[kind]
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (pred.grad[torch.isnan(target)] == 0).all()
    assert (pred.grad[~torch.isnan(target)] != 0).all()


def test_target_loss_without_any_target_is_zero_with_a_graph():
    pred = torch.randn(4, 2, requires_grad=True)
    loss = target_loss(pred, torch.full((4, 2), NAN), "mse")
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="kind"):
        target_loss(pred, torch.zeros(4, 2), "cosine")


def test_huber_delta_is_used():
    pred, target = torch.tensor([[4.0]]), torch.tensor([[0.0]])
    assert target_loss(pred, target, "huber", huber_delta=1.0).item() == pytest.approx(3.5)
    assert target_loss(pred, target, "huber", huber_delta=2.0).item() == pytest.approx(6.0)


def test_unifrac_loss_by_hand_on_three_points():
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], requires_grad=True)
    matrix = torch.tensor([[0.0, 4.0, 10.0], [4.0, 0.0, 3.0], [10.0, 3.0, 0.0]])
    # distances 5 (0-1), 10 (0-2), 5 (1-2) vs 4, 10, 3: ((5-4)^2 + 0 + (5-3)^2) / 3
    loss = unifrac_loss(emb, torch.tensor([0, 1, 2]), matrix)
    assert loss.item() == pytest.approx(5 / 3, rel=1e-6)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    # rows index the matrix: the same points listed as rows 2, 0, 1 read other distances
    permuted = unifrac_loss(emb.detach(), torch.tensor([2, 0, 1]), matrix)
    # pairs: (2,0)=10 vs 5, (2,1)=3 vs 10, (0,1)=4 vs 5
    assert permuted.item() == pytest.approx((25 + 49 + 1) / 3, rel=1e-6)


def test_unifrac_loss_uses_only_known_pairs():
    matrix = torch.tensor([[0.0, 0.3, 0.7], [0.3, 0.0, 0.5], [0.7, 0.5, 0.0]])
    emb = torch.tensor([[0.0, 0.0], [9.0, 9.0], [1.0, 0.0]], requires_grad=True)
    rows = torch.tensor([0, -1, 2])
    loss = unifrac_loss(emb, rows, matrix)
    assert loss.item() == pytest.approx((1.0 - 0.7) ** 2, rel=1e-6)  # only the (0, 2) pair
    loss.backward()
    assert torch.equal(emb.grad[1], torch.zeros(2))  # the unknown sample plays no part
    moved = emb.detach().clone()
    moved[1] = -100.0
    assert unifrac_loss(moved, rows, matrix).item() == pytest.approx(loss.item())


def test_unifrac_loss_without_a_pair_is_zero_and_safe_at_identical_points():
    emb = torch.randn(3, 4, requires_grad=True)
    zero = unifrac_loss(emb, torch.tensor([-1, 2, -1]), torch.eye(3))
    assert zero.item() == 0.0 and zero.requires_grad
    same = torch.ones(2, 4, requires_grad=True)
    loss = unifrac_loss(same, torch.tensor([0, 1]), torch.tensor([[0.0, 0.5], [0.5, 0.0]]))
    loss.backward()
    assert torch.isfinite(same.grad).all()
    # any N works (the loop may all-gather embeddings from every worker first)
    n = 37
    big = unifrac_loss(torch.randn(n, 4), torch.arange(n), torch.rand(n, n))
    assert torch.isfinite(big)


def test_nucleotide_and_count_losses():
    logits, labels = torch.randn(5, 7), torch.tensor([1, 2, 3, 4, 5])
    torch.testing.assert_close(nucleotide_loss(logits, labels), F.cross_entropy(logits, labels))
    empty = torch.zeros(0, 7, requires_grad=True)
    assert nucleotide_loss(empty, torch.zeros(0, dtype=torch.long)).item() == 0.0

    pred = torch.tensor([[1.0, 2.0, 9.0], [0.5, 9.0, 9.0]])
    counts = torch.tensor([[3.0, 10.0, 0.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = ((1 - math.log(4)) ** 2 + (2 - math.log(11)) ** 2 + (0.5 - math.log(2)) ** 2) / 3
    assert count_loss(pred, torch.log1p(counts), mask).item() == pytest.approx(expected, rel=1e-6)
    assert count_loss(pred, torch.log1p(counts), torch.zeros_like(mask)).item() == 0.0


def _outputs_and_batch():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(4, 3, generator=g, requires_grad=True)
    outputs = {
        "sample_embedding": emb,
        "prediction": emb[:, :1] * 2,
        "nucleotide_logits": emb.sum() * torch.ones(6, 7) + torch.randn(6, 7, generator=g),
        "nucleotide_labels": torch.tensor([1, 2, 3, 4, 5, 1]),
        "count_prediction": emb[:, :2] + 1,
        "count_mask": torch.tensor([[True, False]] * 4),
        "count_target": torch.log1p(torch.tensor([[3.0, 5.0]] * 4)),
    }
    batch = {
        "targets": torch.tensor([[0.5], [NAN], [1.0], [-1.0]]),
        "unifrac_row": torch.tensor([0, 1, -1, 2]),
        "asv_mask": torch.ones(4, 2, dtype=torch.bool),
        "counts": torch.tensor([[3.0, 5.0]] * 4),
    }
    matrix = torch.rand(3, 3, generator=g)
    return outputs, batch, (matrix + matrix.T) / 2


def test_total_loss_is_the_weighted_sum_of_its_parts():
    outputs, batch, matrix = _outputs_and_batch()
    cfg = RunConfig(target_weight=1.0, unifrac_weight=0.5, nucleotide_weight=0.1, count_weight=0.2, target_loss="mae")
    loss, parts = total_loss(outputs, batch, cfg, matrix)
    assert set(parts) == {"target", "unifrac", "nucleotide", "count"}
    assert not any(v.requires_grad for v in parts.values())
    torch.testing.assert_close(parts["target"], target_loss(outputs["prediction"], batch["targets"], "mae"))
    torch.testing.assert_close(parts["count"], count_loss(outputs["count_prediction"], outputs["count_target"],
                                                          outputs["count_mask"]))
    expected = parts["target"] + 0.5 * parts["unifrac"] + 0.1 * parts["nucleotide"] + 0.2 * parts["count"]
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert outputs["sample_embedding"].grad.abs().sum() > 0


def test_total_loss_skips_zero_weights_and_absent_inputs():
    outputs, batch, matrix = _outputs_and_batch()
    cfg = RunConfig(unifrac_weight=0.0, count_weight=0.0)
    _, parts = total_loss(outputs, batch, cfg, matrix)
    assert set(parts) == {"target", "nucleotide"}
    for key in ("nucleotide_logits", "nucleotide_labels", "count_prediction", "count_mask"):
        outputs.pop(key)
    batch["targets"] = torch.zeros(4, 0)
    outputs["prediction"] = torch.zeros(4, 0)
    _, parts = total_loss(outputs, batch, RunConfig(), None)  # pretraining without UniFrac: nothing on
    assert parts == {}
    loss, parts = total_loss(outputs, batch, RunConfig(), matrix)
    assert set(parts) == {"unifrac"}
    # the count term falls back to every real slot when the model hid no count
    outputs["count_prediction"] = torch.zeros(4, 2)
    _, parts = total_loss(outputs, batch, RunConfig(unifrac_weight=0.0), None)
    assert parts["count"].item() == pytest.approx((math.log(4) ** 2 + math.log(6) ** 2) / 2, rel=1e-6)


def test_total_loss_uses_gathered_embeddings_for_unifrac():
    outputs, batch, matrix = _outputs_and_batch()
    gathered_emb = torch.randn(6, 3)
    gathered_rows = torch.tensor([0, 1, 2, 2, -1, 0])
    _, parts = total_loss(outputs, batch, RunConfig(), matrix, gathered=(gathered_emb, gathered_rows))
    torch.testing.assert_close(parts["unifrac"], unifrac_loss(gathered_emb, gathered_rows, matrix))
    _, local = total_loss(outputs, batch, RunConfig(), matrix)
    assert not torch.allclose(local["unifrac"], parts["unifrac"])
