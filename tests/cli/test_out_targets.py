"""Every command with --out, through the same table of targets (issue 23).

Each command is run as a user runs it (`aam.cli.main`, `aam train` as its own process) on real
files: a converted dataset, a real search, a run exported from it, a real forest. For each target
the outcome is either a safe write (aam's marker lists what it wrote, no temp file is left) or one
line on stderr with exit code 2 and not one byte, link or file type under the test's folder
changed. A command that gains --out without a row here fails `test_every_out_command_is_in_the_table`.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from aam import examples
from aam._files import OUTPUT_MARKER, _read_marker, foreign_files, output_kind

TINY = ["--d-model", "16", "--n-heads", "2", "--asv-layers", "1", "--sample-layers", "1", "--token-limit", "48",
        "--epochs", "1", "--batch-size", "32"]


@dataclass
class Command:
    argv: Callable[[dict], list]  # everything but --out, from the case's own copies of the inputs
    kind: str  # what aam marks its output as
    is_file: bool
    input_target: Callable[[dict], Path]  # an --out that is, or lies inside, one of its inputs
    force: bool = True  # has --force (passed in every case: it must never widen what is replaced)
    replaces_own: bool = True  # ensembles are never overwritten
    slow: bool = False  # trains a model where it writes


COMMANDS = {
    "convert": Command(lambda c: ["convert", "--table", c["example"] / "feature-table.biom", "--metadata",
                                  c["example"] / "sample-metadata.tsv", "--target", "Age_wk"],
                       "dataset", False, lambda c: c["example"]),
    "pool": Command(lambda c: ["pool", c["data"]], "dataset", False, lambda c: c["data"]),
    "baseline rf": Command(lambda c: ["baseline", "rf", "--data", c["data"], "--n-estimators", "5"], "baseline",
                           False, lambda c: c["data"] / "samples"),
    "baseline knn": Command(lambda c: ["baseline", "knn", "--data", c["data"], "--neighbors", "1,3"], "baseline",
                            False, lambda c: c["data"] / "samples"),
    "export": Command(lambda c: ["export", c["experiment"]], "run", False, lambda c: c["experiment"]),
    "train": Command(lambda c: ["train", "--data", c["data"], *TINY], "run", False, lambda c: c["data"], slow=True),
    "ensemble": Command(lambda c: ["ensemble", c["run"]], "ensemble", False, lambda c: c["run"] / "ens",
                        force=False, replaces_own=False),
    "predict": Command(lambda c: ["predict", "--model", c["run"], "--table", c["example"] / "feature-table.biom"],
                       "predictions", True, lambda c: c["run"] / "model.pt", force=False),
    "report": Command(lambda c: ["report", c["experiment"]], "report", True,
                      lambda c: c["experiment"] / "aam-space.yaml", force=False),
}
TARGETS = ("missing", "own", "own-other-kind", "foreign-file", "foreign-folder", "input", "symlink", "fifo",
           "directory")
WRITTEN = {  # target -> (folder command, file command): True where the command writes
    "missing": (True, True), "own": (True, True), "directory": (True, False),
}


def expected_to_write(command: Command, target: str) -> bool:
    if target == "own" and not command.replaces_own:
        return False
    return WRITTEN.get(target, (False, False))[command.is_file]


def test_every_out_command_is_in_the_table():
    import typer.main

    from aam.cli import app

    def walk(group, prefix=()):
        for name, command in getattr(group, "commands", {}).items():
            yield from walk(command, (*prefix, name))
        if any(p.name == "out" for p in getattr(group, "params", ())):
            yield " ".join(prefix)

    assert sorted(walk(typer.main.get_command(app))) == sorted(COMMANDS)


# --- what the cases read: made once by aam itself ------------------------------------------
def run_aam(*args) -> tuple[int, str]:
    """Exit code and stderr of one command through the entry point users run (`aam train` shares
    the session's Ray, as every command does when one is already running in its process)."""
    import contextlib
    import io

    from aam.cli import main

    err = io.StringIO()
    argv, sys.argv = sys.argv, ["aam", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = argv
    return code, err.getvalue()


@pytest.fixture(scope="module")
def made(example_dataset, small_experiment, ray_cluster, tmp_path_factory):
    """aam-written folders of each kind: the dataset, the search, a run exported from it, a forest."""
    root = tmp_path_factory.mktemp("made")
    for args in (["export", small_experiment, "--out", root / "run"],
                 ["baseline", "rf", "--data", example_dataset, "--n-estimators", "5", "--out", root / "rf"]):
        code, err = run_aam(*args)
        assert code == 0, err
    return {"data": example_dataset, "experiment": small_experiment, "run": root / "run", "rf": root / "rf",
            "example": examples.path("mouse_age_mini")}


def copies(made: dict, where: Path) -> dict:
    """The case's own copies of every input, so the test sees any change a command makes to them."""
    where.mkdir()
    return {name: shutil.copytree(path, where / name, symlinks=True) for name, path in made.items()}


def snapshot(folder: Path) -> dict:
    """Every path below `folder`: its type, and its bytes or where its link points (links not followed)."""
    seen = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            content = (os.readlink(path) if stat.S_ISLNK(mode) else path.read_bytes() if stat.S_ISREG(mode)
                       else None)
            seen[str(path.relative_to(folder))] = (stat.S_IFMT(mode), content)
    return seen


def make_target(target: str, command: Command, inputs: dict, place: Path) -> Path:
    suffix = {"predictions": ".tsv", "report": ".html"}.get(command.kind, "")
    out = place / f"out{suffix}"
    place.mkdir()
    if target == "own":
        if command.replaces_own and not command.is_file:
            source = {"dataset": inputs["data"], "run": inputs["run"], "baseline": inputs["rf"]}[command.kind]
            shutil.copytree(source, out, symlinks=True)
        else:  # aam's own file (or ensemble) is the one this command wrote before
            code, err = run_aam(*command.argv(inputs), "--out", out)
            assert code == 0, err
    elif target == "own-other-kind":
        other = inputs["rf"] if command.kind == "dataset" else inputs["data"]
        return other / "manifest.json" if command.is_file else other
    elif target == "foreign-file":
        out.write_text("a user's file")
    elif target == "foreign-folder":
        out.mkdir()
        (out / "thesis.txt").write_text("years of work")
    elif target == "input":
        return command.input_target(inputs)
    elif target == "symlink":
        kept = place / "kept"
        kept.mkdir() if not command.is_file else kept.write_text("kept")
        out.symlink_to(kept)
    elif target == "fifo":
        os.mkfifo(out)
    elif target == "directory":
        out.mkdir()
    return out


def marks(command: Command, target: str) -> list:
    if not (command.slow and expected_to_write(command, target)):
        return []
    if target != "own":  # each is a training run of ~25 s; a fresh folder is trained into by every train test
        return [pytest.mark.skip(reason="every other aam train test trains into a fresh --out; the table trains once, for own")]
    return [pytest.mark.slow]


CASES = [pytest.param(name, target, id=f"{name}-{target}", marks=marks(command, target))
         for name, command in COMMANDS.items() for target in TARGETS]


@pytest.mark.parametrize("name, target", CASES)
def test_every_out_target_is_written_safely_or_refused_untouched(made, tmp_path, name, target):
    command = COMMANDS[name]
    inputs = copies(made, tmp_path / "inputs")
    out = make_target(target, command, inputs, tmp_path / "place")
    before = snapshot(tmp_path)
    code, err = run_aam(*command.argv(inputs), "--out", out, *(["--force"] if command.force else []))
    if not expected_to_write(command, target):
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("aam: error: --out "), (code, err)
        assert snapshot(tmp_path) == before, "a refused --out changed a file"
        return
    assert code == 0, err
    if command.is_file:
        assert out.is_file() and not out.is_symlink()
        assert _read_marker(out.parent)[1][out.name] == command.kind
    else:
        assert out.is_dir() and output_kind(out) == command.kind and foreign_files(out) == []
        assert (out / OUTPUT_MARKER).is_file()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == [], "a temp or set-aside copy was left beside the output"
    changed = {p for p, v in snapshot(tmp_path).items() if before.get(p) != v}
    outside = [p for p in changed if not (tmp_path / p == out or out in (tmp_path / p).parents
                                          or (tmp_path / p) == out.parent / OUTPUT_MARKER)]
    assert outside == [], f"the command changed files beside its --out: {outside}"
