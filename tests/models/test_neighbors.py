"""neighbor_prior: the k nearest training samples by Jaccard distance, their mean target gated into
the prediction; on the bundled real table (converted by the session's `example_dataset`)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist

from aam.config import RunConfig
from aam.data import Dataset, convert_dataset
from aam.data.dataset import GROUP_COLUMN
from aam.data.collate import collate, raw_targets
from aam.errors import AamUserError
from aam.examples import path as example_path
from aam.models.neighbors import SHARPNESS, NeighborPrior
from aam.training.checkpoint import load_model
from aam.training.folds import fold_static, split_folds
from aam.training.loop import batch_spec, build_model, fit
from aam.training.predict import predict_table
from aam.training.prepare import load_static
from aam.training.session import Session

TINY = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, token_limit=48, batch_size=16, epochs=2)


def setup(data, k=3, **changes):
    cfg = RunConfig.from_dict({"data": str(data), **TINY, "neighbor_prior": k, **changes})
    static, train_rows = load_static(cfg)
    model = build_model(cfg, static).eval()
    return cfg, static, train_rows, model


def presence(rows: pa.Table, n_asvs: int) -> np.ndarray:
    lists = rows.column("asv_idx").to_pylist()
    out = np.zeros((len(lists), n_asvs), dtype=bool)
    for i, asvs in enumerate(lists):
        out[i, asvs] = True
    return out


def test_distances_are_jaccard_on_every_asv_and_a_sample_is_never_its_own_neighbour(example_dataset):
    # token_limit 8 keeps few ASVs for attention: the distances must still read all of them
    cfg, static, train_rows, model = setup(example_dataset, token_limit=8)
    n_asvs = len(static.asv_sequences)
    spec = batch_spec(cfg, static)
    for rows in (static.eval_rows["test"], train_rows.slice(0, 20)):
        got = model.neighbor_prior.distances(collate(rows, spec)).numpy()
        want = cdist(presence(rows, n_asvs), presence(train_rows, n_asvs), "jaccard")
        own = np.array(rows.column("sample_id").to_pylist())[:, None] == np.array(
            train_rows.column("sample_id").to_pylist())[None, :]
        assert np.isinf(got[own]).all() and (own.sum(axis=1) == (rows is not static.eval_rows["test"])).all()
        np.testing.assert_allclose(got[~own], want[~own], atol=1e-6)


def test_leave_group_out_neighbours_never_find_a_training_samples_own_group(tmp_path):
    # test samples come from groups training never saw: with the option, a training sample's too
    src = example_path("mouse_age_mini")
    data = convert_dataset(table=src / "feature-table.biom", metadata=src / "sample-metadata.tsv", out=tmp_path / "g",
                           targets=["Age_wk"], group_by="Sampling-date", seed=0).out
    cfg, static, train_rows, model = setup(data, neighbor_leave_group_out=True)
    assert static.neighbor_reference["groups"] == train_rows.column(GROUP_COLUMN).to_pylist()
    spec = batch_spec(cfg, static)
    n_asvs = len(static.asv_sequences)
    train_groups = np.array(train_rows.column(GROUP_COLUMN).to_pylist())
    for rows in (train_rows.slice(0, 40), static.eval_rows["test"]):
        got = model.neighbor_prior.distances(collate(rows, spec)).numpy()
        same = np.array(rows.column(GROUP_COLUMN).to_pylist())[:, None] == train_groups[None, :]
        assert same.any() == (rows is not static.eval_rows["test"])  # a grouped split: test's groups are new
        want = cdist(presence(rows, n_asvs), presence(train_rows, n_asvs), "jaccard")
        assert np.isinf(got[same]).all()
        np.testing.assert_allclose(got[~same], want[~same], atol=1e-6)
    # the saved model keeps the groups, so a reloaded one leaves out the same samples
    assert model.neighbor_prior.payload()["groups"] == static.neighbor_reference["groups"]
    # without the option only the sample itself is left out, as on an ungrouped table
    cfg, static, train_rows, model = setup(data)
    assert static.neighbor_reference["groups"] is None
    rows = train_rows.slice(0, 40)
    got = model.neighbor_prior.distances(collate(rows, spec)).numpy()
    own = np.array(rows.column("sample_id").to_pylist())[:, None] == np.array(
        train_rows.column("sample_id").to_pylist())[None, :]
    assert np.isfinite(got[~own]).all() and np.isinf(got[own]).all()


def test_a_table_listing_its_asvs_in_another_order_finds_the_same_neighbours(example_dataset):
    cfg, static, _, model = setup(example_dataset)
    rows = static.eval_rows["test"]
    before = model.neighbor_prior.distances(collate(rows, batch_spec(cfg, static)))
    # the same samples in a table whose ASV index runs backwards, matched again by sequence
    n = len(static.asv_sequences)
    reversed_rows = rows.set_column(rows.column_names.index("asv_idx"), "asv_idx", pa.array(
        [[n - 1 - i for i in asvs] for asvs in rows.column("asv_idx").to_pylist()], pa.list_(pa.int32())))
    model.index_table(static.asv_sequences[::-1])
    after = model.neighbor_prior.distances(collate(reversed_rows, batch_spec(cfg, static, tokens=static.tokens[::-1])))
    torch.testing.assert_close(after, before)


def test_prior_is_the_mean_transformed_target_of_the_k_nearest_and_the_gate_starts_halfway(example_dataset):
    cfg, static, train_rows, model = setup(example_dataset, k=3)
    n_asvs = len(static.asv_sequences)
    rows = static.eval_rows["val"]
    batch = collate(rows, batch_spec(cfg, static))
    with torch.no_grad():
        prior, gate, known = model.neighbor_prior(batch)
        plain = build_model(cfg.replace(neighbor_prior=0), static).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("neighbor_prior.")})
        head, moved = plain(batch)["prediction"], model(batch)["prediction"]
    distance = cdist(presence(rows, n_asvs), presence(train_rows, n_asvs), "jaccard")
    nearest = np.argsort(distance, axis=1, kind="stable")
    train_targets = static.transform.forward(raw_targets(train_rows, static.targets), None)[:, 0]
    # where the 3rd and 4th nearest tie, which of them counts is the sort's choice: compare the rest
    ranked = np.take_along_axis(distance, nearest, axis=1)
    untied = ranked[:, 2] < ranked[:, 3] - 1e-9
    assert untied.sum() >= len(untied) // 2
    np.testing.assert_allclose(prior[untied, 0].numpy(), train_targets[nearest[untied, :3]].mean(axis=1), rtol=1e-5,
                               atol=1e-5)
    assert known.all() and torch.allclose(gate, torch.full_like(gate, 0.5))
    # the prediction is the head's, moved halfway to the prior
    torch.testing.assert_close(moved, head + 0.5 * (prior - head))


def test_softmax_weighting_weighs_the_k_nearest_by_nearness_with_a_learned_sharpness(example_dataset):
    cfg, static, train_rows, model = setup(example_dataset, k=4, neighbor_weighting="softmax")
    n_asvs = len(static.asv_sequences)
    rows = static.eval_rows["val"]
    batch = collate(rows, batch_spec(cfg, static))
    distance = cdist(presence(rows, n_asvs), presence(train_rows, n_asvs), "jaccard")
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :5]
    ranked = np.take_along_axis(distance, nearest, axis=1)
    untied = ranked[:, 3] < ranked[:, 4] - 1e-9
    assert untied.sum() >= len(untied) // 2
    train_targets = static.transform.forward(raw_targets(train_rows, static.targets), None)[:, 0][nearest[:, :4]]
    got = {}
    for sharpness in (1e-6, SHARPNESS):  # the starting sharpness last: the backward below starts there
        with torch.no_grad():
            model.neighbor_prior.log_sharpness.fill_(np.log(sharpness))
            got[sharpness] = model.neighbor_prior(batch)[0][:, 0].numpy()
        weights = np.exp(-sharpness * (ranked[:, :4] - ranked[:, :1]))
        want = (weights * train_targets).sum(axis=1) / weights.sum(axis=1)
        np.testing.assert_allclose(got[sharpness][untied], want[untied], rtol=1e-5, atol=1e-5)
    # near zero sharpness is the plain mean; at the starting sharpness the nearness of these samples shows
    assert np.abs(got[1e-6] - train_targets.mean(axis=1)).max() < 1e-4
    assert np.abs(got[SHARPNESS] - got[1e-6]).max() > 0.05
    # the sharpness is learned: the loss reaches it
    model.train()
    model(batch)["prediction"].sum().backward()
    assert model.neighbor_prior.log_sharpness.grad.abs().sum() > 0
    # a target most reference samples lack: fewer known neighbours than k, a finite gradient all the same
    reference = dict(static.neighbor_reference)
    reference["targets"] = np.array(reference["targets"], dtype=np.float32).copy()
    reference["targets"][2:] = np.nan
    few = NeighborPrior(reference, 4, 1, weighting="softmax")
    few.index_table(static.asv_sequences)
    prior, _, known = few(batch)
    prior.sum().backward()
    assert known.all() and torch.isfinite(few.log_sharpness.grad).all() and few.log_sharpness.grad.abs().sum() > 0
    two = reference["targets"][:2, 0]
    assert ((prior[:, 0] >= two.min() - 1e-6) & (prior[:, 0] <= two.max() + 1e-6)).all()
    with pytest.raises(AamUserError, match=r"neighbor_weighting='nearest'"):
        RunConfig.from_dict({"neighbor_weighting": "nearest"})


def test_a_fold_model_searches_only_its_own_training_samples(example_dataset):
    cfg, static, train_rows, _ = setup(example_dataset, folds=3)
    rows = pa.concat_tables([train_rows, static.eval_rows["val"]]).sort_by("sample_id")
    for train, held_out in split_folds(rows, cfg):
        reference = fold_static(cfg.replace(folds=1), static, train, held_out).neighbor_reference
        assert reference["sample_ids"] == train.column("sample_id").to_pylist()
        assert not set(reference["sample_ids"]) & set(held_out.column("sample_id").to_pylist())
        assert not set(reference["sample_ids"]) & set(static.sample_lists["test"])
        # targets on the fold's own transform, fitted on its training rows
        fold_transform = fold_static(cfg.replace(folds=1), static, train, held_out).transform
        np.testing.assert_allclose(reference["targets"], fold_transform.forward(raw_targets(train, static.targets), None),
                                   rtol=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "softmax"])
def test_a_saved_model_carries_its_samples_and_predicts_a_new_table_as_in_training(example_dataset, weighting):
    cfg = RunConfig.from_dict({"data": str(example_dataset), **TINY, "neighbor_prior": 2,
                               "neighbor_weighting": weighting})
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed, verbose=False)
    fit(cfg, static, session)
    folder = session.last_checkpoint
    bundle = load_model(folder)
    assert bundle.model.neighbor_prior.sample_ids == rows.column("sample_id").to_pylist()
    src = example_path("mouse_age_mini")
    frame, _ = predict_table(folder, src / "feature-table.biom", metadata=src / "sample-metadata.tsv")
    test = pd.read_csv(folder / "test_predictions.tsv", sep="\t", dtype={"sample_id": str})
    mine = frame.set_index("sample_id").loc[test["sample_id"], "Age_wk_predicted"].to_numpy()
    np.testing.assert_allclose(mine, test["Age_wk_predicted"], rtol=1e-5)
    # without its reference it is another model: the prior is what the predictions read
    plain = build_model(cfg.replace(neighbor_prior=0), static).eval()
    plain.load_state_dict({k: v for k, v in bundle.model.state_dict().items() if not k.startswith("neighbor_prior.")})
    learned = {"neighbor_prior.gate_weight", "neighbor_prior.gate_bias"}
    if weighting == "softmax":  # the sharpness was trained and saved: not its starting value
        learned.add("neighbor_prior.log_sharpness")
        assert bundle.model.neighbor_prior.weighting == "softmax"
        assert not torch.allclose(bundle.model.neighbor_prior.log_sharpness, torch.tensor(np.log(SHARPNESS)).float())
    assert set(bundle.model.state_dict()) - set(plain.state_dict()) == learned


def test_a_negative_neighbor_count_is_refused_with_the_value():
    with pytest.raises(AamUserError, match=r"neighbor_prior=-1"):
        RunConfig.from_dict({"neighbor_prior": -1})
