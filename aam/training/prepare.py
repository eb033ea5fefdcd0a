"""Dataset folder + run config -> what the training loop needs (`StaticData`, training rows).

Checks that the config fits the dataset before any worker starts, so a wrong target name is
one line from the CLI, not a traceback from a Ray worker.
"""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np
import pyarrow as pa

from aam.config import RunConfig
from aam.data.collate import category_codes, list_column, raw_targets, transformed_targets
from aam.data.dataset import GROUP_COLUMN, Dataset
from aam.data.transforms import TargetTransform
from aam.errors import AamUserError
from aam.training.session import StaticData


def resolve_targets(cfg: RunConfig, dataset: Dataset) -> list[str]:
    if not cfg.targets:
        return list(dataset.targets)
    for name in cfg.targets:
        if name not in dataset.targets:
            close = difflib.get_close_matches(name, dataset.targets, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            have = ", ".join(dataset.targets) or "none: convert again with --target"
            raise AamUserError(f"targets: '{name}' is not a target of {dataset.path}{hint}; it has {have}")
    return list(cfg.targets)


def load_static(cfg: RunConfig) -> tuple[StaticData, pa.Table]:
    if not cfg.data:
        raise AamUserError("data: no dataset folder given; pass --data DATASET_DIR (made by `aam convert`)")
    dataset = Dataset.open(cfg.data)
    targets = resolve_targets(cfg, dataset)
    cfg.check_dataset(targets, list(dataset.categoricals), where="config")
    splits = {name: dataset.split(name) for name in ("train", "val", "test")}
    group_by = (dataset.manifest.get("split") or {}).get("group_by")
    if cfg.folds > 1 and group_by and GROUP_COLUMN not in dataset.samples.column_names:
        raise AamUserError(f"folds={cfg.folds}: {dataset.path} was split by '{group_by}' but does not record each "
                           f"sample's group (converted by an older aam); convert it again with --group-by {group_by}")
    if splits["train"].num_rows < 2:
        raise AamUserError(f"{dataset.path}: the train split has {splits['train'].num_rows} samples; need at least 2")
    train_rows = splits["train"]
    if cfg.train_on_val:
        train_rows = pa.concat_tables([splits["train"], splits["val"]])
    transform = fit_transform(cfg, targets, train_rows)
    payload = None
    if cfg.pretrained_encoder:
        from aam.training.checkpoint import read_payload

        payload = read_payload(cfg.pretrained_encoder)  # read once: for the width here, the cache below
    tokens = encoder_width_tokens(cfg.pretrained_encoder, payload, dataset.tokens) if payload else dataset.tokens
    static = StaticData(
        tokens=tokens,
        token_width=int(tokens.shape[1]),
        targets=targets,
        categoricals={k: list(v) for k, v in dataset.categoricals.items()},
        unifrac=None if dataset.unifrac is None else np.asarray(dataset.unifrac, dtype=np.float32),
        transform=transform,
        eval_rows={"val": splits["val"], "test": splits["test"]},
        calibration_rows=calibration_rows(train_rows, cfg.seed),
        sample_lists={k: v.column("sample_id").to_pylist() for k, v in splits.items()},
        n_train=train_rows.num_rows,
        dataset_path=str(dataset.path),
        asv_sequences=dataset.asvs.column("sequence").to_pylist(),
        train_asv_idx=np.unique(train_rows.column("asv_idx").combine_chunks().flatten().to_numpy()),
    )
    if cfg.freeze_encoder and cfg.cache_asv_vectors:
        static = encode_frozen(cfg, static, pa.concat_tables(list(splits.values())), payload)
    return with_neighbor_reference(cfg, static, train_rows), train_rows


def encoder_width_tokens(pretrained_encoder: str, payload: dict, tokens: np.ndarray) -> np.ndarray:
    """The dataset's tokens at the pretrained encoder's width (`payload`: its `read_payload`): a pool
    of studies (`aam pool`) is as wide as its longest reads, and shorter reads are padded to it, as
    they were in the pool."""
    width = int(payload["token_width"])
    if width < tokens.shape[1]:
        raise AamUserError(f"pretrained_encoder={pretrained_encoder}: trained on sequences of up to {width} bp, "
                           f"this dataset has {tokens.shape[1]} bp; trim its sequences to {width} bp or "
                           "pretrain on a pool that includes it")
    return np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])))  # 0 is the padding token


