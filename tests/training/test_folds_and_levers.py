"""Small-data levers on the bundled real data, in-process: cross-validation (`folds`), early
stopping (`patience`), augmentation reaching the training step, and the identity vectors' own
weight decay."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from aam.config import RunConfig
from aam.data import Dataset, convert_dataset
from aam.errors import AamUserError
from aam.examples import path as example_path
from aam.data.dataset import GROUP_COLUMN
from aam.training.folds import fold_assignments
from aam.training.loop import fit
from aam.training.optim import IDENTITY, make_optimizer
from aam.training.predict import predict_table
from aam.training.prepare import load_static
from aam.training.session import Session

TINY = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, token_limit=48, batch_size=16, epochs=2)


def run(data, **changes):
    cfg = RunConfig.from_dict({"data": str(data), **TINY, **changes})
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed, verbose=False)
    return cfg, static, session, fit(cfg, static, session)


@pytest.fixture(scope="module")
def cross_validated(example_dataset):
    return run(example_dataset, folds=3)


def test_folds_predict_every_non_test_sample_once_out_of_fold(cross_validated, example_dataset):
    cfg, static, session, metrics = cross_validated
    folder = session.last_checkpoint
    oof = pd.read_csv(folder / "val_predictions.tsv", sep="\t", dtype={"sample_id": str})
    non_test = static.sample_lists["train"] + static.sample_lists["val"]
    assert sorted(oof["sample_id"]) == sorted(non_test)
    for k in range(3):  # the model that predicts a sample never trained on it
        trained = set((folder / "folds" / str(k) / "samples" / "train.txt").read_text().split())
        held_out = set((folder / "folds" / str(k) / "samples" / "val.txt").read_text().split())
        assert not trained & held_out and trained | held_out == set(non_test)
    mae = float(np.mean(np.abs(oof["Age_wk_actual"] - oof["Age_wk_predicted"])))
    assert metrics["val_mae"] == pytest.approx(mae) and metrics["best_val_score"] == pytest.approx(mae)
    assert [r["epoch"] for r in session.reports] == [1, 2]


def test_folds_test_score_is_the_mean_of_the_fold_models_and_predict_reads_the_folder(cross_validated):
    _, static, session, metrics = cross_validated
    folder = session.last_checkpoint
    tests = [pd.read_csv(folder / "folds" / str(k) / "test_predictions.tsv", sep="\t") for k in range(3)]
    mean = np.mean([t["Age_wk_predicted"] for t in tests], axis=0)
    mine = pd.read_csv(folder / "test_predictions.tsv", sep="\t")
    np.testing.assert_allclose(mine["Age_wk_predicted"], mean, rtol=1e-6)
    assert metrics["test_mae"] == pytest.approx(float(np.mean(np.abs(mine["Age_wk_actual"] - mean))), rel=1e-6)
    info = json.loads((folder / "ensemble.json").read_text())
    assert [m["weight"] for m in info["members"]] == pytest.approx([1 / 3] * 3)
    assert RunConfig.load(folder / "config.json").folds == 3
    table = example_path("mouse_age_mini") / "feature-table.biom"
    frame, _ = predict_table(folder, table)
    singles = [predict_table(folder / "folds" / str(k), table)[0]["Age_wk_predicted"] for k in range(3)]
    np.testing.assert_allclose(frame["Age_wk_predicted"], np.mean(singles, axis=0), rtol=1e-5)


def test_folds_are_even_seeded_and_keep_each_group_on_one_side():
    ids = [f"s{i}" for i in range(100)]
    rows = pa.table({"sample_id": ids, GROUP_COLUMN: [f"g{i // 7}" for i in range(100)]})
    fold = fold_assignments(rows, 4, seed=0)
    groups = np.asarray(rows.column(GROUP_COLUMN).to_pylist())
    assert all(len(set(fold[groups == g])) == 1 for g in set(groups))
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 7
    shuffled = rows.take(pa.array(np.random.default_rng(1).permutation(100)))
    again = dict(zip(shuffled.column("sample_id").to_pylist(), fold_assignments(shuffled, 4, seed=0)))
    assert [again[s] for s in ids] == fold.tolist()  # the same folds whatever the row order
    plain = fold_assignments(rows.drop_columns([GROUP_COLUMN]), 4, seed=0)
    assert np.bincount(plain).tolist() == [25, 25, 25, 25]
    with pytest.raises(AamUserError, match="only 15 groups"):
        fold_assignments(rows, 20, seed=0)


def test_a_grouped_dataset_folds_by_its_groups(tmp_path):
    src = example_path("mouse_age_mini")
    out = convert_dataset(table=src / "feature-table.biom", metadata=src / "sample-metadata.tsv", out=tmp_path / "g",
                          targets=["Age_wk"], group_by="Sampling-date", seed=0).out
    samples = Dataset.open(out).samples
    assert GROUP_COLUMN in samples.column_names
    _, _, session, _ = run(out, folds=2, epochs=1)
    folder = session.last_checkpoint
    date = dict(zip(samples.column("sample_id").to_pylist(), samples.column(GROUP_COLUMN).to_pylist()))
    held = [{date[s] for s in (folder / "folds" / str(k) / "samples" / "val.txt").read_text().split()} for k in (0, 1)]
    assert held[0] and held[1] and not held[0] & held[1]


def test_folds_refuse_what_they_cannot_do(example_dataset):
    base = {"data": str(example_dataset), **TINY}
    with pytest.raises(AamUserError, match="folds=3 with workers=4: .*workers=3 or fewer"):
        RunConfig.from_dict({**base, "folds": 3, "workers": 4})
    assert RunConfig.from_dict({**base, "folds": 3, "workers": 3}).workers == 3  # one fold model per worker
    with pytest.raises(AamUserError, match="folds=3 .*train_on_val"):
        RunConfig.from_dict({**base, "folds": 3, "train_on_val": True})


def test_patience_stops_when_val_stops_improving_and_scores_the_best_epoch(example_dataset):
    full = run(example_dataset, epochs=12, lr=0.03)[2].reports
    val = [r["val_mae"] for r in full]
    # where patience 2 must stop: the first epoch two epochs after the best so far
    stop = next(e for e in range(1, 13) if e - (int(np.argmin(val[:e])) + 1) >= 2)
    assert stop < 12, "this seed's run should stall at least once in 12 epochs"
    _, _, session, metrics = run(example_dataset, epochs=12, lr=0.03, patience=2)
    assert [r["epoch"] for r in session.reports] == list(range(1, stop + 1))
    assert [r["val_mae"] for r in session.reports] == pytest.approx(val[:stop])
    best = session.reports[-1]["best_epoch"]
    assert "test_mae" in metrics  # the stopping epoch scores the best epoch's model on test
    test = pd.read_csv(session.last_checkpoint / "test_predictions.tsv", sep="\t")
    assert (test["best_epoch"] == best).all()


def test_augmentation_reaches_the_training_step_and_is_seeded(example_dataset):
    plain = run(example_dataset, epochs=1)[3]
    augmented = run(example_dataset, epochs=1, augment_drop_asvs=0.5, augment_rarefy=0.5, mixup=0.4)[3]
    again = run(example_dataset, epochs=1, augment_drop_asvs=0.5, augment_rarefy=0.5, mixup=0.4)[3]
    assert augmented["train_loss"] != pytest.approx(plain["train_loss"], rel=1e-6)
    assert augmented["train_loss"] == pytest.approx(again["train_loss"], rel=1e-9)


def test_identity_vectors_get_their_own_weight_decay(example_dataset):
    from aam.training.loop import build_model

    cfg = RunConfig.from_dict({"data": str(example_dataset), **TINY, "asv_identity": True,
                               "identity_weight_decay": 0.3})
    static, _ = load_static(cfg)
    model = build_model(cfg, static)
    groups = {g["name"]: g for g in make_optimizer(model, cfg).param_groups}
    identity = {id(p) for p in model.asv_identity.parameters()}
    assert {id(p) for p in groups[IDENTITY]["params"]} == identity and groups[IDENTITY]["weight_decay"] == 0.3
    assert not identity & {id(p) for p in groups["main"]["params"]}
    assert groups["main"]["weight_decay"] == cfg.weight_decay
    same = make_optimizer(model, cfg.replace(identity_weight_decay=-1)).param_groups
    assert [g["name"] for g in same] == ["main"]
    with pytest.raises(AamUserError, match="identity_weight_decay=-0.5"):
        cfg.replace(identity_weight_decay=-0.5)
