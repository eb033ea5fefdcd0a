"""README "Use": every command, in order, as written, on the folders `make demo` leaves.

The commands are read from README.md itself, so the README and this test cannot drift apart.
`make demo`'s search (10 trials, 15 epochs) is too slow for CI; the session's small real search
(tests/conftest.py) stands in for it under the demo's folder names.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def use_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The commands of the first bash block under "## Use", continuation lines joined."""
    text = readme.read_text()
    section = text[text.index("\n## Use\n"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        current += line
        if current.rstrip().endswith("\\"):
            current = current.rstrip()[:-1] + " "
            continue
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


def test_the_use_block_is_the_demo_commands():
    commands = use_commands()
    assert len(commands) >= 8 and all(c.startswith("aam ") for c in commands), commands
    assert any(" report " in c for c in commands) and any("--best-of" in c for c in commands)


def test_every_use_command_runs_as_written_on_the_demo_folders(small_experiment, example_dataset, tmp_path):
    # the layout `make demo` leaves, from the repository root
    (tmp_path / "demo" / "experiments").mkdir(parents=True)
    shutil.copytree(small_experiment, tmp_path / "demo" / "experiments" / "demo")
    (tmp_path / "demo" / "data").symlink_to(example_dataset)
    (tmp_path / "aam").symlink_to(ROOT / "aam")  # the bundled example's files, as in a clone
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in use_commands():
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"{command}\n{result.stderr[-3000:]}"
    report = (tmp_path / "demo" / "experiments" / "demo" / "report.html").read_text()
    assert "random forest" in report  # the last report had the forest beside the best trial
    assert (tmp_path / "demo" / "predictions.tsv").stat().st_size > 0
    assert (tmp_path / "demo" / "runs" / "retrained" / "summary.json").is_file()
    assert (tmp_path / "demo" / "runs" / "two-workers" / "model.pt").is_file()
    # the recipe's last steps: the winner on 5 folds, bagged with the forest on out-of-fold predictions
    assert len(list((tmp_path / "demo" / "runs" / "cv" / "folds").glob("*/model.pt"))) == 5
    bagged = json.loads((tmp_path / "demo" / "runs" / "cv-rf" / "ensemble.json").read_text())
    assert bagged["selected_on"] == "out-of-fold" and bagged["includes_forest"] is True
    knn = json.loads((tmp_path / "demo" / "runs" / "knn" / "baseline.json").read_text())
    assert knn["kind"] == "knn" and knn["folds"] == 5
    both = json.loads((tmp_path / "demo" / "runs" / "cv-bars" / "ensemble.json").read_text())
    assert {"baseline:rf", "baseline:knn"} <= set(both["candidates"])
