"""A checked `aam.search.SearchSpace` as Ray Tune's objects: its searcher (Ray's OptunaSearch over
the space's define-by-run), its scheduler (ASHA over epochs) and the TuneConfig holding both.

The space itself is compiled and checked in aam.search, without Ray; only here does it meet Tune.
"""

from __future__ import annotations

from aam.search import TIME_ATTR, SearchSpace, quiet_optuna


def make_searcher(space: SearchSpace):
    """OptunaSearch over `define_by_run`, with metric/mode set (Ray ignores TuneConfig's when a space is given)."""
    from ray.tune.search.optuna import OptunaSearch

    with quiet_optuna():
        return OptunaSearch(space=space.define_by_run, metric=space.metric, mode=space.mode,
                            sampler=space.make_sampler())


def make_scheduler(space: SearchSpace):
    """ASHAScheduler over epochs (time_attr training_iteration), or None for `type: none`.

    metric/mode are left to TuneConfig: Ray raises if both the scheduler and TuneConfig set them.
    """
    if space.scheduler["type"] == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=space.scheduler["max_t"],
        grace_period=space.scheduler["grace_period"],
        reduction_factor=space.scheduler["reduction_factor"],
    )


def make_tune_config(space: SearchSpace, **overrides):
    """ray.tune.TuneConfig with the objective, searcher, scheduler and the tune: limits."""
    import ray.tune

    kwargs = dict(
        metric=space.metric,
        mode=space.mode,
        search_alg=make_searcher(space),
        scheduler=make_scheduler(space),
        num_samples=space.num_samples,
        max_concurrent_trials=space.max_concurrent_trials,
        time_budget_s=space.time_budget_s,
    )
    kwargs.update(overrides)
    return ray.tune.TuneConfig(**kwargs)
