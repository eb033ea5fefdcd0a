"""`aam report`: one self-contained HTML page of a real (small) search, checked section by section."""

import base64
import re
import shutil

import pytest
from typer.testing import CliRunner

from aam.cli import app
from aam.search import read_experiment
from aam.search.report import SECTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def forest(example_dataset, tmp_path_factory):
    from aam.baselines import run_random_forest

    out = tmp_path_factory.mktemp("rf") / "rf"
    run_random_forest(example_dataset, out, n_estimators=50, seed=0)
    return out


def test_report_has_every_section_with_its_plots_inside_and_nothing_from_outside(small_experiment, forest, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(small_experiment), "--baseline", str(forest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    page = out.read_text()
    sections = dict(re.findall(r'<section id="([a-z-]+)">(.*?)</section>', page, re.S))
    assert list(sections) == list(SECTIONS)
    for key in ("best-by-trial", "importances", "parallel-coordinates", "curves", "predicted-vs-actual"):
        assert "<img" in sections[key], f"{key}: {sections[key][:500]}"  # a plot, not a note saying why not
    images = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(images) == 5
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    # opens offline: no script, stylesheet or image fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page and "<link" not in page
    assert "url(" not in page and "@import" not in page
    for trial in read_experiment(small_experiment).trials:  # the leaderboard lists every trial
        assert trial.path.name in sections["leaderboard"]
    assert f"random forest in {forest}" in sections["predicted-vs-actual"]


def test_report_without_a_forest_says_how_to_add_one(small_experiment, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(small_experiment, copy)
    result = CliRunner().invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    page = (copy / "report.html").read_text()  # the default place, beside the trials
    assert "aam baseline rf" in page and page.count("<img") == 5
