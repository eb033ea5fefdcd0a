"""`aam ensemble`'s one library call: trained models (and baselines) in, an ensemble folder out.

The selection and the folder's layout are aam.training.ensemble's, and so is the ensemble of
cross-validated runs (selected on their out-of-fold predictions, which they wrote). Runs without
folds are selected on val, so their models predict it here: that needs torch and the prediction
path (aam.training.predict), which aam.training.ensemble, read by `aam runs` and by prediction
itself, does not import.
"""

from __future__ import annotations

from pathlib import Path

from aam._files import staged_folder
from aam.errors import AamUserError
from aam.training.ensemble import (
    Member,
    Selection,
    cross_validated,
    ensemble_out_of_fold,
    baseline_member,
    greedy_select,
    model_member,
    write_ensemble,
)


def build_ensemble(candidates: list[tuple[str, Path]], out: Path, data: Path | None = None,
                   baselines: list[Path] = (), rounds: int = 20) -> tuple[list[Member], Selection, dict]:
    """Select an ensemble of the candidates (name, folder holding the model) greedily, the
    predictions of each `aam baseline` folder in `baselines` candidates too, and write it to
    `out` whole or not at all; (members, selection, metrics). Runs trained with `--folds K` are
    selected on their out-of-fold predictions, any others on val, predicted here; test is scored
    once with the weights found. `data`: the dataset, by default the first candidate's.
    """
    if any(cross_validated(folder) for _, folder in candidates):
        metrics, members, selection = ensemble_out_of_fold(out, candidates, list(baselines), rounds, data)
        return members, selection, metrics
    from aam.data.collate import raw_targets
    from aam.data.dataset import Dataset
    from aam.training.checkpoint import load_model
    from aam.training.predict import table_batch_spec

    bundles = [load_model(folder) for _, folder in candidates]
    targets = bundles[0].targets
    if not targets or any(b.targets != targets for b in bundles):
        raise AamUserError("ensemble: every member must predict the same targets; "
                           + ", ".join(f"{n}: {b.targets}" for (n, _), b in zip(candidates, bundles)))
    dataset = Dataset.open(data or bundles[0].config.data)
    if missing := [t for t in targets if t not in dataset.targets]:
        raise AamUserError(f"--data {dataset.path}: has no target {', '.join(missing)} that the members predict "
                           f"(its targets: {', '.join(dataset.targets) or 'none'}); give the dataset they were "
                           "trained on")
    rows = {split: dataset.split(split) for split in ("val", "test")}
    sample_ids = {split: r.column("sample_id").to_pylist() for split, r in rows.items()}
    actual = {split: raw_targets(r, targets) for split, r in rows.items()}
    sequences = dataset.asvs.column("sequence").to_pylist()
    members = [model_member(name, folder, bundle, rows, table_batch_spec(bundle, dataset.tokens, sequences))
               for (name, folder), bundle in zip(candidates, bundles)]
    members += [baseline_member(folder, sample_ids, targets) for folder in baselines]
    selection = greedy_select([m.val for m in members], actual["val"], rounds)
    with staged_folder(out) as tmp:
        metrics = write_ensemble(tmp, members, selection, targets, sample_ids, actual, str(dataset.path), rounds)
    return members, selection, metrics