def encode_frozen(cfg: RunConfig, static: StaticData, rows: pa.Table, payload: dict) -> StaticData:
    """Every ASV, then every sample, of the dataset through the frozen pretrained encoders, once.

    A search over heads, losses or fusion on a frozen encoder then never runs the nucleotide
    transformer (nearly all of a training step), nor the sample transformer (most of the rest):
    its trials share these vectors. Measured in benchmarks/asv_cache.py.
    """
    import torch

    from aam.data.collate import BatchSpec, collate
    from aam.models import AAM
    from aam.training.checkpoint import load_encoder_weights

    # the encoders of the model `fit` builds, set up as it sets them up: the cache holds exactly
    # what they would compute (a count_feature the encoder did not learn is refused here, before encoding)
    model = AAM(cfg, [], static.token_width)
    load_encoder_weights(model, cfg.pretrained_encoder, payload)
    model.freeze_encoder()
    asv_vectors = model.encode_all_asvs(torch.from_numpy(static.tokens.astype(np.int64)))
    model.use_asv_cache(asv_vectors)
    spec = BatchSpec(static.tokens, [], [], cfg.token_limit, None, min_abundance=cfg.min_abundance)
    with torch.no_grad():
        chunks = [model.encode_samples(collate(rows.slice(start, 128), spec)).samples.float()
                  for start in range(0, rows.num_rows, 128)]
    return dataclasses.replace(
        static, asv_vectors=asv_vectors.float().numpy(), sample_ids=rows.column("sample_id").to_pylist(),
        sample_vectors=torch.cat(chunks).numpy(), cache_token_limit=cfg.token_limit,
        cache_min_abundance=cfg.min_abundance,
    )


def fit_transform(cfg: RunConfig, targets: list[str], train_rows: pa.Table) -> TargetTransform | None:
    """The target transform `cfg` asks for, fitted on the training rows only."""
    if not targets:
        return None
    by = list(cfg.transform_by) if cfg.target_transform == "zscore-category" else []
    return TargetTransform.fit(cfg.target_transform, targets, raw_targets(train_rows, targets), by,
                               category_codes(train_rows, by))


def refit_transform(cfg: RunConfig, static: StaticData, train_rows: pa.Table) -> StaticData:
    """The same data with the target transform `cfg` asks for (a search may vary it per trial)."""
    if not static.targets:
        return static
    by = list(cfg.transform_by) if cfg.target_transform == "zscore-category" else []
    if static.transform.kind == cfg.target_transform and static.transform.by == by:
        return static
    cfg.check_dataset(static.targets, list(static.categoricals))
    return dataclasses.replace(static, transform=fit_transform(cfg, static.targets, train_rows))


def with_neighbor_reference(cfg: RunConfig, static: StaticData, train_rows: pa.Table) -> StaticData:
    """`static` with the training samples the neighbour prior searches (aam.models.neighbors):
    their ASVs by sequence and their targets on the scale of `static.transform`. Made again
    wherever the training rows or the transform change (a fold, a trial that searches the
    transform), so the prior never reads a sample its model was not trained on."""
    if cfg.neighbor_prior <= 0 or not static.targets:
        return dataclasses.replace(static, neighbor_reference=None) if static.neighbor_reference else static
    offsets, flat = list_column(train_rows, "asv_idx")
    used, indices = np.unique(flat, return_inverse=True)
    values = transformed_targets(train_rows, static.targets, static.transform)
    return dataclasses.replace(static, neighbor_reference={
        "sequences": [static.asv_sequences[i] for i in used],
        "sample_ids": train_rows.column("sample_id").to_pylist(),
        "offsets": offsets.astype(np.int64),
        "indices": indices.astype(np.int64),
        "targets": np.asarray(values, dtype=np.float32),
        # neighbor_leave_group_out on a grouped table: a training sample's neighbours leave its group out
        "groups": (train_rows.column(GROUP_COLUMN).to_pylist()
                   if GROUP_COLUMN in train_rows.column_names and cfg.neighbor_leave_group_out else None),
    })


CALIBRATION_SAMPLES = 256


def calibration_rows(train_rows: pa.Table, seed: int) -> pa.Table:
    """A fixed random subset of the training rows for BatchNorm recalibration (see loop)."""
    n = min(CALIBRATION_SAMPLES, train_rows.num_rows)
    pick = np.sort(np.random.default_rng(seed).choice(train_rows.num_rows, size=n, replace=False))
    return train_rows.take(pick)
