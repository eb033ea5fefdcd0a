"""The parts of the search-space compiler that read and check YAML (private to aam.search: `space.py`
compiles with them, and the report encodes a trial's choices as the sampler did, with `encode_choice`).

Everything here raises `AamUserError` with one line: `<file>: <key>: <what is wrong>`.
Field names, types, choices, bounds and defaults, and the words for what is wrong with a field's
value, all come from `aam.config`, so a new config field is searchable without a change here.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aam._yaml import MAX_YAML_CHARS, TooManyNodes, load_strict
from aam.config import RunConfig, coerce_value, did_you_mean, field_problem, field_type, unknown_field
from aam.errors import AamUserError

KINDS = ("float", "int", "categorical")
NUMERIC_KEYS = ("type", "low", "high", "step", "log", "when")
CATEGORICAL_KEYS = ("type", "choices", "when")
DISTRIBUTION_KEYS = ("type", "low", "high", "step", "log", "choices", "when")


# --- YAML ----------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    """Parse a YAML file, or raise one line naming the file (and the line of a syntax error)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AamUserError(f"{path}: no such search-space file") from None
    except IsADirectoryError:
        raise AamUserError(f"{path}: is a folder, not a search-space YAML file") from None
    except UnicodeDecodeError:
        raise AamUserError(f"{path}: not a text file") from None
    if len(text) > MAX_YAML_CHARS:
        raise AamUserError(f"{path}: {len(text):,} characters is too large for a search space "
                           f"(limit {MAX_YAML_CHARS:,}); is it the right file?")
    try:
        return load_strict(text)
    except TooManyNodes as e:
        raise AamUserError(f"{path}: {e}; a search space needs far fewer, so write it without nested aliases") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AamUserError(f"{path}: not valid YAML ({problem}{at})") from None


# --- small checks --------------------------------------------------------------------------
class Checker:
    """Makes the one-line errors of one file: `<file>: <key>: <message>`."""

    def __init__(self, where: str):
        self.where = where

    def error(self, key: str, message: str) -> AamUserError:
        return AamUserError(f"{self.where}: {key}: {message}" if key else f"{self.where}: {message}")

    def mapping(self, value: Any, key: str, example: str = "") -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            hint = f", e.g. {example}" if example else ""
            raise self.error(key, f"expected a mapping (key: value lines){hint}, got {value!r}")
        for k in value:
            if not isinstance(k, str):
                raise self.error(key, f"key {k!r} is not a name")
        return value

    def keys(self, mapping: dict, allowed, key: str, what: str = "key") -> None:
        for k in mapping:
            if k not in allowed:
                also = did_you_mean(k, allowed)
                prefix = f"{key}: " if key else ""
                raise AamUserError(
                    f"{self.where}: {prefix}unknown {what} '{k}'{also}; allowed: {', '.join(allowed)}"
                )

    def integer(self, value: Any, key: str, minimum: int | None = None, none_ok: bool = False) -> int | None:
        if value is None and none_ok:
            return None
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise self.error(key, f"{value!r} is not a whole number" + (" (or null)" if none_ok else ""))
        value = int(value)
        if minimum is not None and value < minimum:
            raise self.error(key, f"{value} is below its minimum {minimum}")
        return value

    def number(self, value: Any, key: str, minimum: float | None = None, none_ok: bool = False) -> float | None:
        if value is None and none_ok:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"{value!r} is not a number" + (" (or null)" if none_ok else ""))
        if not math.isfinite(value):
            raise self.error(key, f"{value!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise self.error(key, f"{value} is below its minimum {minimum}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"{value!r} is not true or false")
        return value

    def field_name(self, name: str, key: str) -> None:
        if name not in RunConfig.fields():
            raise self.error(key, unknown_field(name, what="run-config key"))

    def field_value(self, name: str, value: Any, key: str) -> Any:
        """`value` coerced to field `name`'s type and checked against its choices and bounds."""
        try:
            coerced = coerce_value(name, value, self.where)
        except AamUserError:
            raise self.error(key, f"{value!r} is not a valid {field_type(name).__name__} for {name}") from None
        problem = field_problem(name, coerced)
        if problem:
            raise self.error(key, f"{value!r} {problem}")
        return coerced


