"""The training loop on the bundled real data, in-process (the same `fit` Ray workers run)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from aam.config import RunConfig
from aam.errors import AamUserError
from aam.data.collate import BatchSpec
from aam.training.checkpoint import load_model
from aam.training.evaluation import predict_rows
from aam.training.loop import fit
from aam.training.resume import resume_state
from aam.training.session import Session
from aam.training.prepare import load_static

TINY = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, token_limit=48, batch_size=16, epochs=2,
            dropout=0.1)


def tiny_cfg(data, **changes) -> RunConfig:
    return RunConfig.from_dict({"data": str(data), **TINY, **changes})


def run(cfg, restore=None):
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed, restore=restore)
    metrics = fit(cfg, static, session)
    return static, session, metrics


@pytest.fixture(scope="module")
def finished(example_dataset):
    cfg = tiny_cfg(example_dataset)
    static, session, metrics = run(cfg)
    return cfg, static, session.last_checkpoint, metrics


def test_run_folder_holds_config_predictions_model_and_tensorboard(finished):
    cfg, static, folder, metrics = finished
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.pt", "state.pt", "val_predictions.tsv", "test_predictions.tsv",
            "pred_vs_actual.png", "metrics.json", "tb", "samples"} <= names
    assert RunConfig.load(folder / "config.json") == cfg
    assert list((folder / "tb").glob("events.out.tfevents.*"))
    for split in ("train", "val", "test"):
        listed = (folder / "samples" / f"{split}.txt").read_text().split()
        assert listed == static.sample_lists[split]
    history = json.loads((folder / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert "test_mae" in metrics and "test_Age_wk/r2" in metrics


def test_every_val_and_test_sample_is_predicted_on_the_original_scale(finished):
    _, static, folder, _ = finished
    for split in ("val", "test"):
        frame = pd.read_csv(folder / f"{split}_predictions.tsv", sep="\t")
        assert list(frame["sample_id"]) == static.sample_lists[split]  # no dropped last batch
        assert frame["Age_wk_actual"].between(9, 112).all()  # weeks, not z-scores
        assert frame["best_epoch"].nunique() == 1


def test_checkpoint_alone_rebuilds_the_model_and_reproduces_test_predictions(finished):
    cfg, static, folder, metrics = finished
    bundle = load_model(folder)
    assert bundle.config == cfg and bundle.targets == ["Age_wk"]
    assert bundle.metrics["test_mae"] == pytest.approx(metrics["test_mae"])
    spec = BatchSpec(static.tokens, bundle.targets, list(bundle.categoricals), cfg.token_limit, bundle.transform)
    predicted = predict_rows(bundle.model, static.eval_rows["test"], spec, torch.device("cpu"), batch_size=7)
    saved = pd.read_csv(folder / "test_predictions.tsv", sep="\t")["Age_wk_predicted"].to_numpy()
    np.testing.assert_allclose(predicted.predicted[:, 0], saved, rtol=1e-5, atol=1e-5)


def test_prediction_makes_its_batches_by_the_rules_training_made_them_with(finished):
    from aam.training.loop import batch_spec
    from aam.training.predict import table_batch_spec

    cfg, static, folder, _ = finished
    bundle = load_model(folder)
    # the reference paths too: a model trained with them is predicted with them
    bundle.config = cfg.replace(pad_to_token_limit=True, dedupe_asvs=False, min_abundance=0.01)
    tokens = static.tokens[::-1].copy()
    predicted = table_batch_spec(bundle, tokens, [])
    trained = batch_spec(bundle.config, static, tokens=tokens)
    assert predicted.tokens is tokens and trained.tokens is tokens
    # the transform is the same fit, read back from model.pt (a copy, not the run's object)
    same = lambda spec: {k: v for k, v in vars(spec).items() if k not in ("tokens", "transform")}  # noqa: E731
    assert same(predicted) == same(trained)
    assert predicted.pad_to_limit and not predicted.dedupe and predicted.min_abundance == 0.01


class Interrupted(Exception):
    pass


class StopAfter(Session):
    """Dies right after reporting epoch `n`, as a killed run would (its checkpoint is kept)."""

    def __init__(self, *args, n, **kwargs):
        super().__init__(*args, **kwargs)
        self.n = n

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if metrics["epoch"] == self.n:
            raise Interrupted


def test_resume_continues_exactly_where_the_run_stopped(example_dataset):
    cfg = tiny_cfg(example_dataset, epochs=3)
    _, straight, _ = run(cfg)
    static, rows = load_static(cfg)
    broken = StopAfter(rows, cfg.seed, n=2)
    with pytest.raises(Interrupted):
        fit(cfg, static, broken)
    _, resumed, metrics = run(cfg, restore=resume_state(broken.last_checkpoint))
    a = torch.load(straight.last_checkpoint / "state.pt", weights_only=False)["model"]
    b = torch.load(resumed.last_checkpoint / "state.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [r["epoch"] for r in resumed.reports] == [3]
    history = json.loads((resumed.last_checkpoint / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_a_new_learning_rate_on_resume_replaces_the_checkpoint_one(example_dataset, capsys):
    cfg = tiny_cfg(example_dataset, epochs=3, warmup_frac=0.0)
    static, rows = load_static(cfg)
    broken = StopAfter(rows, cfg.seed, n=1)
    with pytest.raises(Interrupted):
        fit(cfg, static, broken)
    faster = cfg.replace(lr=5e-3)
    _, resumed, _ = run(faster, restore=resume_state(broken.last_checkpoint))
    assert "peak learning rate 0.005 replaces the checkpoint's 0.001" in capsys.readouterr().out
    first_lr_after_resume = resumed.reports[0]["lr"]
    assert first_lr_after_resume > 1e-3  # cosine at 2/3 of a 5e-3 peak is 1.25e-3; the old peak gives 2.5e-4


def test_pretrain_without_targets_then_fine_tune_a_frozen_encoder(example_dataset, tmp_path):
    from aam.data import convert_dataset
    from aam.examples import path

    src = path("mouse_age_mini")
    unlabeled = tmp_path / "unlabeled"
    convert_dataset(src / "feature-table.biom", src / "sample-metadata.tsv", unlabeled, [],
                    unifrac=src / "weighted-unifrac.tsv")
    pre_cfg = tiny_cfg(unlabeled)
    _, pre, pre_metrics = run(pre_cfg)
    assert "val_loss" in pre_metrics and "val_mae" not in pre_metrics
    assert not (pre.last_checkpoint / "test_predictions.tsv").exists()
    pretrained = tmp_path / "pretrained"
    shutil.copytree(pre.last_checkpoint, pretrained)

    fine_cfg = tiny_cfg(example_dataset, pretrained_encoder=str(pretrained), freeze_encoder=True)
    _, fine, _ = run(fine_cfg)
    before = load_model(pretrained).model.state_dict()
    after = load_model(fine.last_checkpoint).model.state_dict()
    encoder_keys = [k for k in before if k.startswith(("asv_encoder.", "sample_encoder."))]
    assert encoder_keys
    for key in encoder_keys:
        torch.testing.assert_close(before[key], after[key])  # frozen: not one weight moved
    head_key = next(k for k in after if k.startswith("head.") and k.endswith("weight"))
    assert head_key in after

    # an encoder that read log1p counts would be fed another scale: refused, naming both
    with pytest.raises(AamUserError, match="count_feature=log1p, this run count_feature=relative"):
        run(tiny_cfg(example_dataset, pretrained_encoder=str(pretrained), count_feature="relative"))
    # frozen and cached: refused where the cache would be computed, before encoding the dataset
    with pytest.raises(AamUserError, match="count_feature=log1p, this run count_feature=relative"):
        load_static(tiny_cfg(example_dataset, pretrained_encoder=str(pretrained), freeze_encoder=True,
                             count_feature="relative"))


@pytest.mark.slow
def test_an_encoder_pretrained_on_a_pool_fine_tunes_a_study_with_shorter_reads(example_dataset, tmp_path):
    """`aam pool` of 176 bp and 150 bp studies -> pretrain -> fine-tune and predict on the 150 bp one."""
    import biom
    from biom.util import biom_open

    from aam.data import convert_dataset, pool_datasets
    from aam.examples import path
    from aam.training.predict import predict_table

    src = path("mouse_age_mini")
    # the same samples read 150 bp long: ASVs equal on their first 150 bp merge (biom sums them)
    short = biom.load_table(str(src / "feature-table.biom")).collapse(
        lambda oid, _: oid[:150], axis="observation", norm=False)
    with biom_open(str(tmp_path / "short.biom"), "w") as f:
        short.to_hdf5(f, "aam tests")
    short_dataset = tmp_path / "short150"
    convert_dataset(tmp_path / "short.biom", src / "sample-metadata.tsv", short_dataset, ["Age_wk"], seed=1)
    pool_datasets([example_dataset, short_dataset], tmp_path / "pool")
    _, pre, pre_metrics = run(tiny_cfg(tmp_path / "pool", epochs=1))
    assert "val_loss" in pre_metrics and not any(k.startswith("test_") for k in pre_metrics)  # no test split
    pretrained = tmp_path / "pretrained"
    shutil.copytree(pre.last_checkpoint, pretrained)

    fine_cfg = tiny_cfg(short_dataset, pretrained_encoder=str(pretrained), freeze_encoder=True, epochs=1)
    static, fine, metrics = run(fine_cfg)
    assert static.token_width == 176 and (static.tokens[:, 150:] == 0).all()  # padded as in the pool
    before = load_model(pretrained).model.state_dict()
    after = load_model(fine.last_checkpoint).model.state_dict()
    torch.testing.assert_close(before["asv_encoder.position_embedding.weight"],
                               after["asv_encoder.position_embedding.weight"])
    predicted, _ = predict_table(fine.last_checkpoint / "model.pt", tmp_path / "short.biom")
    assert len(predicted) == short.shape[1]
    assert np.isfinite(predicted["Age_wk_predicted"].to_numpy()).all()

    # an encoder of narrower reads than the dataset cannot read it: refused, saying how to fix it
    _, narrow, _ = run(tiny_cfg(short_dataset, epochs=1))
    with pytest.raises(AamUserError, match="trained on sequences of up to 150 bp, this dataset has 176 bp"):
        load_static(tiny_cfg(example_dataset, pretrained_encoder=str(narrow.last_checkpoint)))


def test_train_on_val_keeps_the_last_epoch(example_dataset):
    cfg = tiny_cfg(example_dataset, epochs=3, train_on_val=True)
    static, rows = load_static(cfg)
    assert rows.num_rows == len(static.sample_lists["train"]) + len(static.sample_lists["val"])
    _, session, metrics = run(cfg)
    assert metrics["best_epoch"] == 3


def test_a_session_keeps_one_checkpoint_folder_and_removes_it_at_exit(tmp_path):
    """Sessions that keep no checkpoint (every Tune trial's) make no folder; the one that keeps a
    checkpoint removes its folder when the process ends (a search must not fill /tmp)."""
    import subprocess
    import sys

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(b"weights")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = (
        "import json, os, sys, pyarrow as pa\n"
        "from aam.training.session import Session\n"
        "rows = pa.table({'x': [1]})\n"
        "idle = [Session(rows, 0, verbose=False) for _ in range(3)]\n"
        "keeper = Session(rows, 0, verbose=False)\n"
        "for epoch in range(2):\n"
        "    keeper.report({'epoch': epoch}, sys.argv[1])\n"
        "print(json.dumps([str(keeper.last_checkpoint), os.listdir(sys.argv[2]),\n"
        "                  (keeper.last_checkpoint / 'model.pt').read_text()]))\n"
    )
    env = {**__import__("os").environ, "TMPDIR": str(scratch)}
    result = subprocess.run([sys.executable, "-c", script, str(checkpoint), str(scratch)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    kept, listing, content = json.loads(result.stdout)
    assert len(listing) == 1 and listing[0].startswith("aam-ckpt-") and content == "weights"
    assert kept.startswith(str(scratch))
    assert list(scratch.iterdir()) == []  # gone once the process ended


def test_a_loss_that_becomes_nan_stops_training_in_one_line_without_a_checkpoint(example_dataset):
    from aam.training.optim import NonFiniteLoss

    import pyarrow as pa

    cfg = tiny_cfg(example_dataset, epochs=3)
    static, rows = load_static(cfg)
    # one training sample whose target is infinite (a unit mix-up, a 1/0 in a spreadsheet)
    column = rows.column("target.Age_wk").to_numpy(zero_copy_only=False).astype("float32")
    column[len(column) // 2] = float("inf")
    rows = rows.set_column(rows.column_names.index("target.Age_wk"), "target.Age_wk", pa.array(column))
    session = Session(rows, cfg.seed, verbose=False)
    with pytest.raises(NonFiniteLoss) as error:
        fit(cfg, static, session)
    message = str(error.value)
    assert "\n" not in message and "NaN or infinite at epoch 1, step " in message and "lower --lr" in message
    assert session.reports == [] and session.last_checkpoint is None  # nothing trained on NaN was kept


# --- step overhead: device-side loss sums, collate prefetch, compile switch -----------------------
def test_train_loss_summed_on_the_device_equals_a_plain_per_step_sum(finished):
    """The epoch's train_loss and parts, recomputed by a plain loop that reads every step's loss
    as a Python float (what fit did before), collating in the same thread."""
    from aam.data.collate import collate
    from aam.models import AAM
    from aam.training.losses import total_loss
    from aam.training.loop import batch_spec
    from aam.training.optim import make_optimizer, warmup_cosine

    cfg, _, folder, _ = finished
    history = json.loads((folder / "metrics.json").read_text())["history"]
    static, rows = load_static(cfg)
    session = Session(rows, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = AAM(cfg, static.targets, static.token_width, static.categoricals)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = -(-session.shard_size() // cfg.batch_size)
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_frac)
    spec, unifrac = batch_spec(cfg, static), torch.tensor(static.unifrac)
    masking = torch.Generator().manual_seed(cfg.seed * 7919)
    model.train()
    sums, steps = {}, 0
    for batch_rows in session.train_batches(0, cfg.batch_size):
        if batch_rows.num_rows < 2:
            continue
        batch = collate(batch_rows, spec)
        outputs = model(batch, mask_nucleotides=True, generator=masking)
        loss, parts = total_loss(outputs, batch, cfg, unifrac, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        steps += 1
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value)
    assert steps > 1 and {"loss", "target", "unifrac", "nucleotide"} <= set(sums)
    for name, total in sums.items():
        assert history[0][f"train_{name}"] == pytest.approx(total / steps, rel=1e-12, abs=1e-12), name


def test_prefetch_yields_the_same_batches_in_the_same_order_collated_in_a_background_thread(example_dataset):
    import threading

    from aam.data.collate import collate
    from aam.training.loop import batch_spec, collate_for, prefetched

    cfg = tiny_cfg(example_dataset, batch_size=7)
    static, rows = load_static(cfg)
    spec = batch_spec(cfg, static)
    session = Session(rows, cfg.seed)
    plain = [(r, collate(r, spec)) for r in session.train_batches(1, cfg.batch_size)]
    started = [threading.Event() for _ in plain]
    threads = set()

    def make(r):
        threads.add(threading.current_thread().name)
        started[[p[0].column("sample_id")[0].as_py() for p in plain].index(r.column("sample_id")[0].as_py())].set()
        return collate_for(spec, torch.device("cpu"))(r)

    got = []
    for i, (r, batch) in enumerate(prefetched(session.train_batches(1, cfg.batch_size), make)):
        if i + 1 < len(plain):  # while batch i is in use, batch i+1 is already being collated
            assert started[i + 1].wait(timeout=30), f"batch {i + 1} was not collated ahead"
        got.append((r, batch))
    assert len(got) == len(plain) > 2
    for (r_a, b_a), (r_b, b_b) in zip(plain, got):
        assert r_a.equals(r_b) and b_a.keys() == b_b.keys()
        for key in b_a:
            assert (torch.equal(b_a[key], b_b[key]) if torch.is_tensor(b_a[key]) else b_a[key] == b_b[key]), key
    assert threads and threading.current_thread().name not in threads

    def broken(r):
        raise ValueError("bad rows")

    with pytest.raises(ValueError, match="bad rows"):
        list(prefetched(session.train_batches(1, cfg.batch_size), broken))


def test_compile_is_off_by_default_validated_and_the_retired_auto_reads_as_off(example_dataset):
    from aam.config import RunConfig
    from aam.training.loop import compiles

    cfg = tiny_cfg(example_dataset)
    assert cfg.compile == "off" and not compiles(cfg)
    assert compiles(cfg.replace(compile="on"))
    assert RunConfig.fields()["compile"].metadata["choices"] == ("on", "off")
    # a model.pt or config.json saved while `auto` was a choice (it never compiled) still loads
    old = cfg.replace(compile="auto")
    assert old.compile == "off" and not compiles(old)
    with pytest.raises(AamUserError, match="compile"):
        cfg.replace(compile="fast")
