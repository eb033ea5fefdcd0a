"""Reading an experiment folder without Ray running: trials, their configs, scores and checkpoints.

Sources, all plain files Tune and the trials leave behind:
- `experiment_state-*.json` (Tune): each trial's status and last result;
- `trial_*/result.json` (Tune, one JSON line per epoch): the metric history;
- `trial_*/config.json` (the trial): its resolved run config;
- `trial_*/checkpoint_*/model.pt` (the loop): the trial's best model so far (for a multi-worker
  trial, `_train_runs/NAME-TRIAL/checkpoint_*`, named by its results' `checkpoint_path`);
- `trial_*/error.txt` (Tune, one block per failure): why a trial failed. Its twin `error.pkl` is a
  pickle and is never read: unpickling a file from a shared folder could run code;
- `trial_*/aam-failed.json` (the `aam tune` driver): the trial failed for good. Tune's own
  record cannot say so when the trial's process died (it keeps the status it last cached for a
  trial without a live actor, "RUNNING"), so this file is what makes such a trial read as failed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from aam._ray_internals import experiment_states, trial_records
from aam.search._space_validate import load_yaml
from aam.search.space import SearchSpace, when_holds
from aam.errors import AamUserError
from aam.training.ensemble import holds_model

SPACE_FILE = "aam-space.yaml"  # the resolved space `aam tune` writes beside Tune's own files
FAILED_FILE = "aam-failed.json"
NESTED_RUNS_DIR = "_train_runs"  # below the storage path: the TorchTrainer runs of multi-worker trials
CHECKPOINT_PATH_KEY = "checkpoint_path"  # where Ray Train's TuneReportCallback names a nested run's checkpoint


@dataclass
class Trial:
    trial_id: str
    path: Path
    status: str  # finished | stopped early | running | pending | failed (| unrecorded)
    config: dict
    history: list[dict] = field(default_factory=list)
    best: float = math.nan  # the objective at the trial's best epoch
    best_epoch: int = 0
    epochs_done: int = 0
    error: str = ""  # the gist of its last failure (error.txt), when it failed


    def checkpoint(self) -> Path | None:
        """The newest kept checkpoint: its model.pt (a cross-validated trial's: its ensemble of fold
        models) holds the trial's best weights so far.

        A one-worker trial keeps its checkpoints in its own folder. A multi-worker trial nests a
        TorchTrainer whose checkpoints stay in Ray Train's run (STORAGE/_train_runs/NAME-TRIAL);
        each result names the newest as `checkpoint_path`, looked for where it was written and,
        for an experiment moved since, at the same place below this experiment's storage.
        """
        folders = sorted(self.path.glob("checkpoint_*"))
        folders = [f for f in folders if holds_model(f)]
        if folders:
            return folders[-1]
        for result in reversed(self.history):
            written = Path(str(result.get(CHECKPOINT_PATH_KEY) or ""))
            if not written.name:
                continue
            moved = self.path.parent.parent / NESTED_RUNS_DIR / written.parent.name / written.name
            for folder in (written, moved):
                if holds_model(folder):
                    return folder
        return None


@dataclass
class Experiment:
    path: Path
    metric: str
    mode: str
    search: dict  # the space file's `search:` section, as written
    trials: list[Trial]
    damaged: list[str] = field(default_factory=list)  # one line per file that could not be read

    @property
    def searched(self) -> list[str]:
        return list(self.search)

    def sampled(self, trial: Trial) -> dict:
        """The searched keys this trial sampled, with their values.

        A conditional key whose `when:` did not hold was not sampled: the trial ran its config
        default, which is not a result of the search and is left out. The rule is the sampler's
        own (`when_holds`), applied to the space file as written: reading an experiment does not
        parse its space again, so a file that today's checks would refuse is still read.
        """
        taken: dict = {}
        grown = True
        while grown:  # a child may be listed before its parent
            grown = False
            for key, spec in self.search.items():
                if key in taken or key not in trial.config:
                    continue
                branches = spec if isinstance(spec, list) else [spec]
                if any(when_holds(b.get("when") or {}, taken) for b in branches):
                    taken[key] = trial.config[key]
                    grown = True
        return {key: taken[key] for key in self.search if key in taken}

    def ranked(self) -> list[Trial]:
        scored = [t for t in self.trials if not math.isnan(t.best)]
        scored.sort(key=lambda t: t.best, reverse=self.mode == "max")
        return scored + [t for t in self.trials if math.isnan(t.best)]

    def best(self) -> Trial:
        ranked = [t for t in self.ranked() if not math.isnan(t.best) and t.checkpoint() is not None]
        if not ranked:
            raise AamUserError(f"{self.path}: no trial has reported {self.metric} with a checkpoint yet")
        return ranked[0]

    def trial(self, name: str) -> Trial:
        for t in self.trials:
            if name in (t.trial_id, t.path.name):
                return t
        names = ", ".join(t.path.name for t in self.trials[:5])
        raise AamUserError(f"{self.path}: no trial '{name}'; trials here include {names}")

    def leaderboard(self) -> pd.DataFrame:
        rows = []
        for rank, t in enumerate(self.ranked(), start=1):
            last = t.history[-1] if t.history else {}
            row = {"rank": rank, "trial": t.path.name, "status": t.status, "epochs": t.epochs_done,
                   f"best_{self.metric}": t.best, "best_epoch": t.best_epoch}
            if t.status == "failed":
                row["error"] = t.error
            for key in ("val_mae", "val_r2", "test_mae", "test_r2"):
                if key in last and key != self.metric:
                    row[key] = last[key]
            sampled = self.sampled(t)
            for key in self.searched:
                row[key] = sampled.get(key)  # blank: a conditional this trial did not sample
            rows.append(row)
        return pd.DataFrame(rows)


def load_experiment_space(experiment: Path) -> SearchSpace:
    """The space an experiment was started with (for --resume and reading results)."""
    file = Path(experiment) / SPACE_FILE
    raw = read_space_file(Path(experiment))
    return SearchSpace.from_dict(raw, where=str(file), stem=raw.get("name") or Path(experiment).name)


def read_space_file(experiment: Path) -> dict:
    """The experiment's aam-space.yaml, read with the protected loader (a received folder's file
    may be an alias bomb) and checked for what reading results needs: one line naming it if not."""
    file = experiment / SPACE_FILE
    if not file.is_file():
        raise AamUserError(f"{experiment}: not an aam experiment folder (no {SPACE_FILE}); pass STORAGE/NAME from "
                           "`aam tune`")
    raw = load_yaml(file)
    objective = raw.get("objective") if isinstance(raw, dict) else None
    if not isinstance(objective, dict) or not isinstance(objective.get("metric"), str) \
            or objective.get("mode") not in ("min", "max"):
        raise AamUserError(f"{file}: has no objective (a metric and a mode, min or max); it is not the file `aam tune` "
                           "wrote (was it emptied or edited?), so this experiment's trials cannot be ranked")
    if not isinstance(raw.get("search") or {}, dict) or not isinstance(raw.get("fixed") or {}, dict):
        raise AamUserError(f"{file}: its search: and fixed: must be mappings, as `aam tune` wrote them")
    return raw


def read_experiment(path: str | Path) -> Experiment:
    """Every trial that can be read; each file that cannot is one line in `Experiment.damaged`
    (a damaged trial is listed with what was readable, never fails the whole experiment)."""
    path = Path(path)
    space = read_space_file(path)
    metric, mode = space["objective"]["metric"], space["objective"]["mode"]
    damaged: list[str] = []
    states = recorded_trials(path) or {}
    trials = []
    for trial_dir in _trial_dirs(path):
        trial_id = trial_dir.name.removeprefix("trial_")
        history = _history(trial_dir / "result.json", damaged)
        config = _config(trial_dir, damaged)
        status = "failed" if (trial_dir / FAILED_FILE).is_file() else _status(states.get(trial_id), history, config, space)
        trial = Trial(trial_id, trial_dir, status, config, history, epochs_done=len(history),
                      error=error_line(trial_dir) if status == "failed" else "")
        scores = [(h[metric], h.get("training_iteration", i + 1)) for i, h in enumerate(history)
                  if _is_number(h.get(metric))]
        if len(scores) < sum(metric in h for h in history):
            damaged.append(f"{trial_dir / 'result.json'}: a {metric} that is not a number was left out")
        if scores:
            pick = min if mode == "min" else max
            trial.best, trial.best_epoch = pick(scores, key=lambda s: s[0])
        trials.append(trial)
    # trials Tune knows of that have not written a folder yet
    for trial_id, state in states.items():
        if not any(t.trial_id == trial_id for t in trials):
            trials.append(Trial(trial_id, path / f"trial_{trial_id}", _status(state, [], {}, space), {}))
    return Experiment(path, metric, mode, space.get("search") or {}, trials, damaged)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def resolve_trial(spec: str | Path) -> Trial:
    """`EXPERIMENT` (its best trial) or `EXPERIMENT/TRIAL`."""
    spec = Path(spec)
    if (spec / SPACE_FILE).is_file():
        return read_experiment(spec).best()
    if (spec.parent / SPACE_FILE).is_file():
        return read_experiment(spec.parent).trial(spec.name)
    raise AamUserError(f"{spec}: neither an experiment folder (STORAGE/NAME) nor a trial in one (STORAGE/NAME/TRIAL)")


def unrecorded_trials(path: Path, recorded: set[str]) -> list[Trial]:
    """Trial folders that Tune's experiment state (`recorded_trials`) does not list.

    Tune saves that state about once a second (TUNE_GLOBAL_CHECKPOINT_S). A driver killed within
    the second after it started a trial leaves the trial's folder without the record, and a
    resumed search never continues it: Tune samples its place again as a new trial.
    """
    out = []
    for trial_dir in _trial_dirs(path):
        trial_id = trial_dir.name.removeprefix("trial_")
        if trial_id not in recorded:
            history = _history(trial_dir / "result.json")
            out.append(Trial(trial_id, trial_dir, "unrecorded", _config(trial_dir), history, epochs_done=len(history)))
    return out


def mark_failed(trial_dir: Path, error: str, failures: int) -> None:
    """Record that a trial failed for good (its retries spent); `read_experiment` reads it back."""
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / FAILED_FILE).write_text(json.dumps({"status": "failed", "error": error, "failures": failures}))


def clear_failed(trial_dir: Path) -> None:
    """A failed trial that a resumed search starts again is no longer failed."""
    (Path(trial_dir) / FAILED_FILE).unlink(missing_ok=True)


def error_line(trial_dir: Path) -> str:
    """The gist of a trial's latest failure: the exception line of the last block of its error.txt.

    Tune appends "Failure # N (occurred at ...)" and the error's text per failure; for an error
    raised in the trial that text is a traceback whose last `Type: message` line says what
    happened, and for a dead worker it is one sentence ("The actor died unexpectedly ...").
    """
    file = Path(trial_dir) / "error.txt"
    try:
        text = file.read_text(errors="replace")
    except OSError:
        return ""
    block = text.rsplit("Failure # ", 1)[-1].splitlines()[1:]
    lines = [line.strip() for line in block if line.strip()]
    if not lines:
        return ""
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    line = raised[-1] if raised else lines[0]
    return line if len(line) <= 200 else line[:197] + "..."


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b.*")


def cut_short_state(path: Path) -> Path | None:
    """Tune's newest experiment state when a kill cut it short mid-write (it is not whole JSON)."""
    file, data = _newest_state(path)
    return file if file is not None and data is None else None