def resource_fields() -> list[str]:
    return [name for name, f in RunConfig.fields().items() if f.metadata.get("section") == "resources"]


def encode_choice(value: Any) -> Any:
    """What Optuna sees for a choice: lists become "128,64" (Optuna takes only scalars)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def when_holds(when: dict, taken: dict) -> bool:
    """The rule of a branch's `when:`: every parent was sampled in this trial and took one of the
    listed values. `taken` maps sampled keys to their values, as Optuna or a trial's config holds them."""
    return all(parent in taken and encode_choice(taken[parent]) in {encode_choice(v) for v in values}
               for parent, values in when.items())


# --- distributions -------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    """One definition of a searched key (one branch, if the key has several)."""

    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()  # field-typed values (lists stay lists), as written
    when: dict = field(default_factory=dict)  # parent -> tuple of field-typed values

    @property
    def optuna_choices(self) -> list:
        return [encode_choice(c) for c in self.choices]

    def when_encoded(self) -> dict[str, set]:
        return {parent: {encode_choice(v) for v in values} for parent, values in self.when.items()}

    def applies(self, taken: dict) -> bool:
        """True when every parent was sampled in this trial and took one of the listed values."""
        return when_holds(self.when, taken)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.optuna_choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            out["choices"] = [list(c) if isinstance(c, (list, tuple)) else c for c in self.choices]
        else:
            out.update(low=self.low, high=self.high)
            if self.step is not None:
                out["step"] = self.step
            if self.log:
                out["log"] = True
        if self.when:
            out["when"] = {p: [list(v) if isinstance(v, (list, tuple)) else v for v in vs]
                           for p, vs in self.when.items()}
        return out


@dataclass(frozen=True)
class Param:
    """A searched key: one definition, or several for the branches of a conditional."""

    name: str
    branches: tuple[Distribution, ...]

    @property
    def kind(self) -> str:
        return self.branches[0].kind

    @property
    def parents(self) -> set[str]:
        return {p for b in self.branches for p in b.when}

    def to_dict(self):
        if len(self.branches) == 1:
            return self.branches[0].to_dict()
        return [b.to_dict() for b in self.branches]


def _infer_kind(check: Checker, name: str, spec: dict, key: str) -> str:
    kind = spec.get("type")
    ftype = field_type(name)
    if kind is None:
        if "choices" in spec:
            kind = "categorical"
        elif ftype in (int, float):
            kind = ftype.__name__
        else:
            raise check.error(key, f"categorical without choices: {name} is a {ftype.__name__} field, "
                              "give choices: [...]")
    if kind not in KINDS:
        raise check.error(f"{key}.type", f"{kind!r} is not one of {', '.join(KINDS)}")
    if kind == "float" and ftype is not float:
        raise check.error(f"{key}.type", f"float does not fit {name}, a {ftype.__name__} field; use "
                          + ("type: int" if ftype is int else "type: categorical with choices"))
    if kind == "int" and ftype not in (int, float):
        raise check.error(f"{key}.type", f"int does not fit {name}, a {ftype.__name__} field; use type: categorical")
    return kind


def parse_distribution(check: Checker, name: str, spec: Any, key: str) -> Distribution:
    """One `search:` definition -> Distribution, with every check that needs only this definition."""
    if not isinstance(spec, dict):
        raise check.error(key, f"expected a distribution like {{type: float, low: 0.1, high: 1.0}} or "
                          f"{{type: categorical, choices: [...]}}, got {spec!r} (a constant goes under fixed:)")
    check.keys(spec, DISTRIBUTION_KEYS, key, what="distribution key")
    kind = _infer_kind(check, name, spec, key)
    allowed = CATEGORICAL_KEYS if kind == "categorical" else NUMERIC_KEYS
    for k in spec:
        if k not in allowed:
            raise check.error(f"{key}.{k}", f"does not go with type {kind} (its keys: {', '.join(allowed)})")
    when = spec.get("when")
    if kind == "categorical":
        return Distribution(name, kind, choices=_parse_choices(check, name, spec.get("choices"), f"{key}.choices"),
                            when=when)  # `when` is parsed once every key is known
    return _parse_numeric(check, name, kind, spec, key, when)


