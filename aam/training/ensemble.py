"""Greedy ensemble selection over trained runs (Caruana et al. 2004), chosen on val only.

Members are run folders (or trial checkpoints) of models trained on one dataset and split, and
optionally the predictions of baselines (`aam baseline rf`, `aam baseline knn`). Each model
member predicts the val and test splits from its own `model.pt`; selection adds, with
replacement, the member that most lowers the val MAE of the running mean, and keeps the prefix
of additions whose val MAE was lowest. The weights are how often each member was picked. The
test split is scored once, with those weights, and never seen by the selection.

An ensemble folder is read like a run folder: `ensemble.json` (members, weights, which
baselines are among them), `members/<k>/model.pt` (so the folder stands alone),
`val_predictions.tsv`, `test_predictions.tsv`, `metrics.json` and `pred_vs_actual.png`. `aam
predict` runs every model member and mixes their predictions with the same weights. A
baseline's fit is not stored (aam never writes or reads pickles), so an ensemble that includes
one scores val and test but cannot predict new tables; it is always labelled with the baselines
it includes.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from aam._files import atomic_write, checksum_file, mark_output, read_json
from aam.errors import AamUserError

ENSEMBLE_FILE = "ensemble.json"
FORMAT = "aam-ensemble/1"
FOREST = "random_forest"
# aam.baselines' kinds (`aam baseline rf`, `aam baseline knn`) -> their short names; read here from
# baseline.json, since training sits below baselines
BASELINE_NAMES = {FOREST: "rf", "knn": "knn"}
BASELINE_KINDS = tuple(BASELINE_NAMES)
BASELINE_LABELS = {FOREST: "the Random Forest", "knn": "the nearest-neighbour baseline"}


@dataclass
class Member:
    name: str
    kind: str  # "model", "cross-validated" or a baseline's kind (BASELINE_KINDS)
    source: Path  # run folder, checkpoint folder or baseline folder
    val: np.ndarray  # [N_val, T] original scale
    test: np.ndarray  # [N_test, T]


@dataclass
class Selection:
    weights: np.ndarray  # [M], sums to 1
    val_curve: list[float]  # val MAE after each addition


def holds_model(folder: str | Path) -> bool:
    """Whether `folder` is something `aam predict --model` takes: a run's model.pt, or an ensemble
    (`aam ensemble`, or a cross-validated run's fold models)."""
    folder = Path(folder)
    return (folder / "model.pt").is_file() or (folder / ENSEMBLE_FILE).is_file()


def mean_mae(actual: np.ndarray, predicted: np.ndarray) -> float:
    """MAE averaged over targets, each over the samples that have it (as val_mae is)."""
    scores = []
    for t in range(actual.shape[1]):
        known = ~np.isnan(actual[:, t])
        if known.any():
            scores.append(float(np.mean(np.abs(actual[known, t] - predicted[known, t]))))
    return float(np.mean(scores)) if scores else math.nan


def greedy_select(val_predictions: list[np.ndarray], actual: np.ndarray, rounds: int) -> Selection:
    """Caruana's forward selection with replacement; keeps the best prefix on val."""
    if not val_predictions:
        raise AamUserError("ensemble: no members to choose from")
    counts = np.zeros(len(val_predictions))
    total = np.zeros_like(val_predictions[0])
    curve, best_counts, best = [], counts.copy(), math.inf
    for step in range(1, rounds + 1):
        scores = [mean_mae(actual, (total + p) / step) for p in val_predictions]
        pick = int(np.nanargmin(scores))
        counts[pick] += 1
        total = total + val_predictions[pick]
        curve.append(scores[pick])
        if scores[pick] < best:
            best, best_counts = scores[pick], counts.copy()
    return Selection(weights=best_counts / best_counts.sum(), val_curve=curve)


def model_member(name: str, folder: Path, bundle, rows: dict, spec) -> Member:
    """A trained run's (`bundle`, loaded from `folder`) predictions for the val and test rows."""
    import torch

    from aam.training.evaluation import predict_rows

    preds = {split: predict_rows(bundle.model, rows[split], spec, torch.device("cpu")).predicted for split in rows}
    return Member(name, "model", Path(folder), preds["val"], preds["test"])


def baseline_kind(folder: Path) -> tuple[str, str]:
    """(kind, member name) of an `aam baseline` folder, e.g. ("random_forest", "baseline:rf")."""
    path = Path(folder) / "baseline.json"
    if not path.is_file():
        raise AamUserError(f"--with-baseline {folder}: not a baseline folder (no baseline.json); pass a folder "
                           "written by `aam baseline rf` or `aam baseline knn --out DIR`")
    info = read_json(path, "baseline file")
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind not in BASELINE_KINDS:
        raise AamUserError(f"--with-baseline {folder}: baseline.json names the kind {json.dumps(kind)}, which aam "
                           f"ensemble does not take ({', '.join(BASELINE_KINDS)}); fit it again with `aam baseline`")
    return kind, f"baseline:{BASELINE_NAMES[kind]}"


def baseline_member(folder: Path, sample_ids: dict[str, list[str]], targets: list[str]) -> Member:
    """A baseline's own val/test predictions; refused unless it saw the same samples and targets."""
    folder = Path(folder)
    kind, name = baseline_kind(folder)
    out = {}
    for split in ("val", "test"):
        path = folder / f"{split}_predictions.tsv"
        if not path.is_file():
            raise AamUserError(f"--with-baseline {folder}: no {path.name}; pass a folder written by `aam baseline`")
        frame = pd.read_csv(path, sep="\t", dtype={"sample_id": str})
        missing = [f"{t}_predicted" for t in targets if f"{t}_predicted" not in frame.columns]
        if missing or list(frame["sample_id"]) != list(sample_ids[split]):
            raise AamUserError(f"--with-baseline {folder}: its {split} predictions are not of the same samples and "
                               "targets as the models'; fit it with `aam baseline --data` on the same dataset")
        out[split] = frame[[f"{t}_predicted" for t in targets]].to_numpy(dtype=float)
    return Member(name, kind, folder, out["val"], out["test"])


def write_ensemble(out: Path, members: list[Member], selection: Selection, targets: list[str],
                   sample_ids: dict[str, list[str]], actual: dict[str, np.ndarray], data: str, rounds: int,
                   selected_on: str = "val_mae") -> dict:
    """Write the ensemble folder (see the module docstring); returns its metrics."""
    from aam.training import artifacts
    from aam.training.metrics import regression_metrics

    chosen = [(m, float(w)) for m, w in zip(members, selection.weights) if w > 0]
    included = sorted({m.kind for m, _ in chosen if m.kind in BASELINE_KINDS})
    includes_forest = FOREST in included
    metrics: dict = {}
    for split in ("val", "test"):
        mixed = sum(w * getattr(m, split) for m, w in chosen)
        scores = regression_metrics(actual[split], mixed, targets)
        metrics.update({f"{split}_{k}": v for k, v in scores.items()})
        artifacts.write_tsv(artifacts.predictions_frame(sample_ids[split], targets, mixed, actual[split]),
                            out / f"{split}_predictions.tsv")
        if split == "test":
            fig = artifacts.predicted_vs_actual_figure(targets, actual[split], mixed, "test, ensemble")
            fig.savefig(out / "pred_vs_actual.png", dpi=100)
    listed = []
    for k, (member, weight) in enumerate(chosen):
        entry = {"name": member.name, "kind": member.kind, "source": str(member.source), "weight": weight,
                 "val_mae": mean_mae(actual["val"], member.val)}
        if member.kind == CROSS_VALIDATED:
            listed.extend(_copy_cross_validated(member, weight, out / "members" / str(k), f"members/{k}"))
            continue
        if member.kind == "model":
            dest = out / "members" / str(k)
            dest.mkdir(parents=True)
            source = Path(member.source) / "model.pt" if Path(member.source).is_dir() else Path(member.source)
            for path in (source, checksum_file(source)):
                if path.is_file():  # the checksum goes with it, so the copy is checked as the original was
                    shutil.copy2(path, dest / path.name)
            entry["model"] = f"members/{k}/model.pt"
        listed.append(entry)
    info = {"format": FORMAT, "targets": targets, "data": data, "selected_on": selected_on, "rounds": rounds,
            "val_curve": selection.val_curve, "candidates": [m.name for m in members],
            "includes_forest": includes_forest, "includes_baselines": included, "members": listed}
    metrics["includes_forest"] = includes_forest
    metrics["includes_baselines"] = included
    mark_output(out, "ensemble")
    atomic_write(out / ENSEMBLE_FILE, json.dumps(info, indent=1))
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics


def read_ensemble(folder: str | Path) -> dict | None:
    """The ensemble.json of `folder`, its schema checked, or None when it is not an ensemble folder.
    A damaged or edited file is one line naming it and the key (an ensemble can come from anyone)."""
    folder = Path(folder)
    path = folder / ENSEMBLE_FILE
    if not path.is_file():
        return None
    info = read_json(path, "ensemble file")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise AamUserError(f"{path}: not an aam ensemble file (no '{FORMAT}' format tag)")
    _check_ensemble(folder, path, info)
    return info


def _check_ensemble(folder: Path, path: Path, info: dict) -> None:
    def bad(key: str, what: str):
        return AamUserError(f"{path}: {key} {what}; build the ensemble again with `aam ensemble`")

    targets, members = info.get("targets"), info.get("members")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise bad("targets", "must be a non-empty list of target names")
    if not isinstance(info.get("includes_forest"), bool):
        raise bad("includes_forest", "must be true or false")
    included = info.get("includes_baselines", [])  # absent in an ensemble written before aam baseline knn
    if not isinstance(included, list) or any(k not in BASELINE_KINDS for k in included):
        raise bad("includes_baselines", f"must be a list of baseline kinds ({', '.join(BASELINE_KINDS)})")
    if not isinstance(members, list) or not members:
        raise bad("members", "must be a non-empty list")
    for k, member in enumerate(members):
        where = f"members[{k}]"
        if not isinstance(member, dict):
            raise bad(where, "must be a mapping")
        for key in ("name", "kind", "weight"):
            if key not in member:
                raise bad(f"{where}", f"has no '{key}'")
        weight = member["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise bad(f"{where}.weight", f"is {json.dumps(weight)}, not a finite number >= 0")
        if member["kind"] not in ("model", *BASELINE_KINDS):
            raise bad(f"{where}.kind", f"is {json.dumps(member['kind'])}, not 'model' or a baseline's kind "
                      f"({', '.join(BASELINE_KINDS)})")
        if member["kind"] == "model":
            _check_member_model(folder, member.get("model"), lambda what: bad(f"{where}.model", what))
    if not sum(m["weight"] for m in members) > 0:
        raise bad("members", "have weights that sum to 0")


def _check_member_model(folder: Path, model, bad) -> None:
    """A member's model is a model.pt this ensemble folder holds (`aam ensemble` copies it in): a
    path out of the folder, or to the folder itself, would read another file, or loop forever."""
    if not isinstance(model, str) or not model:
        raise bad("must be the path of a model.pt inside the ensemble folder")
    inside = folder.resolve()
    target = (folder / model).resolve()
    if Path(model).is_absolute() or inside not in target.parents:
        raise bad(f"is {json.dumps(model)}, which is not inside the ensemble folder {folder}")
    if not target.is_file():
        raise bad(f"is {json.dumps(model)}, which is not a file of the ensemble folder")


def leaderboard_rows(folders: list[Path], metric: str) -> tuple[list[dict], list[str]]:
    """A row per readable ensemble folder, in the columns of `Experiment.leaderboard()`, and a
    line per damaged one naming what is wrong (one damaged ensemble hides no other)."""
    rows, problems = [], []
    for folder in folders:
        try:
            info = read_ensemble(folder)
            metrics = read_json(Path(folder) / "metrics.json", "ensemble metrics file")
            if not isinstance(metrics, dict):
                raise AamUserError(f"{Path(folder) / 'metrics.json'}: not a mapping of metrics")
        except AamUserError as e:
            problems.append(str(e))
            continue
        if info is None:
            continue
        models = sum(1 for m in info["members"] if m["kind"] == "model")
        shown = {FOREST: "forest"}
        status = f"ensemble of {models}" + "".join(f" + {shown.get(k, k)}" for k in includes_baselines(info))
        row = {"rank": None, "trial": f"ensemble:{Path(folder).name}", "status": status, "epochs": None,
               f"best_{metric}": _number(metrics.get(metric)), "best_epoch": None}
        for key in ("val_mae", "val_r2", "test_mae", "test_r2"):
            if key != metric:
                row[key] = _number(metrics.get(key))
        rows.append(row)
    return rows, problems


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


# --- bagging cross-validated runs: selection on out-of-fold predictions ---------------------
CROSS_VALIDATED = "cross-validated"


def cross_validated(folder: str | Path) -> bool:
    """Whether `folder` is a cross-validated run (`folds: K`): an ensemble of its fold models."""
    info = read_ensemble(folder)
    return info is not None and bool(info.get("folds"))


def _predictions(path: Path, ids: list[str], targets: list[str], fix: str) -> np.ndarray:
    """The `<target>_predicted` columns of a predictions TSV, in the order of `ids`."""
    if not path.is_file():
        raise AamUserError(f"{path}: no such file; {fix}")
    frame = read_predictions_tsv(path)
    missing = [f"{t}_predicted" for t in targets if f"{t}_predicted" not in frame.columns]
    absent = sorted(set(ids) - set(frame["sample_id"]))
    if missing or absent:
        what = f"no column {missing[0]}" if missing else f"no prediction for {len(absent)} samples (e.g. {absent[0]})"
        raise AamUserError(f"{path}: {what}; {fix}")
    return frame.drop_duplicates("sample_id").set_index("sample_id").loc[ids, [f"{t}_predicted" for t in targets]] \
        .to_numpy(dtype=float)


def read_predictions_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype={"sample_id": str})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise AamUserError(f"{path}: not a predictions table ({str(e).splitlines()[0][:120]})") from None


def out_of_fold_member(name: str, folder: Path, sample_ids: dict[str, list[str]], targets: list[str]) -> Member:
    """A cross-validated run as a candidate: its out-of-fold predictions of every train and val
    sample (selection reads these) and its folds' mean on test."""
    fix = "train it again with `aam train --folds K`"
    return Member(name, CROSS_VALIDATED, folder, _predictions(folder / "val_predictions.tsv", sample_ids["val"], targets,
                                                              fix),
                  _predictions(folder / "test_predictions.tsv", sample_ids["test"], targets, fix))


def out_of_fold_baseline(folder: Path, sample_ids: dict[str, list[str]], targets: list[str]) -> Member:
    """A baseline's out-of-fold predictions (`aam baseline rf|knn --folds K`) and its test predictions."""
    kind, name = baseline_kind(Path(folder))
    fix = "fit the baseline with `aam baseline --data DATASET --folds K` on the members' dataset"
    return Member(name, kind, folder, _predictions(folder / "oof_predictions.tsv", sample_ids["val"], targets, fix),
                  _predictions(folder / "test_predictions.tsv", sample_ids["test"], targets, fix))


def includes_baselines(info: dict) -> list[str]:
    """The baseline kinds an ensemble's members include: its members' own kinds as well as what it
    says of them (an ensemble from before `aam baseline knn` says only whether the forest is one,
    and an edited file may say less than its members show)."""
    said = set(info.get("includes_baselines") or ()) | ({FOREST} if info.get("includes_forest") else set())
    return sorted(said | {m["kind"] for m in info["members"] if m["kind"] in BASELINE_KINDS})


def ensemble_out_of_fold(out: Path, candidates: list[tuple[str, Path]], baselines: list[Path], rounds: int,
                         data: Path | None) -> tuple[dict, list[Member], Selection]:
    """Greedy selection over cross-validated runs (and the baselines' out-of-fold predictions),
    on every train and val sample out of fold rather than on the val split alone; written as
    `write_ensemble` writes, each run's fold models copied in with its weight shared among them."""
    from aam._files import staged_folder
    from aam.data.collate import raw_targets
    from aam.data.dataset import Dataset

    infos = [read_ensemble(folder) for _, folder in candidates]
    plain = [name for (name, _), info in zip(candidates, infos) if not (info and info.get("folds"))]
    if plain:
        raise AamUserError(f"ensemble: {plain[0]} is not cross-validated while others are; give only runs trained "
                           "with --folds K (selected out of fold) or only runs without (selected on val)")
    targets = infos[0]["targets"]
    if any(info["targets"] != targets for info in infos):
        raise AamUserError("ensemble: every member must predict the same targets")
    dataset = Dataset.open(data or infos[0].get("data"))
    non_test = pa.concat_tables([dataset.split("train"), dataset.split("val")], promote_options="default")
    rows = {"val": non_test, "test": dataset.split("test")}
    sample_ids = {split: r.column("sample_id").to_pylist() for split, r in rows.items()}
    actual = {split: raw_targets(r, targets) for split, r in rows.items()}
    members = [out_of_fold_member(name, folder, sample_ids, targets) for name, folder in candidates]
    members += [out_of_fold_baseline(folder, sample_ids, targets) for folder in baselines]
    selection = greedy_select([m.val for m in members], actual["val"], rounds)
    with staged_folder(out) as tmp:
        metrics = write_ensemble(tmp, members, selection, targets, sample_ids, actual, str(dataset.path), rounds,
                                 selected_on="out-of-fold")
    return metrics, members, selection


def _copy_cross_validated(member: Member, weight: float, dest: Path, prefix: str) -> list[dict]:
    """A cross-validated member's fold models, copied under `dest`, each listed with its share of `weight`."""
    info = read_ensemble(member.source)
    entries = []
    for j, fold in enumerate(info["members"]):
        source = Path(member.source) / fold["model"]
        (dest / str(j)).mkdir(parents=True)
        for path in (source, checksum_file(source)):
            if path.is_file():
                shutil.copy2(path, dest / str(j) / path.name)
        entries.append({"name": f"{member.name}/{fold['name']}", "kind": "model", "source": str(source.parent),
                        "weight": weight * fold["weight"], "model": f"{prefix}/{j}/model.pt"})
    return entries
