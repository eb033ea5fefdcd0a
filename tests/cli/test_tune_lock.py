"""One driver per experiment (issue 23): a second `aam tune` on an experiment that a driver runs is
one line naming that driver, before it reads or writes anything of the experiment."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def wait_for_holder(lock: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(lock.read_text() or "null") == {"pid": pid, "host": socket.gethostname()}:
                return
        time.sleep(0.1)
    raise AssertionError(f"{lock} never named process {pid}")


def test_a_second_driver_is_refused_while_a_driver_runs(small_experiment, small_space_file, tmp_path, aam_main):
    storage = tmp_path / "storage"
    shutil.copytree(small_experiment, storage / "w", symlinks=True)
    # the first driver: `aam tune --resume` as a user runs it, in its own process
    first = subprocess.Popen([str(Path(sys.executable).parent / "aam"), "tune", "--resume", storage / "w",
                              "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        wait_for_holder(storage / ".w.aam-lock", first.pid)
        for args in (["--resume", storage / "w"], [small_space_file, "--storage-path", storage, "--name", "w"]):
            code, _, err = aam_main("tune", *args, "--no-dashboard")
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1, err
            assert f"being run by process {first.pid} on {socket.gethostname()}" in lines[0]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert (storage / ".w.aam-lock").read_bytes() == b""  # let go on SIGTERM: nothing for the next to take over


def test_two_drivers_started_on_a_new_storage_folder_are_one_driver(small_space_file, example_dataset, tmp_path,
                                                                     aam_main):
    storage = tmp_path / "new" / "storage"  # neither exists yet: the lock must not wait for the search to make them
    command = ["tune", small_space_file, "--data", example_dataset, "--storage-path", storage, "--name", "w",
               "--no-dashboard"]
    first = subprocess.Popen([str(Path(sys.executable).parent / "aam"), *map(str, command)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        wait_for_holder(storage / ".w.aam-lock", first.pid)
        code, _, err = aam_main(*command)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert f"being run by process {first.pid}" in lines[0]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)


def test_a_search_refused_on_a_new_storage_folder_leaves_no_folder(small_space_file, tmp_path, aam_main):
    not_a_dataset = tmp_path / "empty"
    not_a_dataset.mkdir()
    code, _, err = aam_main("tune", small_space_file, "--data", not_a_dataset, "--storage-path",
                            tmp_path / "new" / "storage", "--name", "w", "--no-dashboard")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()  # the folders made for the lock went with it
