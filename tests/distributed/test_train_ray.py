"""`aam train` through a real two-worker Ray Train TorchTrainer, then `aam predict` on its model."""

import json

import numpy as np
import pandas as pd
import pytest

from aam.config import RunConfig
from aam.distributed.train import train
from aam.errors import AamUserError

pytestmark = pytest.mark.slow

TINY = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, token_limit=48, batch_size=16, epochs=2)


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, example_dataset, tmp_path_factory):
    cfg = RunConfig.from_dict({"data": str(example_dataset), **TINY, "workers": 2})
    out = tmp_path_factory.mktemp("runs") / "two_workers"
    metrics = train(cfg, out)
    return cfg, out, metrics


def test_two_workers_train_and_leave_a_complete_run_folder(two_worker_run):
    cfg, out, metrics = two_worker_run
    assert metrics["epoch"] == 2 and np.isfinite(metrics["test_mae"])
    assert RunConfig.load(out / "config.json").workers == 2
    history = json.loads((out / "metrics.json").read_text())["history"]
    # each worker trained on half the shard: fewer steps than one worker, same number of epochs
    assert [h["epoch"] for h in history] == [1, 2]
    assert (out / "model.pt").is_file() and (out / "test_predictions.tsv").is_file()


def test_predict_rebuilds_the_model_from_the_run_folder_and_matches_test_predictions(two_worker_run, tmp_path):
    from aam.examples import path
    from aam.training.predict import predict_table

    _, out, _ = two_worker_run
    frame, notes = predict_table(out, path("mouse_age_mini") / "feature-table.biom")
    assert notes == []  # this model reads no categorical column: nothing to say
    saved = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    merged = saved.merge(frame, on="sample_id", suffixes=("_run", "_new"))
    assert len(merged) == len(saved) > 0
    np.testing.assert_allclose(merged["Age_wk_predicted_new"], merged["Age_wk_predicted_run"], rtol=1e-5, atol=1e-5)


def test_more_workers_than_training_samples_is_a_user_error(ray_cluster, example_dataset, tmp_path):
    cfg = RunConfig.from_dict({"data": str(example_dataset), **TINY, "workers": 1000})
    with pytest.raises(AamUserError, match="workers=1000"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_pretrained_encoder_that_does_not_fit_is_refused_before_any_worker_starts(two_worker_run, tmp_path):
    cfg, pretrained, _ = two_worker_run
    wider = RunConfig.from_dict({**cfg.to_dict(), "d_model": 32, "pretrained_encoder": str(pretrained)})
    with pytest.raises(AamUserError, match="does not fit this model"):
        train(wider, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def folds_on_two_workers(ray_cluster, example_dataset, tmp_path_factory):
    cfg = RunConfig.from_dict({"data": str(example_dataset), **TINY, "folds": 3, "workers": 2})
    out = tmp_path_factory.mktemp("runs") / "folds_on_two_workers"
    return cfg, out, train(cfg, out)


def test_folds_on_two_workers_split_the_fold_models_and_predict_every_sample_once(folds_on_two_workers):
    cfg, out, metrics = folds_on_two_workers
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["fold_workers"] == {"0": 0, "1": 1, "2": 0}  # both workers trained whole fold models
    oof = pd.read_csv(out / "val_predictions.tsv", sep="\t", dtype={"sample_id": str})
    non_test = [s for split in ("train", "val") for s in (out / "folds" / "0" / "samples" / f"{split}.txt")
                .read_text().split()]
    assert sorted(oof["sample_id"]) == sorted(non_test)  # every non-test sample (no shard dropped any), once
    for k in range(3):  # rank 0's folder holds every fold's model, whichever worker trained it
        fold = out / "folds" / str(k)
        assert (fold / "model.pt").is_file() and (fold / "test_predictions.tsv").is_file()
    assert metrics["val_mae"] == pytest.approx(float(np.mean(np.abs(oof["Age_wk_actual"] - oof["Age_wk_predicted"]))))


def test_folds_on_two_workers_are_the_models_one_process_trains(folds_on_two_workers):
    import torch

    from aam.training.loop import fit
    from aam.training.prepare import load_static
    from aam.training.session import Session

    cfg, out, _ = folds_on_two_workers
    one = cfg.replace(workers=1)
    static, rows = load_static(one)
    session = Session(rows, one.seed, verbose=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each Ray worker (1 CPU): the same float sums, bit for bit
    try:
        fit(one, static, session)
    finally:
        torch.set_num_threads(threads)
    for name in ("val_predictions.tsv", "test_predictions.tsv"):
        mine = pd.read_csv(session.last_checkpoint / name, sep="\t").sort_values("sample_id", ignore_index=True)
        theirs = pd.read_csv(out / name, sep="\t").sort_values("sample_id", ignore_index=True)
        pd.testing.assert_frame_equal(mine, theirs, check_exact=False, rtol=1e-6)
