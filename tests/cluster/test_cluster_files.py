"""The cluster configs parse, the SLURM script is valid bash, and nothing exposes the dashboard."""

import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))


def test_cluster_folder_has_the_three_ways_and_a_readme():
    names = {p.name for p in CLUSTER.iterdir()}
    assert {"README.md", "aws-gpu.yaml", "kuberay-raycluster.yaml", "slurm-aam-tune.sh"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_yaml_parses_and_binds_the_dashboard_to_loopback(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)
    text = path.read_text()
    assert "0.0.0.0" not in text  # no port open to every interface
    assert "127.0.0.1" in text and "RAY_AUTH_MODE" in text


def test_ray_cluster_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))


def test_slurm_script_is_valid_bash_and_runs_aam_tune_with_token_auth():
    script = CLUSTER / "slurm-aam-tune.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "aam tune" in text and "RAY_AUTH_MODE=token" in text and "--dashboard-host=127.0.0.1" in text
