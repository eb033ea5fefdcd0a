"""The search-space compiler: a `search_spaces/*.yaml` file -> a checked `SearchSpace` whose
Optuna define-by-run samples each trial's config (aam.distributed.tune_config makes Ray's objects of it).

`load_space` reads and checks the whole file before Ray starts (search_spaces/README.md lists
every check), then samples the space 32 times with a random sampler and validates each trial's
`RunConfig`, so a combination that can never train fails here, not in trial 7 an hour later.

    space = load_space("search_spaces/count_embed.yaml", data_override=args.data)
    tuner = ray.tune.Tuner(trainable, tune_config=make_tune_config(space, reuse_actors=False), ...)
    # in the trial (aam.distributed.trial): RunConfig.from_dict(config); the config Tune
    # hands it is already whole, since define_by_run returns the constants beside the sampled keys

Keys under `fixed:`/`search:` are `RunConfig` field names; their types, choices and bounds come
from `RunConfig`'s metadata, so nothing here names a model or loss option.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aam.config import RunConfig, field_default
from aam.search._space_validate import (
    Checker,
    Distribution,
    Param,
    check_branches,
    check_objective,
    dependency_order,
    load_yaml,
    parse_distribution,
    parse_when,
    resource_fields,
    when_holds,
)
from aam.errors import AamUserError

TOP_KEYS = ("data", "storage_path", "name", "objective", "fixed", "search", "tune")
TUNE_KEYS = ("num_samples", "max_concurrent_trials", "time_budget_s", "scheduler", "searcher", "resources",
             "keep_checkpoints", "max_failures")
# a run-config resource that the space sets from `tune: max_failures`, not from tune.resources: one
# number says how often a trial, and the TorchTrainer inside a nested trial, is retried
RETRIES_FIELD = "max_failures"
SCHEDULER_KEYS = {"asha": ("type", "grace_period", "reduction_factor", "max_t"), "none": ("type",)}
SEARCHER_KEYS = {"optuna": ("type", "seed", "n_startup_trials", "multivariate"), "random": ("type", "seed")}
DATA_FIELD = "data"  # the top-level `data:` key fills this RunConfig field
EPOCHS_FIELD = "epochs"  # ASHA's time unit: one Tune training_iteration is one epoch
TIME_ATTR = "training_iteration"
SANITY_SAMPLES = 32
DEFAULTS = {
    "storage_path": "experiments",
    "objective": {"metric": "val_mae", "mode": "min"},
    "num_samples": 8,
    "max_concurrent_trials": None,
    "time_budget_s": None,
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": None},
    "searcher": {"type": "optuna", "seed": 0, "n_startup_trials": 10, "multivariate": True},
    "keep_checkpoints": 2,
    "max_failures": 2,
}


@dataclass
class SearchSpace:
    """A checked search space: what to sample, what is fixed, and how Ray Tune runs it."""

    source: str  # the YAML file, as given (prefix of every error message)
    data: str | None  # absolute dataset folder, or None when neither the file nor --data gives one
    storage_path: str  # absolute folder or a URI (s3://...)
    name: str  # experiment name
    metric: str
    mode: str
    fixed: dict[str, Any]  # RunConfig key -> coerced value
    params: tuple[Param, ...]  # searched keys, parents before children
    resources: dict[str, Any]  # RunConfig resource keys (workers, cpus_per_worker, ...) -> value, per trial
    num_samples: int
    max_concurrent_trials: int | None
    time_budget_s: float | None
    # {"type": "asha", "grace_period", "reduction_factor", "max_t" (null resolved to the epochs)} | {"type": "none"}
    scheduler: dict[str, Any]
    # {"type": "optuna", "seed", "n_startup_trials", "multivariate"} | {"type": "random", "seed"}
    searcher: dict[str, Any]
    keep_checkpoints: int | None
    max_failures: int = DEFAULTS["max_failures"]  # retries of a trial whose worker, actor or node died

    # --- building --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, where: str = "search space", stem: str = "search",
                  data_override: str | None = None, storage_override: str | None = None,
                  name_override: str | None = None) -> "SearchSpace":
        """Check a parsed YAML document; `where` starts every error line."""
        check = Checker(where)
        if not isinstance(raw, dict):
            what = "empty" if raw is None else f"a {type(raw).__name__}"
            raise AamUserError(f"{where}: a search space must be a mapping with search: and tune: keys, got {what}")
        check.mapping(raw, "")
        check.keys(raw, TOP_KEYS, "", what="top-level key")

        fixed = _parse_fixed(check, raw.get("fixed"))
        targets = fixed.get("targets") if isinstance(fixed.get("targets"), list) else None
        metric, mode = check_objective(check, raw.get("objective", DEFAULTS["objective"]), targets)
        params = _parse_search(check, raw.get("search"), fixed)
        tune = check.mapping(raw.get("tune"), "tune", "{num_samples: 8}")
        check.keys(tune, TUNE_KEYS, "tune")
        resources = _parse_resources(check, tune.get("resources"), params)
        scheduler = _parse_scheduler(check, tune.get("scheduler", DEFAULTS["scheduler"]), fixed, params)
        searcher = _parse_searcher(check, tune.get("searcher", DEFAULTS["searcher"]))

        space = cls(
            source=where,
            data=_resolve_data(check, data_override if data_override is not None else raw.get("data")),
            storage_path=_resolve_storage(check, storage_override if storage_override is not None
                                          else raw.get("storage_path", DEFAULTS["storage_path"])),
            name=_resolve_name(check, name_override if name_override is not None else raw.get("name"), stem),
            metric=metric,
            mode=mode,
            fixed=fixed,
            params=tuple(params),
            resources=resources,
            num_samples=check.integer(tune.get("num_samples", DEFAULTS["num_samples"]), "tune.num_samples", 1),
            max_concurrent_trials=check.integer(tune.get("max_concurrent_trials"), "tune.max_concurrent_trials", 1,
                                                none_ok=True),
            time_budget_s=check.number(tune.get("time_budget_s"), "tune.time_budget_s", 1e-9, none_ok=True),
            scheduler=scheduler,
            searcher=searcher,
            keep_checkpoints=check.integer(tune.get("keep_checkpoints", DEFAULTS["keep_checkpoints"]),
                                           "tune.keep_checkpoints", 1, none_ok=True),
            max_failures=check.integer(tune.get("max_failures", DEFAULTS["max_failures"]), "tune.max_failures", 0),
        )
        space._sanity_sample()
        return space

    # --- what a search samples --------------------------------------------------------------------
    def constants(self) -> dict[str, Any]:
        """The values every trial shares: fixed:, tune.resources and the dataset folder."""
        out = {k: _copy(v) for k, v in self.fixed.items()}
        out.update({k: _copy(v) for k, v in self.resources.items()})
        out[RETRIES_FIELD] = self.max_failures
        if self.data is not None and DATA_FIELD in RunConfig.fields():
            out[DATA_FIELD] = self.data
        return out

    def shared_config(self) -> RunConfig:
        """The config every trial shares: `constants()` validated, searched keys at their defaults."""
        return RunConfig.from_dict(self.constants(), where=self.source)

    def define_by_run(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample the searched keys (children only on their branch), return the constants.

        Works on an `optuna.Trial` and on Ray's wrapper of one. Optuna's param names are the
        config keys; list-valued choices are sampled as strings ("128,64") that `trial_config`
        turns back into lists.
        """
        taken: dict[str, Any] = {}
        for param in self.params:
            for branch in param.branches:
                if branch.applies(taken):
                    taken[param.name] = branch.suggest(trial)
                    break
        return self.constants()

    def trial_config(self, config: dict[str, Any]) -> RunConfig:
        """A trial's validated RunConfig: the constants, then the trial's sampled values."""
        return RunConfig.from_dict({**self.constants(), **config}, where=f"{self.source}: trial")

    def make_sampler(self):
        """The Optuna sampler the `searcher:` section asks for (aam.distributed wraps it for Tune)."""
        import optuna

        if self.searcher["type"] == "random":
            return optuna.samplers.RandomSampler(seed=self.searcher["seed"])
        return optuna.samplers.TPESampler(
            seed=self.searcher["seed"],
            n_startup_trials=self.searcher["n_startup_trials"],
            multivariate=self.searcher["multivariate"],
        )

    # --- reading back ----------------------------------------------------------------------
    @property
    def searched(self) -> list[str]:
        return [p.name for p in self.params]

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as YAML-ready data (defaults filled in); `from_dict` reads it back."""
        return {
            "data": self.data,
            "storage_path": self.storage_path,
            "name": self.name,
            "objective": {"metric": self.metric, "mode": self.mode},
            "fixed": {k: _copy(v) for k, v in self.fixed.items()},
            "search": {p.name: p.to_dict() for p in self.params},
            "tune": {
                "num_samples": self.num_samples,
                "max_concurrent_trials": self.max_concurrent_trials,
                "time_budget_s": self.time_budget_s,
                "scheduler": dict(self.scheduler),
                "searcher": dict(self.searcher),
                "resources": dict(self.resources),
                "keep_checkpoints": self.keep_checkpoints,
                "max_failures": self.max_failures,
            },
        }

    # --- the last check --------------------------------------------------------------------
    def _sanity_sample(self, n: int = SANITY_SAMPLES, seed: int = 0) -> None:
        """Sample the space n times at random; every resulting RunConfig must validate."""
        import optuna

        with quiet_optuna():
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            for _ in range(n):
                trial = study.ask()
                self.define_by_run(trial)
                try:
                    self.trial_config(dict(trial.params))
                except AamUserError as e:
                    shown = ", ".join(f"{k}={v!r}" for k, v in trial.params.items())
                    raise AamUserError(f"{e} (sampled: {shown})") from None
                study.tell(trial, 0.0)


def load_space(path: str | Path, data_override: str | None = None, storage_override: str | None = None,
               name_override: str | None = None) -> SearchSpace:
    """Read and check a search-space YAML file; CLI --data/--storage-path/--name win over the file."""
    path = Path(path)
    return SearchSpace.from_dict(load_yaml(path), where=str(path), stem=path.stem, data_override=data_override,
                                 storage_override=storage_override, name_override=name_override)


# --- parts of from_dict --------------------------------------------------------------------
def _parse_fixed(check: Checker, raw: Any) -> dict[str, Any]:
    fixed = check.mapping(raw, "fixed", "{epochs: 12}")
    out = {}
    for name, value in fixed.items():
        key = f"fixed.{name}"
        _check_searchable(check, name, key)
        out[name] = check.field_value(name, value, key)
    return out


def _check_searchable(check: Checker, name: str, key: str) -> None:
    check.field_name(name, key)
    if name == DATA_FIELD:
        raise check.error(key, "the dataset goes in the top-level data: key (or --data)")
    if name == RETRIES_FIELD:
        raise check.error(key, f"{name} is how often a failed trial is retried; put it under tune: ({name}: 2)")
    if name in resource_fields():
        raise check.error(key, f"{name} is a per-trial resource; put it under tune.resources")


def _parse_search(check: Checker, raw: Any, fixed: dict) -> list[Param]:
    search = check.mapping(raw, "search", "{lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}")
    if not search:
        raise check.error("search", "nothing to search; add keys under search: (or use `aam train` for one run)")
    params = []
    for name, spec in search.items():
        key = f"search.{name}"
        _check_searchable(check, name, key)
        if name in fixed:
            raise check.error(key, f"{name} is both in fixed: and search:; keep one")
        if isinstance(spec, list):
            if not spec:
                raise check.error(key, "an empty list of branches")
            branches = tuple(parse_distribution(check, name, s, f"{key}[{i}]") for i, s in enumerate(spec))
        else:
            branches = (parse_distribution(check, name, spec, key),)
        params.append(Param(name, branches))
    by_name = {p.name: p for p in params}
    for i, p in enumerate(params):
        key = f"search.{p.name}"
        many = len(p.branches) > 1
        branches = tuple(parse_when(check, b, by_name, f"{key}[{j}]" if many else key)
                         for j, b in enumerate(p.branches))
        params[i] = Param(p.name, branches)
    for p in params:
        check_branches(check, p, f"search.{p.name}")
    return dependency_order(check, params)


def _parse_resources(check: Checker, raw: Any, params: list[Param]) -> dict[str, Any]:
    allowed = [name for name in resource_fields() if name != RETRIES_FIELD]
    given = check.mapping(raw, "tune.resources", "{workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}")
    if RETRIES_FIELD in given:
        raise check.error(f"tune.resources.{RETRIES_FIELD}", f"retries are not a resource; put {RETRIES_FIELD} "
                          f"directly under tune: ({RETRIES_FIELD}: {given[RETRIES_FIELD]!r})")
    check.keys(given, allowed, "tune.resources")
    return {name: check.field_value(name, given[name], f"tune.resources.{name}") if name in given
            else field_default(name) for name in allowed}


def _max_epochs(fixed: dict, params: list[Param]) -> int:
    """The most epochs any trial can run: ASHA's max_t when the file leaves it null."""
    default = field_default(EPOCHS_FIELD)
    if EPOCHS_FIELD in fixed:
        return fixed[EPOCHS_FIELD]
    param = next((p for p in params if p.name == EPOCHS_FIELD), None)
    if param is None:
        return default
    highs = [max(b.choices) if b.kind == "categorical" else b.high for b in param.branches]
    if all(b.when for b in param.branches):  # some trials may not sample it: they run the default
        highs.append(default)
    return int(max(highs))


