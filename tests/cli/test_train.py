"""`aam train --resume-from RUN`: which checkpoint of a run folder it continues from."""

import json
import os

import pytest

from aam.cli.train import newest_checkpoint
from aam.errors import AamUserError


def checkpoint(folder, epoch, mtime):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.pt").write_bytes(b"not read here")
    (folder / "metrics.json").write_text(json.dumps({"history": [{"epoch": e} for e in range(1, epoch + 1)]}))
    os.utime(folder / "state.pt", (mtime, mtime))
    return folder


def test_the_newest_checkpoint_is_the_one_furthest_in_training_whichever_path_wrote_it(tmp_path):
    run = tmp_path / "run"
    checkpoint(run, 2, mtime=2_000)  # a finished earlier run's final state, copied to the run folder
    ray_new = checkpoint(run / "ray" / "train" / "checkpoint_2026-11-30_18-11-49.974876", 3, mtime=1_000)
    checkpoint(run / "ray" / "train" / "checkpoint_2026-11-30_18-10-02.000001", 1, mtime=3_000)
    assert newest_checkpoint(run) == ray_new
    only_top = checkpoint(tmp_path / "done", 4, mtime=1_000)
    assert newest_checkpoint(only_top) == only_top
    (ray_new / "metrics.json").write_text("{cut")  # unreadable: its mtime decides, after those with epochs
    assert newest_checkpoint(run) == run


def test_a_folder_without_any_checkpoint_is_one_line(tmp_path):
    with pytest.raises(AamUserError, match=r"--resume-from .*: no state\.pt there nor in its ray/\*/checkpoint_\*"):
        newest_checkpoint(tmp_path)
    with pytest.raises(AamUserError, match=r"no such folder"):
        newest_checkpoint(tmp_path / "missing")
