"""Baselines a tuned model has to beat, fitted on the same dataset folder and split.

- `run_random_forest(data, out, ...)`: a Random Forest on relative abundances; writes a folder
  laid out like a model run (predictions, figure, metrics) plus `baseline.json`.
- `run_nearest_neighbors(data, out, ...)`: the k training samples nearest in Jaccard distance
  (presence/absence), k chosen by cross-validation on train; the same folder layout.
- `with_baselines(board, folders, metric)`: those folders as rows of an experiment's leaderboard.
"""

from aam.baselines.leaderboard import leaderboard_row, read_baseline, with_baselines
from aam.baselines.nearest_neighbors import run_nearest_neighbors
from aam.baselines.random_forest import BaselineResult, run_random_forest

__all__ = ["BaselineResult", "leaderboard_row", "read_baseline", "run_nearest_neighbors", "run_random_forest",
           "with_baselines"]