def _parse_scheduler(check: Checker, raw: Any, fixed: dict, params: list[Param]) -> dict[str, Any]:
    sched = check.mapping(raw, "tune.scheduler", "{type: asha, grace_period: 2}")
    kind = sched.get("type", "asha")
    if kind not in SCHEDULER_KEYS:
        raise check.error("tune.scheduler.type", f"{kind!r} is not one of {', '.join(SCHEDULER_KEYS)}")
    check.keys(sched, SCHEDULER_KEYS[kind], "tune.scheduler")
    if kind == "none":
        return {"type": "none"}
    d = DEFAULTS["scheduler"]
    grace = check.integer(sched.get("grace_period", d["grace_period"]), "tune.scheduler.grace_period", 1)
    factor = check.number(sched.get("reduction_factor", d["reduction_factor"]), "tune.scheduler.reduction_factor")
    if factor < 2:
        raise check.error("tune.scheduler.reduction_factor", f"{factor} is below 2 (ASHA keeps 1/reduction_factor "
                          "of the trials at each rung)")
    max_t = check.integer(sched.get("max_t"), "tune.scheduler.max_t", 1, none_ok=True)
    resolved = max_t if max_t is not None else _max_epochs(fixed, params)
    if grace > resolved:
        what = f"max_t={max_t}" if max_t is not None else f"max_t={resolved} (the epochs)"
        raise check.error("tune.scheduler", f"grace_period={grace} > {what}; ASHA would never stop a trial")
    return {"type": "asha", "grace_period": grace, "reduction_factor": factor, "max_t": resolved}


