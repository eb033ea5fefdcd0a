"""Data path speed: (a) `aam convert` (BIOM + metadata -> dataset folder), (b) Ray Data feed rate
against what training consumes.

(a) times `aam.data.convert_dataset` (the library call behind `aam convert`, imports excluded) on
    each source, --repeats times, and reports samples/s (samples read from the table, and samples
    kept, i.e. with a target value).
(b) reads the dataset's samples.parquet with Ray Data filtered to the train split, exactly as
    `aam.distributed.train` does (`read_parquet(...).filter(expr=col("split").is_in(["train"]))`),
    iterates it in batches of `batch_size` as pyarrow and runs `collate` on every batch. Two ways:
      streaming      the read + filter + iterate pipeline, run --passes times (the first pass
                     includes Ray Data starting its read tasks)
      materialized   `.materialize()` once (timed on its own, as `aam train` does up front), then
                     per epoch: iterate the whole shard into one table (as `RayTrainSession.epoch_rows`),
                     take shuffled batches and collate them
    The model's consumption is measured as in benchmarks/throughput.py (fast path, same config,
    real training steps, Ray not running), and the report gives feed / consumption (target >= 5x).

    python benchmarks/data_feed.py --data /tmp/bench/mouse
    python benchmarks/data_feed.py --data /tmp/bench/mini --convert example:mouse_age_mini --steps 2 --passes 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_machine, print_table, write_json  # noqa: E402
from throughput import REPORTED_CONFIG, measure, parse_overrides  # noqa: E402

from aam.config import RunConfig  # noqa: E402
from aam.data.collate import collate  # noqa: E402
from aam.training.loop import batch_spec  # noqa: E402
from aam.training.prepare import load_static  # noqa: E402

DATASETS = "/work/shared/datasets"
SOURCES = {  # name -> (folder, table, metadata, target)
    "mouse_age": ("mouse_age", "feature-table.biom", "sample-metadata.tsv", "Age_wk"),
    "emp_150bp": ("emp_150bp", "feature-table.biom", "sample-metadata.tsv", "ph"),
}


def convert_kwargs(name: str, datasets: str) -> dict:
    if name.startswith("example:"):
        from aam import examples

        return examples.convert_args(name.split(":", 1)[1])
    if name not in SOURCES:
        raise SystemExit(f"--convert: unknown source {name!r}; use {', '.join(SOURCES)} or example:NAME")
    folder, table, metadata, target = SOURCES[name]
    root = Path(datasets) / folder
    return {"table": root / table, "metadata": root / metadata, "targets": [target]}


def time_conversion(name: str, datasets: str, repeats: int) -> dict:
    from aam.data import convert_dataset

    kwargs = convert_kwargs(name, datasets)
    times, report = [], None
    with tempfile.TemporaryDirectory(prefix="aam-bench-convert-") as tmp:
        for i in range(repeats):
            t0 = time.perf_counter()
            report = convert_dataset(out=Path(tmp) / f"run{i}", overwrite=True, **kwargs)
            times.append(time.perf_counter() - t0)
    dropped = sum(d.get("count", 0) for d in report.dropped.values()) if report.dropped else 0
    read = report.n_samples + dropped
    best = min(times)
    return {
        "source": name,
        "table": str(kwargs["table"]),
        "targets": list(kwargs.get("targets", [])),
        "samples_read": read,
        "samples_kept": report.n_samples,
        "asvs_kept": report.n_asvs,
        "seconds": times,
        "best_s": best,
        "median_s": statistics.median(times),
        "samples_read_per_s": read / best,
        "samples_kept_per_s": report.n_samples / best,
    }


def feed_streaming(ray_data, samples: str, spec, batch_size: int, passes: int) -> list[dict]:
    from ray.data.expressions import col

    out = []
    for p in range(passes):
        t0 = time.perf_counter()
        ds = ray_data.read_parquet(samples).filter(expr=col("split").is_in(["train"]))
        n = 0
        first = None
        for rows in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            collate(rows, spec)
            n += rows.num_rows
            if first is None:
                first = time.perf_counter() - t0
        seconds = time.perf_counter() - t0
        out.append({"pass": p + 1, "samples": n, "seconds": seconds, "first_batch_s": first,
                    "samples_per_s": n / seconds})
    return out


def feed_materialized(ray_data, samples: str, spec, batch_size: int, passes: int, seed: int) -> dict:
    from ray.data.expressions import col

    t0 = time.perf_counter()
    ds = ray_data.read_parquet(samples).filter(expr=col("split").is_in(["train"])).materialize()
    materialize_s = time.perf_counter() - t0
    epochs = []
    for epoch in range(passes):
        t0 = time.perf_counter()
        rows = pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        order = np.random.default_rng([seed, epoch, 0]).permutation(rows.num_rows)
        for start in range(0, len(order), batch_size):
            collate(rows.take(order[start : start + batch_size]), spec)
        seconds = time.perf_counter() - t0
        epochs.append({"epoch": epoch + 1, "samples": rows.num_rows, "seconds": seconds,
                       "samples_per_s": rows.num_rows / seconds})
    return {"materialize_s": materialize_s, "epochs": epochs}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder from `aam convert` (for the feed part)")
    parser.add_argument("--convert", default="mouse_age,emp_150bp",
                        help="comma list of sources to time the conversion of: mouse_age, emp_150bp, "
                             "example:mouse_age_mini ('' to skip)")
    parser.add_argument("--datasets", default=DATASETS, help=f"folder holding the sources (default {DATASETS})")
    parser.add_argument("--repeats", type=int, default=2, help="conversions per source (best is reported)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the train split per feed mode")
    parser.add_argument("--steps", type=int, default=6, help="measured training steps for the consumption rate")
    parser.add_argument("--warmup", type=int, default=2, help="training steps not counted")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...) (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the reference config (run-config key), e.g. --set batch_size=32")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/data_feed-<data>.json)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print_machine(info)
    payload: dict = {"benchmark": "data_feed", "machine": info}

    # (a) conversion ---------------------------------------------------------------------------
    sources = [s.strip() for s in args.convert.split(",") if s.strip()]
    conversions = []
    for name in sources:
        print(f"converting {name} x{args.repeats} ...", flush=True)
        conversions.append(time_conversion(name, args.datasets, args.repeats))
    if conversions:
        print_table(["source", "samples read", "kept", "ASVs kept", "best s", "median s", "read/s", "kept/s"],
                    [[c["source"], c["samples_read"], c["samples_kept"], c["asvs_kept"], c["best_s"], c["median_s"],
                      c["samples_read_per_s"], c["samples_kept_per_s"]] for c in conversions],
                    title="(a) conversion: aam.data.convert_dataset (imports excluded)")
    payload["conversion"] = conversions

    # (b) consumption: real training steps, fast path, no Ray ---------------------------------
    base = RunConfig().replace(data=args.data, **parse_overrides(args.set))
    config = {k: getattr(base, k) for k in REPORTED_CONFIG}
    print("\nconfig: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    static, train_rows = load_static(base)
    print(f"consumption: {args.warmup} warm-up + {args.steps} training steps (fast path) ...", flush=True)
    consumed = measure(base, {"fast": {}}, args.steps, args.warmup, static, train_rows, verbose=False)["fast"]
    print(f"  model consumes {consumed['samples_per_s']:.3g} samples/s", flush=True)

    # (b) feed: Ray Data ------------------------------------------------------------------------
    from aam.distributed.cluster import set_ray_env

    set_ray_env()  # the project's Ray env defaults (progress bars off, quiet Train/Tune)
    import ray
    import ray.data

    spec = batch_spec(base, static)
    samples = str(Path(static.dataset_path).resolve() / "samples.parquet")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING",
             logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"))
    ray_init_s = time.perf_counter() - t0
    try:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        streaming = feed_streaming(ray.data, samples, spec, base.batch_size, args.passes)
        materialized = feed_materialized(ray.data, samples, spec, base.batch_size, args.passes, base.seed)
    finally:
        ray.shutdown()

    consume = consumed["samples_per_s"]
    later = streaming[1:] or streaming
    stream_rate = sum(p["samples"] for p in later) / sum(p["seconds"] for p in later)
    mat_epochs = materialized["epochs"]
    mat_rate = sum(e["samples"] for e in mat_epochs) / sum(e["seconds"] for e in mat_epochs)
    n_train = mat_epochs[0]["samples"]
    mat_with_read = n_train / (materialized["materialize_s"] + mat_epochs[0]["seconds"])
    rows = [[f"streaming pass {p['pass']}", p["samples"], p["seconds"], p["samples_per_s"], p["samples_per_s"] / consume]
            for p in streaming]
    rows.append(["streaming, passes 2+" if len(streaming) > 1 else "streaming", n_train, None, stream_rate,
                 stream_rate / consume])
    rows.append(["materialize (once)", n_train, materialized["materialize_s"], None, None])
    rows += [[f"materialized epoch {e['epoch']}", e["samples"], e["seconds"], e["samples_per_s"],
              e["samples_per_s"] / consume] for e in mat_epochs]
    rows.append(["materialize + epoch 1", n_train, materialized["materialize_s"] + mat_epochs[0]["seconds"],
                 mat_with_read, mat_with_read / consume])
    rows.append(["model consumes (training)", consumed["samples"], consumed["seconds"], consume, 1.0])
    print_table(["feed", "samples", "seconds", "samples/s", "x consumption"],
                [[c if c is not None else "-" for c in r] for r in rows],
                title=f"(b) Ray Data feed (read_parquet + filter train + iter_batches({base.batch_size}) + collate) "
                      f"vs training consumption; ray.init {ray_init_s:.1f}s")
    worst = min(stream_rate, streaming[0]["samples_per_s"], mat_with_read) / consume
    print(f"\nfeed / consumption: streaming steady {stream_rate / consume:.1f}x, first pass "
          f"{streaming[0]['samples_per_s'] / consume:.1f}x, materialized epochs {mat_rate / consume:.1f}x "
          f"(target >= 5x; worst {worst:.1f}x)")
    payload.update({
        "data": str(Path(args.data).resolve()),
        "config": config,
        "consumption": consumed,
        "ray_init_s": ray_init_s,
        "num_cpus": args.num_cpus,
        "streaming": streaming,
        "materialized": materialized,
        "feed_samples_per_s": {"streaming_steady": stream_rate, "streaming_first_pass": streaming[0]["samples_per_s"],
                               "materialized_epoch": mat_rate, "materialize_plus_first_epoch": mat_with_read},
        "feed_over_consumption": {"streaming_steady": stream_rate / consume,
                                  "streaming_first_pass": streaming[0]["samples_per_s"] / consume,
                                  "materialized_epoch": mat_rate / consume,
                                  "materialize_plus_first_epoch": mat_with_read / consume,
                                  "worst": worst},
    })
    write_json(args.out, f"data_feed-{Path(args.data).name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
