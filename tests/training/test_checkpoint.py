"""model.pt / state.pt: rebuilt from plain data, checksummed, and never able to run code."""

import os
from pathlib import Path

import pytest
import torch

from aam._files import save_torch
from aam.config import RunConfig
from aam.errors import AamUserError
from aam.training.checkpoint import MODEL_FILE, STATE_FILE, load_model, model_payload
from aam.training.resume import resume_state


class RunsCode:
    """Unpickling it creates a marker file, as a payload calling os.system would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def run_folder(tmp_path):
    from aam.models import AAM

    cfg = RunConfig.from_dict({"d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1})
    model = AAM(cfg, ["age"], 32, {"diet": ["a", "b"]})
    folder = tmp_path / "run"
    folder.mkdir()
    save_torch(model_payload(model, cfg, None, ["age"], {"diet": ["a", "b"]}, 32, {"val_mae": 1.5}, 2),
               folder / MODEL_FILE)
    return folder


def test_a_model_file_of_plain_data_loads_with_weights_only(run_folder):
    bundle = load_model(run_folder)
    assert bundle.targets == ["age"] and bundle.metrics == {"val_mae": 1.5} and bundle.best_epoch == 2
    assert (run_folder / "model.pt.sha256").read_text().split()[1] == "model.pt"


@pytest.mark.parametrize("where", ["config", "metrics"])
def test_a_model_file_carrying_a_pickle_payload_never_runs_it(run_folder, tmp_path, where):
    marker = tmp_path / "code-ran"
    payload = torch.load(run_folder / MODEL_FILE, weights_only=True)
    payload[where] = RunsCode(marker)
    save_torch(payload, run_folder / MODEL_FILE)  # a matching checksum: the check is weights_only itself
    with pytest.raises(AamUserError) as error:
        load_model(run_folder)
    assert not marker.exists()
    assert "\n" not in str(error.value) and str(run_folder / MODEL_FILE) in str(error.value)


def test_a_state_file_carrying_a_pickle_payload_never_runs_it(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"epoch": 1, "optimizer": RunsCode(marker)}, tmp_path / STATE_FILE)  # no checksum either
    with pytest.raises(AamUserError, match="could run code"):
        resume_state(tmp_path)
    assert not marker.exists()


def test_random_bytes_in_a_model_file_are_one_line_naming_it(run_folder):
    file = run_folder / MODEL_FILE
    data = bytearray(file.read_bytes())
    start = len(data) // 2
    data[start:start + 4096] = os.urandom(min(4096, len(data) - start))
    file.write_bytes(bytes(data))
    with pytest.raises(AamUserError) as error:
        load_model(run_folder)
    assert "\n" not in str(error.value) and str(file) in str(error.value) and "model.pt.sha256" in str(error.value)
