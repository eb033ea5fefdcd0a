"""Faults injected into real aam commands, each a process of its own: a trial's worker and a Ray
Train worker killed with SIGKILL, and what an embedded Ray listens on.

Only processes these tests started are killed: the driver runs in a session of its own
(`start_new_session`), and the Ray processes it starts stay in that session, so a PID is
killed only when `os.getsid(pid)` is the driver's. A trial's PID is the one Tune records in its
result.json.

Not here: a node of a two-node local cluster killed. On this project's 2-core CI machine a
second raylet plus the trials left too little CPU for a test that is not flaky; the
`tune: max_failures` retry it relies on is the one tested below with a killed trial process.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aam.search import read_experiment

pytestmark = pytest.mark.slow

AAM = str(Path(sys.executable).parent / "aam")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
TINY = {"d_model": 16, "n_heads": 2, "asv_layers": 1, "sample_layers": 1, "token_limit": 48, "batch_size": 16}
TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
DEADLINE_S = 600  # generous: a loaded 2-core machine took 8 min to reach a first checkpoint


def space_file(folder: Path, epochs: int, samples: int, **tune) -> Path:
    space = {
        "objective": {"metric": "val_mae", "mode": "min"},
        "fixed": {**TINY, "epochs": epochs},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
        "tune": {"num_samples": samples, "max_concurrent_trials": 2, "scheduler": {"type": "none"},
                 "searcher": {"type": "optuna", "seed": 0, "n_startup_trials": 2}, **tune},
    }
    file = folder / "space.yaml"
    file.write_text(yaml.safe_dump(space))
    return file


def start(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            **{"env": ENV, **kwargs})


def finish(driver: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    return log.read_text()


def session_processes(driver: subprocess.Popen) -> dict[int, str]:
    """PID -> process title of every process in the driver's session: that driver's Ray, and nothing else."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(entry.name)) == driver.pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, ValueError):
            continue
    return found


def results(experiment: Path) -> dict[str, list[dict]]:
    out = {}
    for result in experiment.glob("trial_*/result.json"):
        out[result.parent.name] = [json.loads(line) for line in result.read_text().splitlines()
                                   if line.strip().startswith("{")]
    return out


def kill_a_trial_mid_run(driver: subprocess.Popen, experiment: Path, epochs: int, log: Path,
                         each_poll=lambda: None) -> tuple[str, list[int]]:
    """SIGKILL the process of a trial that has reported (and checkpointed) an epoch but not its last."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        each_poll()
        for name, rows in results(experiment).items():
            if rows and 1 <= rows[-1]["epoch"] < epochs:
                pid = rows[-1]["pid"]
                assert os.getsid(pid) == driver.pid, "the trial's process is not one this test started"
                os.kill(pid, signal.SIGKILL)
                return name, [r["epoch"] for r in rows]
        assert driver.poll() is None, f"the search ended before a trial could be killed:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    pytest.fail(f"no trial reached epoch 1 in {DEADLINE_S} s")


LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):\d+$")


class Listeners:
    """The listening TCP sockets of a driver's processes (its Ray), sampled with `ss` while it runs."""

    def __init__(self, driver: subprocess.Popen):
        self.driver, self.seen = driver, {}

    def sample(self) -> None:
        table = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        for line in table.splitlines():
            for pid in map(int, re.findall(r"pid=(\d+)", line)):
                try:
                    if os.getsid(pid) == self.driver.pid:
                        self.seen[line.split()[3]] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                except OSError:
                    continue


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_a_search_listens_on_loopback_only_ignores_an_aam_folder_in_the_cwd_and_retries_a_killed_trial(
        example_dataset, tmp_path):
    # the working directory holds a folder named aam, as the folder holding a checkout does: Ray
    # puts it first on the workers' sys.path, where it must not replace the installed aam
    cwd = tmp_path / "cwd"
    (cwd / "aam").mkdir(parents=True)
    (cwd / "aam" / "__init__.py").write_text("raise ImportError('the aam folder in the working directory')\n")
    home = tmp_path / "home"  # Ray's token file goes to ~/.ray: this test's own home
    home.mkdir()
    env = {k: v for k, v in ENV.items() if k != "RAY_AUTH_MODE"}  # aam chooses token auth itself
    env["HOME"] = str(home)
    experiment = tmp_path / "experiments" / "killed"
    log = tmp_path / "tune.log"
    driver = start([AAM, "tune", str(space_file(tmp_path, epochs=4, samples=3)), "--data", str(example_dataset),
                    "--storage-path", str(tmp_path / "experiments"), "--name", "killed"], log, cwd=cwd, env=env)
    listeners = Listeners(driver)
    killed, before = kill_a_trial_mid_run(driver, experiment, 4, log, each_poll=listeners.sample)
    while driver.poll() is None:
        listeners.sample()
        time.sleep(0.3)
    output = finish(driver, log)
    assert driver.returncode == 0, output[-3000:]

    # the killed trial was retried from its checkpoint; no trial lost, none left "running"
    short = killed.removeprefix("trial_")
    assert re.search(rf"{short} failed \(.*died.*\); retrying from its last checkpoint \(retry 1 of 2\)", output), output
    result = read_experiment(experiment)
    assert [t.status for t in result.trials] == ["finished"] * 3
    epochs = [row["epoch"] for row in results(experiment)[killed]]
    assert epochs[: len(before)] == before and epochs[-1] == 4, epochs
    assert epochs.count(1) == 1, f"restarted from scratch, not from its checkpoint: {epochs}"
    assert "search ended: 3 finished, 0 stopped early, 0 failed" in output

    # every port of its Ray (dashboard included) on loopback, and a private token file
    titles = set(listeners.seen.values())
    assert any("gcs_server" in t for t in titles) and any("raylet" in t for t in titles), listeners.seen
    exposed = {address: title for address, title in listeners.seen.items() if not LOOPBACK.match(address)}
    assert not exposed, exposed
    token = home / ".ray" / "auth_token"
    assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600


