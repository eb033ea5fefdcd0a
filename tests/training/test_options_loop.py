"""The model options through the whole loop on the bundled real data: prediction files with
every quantile, per-category transforms undone, the diagnostics and both learning rates logged,
the frozen-encoder ASV cache, and `aam predict` reading categorical metadata."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from aam.errors import AamUserError
from aam.examples import path as example_path
from aam.training.checkpoint import load_model
from aam.training.loop import fit
from aam.training.session import Session
from aam.training.predict import predict_table
from aam.training.prepare import load_static
from tests.training.test_loop import tiny_cfg

OPTIONS = dict(categorical_fusion="gmu", head="moe", moe_router="Diet", moe_experts=2, head_hidden=[8],
               category_affine="study", categorical_lr=0.01, target_loss="quantile", quantiles=[0.1, 0.5, 0.9],
               target_transform="zscore-category", transform_by=["study"], epochs=2, lr=1e-3)


@pytest.fixture(scope="module")
def optioned(example_dataset):
    cfg = tiny_cfg(example_dataset, **OPTIONS)
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed, verbose=False)
    metrics = fit(cfg, static, session)
    return cfg, static, session.last_checkpoint, metrics


def test_quantile_predictions_are_all_written_in_order_with_the_median_as_the_prediction(optioned):
    _, static, folder, _ = optioned
    frame = pd.read_csv(folder / "test_predictions.tsv", sep="\t")
    assert list(frame.columns) == ["sample_id", "Age_wk_actual", "Age_wk_predicted", "Age_wk_q0.1",
                                   "Age_wk_q0.5", "Age_wk_q0.9", "best_epoch"]
    np.testing.assert_allclose(frame["Age_wk_q0.5"], frame["Age_wk_predicted"])
    assert list(frame["sample_id"]) == static.sample_lists["test"]
    # undone per study: on the scale of weeks, not z-scores
    assert frame["Age_wk_predicted"].abs().max() > 5


def test_diagnostics_and_both_learning_rates_are_logged(optioned):
    _, _, folder, metrics = optioned
    first = json.loads((folder / "metrics.json").read_text())["history"][0]
    assert first["lr_categorical"] / first["lr"] == pytest.approx(10.0)  # 0.01 vs 1e-3, same schedule
    assert 0 < metrics["val_gmu_gate"] < 1
    usage = [metrics[f"val_expert{e}_usage"] for e in range(2)]
    assert sum(usage) == pytest.approx(1.0, abs=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lr", "lr/categorical", "val/gmu_gate", "val/expert0_usage", "val/expert1_usage"} <= tags


def test_the_checkpoint_alone_predicts_a_table_with_its_metadata(optioned, tmp_path):
    _, _, folder, _ = optioned
    src = example_path("mouse_age_mini")
    saved = pd.read_csv(folder / "test_predictions.tsv", sep="\t").set_index("sample_id")
    frame, notes = predict_table(folder, src / "feature-table.biom", metadata=src / "sample-metadata.tsv")
    frame = frame.set_index("sample_id").loc[saved.index]
    np.testing.assert_allclose(frame["Age_wk_predicted"], saved["Age_wk_predicted"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(frame["Age_wk_q0.9"], saved["Age_wk_q0.9"], rtol=1e-4, atol=1e-4)
    with pytest.raises(AamUserError, match="pass --metadata"):
        predict_table(folder, src / "feature-table.biom")


def test_unseen_categories_at_prediction_are_unknown_and_said(optioned, tmp_path):
    _, _, folder, _ = optioned
    src = example_path("mouse_age_mini")
    meta = pd.read_csv(src / "sample-metadata.tsv", sep="\t", dtype=str)
    meta["Diet"] = "martian"
    changed = tmp_path / "meta.tsv"
    meta.to_csv(changed, sep="\t", index=False)
    frame, notes = predict_table(folder, src / "feature-table.biom", metadata=changed)
    assert any("Diet: categories not seen in training" in n and "martian" in n for n in notes)
    assert np.isfinite(frame["Age_wk_predicted"]).all()


def test_a_frozen_encoder_with_the_asv_cache_trains_the_same_model_as_without(optioned, example_dataset):
    _, _, folder, _ = optioned
    frozen = dict(pretrained_encoder=str(folder), freeze_encoder=True, epochs=1, head="linear")
    results = {}
    for cache in (True, False):
        cfg = tiny_cfg(example_dataset, **frozen, cache_asv_vectors=cache)
        static, rows = load_static(cfg)
        assert (static.asv_vectors is not None) == cache
        assert (static.sample_vectors is not None) == cache
        if cache:
            assert len(static.sample_ids) == len(set(static.sample_ids)) == sum(map(len, static.sample_lists.values()))
        session = Session(rows, cfg.seed, verbose=False)
        results[cache] = (fit(cfg, static, session), load_model(session.last_checkpoint).model.state_dict())
    for key, value in results[True][1].items():
        torch.testing.assert_close(value, results[False][1][key], rtol=1e-4, atol=1e-5)
    assert results[True][0]["val_mae"] == pytest.approx(results[False][0]["val_mae"], rel=1e-4)
    assert json.loads((folder / "config.json").read_text())["categorical_fusion"] == "gmu"


def test_bf16_autocast_trains_to_finite_scores_close_to_fp32(example_dataset):
    scores = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_cfg(example_dataset, epochs=1, precision=precision)
        static, rows = load_static(cfg)
        scores[precision] = fit(cfg, static, Session(rows, cfg.seed, verbose=False))["val_mae"]
    assert np.isfinite(scores["bf16"])
    assert scores["bf16"] != scores["fp32"]  # the bf16 path did run
    assert scores["bf16"] == pytest.approx(scores["fp32"], rel=0.2)  # same seed, bf16 rounding only
