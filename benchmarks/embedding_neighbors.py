"""Does AAM's sample embedding put a sample beside its near twins? k-NN in the embedding of a
cross-validated run's fold models, against the fold models' own head.

For each fold model of an `aam train --folds K` run: embed every train+val sample and every test
sample (`sample_embedding`, the vector the head and UniFrac read), then predict each of the fold's
held-out samples, and every test sample, by the mean target of its k nearest (cosine) among the
fold's training samples. Out-of-fold MAE over train+val; test MAE of the folds' mean. Compare
with the run's own out-of-fold and test MAE and with `aam baseline knn` (Jaccard
distance on the raw table): if the embedding's neighbours were the twins the Jaccard neighbours
find, its k-NN would score like them.

    python benchmarks/embedding_neighbors.py --run /tmp/run/transfer/mouse_random/run --data /tmp/q/mouse_random
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json  # noqa: E402
from quality import model_scores  # noqa: E402


def embed(bundle, rows: pa.Table, spec, batch_size: int = 64) -> np.ndarray:
    import torch

    from aam.data.collate import collate

    bundle.model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, rows.num_rows, batch_size):
            out.append(bundle.model(collate(rows.slice(start, batch_size), spec))["sample_embedding"].float().numpy())
    vectors = np.concatenate(out)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="an `aam train --folds K` run folder")
    parser.add_argument("--data", required=True, type=Path, help="its dataset folder")
    parser.add_argument("--k", default="1,3,5,10", help="neighbours, comma-separated (default 1,3,5,10)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/embedding-neighbors-<run>.json)")
    args = parser.parse_args(argv)
    from aam.data.collate import raw_targets
    from aam.data.dataset import Dataset
    from aam.training.checkpoint import load_model
    from aam.training.predict import table_batch_spec

    ks = [int(k) for k in args.k.split(",")]
    dataset = Dataset.open(args.data)
    sequences = dataset.asvs.column("sequence").to_pylist()
    non_test = pa.concat_tables([dataset.split("train"), dataset.split("val")], promote_options="default")
    test = dataset.split("test")
    ids = np.asarray(non_test.column("sample_id").to_pylist())
    y, y_test = raw_targets(non_test, dataset.targets)[:, 0], raw_targets(test, dataset.targets)[:, 0]
    oof = {k: np.full(len(y), np.nan) for k in ks}
    on_test = {k: [] for k in ks}
    folds = sorted((args.run / "folds").glob("*/model.pt"))
    if not folds:
        raise SystemExit(f"--run {args.run}: no folds/*/model.pt; give a run trained with --folds K")
    for model_file in folds:
        held_ids = pd.read_csv(model_file.parent / "val_predictions.tsv", sep="\t", dtype={"sample_id": str})
        held = np.isin(ids, held_ids["sample_id"].to_numpy())
        bundle = load_model(model_file.parent)
        spec = table_batch_spec(bundle, dataset.tokens, sequences)
        e, e_test = embed(bundle, non_test, spec), embed(bundle, test, spec)
        near_held = np.argsort(-(e[held] @ e[~held].T), axis=1)
        near_test = np.argsort(-(e_test @ e[~held].T), axis=1)
        for k in ks:
            oof[k][held] = y[~held][near_held[:, :k]].mean(axis=1)
            on_test[k].append(y[~held][near_test[:, :k]].mean(axis=1))
    own = model_scores(args.run)  # a --folds run's val_mae is its out-of-fold MAE
    rows = [["the run's head", own.get("val_mae"), own.get("test_mae")]]
    results = {"head": {"oof_mae": own.get("val_mae"), "test_mae": own.get("test_mae")}}
    for k in ks:
        scores = {"oof_mae": float(np.nanmean(np.abs(oof[k] - y))),
                  "test_mae": float(np.mean(np.abs(np.mean(on_test[k], axis=0) - y_test)))}
        results[f"k{k}"] = scores
        rows.append([f"{k}-NN in the embedding", scores["oof_mae"], scores["test_mae"]])
    print_table(["predictor", "out-of-fold MAE", "test MAE"], rows, title=f"{args.run} ({len(folds)} folds)")
    payload = {"benchmark": "embedding_neighbors", "run": str(args.run), "data": str(args.data), "results": results,
               "machine": machine_info()}
    write_json(args.out, f"embedding-neighbors-{args.run.name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
