"""Search spaces and what a search leaves behind, without Ray: nothing here starts or imports Ray.

- `load_space(path)`: a search-space YAML checked and compiled to a `SearchSpace` (an Optuna
  define-by-run over `RunConfig` fields; aam.distributed turns it into Tune's objects and runs it).
- `read_experiment(path)`: an experiment folder's trials, configs, scores and checkpoints, read
  from the files Tune and the trials leave (`aam runs`, `aam export`, `aam train --best-of`);
  `resolve_trial` for `EXPERIMENT` (its best trial) or `EXPERIMENT/TRIAL`.
- `write_report(path)`: the leaderboard, plots and curves of an experiment as one HTML page.
- What the Tune driver records beside Tune's own files (`mark_failed`, `clear_failed`) and reads
  back to mend a killed search (`recorded_trials`, `unrecorded_trials`, `result_rows`, `cut_short_state`).
"""

from aam.search.experiment import (
    NESTED_RUNS_DIR,
    SPACE_FILE,
    Experiment,
    Trial,
    clear_failed,
    cut_short_state,
    error_line,
    load_experiment_space,
    mark_failed,
    read_experiment,
    recorded_trials,
    resolve_trial,
    result_rows,
    unrecorded_trials,
)
from aam.search.report import write_report
from aam.search.space import TIME_ATTR, SearchSpace, load_space, quiet_optuna

__all__ = [
    "Experiment",
    "NESTED_RUNS_DIR",
    "SPACE_FILE",
    "SearchSpace",
    "TIME_ATTR",
    "Trial",
    "clear_failed",
    "cut_short_state",
    "error_line",
    "load_experiment_space",
    "load_space",
    "mark_failed",
    "quiet_optuna",
    "read_experiment",
    "recorded_trials",
    "resolve_trial",
    "result_rows",
    "unrecorded_trials",
    "write_report",
]