def _parse_choices(check: Checker, name: str, choices: Any, key: str) -> tuple:
    if choices is None:
        raise check.error(key.rsplit(".", 1)[0], "categorical without choices; give choices: [...]")
    if not isinstance(choices, list):
        raise check.error(key, f"expected a list like [a, b], got {choices!r}")
    if not choices:
        raise check.error(key, "empty choices; give at least one")
    values, seen = [], set()
    for i, choice in enumerate(choices):
        value = check.field_value(name, choice, f"{key}[{i}]")
        encoded = encode_choice(value)
        if encoded in seen:
            raise check.error(f"{key}[{i}]", f"duplicate choice {choice!r}")
        seen.add(encoded)
        values.append(tuple(value) if isinstance(value, list) else value)
    return tuple(values)


def _parse_numeric(check: Checker, name: str, kind: str, spec: dict, key: str, when: Any) -> Distribution:
    for bound in ("low", "high"):
        if spec.get(bound) is None:
            raise check.error(key, f"type {kind} needs low and high (missing {bound})")
    low, high, step = spec["low"], spec["high"], spec.get("step")
    log = spec.get("log", False)
    check.boolean(log, f"{key}.log")
    number = check.integer if kind == "int" else check.number
    for k, v in (("low", low), ("high", high), ("step", step)):
        if v is None:
            continue
        if kind == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
            raise check.error(f"{key}.{k}", f"{v!r} is not a whole number, as type int needs")
        number(v, f"{key}.{k}")
    if low > high:
        raise check.error(key, f"low={low} > high={high}")
    if log and low <= 0:
        raise check.error(key, f"log needs low > 0, got low={low}")
    if log and step is not None:
        raise check.error(key, f"log and step do not go together (step={step})")
    if step is not None:
        if step <= 0:
            raise check.error(f"{key}.step", f"{step} is not positive")
        span = decimal.Decimal(str(high)) - decimal.Decimal(str(low))
        if high > low and step > high - low:
            raise check.error(key, f"step={step} is larger than the range high-low={span}")
        if span % decimal.Decimal(str(step)) != 0:
            raise check.error(key, f"high={high} is not low={low} plus a multiple of step={step}")
    for bound, value in (("low", low), ("high", high)):
        problem = field_problem(name, value)
        if problem:
            raise check.error(key, f"{bound}={value} {problem}")
    return Distribution(name, kind, low=low, high=high, step=step, log=log, when=when)


def parse_when(check: Checker, dist: Distribution, by_name: dict[str, "Param"], key: str) -> Distribution:
    """Check a raw `when:` against the other searched keys and store it as parent -> values."""
    raw = dist.when
    if raw is None:
        return dataclasses.replace(dist, when={})
    if not isinstance(raw, dict) or not raw:
        raise check.error(f"{key}.when", f"expected a mapping like {{head: mlp}}, got {raw!r}")
    when = {}
    for parent, values in raw.items():
        pkey = f"{key}.when.{parent}"
        if parent not in by_name:
            also = did_you_mean(parent, by_name)
            raise check.error(pkey, f"'{parent}' is not a key under search:{also}; "
                              "`when` can only name a searched categorical")
        parent_param = by_name[parent]
        if parent_param.kind != "categorical":
            raise check.error(pkey, f"'{parent}' is searched as {parent_param.kind}; `when` needs a categorical parent")
        items = _when_items(parent, values)
        if not items:
            raise check.error(pkey, "no values given")
        allowed = parent_param.branches[0].optuna_choices
        parsed = []
        for value in items:
            try:
                coerced = coerce_value(parent, value, check.where)
            except AamUserError:
                coerced = value
            if encode_choice(coerced) not in allowed:
                shown = ", ".join(map(str, parent_param.branches[0].to_dict()["choices"]))
                raise check.error(pkey, f"{value!r} is not one of the choices of {parent} ({shown})")
            parsed.append(tuple(coerced) if isinstance(coerced, list) else coerced)
        when[parent] = tuple(parsed)
    return dataclasses.replace(dist, when=when)


