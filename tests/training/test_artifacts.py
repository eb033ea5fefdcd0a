"""aam.training.artifacts: figures draw users' names as written."""

import numpy as np
import pytest

from aam.training.artifacts import predicted_vs_actual_figure

NAME = "x$\\foo$"  # issue 23: a target so named converted, trained every epoch, then failed drawing the plot


def test_a_name_that_matplotlib_would_read_as_mathtext_is_drawn_as_written(tmp_path):
    actual = np.array([[1.0, 2.0], [2.0, 3.0], [np.nan, 4.0]])
    fig = predicted_vs_actual_figure([NAME, "a$b"], actual, actual + 0.5, "test, $x^2$")
    fig.savefig(tmp_path / "pred_vs_actual.png", dpi=50)
    assert (tmp_path / "pred_vs_actual.png").stat().st_size > 0
    assert fig.axes[0].get_xlabel() == f"actual {NAME}"


def test_the_same_name_parsed_as_mathtext_fails_as_the_issue_reports(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": True}):
        fig, ax = plt.subplots()
        ax.set_xlabel(NAME)
        with pytest.raises(ValueError):
            fig.savefig(tmp_path / "mathtext.png", dpi=50)
    plt.close(fig)
