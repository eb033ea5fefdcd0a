"""`aam tune` as separate processes: SIGKILL then --resume, and a real two-node Ray cluster."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aam.search import read_experiment

pytestmark = pytest.mark.slow

AAM = str(Path(sys.executable).parent / "aam")
RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # conftest unset RAY_ADDRESS
FIXED = {"d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1, "token_limit": 48, "batch_size": 16}


def space_file(folder: Path, epochs: int, samples: int) -> Path:
    space = {
        "objective": {"metric": "val_mae", "mode": "min"},
        "fixed": {**FIXED, "epochs": epochs},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
        "tune": {"num_samples": samples, "max_concurrent_trials": 2, "scheduler": {"type": "none"},
                 "searcher": {"type": "optuna", "seed": 0, "n_startup_trials": 2}},
    }
    file = folder / "space.yaml"
    file.write_text(yaml.safe_dump(space))
    return file


def reported_epochs(experiment: Path) -> dict[str, list[int]]:
    out = {}
    for trial_dir in experiment.glob("trial_*"):
        result = trial_dir / "result.json"
        lines = result.read_text().splitlines() if result.exists() else []
        out[trial_dir.name] = [json.loads(line)["epoch"] for line in lines if line.strip().startswith("{")]
    return out


def test_a_search_killed_with_sigkill_resumes_without_losing_or_rerunning_trials(example_dataset, tmp_path):
    storage = tmp_path / "experiments"
    experiment = storage / "killed"
    command = [AAM, "tune", str(space_file(tmp_path, epochs=4, samples=6)), "--data", str(example_dataset),
               "--storage-path", str(storage), "--name", "killed"]
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(command, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.monotonic() + 300
    try:  # kill it half-way, the moment a trial has just started: Tune may not have recorded it yet
        while time.monotonic() < deadline:
            epochs = reported_epochs(experiment) if experiment.exists() else {}
            if any(e[-1:] == [4] for e in epochs.values()) and any(not e for e in epochs.values()):
                break
            assert driver.poll() is None, f"the search ended before it could be killed:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        else:
            pytest.fail("the search made no progress in 300 s")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = reported_epochs(experiment)
    assert sum(e[-1:] != [4] for e in before.values()) + (6 - len(before)) >= 1  # work was left undone
    best_before = min(json.loads(line)["val_mae"] for result in experiment.glob("trial_*/result.json")
                      for line in result.read_text().splitlines() if line.strip().startswith("{"))

    # in-process trials: the resumed driver may run without the dashboard
    started = time.monotonic()
    resumed = subprocess.run([AAM, "tune", "--resume", str(experiment), "--no-dashboard"], env=ENV,
                             capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Ray dashboard" not in resumed.stderr
    # progress lines: the clock is this driver's, and "best so far" counts the trials run before the kill
    stamps = [float(m) for m in re.findall(r"^\[\s*([0-9.]+)s\]", resumed.stdout, flags=re.M)]
    assert stamps and max(stamps) <= wall, (wall, resumed.stdout[:2000])
    bests = [float(m) for m in re.findall(r"\(best ([0-9.]+) by", resumed.stdout)]
    assert bests and all(b <= best_before * (1 + 1e-3) for b in bests), (best_before, resumed.stdout[:2000])
    result = read_experiment(experiment)
    assert len(result.trials) == 6
    after = reported_epochs(experiment)
    assert [t.status for t in result.trials] == ["finished"] * 6, (before, after, resumed.stdout[:3000])
    # a trial started in Tune's last second before the kill is set aside, said, and had no epoch to lose
    unrecorded = sorted(p.name for p in (experiment / "unrecorded").glob("trial_*"))
    assert set(before) <= set(after) | set(unrecorded), (before, after, unrecorded)
    assert all(f"{name} (0 epochs)" in resumed.stdout for name in unrecorded), (unrecorded, resumed.stdout[:2000])
    for name, epochs in after.items():
        assert epochs[-1] == 4, (name, epochs)
        assert epochs.count(1) == 1, f"{name} restarted from scratch: {epochs}"  # resumed from its checkpoint
        assert epochs[: len(before.get(name, []))] == before.get(name, []), name  # history kept
    assert len({t.config["lr"] for t in result.trials}) == 6
    # the resumed search runs 2 at a time again (a slot held for a never-recorded trial made it 1)
    if 6 - sum(e[-1:] == [4] for e in before.values()) >= 2:
        assert "(2 running)" in resumed.stdout, resumed.stdout[:3000]


def test_no_dashboard_is_refused_for_trials_that_nest_a_torch_trainer(example_dataset, tmp_path):
    space = yaml.safe_load(space_file(tmp_path, epochs=1, samples=1).read_text())
    space["tune"]["resources"] = {"workers": 2, "cpus_per_worker": 1}
    (tmp_path / "nested.yaml").write_text(yaml.safe_dump(space))
    result = subprocess.run([AAM, "tune", str(tmp_path / "nested.yaml"), "--data", str(example_dataset),
                             "--storage-path", str(tmp_path / "experiments"), "--name", "nested", "--no-dashboard"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--no-dashboard needs trials that run in-process" in lines[0], result.stderr
    assert "2 workers" in lines[0]
    assert not (tmp_path / "experiments").exists()  # refused before Ray or any experiment folder


def test_tune_on_an_existing_two_node_cluster_places_trials_on_both_nodes(example_dataset, tmp_path, free_port,
                                                                          kill_processes_mentioning):
    port = free_port()
    head_tmp = Path("/tmp") / f"aam_head_{port}"
    worker_tmp = Path("/tmp") / f"aam_worker_{port}"
    address = f"127.0.0.1:{port}"
    start = [RAY, "start", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([*start, "--head", f"--port={port}", f"--temp-dir={head_tmp}", "--node-ip-address=127.0.0.1",
                        f"--dashboard-port={free_port()}", "--dashboard-host=127.0.0.1"],
                       env=ENV, check=True, capture_output=True, timeout=120)
        subprocess.run([*start, f"--address={address}", f"--temp-dir={worker_tmp}", "--node-ip-address=127.0.0.1"],
                       env=ENV, check=True, capture_output=True, timeout=120)
        storage = tmp_path / "experiments"
        result = subprocess.run(
            [AAM, "tune", str(space_file(tmp_path, epochs=2, samples=4)), "--data", str(example_dataset),
             "--storage-path", str(storage), "--name", "two_nodes", "--address", address],
            env=ENV, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        kill_processes_mentioning(str(head_tmp))
        kill_processes_mentioning(str(worker_tmp))
        kill_processes_mentioning(f"127.0.0.1:{port}")
    experiment = storage / "two_nodes"
    nodes = {
        json.loads(line)["node_id"]
        for trial in experiment.glob("trial_*")
        for line in (trial / "result.json").read_text().splitlines()
        if line.strip()
    }
    assert len(nodes) == 2, nodes  # one CPU per node, two trials at a time: both nodes ran trials
    assert [t.status for t in read_experiment(experiment).trials] == ["finished"] * 4