def _when_items(parent: str, values: Any) -> list:
    """`when` values: one value or a list of them. For a list-typed field, a list of scalars is one value."""
    if field_type(parent) is list:
        if isinstance(values, list) and values and all(isinstance(v, list) for v in values):
            return list(values)
        return [values]
    return list(values) if isinstance(values, list) else [values]


def check_branches(check: Checker, param: Param, key: str) -> None:
    """Branches of one key: the same type (and log / choices, as Optuna needs), never both active."""
    first = param.branches[0]
    for i, b in enumerate(param.branches[1:], start=2):
        if b.kind != first.kind:
            raise check.error(key, f"changes type across branches ({first.kind} in branch 1, {b.kind} in branch {i}); "
                              "one key has one type")
        if b.kind != "categorical" and b.log != first.log:
            raise check.error(key, f"log={b.log} in branch {i} but log={first.log} in branch 1; "
                              "Optuna needs one log setting per key")
        if b.kind == "categorical" and b.optuna_choices != first.optuna_choices:
            raise check.error(key, f"branch {i} has other choices than branch 1; Optuna needs the same choices "
                              "(in the same order) for one key")
    for i, a in enumerate(param.branches, start=1):
        for j, b in enumerate(param.branches[i:], start=i + 1):
            wa, wb = a.when_encoded(), b.when_encoded()
            if all(wa[p] & wb[p] for p in set(wa) & set(wb)):
                raise check.error(key, f"branches {i} and {j} can both apply to one trial; give them `when` "
                                  "conditions that exclude each other")


def dependency_order(check: Checker, params: list[Param]) -> list[Param]:
    """Parents before children (YAML order otherwise); a cycle of `when`s is an error."""
    by_name = {p.name: p for p in params}
    done: list[Param] = []
    state: dict[str, str] = {}

    def visit(p: Param, path: list[str]) -> None:
        if state.get(p.name) == "done":
            return
        if state.get(p.name) == "visiting":
            cycle = path[path.index(p.name):] + [p.name]
            raise check.error("search", f"`when` conditions form a cycle: {' -> '.join(cycle)}")
        state[p.name] = "visiting"
        for parent in sorted(p.parents, key=list(by_name).index):
            visit(by_name[parent], path + [p.name])
        state[p.name] = "done"
        done.append(p)

    for p in params:
        visit(p, [])
    return done


OBJECTIVE_METRIC = re.compile(r"^val_(?:(loss|mae|rmse|r2)|([^/]+)/(mae|rmse|r2))$")


def check_objective(check: Checker, raw: Any, targets: list[str] | None) -> tuple[str, str]:
    obj = check.mapping(raw, "objective", "{metric: val_mae, mode: min}")
    check.keys(obj, ("metric", "mode"), "objective")
    metric = obj.get("metric", "val_mae")
    mode = obj.get("mode", "min")
    match = OBJECTIVE_METRIC.match(metric) if isinstance(metric, str) else None
    if not match:
        raise check.error("objective.metric", f"{metric!r} is not a metric the training loop reports; use val_loss, "
                          "val_mae, val_rmse, val_r2 or val_<target>/mae|rmse|r2")
    if mode not in ("min", "max"):
        raise check.error("objective.mode", f"{mode!r} is not min or max")
    kind = match.group(1) or match.group(3)
    best = "max" if kind == "r2" else "min"
    if mode != best:
        raise check.error("objective.mode", f"mode={mode} would look for the worst {metric}; use mode: {best}")
    target = match.group(2)
    if target is not None and targets and target not in targets:
        raise check.error("objective.metric",
                          f"'{target}' in {metric} is not one of fixed.targets ({', '.join(targets)})")
    return metric, mode
