"""The driver's progress lines: one per trial event, with the best score so far and a tally.

`aam tune` prints them instead of Tune's own tables. The best and the tally are kept in a plain
JSON file in the experiment folder, so a resumed search goes on counting where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ray.tune import Callback

from aam._files import atomic_write
from aam._ray_internals import experiment_folder, trial_failures
from aam.distributed._storage import is_local
from aam.search import clear_failed, error_line, mark_failed

PROGRESS_FILE = "aam-progress.json"  # the best and the tally, for a resumed search


class ProgressPrinter(Callback):
    """One line per event: a trial's epoch, its end (finished / stopped early / failed), the best so far."""

    def __init__(self, metric: str, mode: str, epochs: int, experiment: Path | None = None):
        self.metric, self.mode, self.epochs = metric, mode, epochs
        self.best: tuple[float, str] | None = None
        self.started = time.monotonic()
        self.counts = {"finished": 0, "stopped early": 0, "failed": 0}
        self.experiment = experiment
        self._loaded = False
        self._saved: dict | None = None

    def setup(self, **info):
        # the clock of this driver: a resumed search's callback comes back as it was pickled when the
        # search began, and would count the time the search was not running
        self.started = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        """A resumed search keeps its best and tally: read back from the experiment folder as plain JSON
        (Tune's own callback state would be one more pickle to trust; see state_signature)."""
        if self._loaded or not trials:
            return
        self._loaded = True
        if self.best is not None or any(self.counts.values()):
            return  # this driver has its own tally already: never replace it by an older one
        self.experiment = Path(experiment_folder(trials[0]))
        try:
            saved = json.loads((self.experiment / PROGRESS_FILE).read_text())
            best = saved["best"]
            self.best = (float(best[0]), str(best[1])) if best else None
            self.counts.update({k: int(saved["counts"][k]) for k in self.counts})
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # a fresh search, or a folder from before this file: the tally starts again

    def get_state(self) -> None:
        """Called by Tune at each snapshot: write the best and tally beside it; nothing to pickle."""
        state = {"best": list(self.best) if self.best else None, "counts": dict(self.counts)}
        if self.experiment is not None and state != self._saved and Path(self.experiment).is_dir():
            atomic_write(Path(self.experiment) / PROGRESS_FILE, json.dumps(state) + "\n")
            self._saved = state
        return None

    def on_trial_start(self, iteration, trials, trial, **info):
        if is_local(trial.path):
            clear_failed(Path(trial.path))  # a resumed search retries a trial that had failed
        running = 1 + sum(t.status == "RUNNING" for t in trials if t is not trial)  # its own status lags
        self.say(f"{trial.trial_id} started ({running} running)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None:
            return
        better = self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0])
        if better:
            self.best = (value, trial.trial_id)
        self.say(
            f"{trial.trial_id} epoch {result.get('training_iteration')}: {self.metric} {value:.4g}"
            f"  (best {self.best[0]:.4g} by {self.best[1]})"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = (trial.last_result or {}).get("training_iteration", 0)
        total = int(trial.config.get("epochs", self.epochs))
        kind = "finished" if done >= total else "stopped early"
        self.counts[kind] += 1
        self.say(f"{trial.trial_id} {kind} after {done}/{total} epochs" + self.tally())

    def on_trial_recover(self, iteration, trials, trial, **info):
        failures = trial_failures(trial)
        self.say(f"{trial.trial_id} failed ({_error_line(trial)}); retrying from its last checkpoint "
                 f"(retry {failures} of {trial.max_failures})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.counts["failed"] += 1
        error = _error_line(trial)
        if is_local(trial.path):
            mark_failed(Path(trial.path), error, trial_failures(trial))
        self.say(f"{trial.trial_id} FAILED for good ({error}); see {trial.path}/error.txt" + self.tally())

    def tally(self) -> str:
        return "  [" + ", ".join(f"{v} {k}" for k, v in self.counts.items() if v) + "]"

    def say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {line}", file=sys.stdout, flush=True)


def _error_line(trial) -> str:
    """The gist of a trial's latest failure, from the error.txt Tune just wrote (never its pickle)."""
    return error_line(Path(trial.local_path)) or "no error message"
