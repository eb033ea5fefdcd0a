"""`aam runs` and `aam report` on an experiment folder someone edited or damaged (issue 23): a
damaged space file is one line naming it; a damaged trial or ensemble is named in one line each,
and every readable trial and ensemble is still listed."""

import json
import shutil
import time

import pytest


@pytest.fixture
def experiment(small_experiment, tmp_path):
    return shutil.copytree(small_experiment, tmp_path / "small", symlinks=True)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9))


@pytest.mark.parametrize("text, message", [
    ("", "has no objective"),
    ("fixed: {epochs: 3}\n", "has no objective"),
    ("objective: {metric: val_mae, mode: sideways}\n", "has no objective"),
    ("objective: [unclosed\n", "not valid YAML"),
    ("search: [1, 2]\nobjective: {metric: val_mae, mode: min}\n", "search: and fixed: must be mappings"),
    (ALIAS_BOMB, "YAML nodes once its aliases"),
])
@pytest.mark.parametrize("command", ["runs", "report"])
def test_a_damaged_space_file_is_one_line_naming_it(experiment, command, text, message, folder_hash, aam_main):
    (experiment / "aam-space.yaml").write_text(text)
    before = folder_hash(experiment)
    started = time.monotonic()
    code, _, err = aam_main(command, experiment)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(experiment / "aam-space.yaml") in lines[0], err
    assert message in lines[0]
    assert time.monotonic() - started < 10  # the alias bomb is refused before it is built
    assert folder_hash(experiment) == before


def damage_trials(experiment):
    """Three trials damaged three ways, and two ensembles beside one that is whole."""
    trials = sorted(experiment.glob("trial_*"))
    (trials[0] / "config.json").write_text("{not json")
    with open(trials[1] / "result.json", "a") as f:
        f.write("5\n")
    rows = (trials[2] / "result.json").read_text().splitlines()
    first = json.loads(rows[0])
    first["val_mae"] = "x"
    (trials[2] / "result.json").write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    return trials


def write_ensemble_folder(folder, **changes):
    member = {"name": "m", "kind": "model", "source": "x", "weight": 1.0, "val_mae": 1.0, "model": "members/0/model.pt"}
    member.update(changes)
    (folder / "members" / "0").mkdir(parents=True)
    (folder / "members" / "0" / "model.pt").write_bytes(b"weights")
    info = {"format": "aam-ensemble/1", "targets": ["Age_wk"], "includes_forest": False, "members": [member]}
    (folder / "ensemble.json").write_text(json.dumps(info))
    (folder / "metrics.json").write_text(json.dumps({"val_mae": 1.5, "test_mae": 1.7}))


def test_runs_lists_every_readable_trial_and_ensemble_and_names_each_damaged_file(experiment, aam_main):
    trials = damage_trials(experiment)
    write_ensemble_folder(experiment / "ensembles" / "whole")
    write_ensemble_folder(experiment / "ensembles" / "self", model=".")
    write_ensemble_folder(experiment / "ensembles" / "text-weight", weight="1.0")
    code, out, err = aam_main("runs", experiment, "--format", "json")
    assert code == 0, err
    listed = json.loads(out)
    assert sorted(t["trial"] for t in listed["trials"]) == sorted(t.name for t in trials)
    assert [e["trial"] for e in listed["ensembles"]] == ["ensemble:whole"]
    damaged = err.strip().splitlines()
    expected = [str(trials[0] / "config.json"), str(trials[1] / "result.json"), str(trials[2] / "result.json"),
                "members[0].model", "members[0].weight is \"1.0\""]
    assert len(damaged) == len(expected) and all(any(e in line for line in damaged) for e in expected), err
    assert "Traceback" not in err


def test_report_of_damaged_trials_lists_the_rest_and_names_what_it_left_out(experiment, tmp_path, aam_main):
    trials = damage_trials(experiment)
    code, out, err = aam_main("report", experiment, "--out", tmp_path / "report.html")
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert all(t.name in page for t in trials)
    assert str(trials[0] / "config.json") in err and "Left out, as they could not be read" in page
