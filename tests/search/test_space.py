"""The search-space compiler: YAML -> checked SearchSpace -> Optuna define-by-run.

Pure: no Ray. Sampling goes through real in-memory Optuna studies, never mocks (Ray's objects made
of a space: tests/distributed/test_tune_config.py).
"""

import math
import pickle
from pathlib import Path

import optuna
import pytest
import yaml

from aam.config import RunConfig
from aam.search import SearchSpace, load_space
from aam.errors import AamUserError

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def base(**changes):
    """A small valid search space as YAML data; keyword arguments replace top-level keys."""
    doc = {
        "storage_path": "experiments",
        "objective": {"metric": "val_mae", "mode": "min"},
        "fixed": {"epochs": 4},
        "search": {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        "tune": {"num_samples": 4, "scheduler": {"type": "asha", "grace_period": 1}},
    }
    doc.update(changes)
    return doc


def write(tmp_path, doc, name="space.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def load(tmp_path, doc, **kw):
    return load_space(write(tmp_path, doc), **kw)


def sample(space, n=40, seed=0, sampler=None):
    """Run the define-by-run n times on a real study; the sampled params of each trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial)
        out.append((dict(trial.params), dict(trial.distributions), constants))
        study.tell(trial, float(i % 7))
    return out


# --- distributions ---------------------------------------------------------------------------
DISTRIBUTIONS = {
    "float": ("dropout", {"type": "float", "low": 0.05, "high": 0.45}),
    "float log": ("lr", {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}),
    "float step": ("dropout", {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}),
    "int": ("asv_layers", {"type": "int", "low": 1, "high": 3}),
    "int log": ("token_limit", {"type": "int", "low": 16, "high": 512, "log": True}),
    "int step": ("batch_size", {"type": "int", "low": 8, "high": 64, "step": 8}),
    "categorical": ("count_embed", {"type": "categorical", "choices": ["off", "add", "concat", "film"]}),
    "categorical lists": ("head_hidden", {"type": "categorical", "choices": [[64], [128, 64], [32, 32, 32]]}),
}


@pytest.mark.parametrize("label", DISTRIBUTIONS)
def test_every_distribution_samples_within_bounds(tmp_path, label):
    name, spec = DISTRIBUTIONS[label]
    space = load(tmp_path, base(search={name: spec}))
    seen = set()
    for params, dists, _ in sample(space):
        value = params[name]
        seen.add(value)
        cfg = space.trial_config(params)
        if spec["type"] == "categorical":
            assert isinstance(dists[name], optuna.distributions.CategoricalDistribution)
            if label == "categorical lists":  # Optuna sees "128,64"; the config gets [128, 64]
                assert value in ("64", "128,64", "32,32,32")
                assert cfg.head_hidden == [int(v) for v in value.split(",")]
            else:
                assert value in spec["choices"] and getattr(cfg, name) == value
            continue
        dist = dists[name]
        expected = optuna.distributions.FloatDistribution if spec["type"] == "float" else optuna.distributions.IntDistribution
        assert isinstance(dist, expected)
        assert dist.log == spec.get("log", False)
        assert spec["low"] <= value <= spec["high"]
        if spec["type"] == "int":
            assert isinstance(value, int)
        if "step" in spec:
            steps = (value - spec["low"]) / spec["step"]
            assert math.isclose(steps, round(steps), abs_tol=1e-9)
        assert getattr(cfg, name) == value
    assert len(seen) > 1


def test_type_is_inferred_from_the_field(tmp_path):
    space = load(tmp_path, base(search={
        "lr": {"low": 1.0e-4, "high": 1.0e-3, "log": True},
        "token_limit": {"low": 32, "high": 64},
        "count_embed": {"choices": ["add", "film"]},
    }))
    kinds = {p.name: p.kind for p in space.params}
    assert kinds == {"lr": "float", "token_limit": "int", "count_embed": "categorical"}
    params, dists, _ = sample(space, n=1)[0]
    assert isinstance(dists["token_limit"], optuna.distributions.IntDistribution)


def test_yaml_1_2_scalars_off_stays_a_word_and_1e_4_is_a_float(tmp_path):
    text = """
search:
  count_embed: {choices: [off, add]}
  lr: {low: 1e-4, high: 2e-3, log: true}
fixed: {count_head: false}
"""
    space = load(tmp_path, text)
    assert space.params[0].branches[0].choices == ("off", "add")
    assert space.params[1].branches[0].low == 1e-4
    assert space.fixed == {"count_head": False}


# --- conditionals ----------------------------------------------------------------------------
def test_child_is_sampled_only_on_its_branch(tmp_path):
    space = load(tmp_path, base(search={
        "head": {"type": "categorical", "choices": ["linear", "mlp"]},
        "head_hidden": {"type": "categorical", "choices": [[64], [128, 64]], "when": {"head": "mlp"}},
    }))
    heads = set()
    for params, _, _ in sample(space):
        heads.add(params["head"])
        assert ("head_hidden" in params) == (params["head"] == "mlp")
        cfg = space.trial_config(params)
        if params["head"] == "linear":
            assert cfg.head_hidden == RunConfig().head_hidden  # absent -> the field's default
    assert heads == {"linear", "mlp"}


def test_when_on_a_bool_parent(tmp_path):
    space = load(tmp_path, "search:\n  count_head: {choices: [true, false]}\n"
                           "  count_weight: {low: 0.01, high: 1.0, log: true, when: {count_head: true}}\n")
    seen = set()
    for params, _, _ in sample(space):
        seen.add(params["count_head"])
        assert ("count_weight" in params) == params["count_head"]
    assert seen == {True, False}


def test_list_of_branches_uses_each_branch_bounds(tmp_path):
    space = load(tmp_path, base(search={
        "target_loss": {"type": "categorical", "choices": ["mse", "mae", "huber"]},
        "target_transform": {"type": "categorical", "choices": ["minmax", "zscore", "none"]},
        "huber_delta": [
            {"type": "float", "low": 0.01, "high": 0.5, "log": True,
             "when": {"target_loss": "huber", "target_transform": ["minmax"]}},
            {"type": "float", "low": 1.0, "high": 3.0, "log": True,
             "when": {"target_loss": ["huber"], "target_transform": ["zscore", "none"]}},
        ],
    }))
    branches = set()
    # TPE too: the same key with other bounds in other trials must not upset Optuna's storage
    for sampler in (optuna.samplers.RandomSampler(seed=1), optuna.samplers.TPESampler(seed=1, n_startup_trials=5)):
        for params, _, _ in sample(space, n=50, sampler=sampler):
            if params["target_loss"] != "huber":
                assert "huber_delta" not in params
                continue
            delta = params["huber_delta"]
            if params["target_transform"] == "minmax":
                assert 0.01 <= delta <= 0.5
                branches.add(1)
            else:
                assert 1.0 <= delta <= 3.0
                branches.add(2)
            assert space.trial_config(params).huber_delta == delta
    assert branches == {1, 2}


def test_parents_are_sampled_before_children_whatever_the_yaml_order(tmp_path):
    space = load(tmp_path, base(search={
        "head_hidden": {"choices": [[64], [32]], "when": {"head": "mlp"}},
        "head": {"choices": ["linear", "mlp"], "when": {"count_embed": ["add", "film"]}},
        "count_embed": {"choices": ["off", "add", "film"]},
        "lr": {"low": 1.0e-4, "high": 1.0e-3},
    }))
    assert space.searched == ["count_embed", "head", "head_hidden", "lr"]
    for params, _, _ in sample(space):
        assert list(params)[:1] == ["count_embed"]
        assert ("head" in params) == (params["count_embed"] != "off")
        assert ("head_hidden" in params) == (params.get("head") == "mlp")


def test_define_by_run_returns_fixed_resources_and_data_as_constants(tmp_path):
    doc = base(fixed={"epochs": 3, "head_hidden": "32,16", "targets": ["Age_wk"]},
               tune={"resources": {"workers": 2, "cpus_per_worker": 0.5}})
    space = load(tmp_path, doc, data_override=str(tmp_path / "data"))
    params, _, constants = sample(space, n=1)[0]
    assert constants == {
        "epochs": 3, "head_hidden": [32, 16], "targets": ["Age_wk"],
        "workers": 2, "cpus_per_worker": 0.5, "gpus_per_worker": 0.0, "max_failures": 2,
        "data": str(tmp_path / "data"),
    }
    cfg = space.trial_config({**constants, **params})
    assert (cfg.workers, cfg.cpus_per_worker, cfg.data, cfg.epochs, cfg.lr) == (2, 0.5, str(tmp_path / "data"), 3,
                                                                                 params["lr"])


def test_trial_config_errors_name_the_file_and_trial(tmp_path):
    space = load(tmp_path, base())
    with pytest.raises(AamUserError, match=r"space\.yaml: trial: count_embed='banana' is not one of"):
        space.trial_config({"count_embed": "banana"})


# --- validation ------------------------------------------------------------------------------
def lr(**spec):
    return {"search": {"lr": spec}}


F = {"type": "float"}
ERRORS = {
    # top level and blocks
    "unknown top-level key": ({"serach": {}}, r"space\.yaml: unknown top-level key 'serach' \(did you mean 'search'\?\)"),
    "unknown tune key": ({"tune": {"num_sample": 3}}, r"tune: unknown key 'num_sample' \(did you mean 'num_samples'\?\)"),
    "unknown scheduler key": ({"tune": {"scheduler": {"type": "asha", "grace": 2}}},
                              r"tune\.scheduler: unknown key 'grace'"),
    "unknown scheduler type": ({"tune": {"scheduler": {"type": "hyperband"}}},
                               r"tune\.scheduler\.type: 'hyperband' is not one of asha, none"),
    "none scheduler with keys": ({"tune": {"scheduler": {"type": "none", "grace_period": 2}}},
                                 r"tune\.scheduler: unknown key 'grace_period'"),
    "unknown searcher key": ({"tune": {"searcher": {"type": "optuna", "seeed": 1}}},
                             r"tune\.searcher: unknown key 'seeed' \(did you mean 'seed'\?\)"),
    "random searcher takes no TPE keys": ({"tune": {"searcher": {"type": "random", "n_startup_trials": 3}}},
                                          r"tune\.searcher: unknown key 'n_startup_trials'"),
    "unknown searcher type": ({"tune": {"searcher": {"type": "grid"}}},
                              r"tune\.searcher\.type: 'grid' is not one of optuna, random"),
    "unknown resource key": ({"tune": {"resources": {"gpus": 1}}}, r"tune\.resources: unknown key 'gpus'"),
    "bad resource value": ({"tune": {"resources": {"workers": 0}}},
                           r"tune\.resources\.workers: 0 is below the minimum of workers, 1"),
    "unknown objective key": ({"objective": {"metric": "val_mae", "mode": "min", "goal": 1}},
                              r"objective: unknown key 'goal'"),
    "tune not a mapping": ({"tune": [1, 2]}, r"tune: expected a mapping"),
    # objective
    "objective mode": ({"objective": {"metric": "val_mae", "mode": "minimize"}},
                       r"objective\.mode: 'minimize' is not min or max"),
    "objective metric": ({"objective": {"metric": "mae", "mode": "min"}},
                         r"objective\.metric: 'mae' is not a metric the training loop reports"),
    "objective train metric": ({"objective": {"metric": "train_loss", "mode": "min"}}, r"'train_loss' is not a metric"),
    "objective r2 minimised": ({"objective": {"metric": "val_r2", "mode": "min"}},
                               r"objective\.mode: mode=min would look for the worst val_r2; use mode: max"),
    "objective per-target not a target": (
        {"fixed": {"epochs": 4, "targets": ["Age_wk"]}, "objective": {"metric": "val_ph/mae", "mode": "min"}},
        r"objective\.metric: 'ph' in val_ph/mae is not one of fixed\.targets \(Age_wk\)"),
    # fixed / search keys
    "unknown fixed key": ({"fixed": {"epoch": 3}}, r"fixed\.epoch: unknown run-config key 'epoch' \(did you mean 'epochs'\?\)"),
    "unknown search key": ({"search": {"learning_rate": {"low": 0.1, "high": 0.2}}},
                           r"search\.learning_rate: unknown run-config key 'learning_rate'"),
    "bad fixed value": ({"fixed": {"count_embed": "banana"}},
                        r"fixed\.count_embed: 'banana' is not one of off, add, concat, film"),
    "fixed value of the wrong type": ({"fixed": {"epochs": "many"}}, r"fixed\.epochs: 'many' is not a valid int for epochs"),
    "in fixed and search": ({"fixed": {"lr": 0.001}}, r"search\.lr: lr is both in fixed: and search:; keep one"),
    "resources in fixed": ({"fixed": {"workers": 2}}, r"fixed\.workers: workers is a per-trial resource; put it under tune\.resources"),
    "resources in search": ({"search": {"gpus_per_worker": {"choices": [0, 1]}}},
                            r"search\.gpus_per_worker: .* put it under tune\.resources"),
    "data in fixed": ({"fixed": {"data": "x"}}, r"fixed\.data: the dataset goes in the top-level data: key"),
    "empty search": ({"search": {}}, r"search: nothing to search"),
    # distributions
    "not a distribution": ({"search": {"lr": 0.001}}, r"search\.lr: expected a distribution .*\(a constant goes under fixed:\)"),
    "unknown distribution key": (lr(type="float", low=0.1, high=0.2, lg=True),
                                 r"search\.lr: unknown distribution key 'lg' \(did you mean 'log'\?\)"),
    "key of another type": (lr(type="float", low=0.1, high=0.2, choices=[1]), r"search\.lr\.choices: does not go with type float"),
    "unknown type": (lr(type="uniform", low=0.1, high=0.2), r"search\.lr\.type: 'uniform' is not one of float, int, categorical"),
    "missing high": (lr(type="float", low=0.1), r"search\.lr: type float needs low and high \(missing high\)"),
    "low > high": (lr(type="float", low=0.01, high=0.001), r"space\.yaml: search\.lr: low=0\.01 > high=0\.001"),
    "log with low 0": ({"search": {"dropout": {**F, "low": 0.0, "high": 0.5, "log": True}}},
                       r"search\.dropout: log needs low > 0, got low=0\.0"),
    "log with step": (lr(type="float", low=0.001, high=0.01, log=True, step=0.001),
                      r"search\.lr: log and step do not go together"),
    "log not a bool": (lr(type="float", low=0.001, high=0.01, log="yes"), r"search\.lr\.log: 'yes' is not true or false"),
    "int with float bounds": ({"search": {"token_limit": {"type": "int", "low": 1.5, "high": 4}}},
                              r"search\.token_limit\.low: 1\.5 is not a whole number, as type int needs"),
    "int with float step": ({"search": {"batch_size": {"type": "int", "low": 8, "high": 32, "step": 2.5}}},
                            r"search\.batch_size\.step: 2\.5 is not a whole number"),
    "step larger than range": ({"search": {"batch_size": {"type": "int", "low": 8, "high": 16, "step": 16}}},
                               r"search\.batch_size: step=16 is larger than the range high-low=8"),
    "step does not divide range": ({"search": {"dropout": {**F, "low": 0.05, "high": 0.5, "step": 0.1}}},
                                   r"search\.dropout: high=0\.5 is not low=0\.05 plus a multiple of step=0\.1"),
    "step not positive": ({"search": {"dropout": {**F, "low": 0.1, "high": 0.5, "step": -0.1}}},
                          r"search\.dropout\.step: -0\.1 is not positive"),
    "float for an int field": ({"search": {"d_model": {"type": "float", "low": 8, "high": 64}}},
                               r"search\.d_model\.type: float does not fit d_model, a int field; use type: int"),
    "numeric for a str field": ({"search": {"count_embed": {"type": "int", "low": 0, "high": 2}}},
                                r"search\.count_embed\.type: int does not fit count_embed, a str field"),
    "below the field minimum": ({"search": {"batch_size": {"type": "int", "low": 1, "high": 8}}},
                                r"search\.batch_size: low=1 is below the minimum of batch_size, 2"),
    "above the field maximum": ({"search": {"dropout": {**F, "low": 0.1, "high": 0.95}}},
                                r"search\.dropout: high=0\.95 is above the maximum of dropout, 0\.9"),
    "categorical without choices": ({"search": {"count_embed": {"type": "categorical"}}},
                                    r"search\.count_embed: categorical without choices"),
    "str field without type or choices": ({"search": {"count_embed": {}}}, r"search\.count_embed: categorical without choices"),
    "empty choices": ({"search": {"count_embed": {"choices": []}}}, r"search\.count_embed\.choices: empty choices"),
    "choices not a list": ({"search": {"count_embed": {"choices": "add"}}}, r"search\.count_embed\.choices: expected a list"),
    "invalid choice": ({"search": {"count_embed": {"choices": ["add", "banana"]}}},
                       r"search\.count_embed\.choices\[1\]: 'banana' is not one of off, add, concat, film"),
    "choice of the wrong type": ({"search": {"d_model": {"choices": [32, "wide"]}}},
                                 r"search\.d_model\.choices\[1\]: 'wide' is not a valid int for d_model"),
    "choice out of field bounds": ({"search": {"d_model": {"choices": [4, 32]}}},
                                   r"search\.d_model\.choices\[0\]: 4 is below the minimum of d_model, 8"),
    "duplicate choice": ({"search": {"head_hidden": {"choices": [[64], "64"]}}},
                         r"search\.head_hidden\.choices\[1\]: duplicate choice '64'"),
    "empty branch list": ({"search": {"lr": []}}, r"search\.lr: an empty list of branches"),
    # conditionals
    "when names an unknown key": (
        {"search": {"head_hidden": {"choices": [[64]], "when": {"heads": "mlp"}}, "head": {"choices": ["linear", "mlp"]}}},
        r"search\.head_hidden\.when\.heads: 'heads' is not a key under search: \(did you mean 'head'\?\)"),
    "when names a fixed key": (
        {"fixed": {"head": "mlp"}, "search": {"head_hidden": {"choices": [[64]], "when": {"head": "mlp"}}}},
        r"search\.head_hidden\.when\.head: 'head' is not a key under search:"),
    "when on a non-categorical": (
        {"search": {"dropout": {"low": 0.0, "high": 0.5}, "lr": {"low": 0.001, "high": 0.01, "when": {"dropout": 0.1}}}},
        r"search\.lr\.when\.dropout: 'dropout' is searched as float; `when` needs a categorical parent"),
    "when value not a choice": (
        {"search": {"head": {"choices": ["linear", "mlp"]},
                    "head_hidden": {"choices": [[64]], "when": {"head": "residual"}}}},
        r"search\.head_hidden\.when\.head: 'residual' is not one of the choices of head \(linear, mlp\)"),
    "when value valid for the field but not searched": (
        {"search": {"target_loss": {"choices": ["mse", "mae"]},
                    "huber_delta": {"low": 0.1, "high": 1.0, "when": {"target_loss": "huber"}}}},
        r"search\.huber_delta\.when\.target_loss: 'huber' is not one of the choices of target_loss \(mse, mae\)"),
    "when not a mapping": ({"search": {"lr": {"low": 0.001, "high": 0.01, "when": "mlp"}}},
                           r"search\.lr\.when: expected a mapping like \{head: mlp\}"),
    "cycle": (
        {"search": {"head": {"choices": ["linear", "mlp"], "when": {"count_embed": "add"}},
                    "count_embed": {"choices": ["add", "film"], "when": {"head": "mlp"}}}},
        r"search: `when` conditions form a cycle: (head -> count_embed -> head|count_embed -> head -> count_embed)"),
    "type changes across branches": (
        {"search": {"target_loss": {"choices": ["mse", "huber"]},
                    "huber_delta": [{"type": "float", "low": 0.1, "high": 1.0, "when": {"target_loss": "huber"}},
                                    {"type": "categorical", "choices": [1.0], "when": {"target_loss": "mse"}}]}},
        r"search\.huber_delta: changes type across branches \(float in branch 1, categorical in branch 2\)"),
    "log changes across branches": (
        {"search": {"target_loss": {"choices": ["mse", "huber"]},
                    "huber_delta": [{"low": 0.1, "high": 1.0, "log": True, "when": {"target_loss": "huber"}},
                                    {"low": 0.1, "high": 1.0, "when": {"target_loss": "mse"}}]}},
        r"search\.huber_delta: log=False in branch 2 but log=True in branch 1"),
    "choices change across branches": (
        {"search": {"head": {"choices": ["linear", "mlp"]}, "count_embed": {"choices": ["add", "film"]},
                    "head_hidden": [{"choices": [[64]], "when": {"head": "mlp", "count_embed": "add"}},
                                    {"choices": [[32]], "when": {"head": "mlp", "count_embed": "film"}}]}},
        r"search\.head_hidden: branch 2 has other choices than branch 1"),
    "overlapping branches": (
        {"search": {"target_loss": {"choices": ["mse", "huber"]},
                    "huber_delta": [{"low": 0.1, "high": 1.0, "when": {"target_loss": ["huber", "mse"]}},
                                    {"low": 1.0, "high": 2.0, "when": {"target_loss": "huber"}}]}},
        r"search\.huber_delta: branches 1 and 2 can both apply to one trial"),
    # tune numbers
    "num_samples < 1": ({"tune": {"num_samples": 0}}, r"tune\.num_samples: 0 is below its minimum 1"),
    "num_samples not a number": ({"tune": {"num_samples": "lots"}}, r"tune\.num_samples: 'lots' is not a whole number"),
    "max_concurrent_trials < 1": ({"tune": {"max_concurrent_trials": 0}}, r"tune\.max_concurrent_trials: 0 is below its minimum 1"),
    "time_budget_s negative": ({"tune": {"time_budget_s": -5}}, r"tune\.time_budget_s: -5 is below its minimum"),
    "keep_checkpoints < 1": ({"tune": {"keep_checkpoints": 0}}, r"tune\.keep_checkpoints: 0 is below its minimum 1"),
    "max_failures < 0": ({"tune": {"max_failures": -1}}, r"tune\.max_failures: -1 is below its minimum 0"),
    "max_failures as a resource": ({"tune": {"resources": {"max_failures": 3}}},
                                   r"tune\.resources\.max_failures: retries are not a resource; put max_failures "
                                   r"directly under tune: \(max_failures: 3\)"),
    "max_failures in fixed": ({"fixed": {"epochs": 4, "max_failures": 3}},
                              r"fixed\.max_failures: max_failures is how often a failed trial is retried; put it under tune:"),
    "grace_period > max_t": ({"tune": {"scheduler": {"type": "asha", "grace_period": 5, "max_t": 3}}},
                             r"tune\.scheduler: grace_period=5 > max_t=3; ASHA would never stop a trial"),
    "grace_period > epochs": ({"tune": {"scheduler": {"type": "asha", "grace_period": 5}}},
                              r"tune\.scheduler: grace_period=5 > max_t=4 \(the epochs\)"),
    "reduction_factor < 2": ({"tune": {"scheduler": {"type": "asha", "reduction_factor": 1.5}}},
                             r"tune\.scheduler\.reduction_factor: 1\.5 is below 2"),
    "n_startup_trials negative": ({"tune": {"searcher": {"type": "optuna", "n_startup_trials": -1}}},
                                  r"tune\.searcher\.n_startup_trials: -1 is below its minimum 0"),
    "multivariate not a bool": ({"tune": {"searcher": {"type": "optuna", "multivariate": "yes"}}},
                                r"tune\.searcher\.multivariate: 'yes' is not true or false"),
    "bad name": ({"name": "a/b"}, r"name: 'a/b' is not a folder name"),
    "bad storage_path": ({"storage_path": 3}, r"storage_path: 3 is not a folder path or URI"),
    "nan bound": (lr(type="float", low=float("nan"), high=0.1), r"search\.lr\.low: nan is not a finite number"),
    "bad data": ({"data": ["x"]}, r"data: \['x'\] is not a folder path"),
    # the last check: sampled configs must validate
    "never valid together": ({"fixed": {"epochs": 4, "n_heads": 4}, "search": {"d_model": {"choices": [30, 32]}}},
                             r"space\.yaml: trial: d_model=30 is not divisible by n_heads=4 \(sampled: d_model=30\)"),
    "mlp head without hidden sizes": (
        {"search": {"head": {"choices": ["mlp"]}, "head_hidden": {"choices": [[], [64]], "when": {"head": "mlp"}}}},
        r"trial: head='mlp' needs head_hidden.*\(sampled: head='mlp', head_hidden=''\)"),
}


@pytest.mark.parametrize("label", ERRORS)
def test_validation_errors(tmp_path, label):
    changes, pattern = ERRORS[label]
    doc = base()
    for key, value in changes.items():
        if key == "tune" and isinstance(value, dict):
            doc["tune"] = {**doc["tune"], **value}
        else:
            doc[key] = value
    with pytest.raises(AamUserError, match=pattern) as info:
        load(tmp_path, doc)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, pattern", [
    ("search: [unclosed", r"space\.yaml: not valid YAML \(.* at line 1\)"),
    ("- a\n- b\n", r"space\.yaml: a search space must be a mapping .* got a list"),
    ("", r"space\.yaml: a search space must be a mapping .* got empty"),
    ("search:\n  lr: {low: 0.1, high: 0.2}\n  lr: {low: 0.3, high: 0.4}\n",
     r"space\.yaml: not valid YAML \(duplicate key 'lr' at line 3\)"),
])
def test_unreadable_yaml(tmp_path, text, pattern):
    with pytest.raises(AamUserError, match=pattern):
        load(tmp_path, text)


def test_missing_file(tmp_path):
    with pytest.raises(AamUserError, match=r"nope\.yaml: no such search-space file"):
        load_space(tmp_path / "nope.yaml")


# --- the files in search_spaces/ -------------------------------------------------------------
def test_there_are_search_spaces():
    assert {"demo.yaml", "count_embed.yaml", "losses.yaml", "heads.yaml"} <= {p.name for p in SPACES}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_search_space_in_the_repo_loads(path, tmp_path):
    text = path.read_text()
    assert text.startswith("#") and f"aam tune search_spaces/{path.name}" in text  # the question and the command
    space = load_space(path, data_override=str(tmp_path))
    assert space.data == str(tmp_path)
    for params, _, _ in sample(space, n=20, sampler=space.make_sampler()):  # the sampler the search uses
        space.trial_config(params)
    if space.scheduler["type"] == "asha":
        assert space.scheduler["grace_period"] < space.scheduler["max_t"]


def test_demo_points_at_the_makefile_dataset(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    space = load_space(REPO / "search_spaces" / "demo.yaml")
    assert space.data == str(tmp_path / "demo" / "data")  # relative to the CWD, made absolute
    assert space.num_samples * space.fixed["epochs"] <= 150  # ASHA stops most trials at 3 epochs: minutes on 2 CPUs


# --- paths, names, overrides, round trip -----------------------------------------------------
def test_paths_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, base(data="d", storage_path="exp", name="mine"))
    space = load_space(path)
    assert (space.data, space.storage_path, space.name) == (str(tmp_path / "d"), str(tmp_path / "exp"), "mine")
    space = load_space(path, data_override="other", storage_override="s3://bucket/x", name_override="theirs")
    assert (space.data, space.storage_path, space.name) == (str(tmp_path / "other"), "s3://bucket/x", "theirs")
    unnamed = load_space(write(tmp_path, base(), name="count_embed.yaml"))
    assert unnamed.name.startswith("count_embed-") and unnamed.data is None
    assert "data" not in unnamed.define_by_run(optuna.create_study().ask())


def test_to_dict_round_trips(tmp_path):
    space = load(tmp_path, base(search={
        "head": {"choices": ["linear", "mlp"]},
        "head_hidden": {"choices": [[64], [128, 64]], "when": {"head": "mlp"}},
        "target_loss": {"choices": ["mse", "huber"]},
        "huber_delta": [{"low": 0.1, "high": 1.0, "when": {"target_loss": "huber", "head": "mlp"}},
                        {"low": 1.0, "high": 2.0, "when": {"target_loss": "huber", "head": "linear"}}],
        "batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
    }), data_override="x")
    saved = space.to_dict()
    assert saved["tune"]["scheduler"]["max_t"] == 4  # null resolved to the epochs
    again = load(tmp_path, yaml.safe_dump(saved))
    assert again.to_dict() == saved
    assert pickle.loads(pickle.dumps(space)).to_dict() == saved


def test_max_t_follows_searched_epochs(tmp_path):
    doc = base(fixed={}, search={"epochs": {"type": "int", "low": 2, "high": 9}})
    assert load(tmp_path, doc).scheduler["max_t"] == 9
    doc = base(fixed={}, search={"head": {"choices": ["linear", "mlp"]},
                                 "epochs": {"choices": [3, 5], "when": {"head": "mlp"}}})
    assert load(tmp_path, doc).scheduler["max_t"] == RunConfig().epochs  # linear trials run the default


def test_accepted_objectives(tmp_path):
    for metric, mode in (("val_loss", "min"), ("val_rmse", "min"), ("val_Age_wk/mae", "min"), ("val_Age_wk/r2", "max")):
        space = load(tmp_path, base(objective={"metric": metric, "mode": mode}))
        assert (space.metric, space.mode) == (metric, mode)
    assert isinstance(load(tmp_path, base()), SearchSpace)


def test_max_failures_defaults_to_two_and_reaches_every_trials_config(tmp_path):
    default = load(tmp_path, base())
    assert default.max_failures == 2 and default.constants()["max_failures"] == 2
    doc = base()
    doc["tune"] = {**doc["tune"], "max_failures": 0}
    none = load(tmp_path, doc)
    assert none.max_failures == 0 and none.to_dict()["tune"]["max_failures"] == 0
    assert "max_failures" not in none.to_dict()["tune"]["resources"]  # one place says it
    assert none.trial_config({"lr": 1e-3}).max_failures == 0  # a nested TorchTrainer retries as often
    assert SearchSpace.from_dict(none.to_dict(), where="again").max_failures == 0


def test_a_yaml_whose_aliases_expand_to_a_billion_nodes_is_refused_before_it_is_built(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    file = tmp_path / "laughs.yaml"
    file.write_text("\n".join(lines) + "\n")  # 9**9 = 387 million strings once expanded; 1 KB on disk
    with pytest.raises(AamUserError, match="expands to more than 100,000 YAML nodes") as error:
        load_space(file)
    assert "\n" not in str(error.value) and str(file) in str(error.value)