def _parse_searcher(check: Checker, raw: Any) -> dict[str, Any]:
    s = check.mapping(raw, "tune.searcher", "{type: optuna, seed: 0}")
    kind = s.get("type", "optuna")
    if kind not in SEARCHER_KEYS:
        raise check.error("tune.searcher.type", f"{kind!r} is not one of {', '.join(SEARCHER_KEYS)}")
    check.keys(s, SEARCHER_KEYS[kind], "tune.searcher")
    d = DEFAULTS["searcher"]
    out = {"type": kind, "seed": check.integer(s.get("seed", d["seed"]), "tune.searcher.seed", 0, none_ok=True)}
    if kind == "optuna":
        out["n_startup_trials"] = check.integer(s.get("n_startup_trials", d["n_startup_trials"]),
                                                "tune.searcher.n_startup_trials", 0)
        out["multivariate"] = check.boolean(s.get("multivariate", d["multivariate"]), "tune.searcher.multivariate")
    return out


def _resolve_data(check: Checker, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise check.error("data", f"{value!r} is not a folder path")
    return str(Path(value).expanduser().resolve())


def _resolve_storage(check: Checker, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise check.error("storage_path", f"{value!r} is not a folder path or URI")
    if "://" in value:
        return value
    return str(Path(value).expanduser().resolve())  # Ray Tune takes only an absolute path


def _resolve_name(check: Checker, value: Any, stem: str) -> str:
    if value is None:
        return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not isinstance(value, str) or not value.strip() or value in (".", "..") or any(c in value for c in "/\\"):
        raise check.error("name", f"{value!r} is not a folder name")
    return value


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


@contextlib.contextmanager
def quiet_optuna():
    """Optuna logs "A new study created in memory" at INFO for every study; keep it quiet."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


__all__ = ["SearchSpace", "load_space", "Param", "Distribution", "when_holds"]
