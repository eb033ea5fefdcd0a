"""`aam pool` through the real entry point (aam.cli.main): its report, and one line for a mistake."""

import sys

from aam.cli import main
from aam.data import Dataset


def run_pool(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["aam", "pool", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pool_prints_what_it_kept_and_a_mistake_is_one_line(monkeypatch, capsys, example_dataset, tmp_path):
    out = tmp_path / "pool"
    code, stdout, stderr = run_pool(monkeypatch, capsys, example_dataset, "--out", out)
    assert code in (0, None), stderr
    pool = Dataset.open(out)
    n = Dataset.open(example_dataset).manifest["split"]["counts"]
    assert len(pool.samples) == n["train"] + n["val"]
    assert f"kept {n['train'] + n['val']} samples" in stdout and stdout.strip().endswith(f"wrote {out}")

    code, stdout, stderr = run_pool(monkeypatch, capsys, tmp_path / "nowhere", "--out", tmp_path / "second")
    assert code == 2 and stderr.count("\n") == 1 and "does not exist" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "second").exists()