def test_a_trial_that_fails_for_good_reads_failed_with_its_error_and_the_search_exits_3(example_dataset, tmp_path):
    experiment = tmp_path / "experiments" / "no_retries"
    log = tmp_path / "tune.log"
    driver = start([AAM, "tune", str(space_file(tmp_path, epochs=3, samples=2, max_failures=0)), "--data",
                    str(example_dataset), "--storage-path", str(tmp_path / "experiments"), "--name", "no_retries",
                    "--no-dashboard"], log)
    killed, _ = kill_a_trial_mid_run(driver, experiment, 3, log)
    output = finish(driver, log)
    assert driver.returncode == 3, output[-3000:]
    assert "search ended: 1 finished, 0 stopped early, 1 failed" in output
    assert re.search(rf"^aam: 1 trial\(s\) failed after their retries \(first: {killed}: .*died", output, re.M), output
    assert "Traceback" not in output  # one line per failure; the traceback stays in the trial's error.txt
    runs = subprocess.run([AAM, "runs", str(experiment), "--format", "json"], env=ENV, capture_output=True,
                          text=True, timeout=120)
    trials = {t["trial"]: t for t in json.loads(runs.stdout)["trials"]}
    assert trials[killed]["status"] == "failed"  # Tune's own record still says RUNNING
    assert "died" in trials[killed]["error"]
    assert [t["status"] for name, t in trials.items() if name != killed] == ["finished"]


def train_command(out: Path, data: Path, *flags: str) -> list[str]:
    return [AAM, "train", "--data", str(data), "--out", str(out), "--workers", "2", "--epochs", "6", *TINY_FLAGS,
            *flags]


def kill_a_train_worker_after_a_checkpoint(driver: subprocess.Popen, run: Path, log: Path, after: float = 0.0,
                                           spared: frozenset = frozenset()) -> tuple[float, frozenset]:
    """SIGKILL one Ray Train worker once Ray Train has registered a checkpoint later than `after`
    (a time); returns that checkpoint's time and the worker processes alive then. Processes in
    `spared` (an earlier worker group's) are not candidates: on a loaded machine one of them can
    still be exiting when the new group has started, and its death is no failure of the run."""
    snapshot = run / "ray" / "train" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        registered = snapshot.stat().st_mtime if snapshot.is_file() else 0.0
        if registered > after:
            workers = {pid for pid, title in session_processes(driver).items()
                       if title.startswith("ray::RayTrainWorker") and pid not in spared}
            if workers:
                os.kill(max(workers), signal.SIGKILL)
                return registered, frozenset(workers)
        assert driver.poll() is None, f"the run ended before a worker could be killed:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    pytest.fail(f"no new checkpoint in {DEADLINE_S} s")


def epochs_trained(run: Path) -> list[int]:
    return [row["epoch"] for row in json.loads((run / "metrics.json").read_text())["history"]]


def test_a_killed_train_worker_is_restarted_from_the_checkpoint_then_retries_spent_end_in_one_line_and_resume_from_finishes(
        example_dataset, tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    driver = start(train_command(run, example_dataset, "--max-failures", "1"), log)
    first, first_group = kill_a_train_worker_after_a_checkpoint(driver, run, log)
    # the worker group restarts from that checkpoint; the second death, in the new group, spends the one retry
    kill_a_train_worker_after_a_checkpoint(driver, run, log, after=first, spared=first_group)
    output = finish(driver, log)
    assert re.search(r"^resume: continuing after epoch [1-5] of 6$", output, re.M), output
    assert driver.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("aam: error:")]
    assert len(errors) == 1 and "training failed after 1 restart(s)" in errors[0] and "died" in errors[0], output
    assert f"--resume-from {run}" in errors[0]
    assert not (run / "state.pt").exists()  # its checkpoints are Ray Train's, under run/ray/train/

    resumed = subprocess.run([AAM, "train", "--resume-from", str(run), "--out", str(run)],
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert re.search(r"continuing from its newest checkpoint, .*/ray/train/checkpoint_", resumed.stdout)
    assert re.search(r"resume: continuing after epoch [2-5] of 6", resumed.stdout)
    assert epochs_trained(run) == [1, 2, 3, 4, 5, 6]
    assert (run / "model.pt").is_file()
