"""`aam tune --resume` unpickles only the bytes it verified (issue 23): Tune's state is copied into a
private folder, checked there, and restored from there, so a file swapped into the experiment
after the check (as `cp evil.pkl EXP/tuner.pkl` did, seconds after "resuming") never runs."""

import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

import ray.cloudpickle as cloudpickle

from aam._ray_internals import PICKLED_STATE


def test_state_swapped_in_after_the_check_is_never_unpickled(small_experiment, tmp_path, runs_code, aam_main):
    # its own name: a resume leaves its state snapshot in Tune's driver staging, which a later
    # resume of another copy named "small" in this same process would pick up
    experiment = shutil.copytree(small_experiment, tmp_path / "small-pinned", symlinks=True)
    state = sorted({p for pattern in PICKLED_STATE for p in experiment.glob(pattern)})
    marker = tmp_path / "code-ran"
    evil = cloudpickle.dumps(runs_code(marker))
    checked, done, seen = threading.Event(), threading.Event(), {}

    def swap_after_the_check():
        # the check is done once this process's private copy holds every state file; from then on
        # every state file in the experiment is the payload, again and again, until the resume ends
        while not done.is_set():
            copies = [p for p in Path(tempfile.gettempdir()).glob(f"aam-state-{os.getpid()}-*")
                      if all((p / f.name).is_file() for f in state)]
            if copies:
                seen["mode"] = stat.S_IMODE(copies[0].stat().st_mode)
                checked.set()
                break
            time.sleep(0.002)
        while not done.is_set():
            for path in state:
                path.write_bytes(evil)
            time.sleep(0.002)

    swapper = threading.Thread(target=swap_after_the_check)
    swapper.start()
    try:
        code, out, err = aam_main("tune", "--resume", experiment, "--no-dashboard")
    finally:
        done.set()
        swapper.join()
    assert checked.is_set(), "the private copy never appeared"
    assert seen["mode"] == 0o700
    assert not marker.exists(), "a state file swapped in after the check was unpickled"
    assert code == 0, err
    assert "search ended: 6 finished" in out or "search ended" in out
    assert not list(Path(tempfile.gettempdir()).glob(f"aam-state-{os.getpid()}-*"))  # removed at the end
