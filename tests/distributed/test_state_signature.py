"""Tune's pickled search state is unpickled at `aam tune --resume` only when this user's aam signed it."""

import json
import stat
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle
import yaml
from typer.testing import CliRunner

from aam.cli import app
from aam.search import load_space
from aam.distributed.state_signature import SIGNATURE_FILE, key_file, sign_state, verify_state
from aam.search import SPACE_FILE
from aam.errors import AamUserError


@pytest.fixture(autouse=True)
def own_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_the_key_is_made_once_and_readable_by_its_owner_only(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "tuner.pkl").write_bytes(b"state")
    sign_state(tmp_path / "exp", tmp_path / "exp")
    key = key_file()
    assert key.parent == tmp_path / "config" / "aam"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    verify_state(tmp_path / "exp")
    key.chmod(0o644)
    with pytest.raises(AamUserError, match="chmod 600"):
        verify_state(tmp_path / "exp")


def test_signed_versions_verify_and_a_changed_or_unsigned_file_is_refused(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    snapshot = exp / "search_gen_state-2026.json"
    for version in (b"first save", b"second save"):  # the background copy may land either one
        snapshot.write_bytes(version)
        sign_state(exp, exp)
    snapshot.write_bytes(b"first save")
    verify_state(exp)
    snapshot.write_bytes(b"something else")
    with pytest.raises(AamUserError, match="search_gen_state-2026.json was changed after aam wrote it"):
        verify_state(exp)
    snapshot.write_bytes(b"first save")
    (exp / "searcher-state-2026.pkl").write_bytes(b"from elsewhere")
    with pytest.raises(AamUserError, match="searcher-state-2026.pkl has no signature"):
        verify_state(exp)


def test_a_signature_from_another_key_does_not_verify(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"state")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
    sign_state(exp, exp)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with pytest.raises(AamUserError, match="tuner.pkl was changed after aam wrote it"):
        verify_state(exp)


def test_resume_of_a_crafted_search_state_is_refused_before_anything_is_unpickled(example_dataset, tmp_path,
                                                                                  runs_code, folder_hash):
    # an experiment folder as a colleague might hand it over: its search-generator snapshot is a payload
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({
        "objective": {"metric": "val_mae", "mode": "min"},
        "fixed": {"epochs": 1, "d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
        "tune": {"num_samples": 2},
    }))
    space = load_space(space_file, data_override=str(example_dataset), storage_override=str(tmp_path / "exps"),
                       name_override="received")
    experiment = tmp_path / "exps" / "received"
    experiment.mkdir(parents=True)
    (experiment / SPACE_FILE).write_text(yaml.safe_dump(space.to_dict()))
    (experiment / "experiment_state-2026-11-30_10-00-00.json").write_text(json.dumps({"trial_data": []}))
    marker = tmp_path / "code-ran"
    (experiment / "search_gen_state-2026-11-30_10-00-00.json").write_bytes(cloudpickle.dumps(runs_code(marker)))
    before = folder_hash(experiment)

    result = CliRunner().invoke(app, ["tune", "--resume", str(experiment)])
    assert isinstance(result.exception, AamUserError), result.output
    message = str(result.exception)
    assert "\n" not in message and "experiment_state-2026-11-30_10-00-00.json has no signature" in message
    assert "new --name" in message
    assert not marker.exists()
    assert folder_hash(experiment) == before

    # with the experiment state signed, the crafted snapshot beside it is still refused
    sign_state(experiment, experiment, ["experiment_state-2026-11-30_10-00-00.json"])
    result = CliRunner().invoke(app, ["tune", "--resume", str(experiment)])
    assert "search_gen_state-2026-11-30_10-00-00.json has no signature" in str(result.exception)
    assert not marker.exists()
    assert (experiment / SIGNATURE_FILE).is_file()


def test_the_signer_finds_tunes_staging_folder_on_the_trials_storage_and_signs_the_first_save(ray_cluster,
                                                                                             tmp_path):
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from aam.distributed.state_signature import StateSigner

    storage = StorageContext(storage_path=str(tmp_path / "exps"), experiment_dir_name="exp")
    trial = Trial("aam", config={}, storage=storage, stub=True)
    staging, experiment = Path(storage.experiment_driver_staging_path), tmp_path / "exps" / "exp"
    staging.mkdir(parents=True, exist_ok=True)
    experiment.mkdir(parents=True, exist_ok=True)
    signer = StateSigner(experiment)
    # a new search's first step: no trial yet when it begins, Tune saves its first snapshot in it
    signer.on_step_begin(0, [])
    (staging / "experiment_state-S1.json").write_text('{"trial_data": []}')
    assert signer.get_state() is None and not (experiment / SIGNATURE_FILE).exists()  # the staging is unknown yet
    signer.on_step_end(1, [trial])  # the step made the first trial: its storage names the staging folder
    assert signer.staging == staging
    (experiment / "experiment_state-S1.json").write_text('{"trial_data": []}')  # Tune's copy
    verify_state(experiment)
    (staging / "experiment_state-S1.json").write_text('{"trial_data": [1]}')  # a later save, signed inside it
    signer.get_state()
    (experiment / "experiment_state-S1.json").write_text('{"trial_data": [1]}')
    verify_state(experiment)
