"""Shared test set-up: Ray's environment before Ray is imported, and one local Ray per session."""

import os
from pathlib import Path

import pytest

from aam.distributed.cluster import local_init_options, set_ray_env

os.environ.update(
    {
        "RAY_AUTH_MODE": "disabled",  # tests talk to their own throw-away cluster
        "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "120",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    }
)
set_ray_env()  # the rest as every aam command has it

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (a second ray.init in a process is an error)."""
    import ray

    # as `ray_runtime` starts it: workers log at WARNING, so no INFO line printed late by the driver
    # lands in a CliRunner's captured output
    ray.init(**local_init_options(num_cpus=2), object_store_memory=512 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def example_dataset(tmp_path_factory):
    """The bundled mouse_age slice, converted once per session (no rarefaction, so predict can match)."""
    from aam.data import convert_dataset
    from aam.examples import path as example_path

    src = example_path("mouse_age_mini")
    out = tmp_path_factory.mktemp("data") / "mouse_mini"
    convert_dataset(
        table=src / "feature-table.biom",
        metadata=src / "sample-metadata.tsv",
        out=out,
        targets=["Age_wk"],
        categoricals=["Diet", "study"],
        unifrac=src / "weighted-unifrac.tsv",
        seed=0,
    )
    return out
