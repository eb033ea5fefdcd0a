"""How benchmarks/transfer.py carries a config to a dataset left out: the consensus of the other
datasets' search picks, within the space the left-out dataset would have searched."""

import importlib.util
import sys
from pathlib import Path

from aam._yaml import load_strict
from aam.config import RunConfig

_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_DIR / "benchmarks"))
_spec = importlib.util.spec_from_file_location("transfer", _DIR / "benchmarks" / "transfer.py")
transfer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(transfer)

SPACE = load_strict((_DIR / "search_spaces" / "quality.yaml").read_text())

PICKS = [
    {"lr": 1.0e-3, "ema_warmup": "short", "asv_identity": True, "asv_identity_dropout": 0.3, "abundance_bag": True,
     "abundance_bag_weight": "log", "dropout": 0.0, "target_transform": "log-zscore"},
    {"lr": 4.0e-3, "ema_warmup": "mean", "asv_identity": True, "asv_identity_dropout": 0.1, "abundance_bag": False,
     "dropout": 0.2, "target_transform": "log-zscore"},
    {"lr": 2.0e-3, "ema_warmup": "short", "asv_identity": True, "asv_identity_dropout": 0.0, "abundance_bag": True,
     "abundance_bag_weight": "share", "dropout": 0.1, "target_transform": "zscore"},
]


def test_floats_take_the_median_and_choices_the_majority_ties_going_to_the_space_s_first_listed():
    config = transfer.consensus(PICKS, SPACE["search"])
    assert config["lr"] == 2.0e-3 and config["dropout"] == 0.1 and config["asv_identity_dropout"] == 0.1
    assert config["ema_warmup"] == "short" and config["asv_identity"] is True and config["abundance_bag"] is True
    assert config["target_transform"] == "log-zscore"
    # one vote each for log and share: the space lists share first
    assert config["abundance_bag_weight"] == "share"
    # no pick sampled these: left to the run config's defaults
    assert "ema_decay" not in config and "head_dropout" not in config
    # the consensus is a config `aam train --config` takes, with the recipe's fixed fields
    cfg = RunConfig.from_dict({**SPACE["fixed"], **config}, where="consensus")
    assert cfg.lr == 2.0e-3 and cfg.abundance_bag_weight == "share" and cfg.epochs == SPACE["fixed"]["epochs"]


def test_a_choice_the_left_out_space_forbids_is_never_carried_and_a_child_follows_its_parent():
    space = {**SPACE["search"], "target_transform": {"type": "categorical", "choices": ["zscore"]}}
    config = transfer.consensus(PICKS, space)
    # two of three picks chose log-zscore, which a latitude-like target cannot take
    assert config["target_transform"] == "zscore"
    no_bag = [{**p, "abundance_bag": False} for p in PICKS]
    config = transfer.consensus(no_bag, SPACE["search"])
    assert config["abundance_bag"] is False and "abundance_bag_weight" not in config
    no_identity = [{**p, "asv_identity": False} for p in PICKS]
    config = transfer.consensus(no_identity, SPACE["search"])
    assert config["asv_identity"] is False
    assert not {"asv_identity_dropout", "abundance_bag", "abundance_bag_weight"} & set(config)
