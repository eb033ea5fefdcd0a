"""The run configs in configs/: each loads as `aam train --config` loads it, says how to run it, and
the quality recipe stays inside the search space whose picks it carries."""

from pathlib import Path

import pytest

from aam._yaml import load_strict
from aam.cli.train import load_run_file
from aam.config import RunConfig
from aam.search.space import when_holds

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_run_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_as_aam_train_loads_it_and_its_header_says_how_to_run_it(path):
    cfg = RunConfig.from_dict(load_run_file(path), where=str(path))
    assert cfg.data == ""  # the dataset is the user's: --data, never a path of ours
    text = path.read_text()
    assert text.startswith("#") and f"aam train --config configs/{path.name}" in text


def test_the_quality_config_is_a_point_of_the_quality_search_space():
    config = load_run_file(REPO / "configs" / "quality.yaml")
    space = load_strict((REPO / "search_spaces" / "quality.yaml").read_text())
    # the fixed part of the recipe is the same whether one searches or not
    assert {k: config.get(k) for k in space["fixed"]} == space["fixed"]
    for name, spec in space["search"].items():
        when = spec.get("when") or {}
        if not when_holds(when, config):
            assert name not in config, f"{name} is set but its condition {when} does not hold"
            continue
        assert name in config, f"{name} is searched by quality.yaml but not set"
        value = config[name]
        if spec["type"] == "categorical":
            assert value in spec["choices"], name
        else:
            assert spec["low"] <= value <= spec["high"], name
