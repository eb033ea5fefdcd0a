"""What benchmarks/quality.py reads from a search: its pick, the pick's own test score, and how many
trials the search needed to find it, on the session's real (small) Optuna + ASHA search."""

import importlib.util
import json
from pathlib import Path

_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"
_spec = importlib.util.spec_from_file_location("quality", _FILE)
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_the_pick_its_test_score_and_the_trials_it_took_are_read_from_the_trials_own_results(small_experiment):
    best = quality.best_trial(small_experiment)
    trials = {d.name: _results(d) for d in Path(small_experiment).glob("trial_*") if (d / "result.json").is_file()}
    started = sorted(trials, key=lambda name: trials[name][0]["timestamp"] - trials[name][0]["time_this_iter_s"])
    best_val = {name: min(row["val_mae"] for row in rows) for name, rows in trials.items()}

    assert best["score"] == min(best_val.values()) and best_val[best["trial"]] == best["score"]
    assert best["found_at"] == started.index(best["trial"]) + 1
    assert best["best_of_first"] == [min(best_val[name] for name in started[:k]) for k in range(1, len(started) + 1)]
    last = trials[best["trial"]][-1]
    # the test score is the one the trial wrote at its end (of its best epoch's weights), or none
    # when ASHA stopped it before its end
    assert best["test_at_best_epoch"].get("test_mae") == last.get("test_mae")


def test_a_bad_run_config_stops_the_benchmark_with_its_own_check_before_any_run(tmp_path):
    # --config runs the README's recipe without a search; its config gets `aam train --config`'s
    # checks up front, so a typo costs no forest or fold model first
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 30\nlearning_rate: 0.002\n")
    keep = tmp_path / "keep"
    try:
        quality.main(["--config", str(config), "--data", f"mini={tmp_path}", "--keep", str(keep)])
    except SystemExit as e:
        message = str(e.code)
    else:
        raise AssertionError("a config with an unknown key was accepted")
    assert str(config) in message and "learning_rate" in message
    assert not keep.exists()
