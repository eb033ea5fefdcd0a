"""Starting Ray: an `aam` command never joins, nor stops, a Ray it did not start; the token file
aam hands an embedded Ray, and the workers' set-up hook."""

import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from aam.distributed.cluster import _setup_hook, dashboard_line, private_token_file

AAM = str(Path(sys.executable).parent / "aam")
RAY = str(Path(sys.executable).parent / "ray")
TINY = ["--d-model", "16", "--n-heads", "2", "--asv-layers", "1", "--sample-layers", "1", "--token-limit", "48",
        "--epochs", "1"]


@pytest.mark.slow
def test_a_ray_started_separately_is_neither_joined_nor_stopped_by_aam(example_dataset, tmp_path, free_port,
                                                                      kill_processes_mentioning):
    """A user's `ray start --head` on the same machine, as `ray.init()` with no address would find it.

    RAY_TMPDIR points both at a folder of this test's own: Ray looks for "the last `ray start`" in
    its ray_current_cluster file there. A bare `ray.init()` joins that cluster (and then refuses
    aam's num_cpus); aam must start its own Ray, run, and leave the user's running.
    """
    base = Path(tempfile.mkdtemp(prefix="aamu-", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": str(base)}
    port = free_port()
    try:
        # every port its own: `ray start` otherwise takes fixed ones (the dashboard agent's 52365,
        # the client server's 10001) that any other Ray on the machine may hold
        started = subprocess.run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={base / 'ray'}",
                                  "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--dashboard-port={free_port()}",
                                  f"--dashboard-agent-listen-port={free_port()}",
                                  f"--ray-client-server-port={free_port()}",
                                  "--dashboard-host=127.0.0.1", "--disable-usage-stats"],
                                 env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        assert (base / "ray" / "ray_current_cluster").is_file()  # what a bare ray.init() would join

        trained = subprocess.run([AAM, "train", "--data", str(example_dataset), "--out", str(tmp_path / "run"),
                                  *TINY], env=env, capture_output=True, text=True, timeout=600)
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "existing Ray cluster" not in trained.stderr, trained.stderr[-3000:]

        alive = subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True,
                               text=True, timeout=120)
        assert alive.returncode == 0, alive.stderr[-2000:]  # the user's Ray is still there
    finally:
        kill_processes_mentioning(str(base))
        shutil.rmtree(base, ignore_errors=True)


def test_the_dashboard_line_says_where_the_token_is(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    line = dashboard_line("127.0.0.1:8265")
    assert line.startswith("Ray dashboard: http://127.0.0.1:8265") and "~/.ray/auth_token" in line
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/secrets/ray-token")
    assert "/secrets/ray-token" in dashboard_line("127.0.0.1:8265")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token asked: just the address
    assert dashboard_line("127.0.0.1:8266") == "Ray dashboard: http://127.0.0.1:8266"


def test_the_token_file_is_created_readable_by_its_owner_only_and_a_loose_one_is_tightened(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert private_token_file() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    written = token.read_text()
    token.chmod(0o644)  # as Ray writes it under a 022 umask
    private_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == written  # kept, not replaced
    monkeypatch.setenv("RAY_AUTH_TOKEN", "given-in-the-environment")
    assert private_token_file() is None


class _NoAam:
    """A meta-path finder that makes `aam` unimportable, as a shadowing folder would."""

    def find_spec(self, name, path=None, target=None):
        if name == "aam" or name.startswith("aam."):
            raise ImportError(f"{name} imported while loading the hook")
        return None


def test_the_worker_hook_loads_without_importing_aam_and_drops_the_drivers_directory_from_sys_path(
        ray_cluster, tmp_path, monkeypatch):
    import ray.cloudpickle as cloudpickle

    payload = cloudpickle.dumps(_setup_hook(str(tmp_path)))
    with monkeypatch.context() as hidden:  # a worker whose `aam` would be the shadowing folder
        for name in [m for m in sys.modules if m == "aam" or m.startswith("aam.")]:
            hidden.delitem(sys.modules, name)
        hidden.setattr(sys, "meta_path", [_NoAam(), *sys.meta_path])
        hook = pickle.loads(payload)  # by value: nothing of aam is imported to load it
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setenv("RAY_ADDRESS", os.environ.get("RAY_ADDRESS") or "127.0.0.1:1")  # the hook sets it; undone after
    hook()  # what every worker runs: the path cleaned, then aam's own set-up
    assert str(tmp_path) not in sys.path


def test_a_worker_drops_only_the_system_exit_that_a_sigterm_raises_in_a_finaliser(capsys):
    """What a Ray worker prints when its group is torn down inside Ray Data's iterator __del__:
    the SystemExit report goes, any other unraisable error is still printed."""
    import gc

    from aam.distributed.cluster import drop_teardown_exits

    class Finalised:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    before = sys.unraisablehook
    sys.unraisablehook = drop_teardown_exits
    try:
        Finalised(SystemExit(1))
        gc.collect()
        assert capsys.readouterr().err == ""
        Finalised(ValueError("a real bug"))
        gc.collect()
        err = capsys.readouterr().err
    finally:
        sys.unraisablehook = before
    assert "Exception ignored in" in err and "ValueError: a real bug" in err