def _trial_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("trial_*") if p.is_dir())


def _newest_state(path: Path) -> tuple[Path | None, dict | None]:
    files = experiment_states(path)
    if not files:
        return None, None
    try:
        return files[-1], json.loads(files[-1].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return files[-1], None


def recorded_trials(path: Path) -> dict[str, dict] | None:
    """Tune's record of each trial ({"status", "last_result", "config"} by trial id), from its newest
    experiment state; None when there is none to read."""
    file, data = _newest_state(path)
    if data is None:  # none, or cut short: the trials' own files still tell
        return None
    return trial_records(data, file)


def _history(result_file: Path, damaged: list[str] | None = None) -> list[dict]:
    """The epochs of result.json that read as JSON objects; a line cut short by a killed driver is
    skipped silently (that is expected), anything else is named in `damaged`."""
    try:
        text = result_file.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        _note(damaged, f"{result_file}: not readable ({type(e).__name__}); its trial is listed without scores")
        return []
    rows, odd = _parse_results(text)
    if odd:
        _note(damaged, f"{result_file}: {odd} line(s) that are not a JSON object were left out")
    return [row for row, _ in rows]


def result_rows(text: str) -> list[tuple[dict, str]]:
    """(result, its line) for each line of a result.json's `text` that reads as a JSON object; a
    line cut short by a killed driver is left out."""
    return _parse_results(text)[0]


def _parse_results(text: str) -> tuple[list[tuple[dict, str]], int]:
    """`result_rows`, and how many lines were whole JSON but not an object."""
    rows, odd = [], 0
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # a line cut short by a killed driver
                continue
            if isinstance(row, dict):
                rows.append((row, line))
            else:
                odd += 1
    return rows, odd


def _config(trial_dir: Path, damaged: list[str] | None = None) -> dict:
    for name in ("config.json", "params.json"):
        file = trial_dir / name
        if file.is_file():
            try:
                config = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                _note(damaged, f"{file}: not readable JSON ({type(e).__name__}); its trial is listed without a config")
                return {}
            if not isinstance(config, dict):
                _note(damaged, f"{file}: not a JSON object; its trial is listed without a config")
                return {}
            return config
    return {}


def _note(damaged: list[str] | None, line: str) -> None:
    if damaged is not None:
        damaged.append(line)


def _status(state: dict | None, history: list[dict], config: dict, space: dict) -> str:
    tune_status = (state or {}).get("status")
    if tune_status == "ERROR":
        return "failed"
    if tune_status in ("RUNNING", "PENDING", "PAUSED"):
        return tune_status.lower()
    epochs = config.get("epochs") or (space.get("fixed") or {}).get("epochs")
    epochs = epochs if _is_number(epochs) else None  # an edited config: its status cannot say "stopped early"
    done = len(history)
    if tune_status == "TERMINATED" or (state is None and done):
        return "finished" if epochs is None or done >= int(epochs) else "stopped early"
    return "pending" if not done else "running"
