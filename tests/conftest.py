"""Shared test set-up: Ray's environment before Ray is imported, and one local Ray per session."""

import hashlib
import os
import shutil
import tempfile
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
# No test may join a Ray it did not start: `aam` subprocesses inherit this environment, and with
# RAY_ADDRESS set they would run on (the user's) cluster it names.
os.environ.pop("RAY_ADDRESS", None)

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


class RunsCode:
    """A pickle payload: unpickling RunsCode(marker) creates `marker`, as a payload calling os.system
    would run a command. Its pickle names only Path.touch, so it loads without this module."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def runs_code():
    """`RunsCode`: a test that loads a received file checks that `runs_code(marker)` in it never ran."""
    return RunsCode


@pytest.fixture
def aam_main(monkeypatch, capsys):
    """`aam ARGS` through the real entry point (aam.cli.main): (exit code, stdout, stderr)."""
    import sys

    from aam.cli import main

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["aam", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return code or 0, captured.out, captured.err

    return call


@pytest.fixture
def folder_hash():
    """Every file's path and bytes below a folder, hashed: equal before and after means nothing was touched."""
    return _folder_hash


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (a second ray.init in a process is an error).

    A new cluster of its own (address "local": never one a `ray start` left on this machine), in
    its own temp dir (short: Ray's socket paths must fit in ~107 characters), on ports Ray picks
    free; `ray.shutdown()` stops that cluster and nothing else.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="aamtest-", dir="/tmp")
    # as `ray_runtime` starts it: workers log at WARNING, so no INFO line printed late by the driver
    # lands in a CliRunner's captured output
    ray.init(address="local", _temp_dir=temp_dir, **local_init_options(num_cpus=2),
             object_store_memory=512 * 2**20)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


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


# A small real search, shared by the tests that read an experiment (tune, report, the README's Use).
SMALL_SPACE = {
    "objective": {"metric": "val_mae", "mode": "min"},
    "fixed": {"epochs": 3, "d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1, "token_limit": 48,
              "batch_size": 16},
    "search": {
        "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "head": {"type": "categorical", "choices": ["linear", "mlp"]},
        "head_hidden": {"type": "categorical", "choices": [[16], [32, 16]], "when": {"head": "mlp"}},
    },
    "tune": {"num_samples": 6, "max_concurrent_trials": 2,
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
             "searcher": {"type": "optuna", "seed": 0, "n_startup_trials": 3},
             "keep_checkpoints": 1},
}


@pytest.fixture
def small_space_file(tmp_path):
    """SMALL_SPACE as a search-space file (tests import no conftest module: each folder has its own)."""
    import yaml

    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump(SMALL_SPACE))
    return file


@pytest.fixture(scope="session")
def small_experiment(ray_cluster, example_dataset, tmp_path_factory):
    """STORAGE/NAME of a finished 6-trial Optuna + ASHA search on the bundled example (read it, or copy it
    before changing anything)."""
    import yaml

    from aam.search import load_space
    from aam.distributed.tune import run_search

    folder = tmp_path_factory.mktemp("tune")
    (folder / "space.yaml").write_text(yaml.safe_dump(SMALL_SPACE))
    space = load_space(folder / "space.yaml", data_override=str(example_dataset),
                       storage_override=str(folder / "experiments"), name_override="small")
    return run_search(space)
