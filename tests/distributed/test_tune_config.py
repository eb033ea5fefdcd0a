"""A checked search space as Ray Tune's objects: its searcher, scheduler and TuneConfig, and an
experiment started before the space's classes moved to aam.search still unpickles."""

import pickle

import optuna

from aam.distributed.tune_config import make_scheduler, make_searcher, make_tune_config
from tests.search.test_space import base, load


def test_make_scheduler(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    space = load(tmp_path, base(fixed={"epochs": 12}, tune={"scheduler": {
        "type": "asha", "grace_period": 2, "reduction_factor": 3, "max_t": None}}))
    sched = make_scheduler(space)
    assert isinstance(sched, ASHAScheduler)
    assert (sched._time_attr, sched._max_t, sched._reduction_factor) == ("training_iteration", 12, 3)
    assert [milestone for milestone, _ in sched._brackets[0]._rungs] == [6, 2]  # grace 2, x3, below 12
    assert sched._metric is None and sched._mode is None  # TuneConfig sets them (Ray refuses both)
    assert make_scheduler(load(tmp_path, base(tune={"scheduler": {"type": "none"}}))) is None


def test_make_searcher_and_tune_config(tmp_path):
    from ray.tune import TuneConfig
    from ray.tune.search.optuna import OptunaSearch

    doc = base(objective={"metric": "val_r2", "mode": "max"}, search={
        "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
        "head": {"choices": ["linear", "mlp"]},
        "head_hidden": {"choices": [[64], [128, 64]], "when": {"head": "mlp"}},
    }, tune={"num_samples": 6, "max_concurrent_trials": 2, "time_budget_s": 60,
             "searcher": {"type": "optuna", "seed": 3, "n_startup_trials": 2, "multivariate": False}})
    space = load(tmp_path, doc, data_override=str(tmp_path))
    searcher = make_searcher(space)
    assert isinstance(searcher, OptunaSearch)
    assert (searcher._metric, searcher._mode) == ("val_r2", "max")
    sampler = searcher._ot_study.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._n_startup_trials, sampler._multivariate) == (2, False)
    assert searcher._ot_study.direction == optuna.study.StudyDirection.MAXIMIZE

    # Ray's own wrapper around the define-by-run: sampled values plus the constants
    configs = []
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"val_r2": 0.1 * i})
        assert config["epochs"] == 4 and config["workers"] == 1 and config["data"] == str(tmp_path)
        assert ("head_hidden" in config) == (config["head"] == "mlp")
        assert space.trial_config(config).lr == config["lr"]
        configs.append(config)
    again = make_searcher(space)
    assert [again.suggest(f"t{i}") for i in range(2)] == configs[:2]  # the seed is the sampler's

    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune checkpoints the searcher with pickle
    restored = make_searcher(space)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert len(restored._ot_study.trials) == 6

    random = make_searcher(load(tmp_path, base(tune={"searcher": {"type": "random", "seed": 1}})))
    assert isinstance(random._ot_study.sampler, optuna.samplers.RandomSampler)
    assert random._ot_study.direction == optuna.study.StudyDirection.MINIMIZE

    tc = make_tune_config(space, reuse_actors=True)
    assert isinstance(tc, TuneConfig)
    assert (tc.metric, tc.mode, tc.num_samples, tc.max_concurrent_trials, tc.time_budget_s, tc.reuse_actors) == (
        "val_r2", "max", 6, 2, 60, True)
    assert isinstance(tc.search_alg, OptunaSearch) and tc.scheduler._max_t == 4


def test_a_searcher_pickled_under_the_old_module_names_unpickles_for_resume(tmp_path):
    from aam.distributed import tune

    space = load(tmp_path, base())
    # protocol 0 names each class as text, so the old module names can be written in
    old = pickle.dumps(space.define_by_run, protocol=0)
    assert b"aam.search.space" in old and b"aam.search._space_validate" in old
    for new_name, old_name in ((b"aam.search._space_validate", b"aam.distributed._space_validate"),
                               (b"aam.search.space", b"aam.distributed.space")):
        old = old.replace(new_name, old_name)
    tune._answer_to_old_module_names()
    define_by_run = pickle.loads(old)
    assert define_by_run.__self__.to_dict() == space.to_dict()
