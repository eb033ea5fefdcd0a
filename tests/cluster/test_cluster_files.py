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


def _kuberay() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay-raycluster.yaml").read_text()) if d]


def _pod_specs(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_installs_are_pinned_and_nothing_is_piped_into_a_shell():
    import re

    for path in [*YAMLS, CLUSTER / "slurm-aam-tune.sh"]:
        text = path.read_text()
        assert not re.search(r"(curl|wget)[^\n|]*\|\s*(sudo\s+)?(ba|z)?sh\b", text), path.name
    aws = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in aws[key]]
    installs = [c for c in commands if "pip install" in c]
    assert installs
    for command in installs:
        packages = [w.strip("'\"") for w in command.split("install", 1)[1].split()
                    if not w.startswith("-") and not w.startswith("~") and "://" not in w]
        assert packages and all("==" in p for p in packages), command


def test_aws_security_group_admits_only_gcs_and_dashboard_from_the_users_range():
    aws = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    rules = aws["provider"]["security_group"]["IpPermissions"]
    assert sorted((r["FromPort"], r["ToPort"]) for r in rules) == [(6379, 6379), (8265, 8265)]
    for rule in rules:
        assert rule["IpProtocol"] == "tcp"
        assert [r["CidrIp"] for r in rule["IpRanges"]] == ["REPLACE_ME_CIDR"]  # the user sets it; never "any"


def test_kuberay_pins_images_and_runs_pods_as_non_root_with_a_sized_shm():
    cluster = next(d for d in _kuberay() if d["kind"] == "RayCluster")
    containers = [c for spec in _pod_specs(cluster) for c in spec["containers"]]
    assert containers
    for container in containers:
        image = container["image"]
        tag = image.rsplit(":", 1)[-1] if "@" not in image else "digest"
        assert ":" in image and tag not in ("latest", ""), image
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for spec in _pod_specs(cluster):
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
        mounts = {m["mountPath"]: m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
        assert mounts["/dev/shm"] == "dshm"


def test_kuberay_network_policy_admits_only_the_clusters_pods_and_gcs_and_dashboard_from_the_users_range():
    cluster = next(d for d in _kuberay() if d["kind"] == "RayCluster")
    policy = next(d for d in _kuberay() if d["kind"] == "NetworkPolicy")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        (source,) = rule["from"]
        if "podSelector" in source:  # every port, but only from this cluster's own pods
            assert source["podSelector"]["matchLabels"] == selected and "ports" not in rule
        else:
            assert source["ipBlock"]["cidr"] == "REPLACE_ME_CIDR"
            assert sorted(p["port"] for p in rule["ports"]) == [6379, 8265]
