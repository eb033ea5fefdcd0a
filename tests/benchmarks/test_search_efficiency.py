"""The "compute to reach a score" calculation of benchmarks/search_efficiency.py, on hand-made
trial histories (no Ray, no training)."""

import importlib.util
import math
from pathlib import Path

import pytest

_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "search_efficiency.py"
_spec = importlib.util.spec_from_file_location("search_efficiency", _FILE)
se = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(se)

NAN = math.nan


def test_compute_counts_every_epoch_of_earlier_trials_up_to_the_first_epoch_at_the_bar():
    histories = [[9.0, 8.0, 7.0], [6.0, 5.0], [4.0, 3.0, 5.5]]
    assert se.compute_to_reach(histories, 7.0, "min") == 3  # trial 0's last epoch
    assert se.compute_to_reach(histories, 5.0, "min") == 5  # 3 epochs of trial 0 + 2 of trial 1
    assert se.compute_to_reach(histories, 3.0, "min") == 7
    assert se.compute_to_reach(histories, 2.9, "min") is None


def test_max_mode_and_nan_epochs_cost_compute_but_never_reach():
    histories = [[NAN, 0.2], [0.5, NAN, 0.9]]
    assert se.compute_to_reach(histories, 0.5, "max") == 3
    assert se.compute_to_reach(histories, 0.9, "max") == 5
    assert se.best_score(histories, "max") == 0.9
    assert se.best_score([[NAN], []], "min") != se.best_score([[NAN], []], "min")  # NaN: nothing reported


def test_compare_uses_random_best_as_the_bar_and_an_early_stopped_search_can_reach_it_cheaper():
    # random: 3 trials x 4 epochs, its best (10.0) in trial 1's last epoch -> 8 trial-epochs
    random = [[20.0, 15.0, 14.0, 13.0], [18.0, 14.0, 12.0, 10.0], [19.0, 16.0, 15.0, 11.0]]
    # TPE + ASHA: trial 0 stopped after 2 epochs, trial 1 reaches 9.5 in its 3rd epoch -> 5
    tpe = [[21.0, 17.0], [16.0, 12.0, 9.5, 9.0], [30.0, 25.0]]
    out = se.compare(random, tpe, "min")
    assert out["bar"] == 10.0
    assert out["random_to_bar"] == 8 and out["random_total"] == 12
    assert out["tpe_asha_to_bar"] == 5 and out["tpe_asha_total"] == 8
    assert out["ratio"] == pytest.approx(5 / 8)
    assert out["ratio_vs_random_total"] == pytest.approx(5 / 12)


def test_a_search_that_never_reaches_the_bar_has_no_ratio_and_a_lower_bound_from_its_whole_compute():
    out = se.compare([[5.0, 4.0]], [[6.0], [7.0, 4.5]], "min")
    assert out["tpe_asha_to_bar"] is None and out["ratio"] is None
    assert out["ratio_lower_bound"] == pytest.approx(3 / 2)
    reached = se.compare([[5.0, 4.0]], [[3.0]], "min")  # 1 epoch vs random's 2
    summary = se.summarize([reached, out])
    assert summary["reached"] == 1 and summary["seeds"] == 2
    assert summary["mean_ratio"] == pytest.approx(0.5)
    assert summary["mean_ratio_all_seeds"] is None  # one seed never got there: no claim over all seeds
    assert summary["mean_ratio_lower_bound"] == pytest.approx((0.5 + 1.5) / 2)


def test_trials_are_read_in_the_order_tune_started_them_not_by_folder_name(tmp_path):
    import json

    import yaml

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "aam-space.yaml").write_text(yaml.safe_dump(
        {"objective": {"metric": "val_mae", "mode": "min"}, "fixed": {"epochs": 2},
         "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}))
    # folder names sort a, b, c; Tune started them c, a, b
    starts = {"aaaa": 200.0, "bbbb": 300.0, "cccc": 100.0}
    scores = {"aaaa": [5.0, 4.0], "bbbb": [3.0], "cccc": [6.0, 7.0]}
    trial_data = []
    for trial_id, history in scores.items():
        folder = exp / f"trial_{trial_id}"
        folder.mkdir()
        (folder / "result.json").write_text("".join(
            json.dumps({"val_mae": s, "training_iteration": i + 1}) + "\n" for i, s in enumerate(history)))
        (folder / "config.json").write_text(json.dumps({"lr": 1e-3, "epochs": 2}))
        trial_data.append([json.dumps({"trial_id": trial_id, "status": "TERMINATED"}),
                           json.dumps({"start_time": starts[trial_id], "last_result": {}})])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    read = se.read_search(exp, "val_mae")
    assert [t["trial"] for t in read["trials"]] == ["cccc", "aaaa", "bbbb"]
    assert se.compute_to_reach([t["scores"] for t in read["trials"]], 4.0, "min") == 4
