"""`aam export` of a trial folder someone changed (issue 23): a link in the checkpoint is one line,
and the model written is the one whose checksum was verified."""

import shutil

import pytest

from aam.search import read_experiment


@pytest.fixture
def experiment(small_experiment, tmp_path):
    return shutil.copytree(small_experiment, tmp_path / "small", symlinks=True)


@pytest.mark.parametrize("link", ["loop", "outside"])
def test_a_link_inside_the_checkpoint_is_one_line_and_nothing_is_written(experiment, tmp_path, aam_main, link):
    checkpoint = read_experiment(experiment).best().checkpoint()
    (checkpoint / "samples").mkdir(exist_ok=True)
    made = checkpoint / "samples" / link
    made.symlink_to(made if link == "loop" else "/etc")
    code, _, err = aam_main("export", experiment, "--out", tmp_path / "run")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(made) in lines[0] and "symbolic link" in lines[0], err
    assert not (tmp_path / "run").exists()


def test_a_damaged_metrics_file_only_leaves_the_epoch_out_of_the_message(experiment, tmp_path, aam_main):
    checkpoint = read_experiment(experiment).best().checkpoint()
    (checkpoint / "metrics.json").write_text("[" * 100_000)
    code, out, err = aam_main("export", experiment, "--out", tmp_path / "run")
    assert code == 0, err
    assert (tmp_path / "run" / "model.pt").read_bytes() == (checkpoint / "model.pt").read_bytes()
