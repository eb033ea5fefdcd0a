"""Starting an embedded Ray: the token file aam hands it, and the workers' set-up hook."""

import os
import pickle
import stat
import sys

import pytest

from aam.distributed.cluster import _setup_hook, private_token_file


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
