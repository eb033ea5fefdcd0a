import numpy as np
import pytest

from aam.data._split import assign_split, check_fractions, parse_split
from aam.errors import AamUserError

IDS = [f"S{i:03d}" for i in range(200)]


def test_split_is_deterministic_and_independent_of_input_order():
    a = assign_split(IDS, (0.8, 0.1, 0.1), seed=0)
    assert a.tolist() == assign_split(IDS, (0.8, 0.1, 0.1), seed=0).tolist()
    shuffled = list(reversed(IDS))
    b = dict(zip(shuffled, assign_split(shuffled, (0.8, 0.1, 0.1), seed=0)))
    assert [b[i] for i in IDS] == a.tolist()
    assert a.tolist() != assign_split(IDS, (0.8, 0.1, 0.1), seed=1).tolist()
    assert [(a == s).sum() for s in ("train", "val", "test")] == [160, 20, 20]


def test_tiny_sets_still_train():
    assert assign_split(["A"], (0.5, 0.25, 0.25), seed=0).tolist() == ["train"]


def test_grouped_split_keeps_groups_on_one_side():
    groups = [f"g{i % 23}" for i in range(len(IDS))]
    split = assign_split(IDS, (0.6, 0.2, 0.2), seed=3, groups=groups)
    sides = {}
    for g, s in zip(groups, split):
        sides.setdefault(g, set()).add(s)
    assert all(len(v) == 1 for v in sides.values())
    counts = [(split == s).sum() for s in ("train", "val", "test")]
    assert all(c > 0 for c in counts) and abs(counts[0] - 120) <= 9  # within one group of the target
    assert split.tolist() == assign_split(IDS, (0.6, 0.2, 0.2), seed=3, groups=groups).tolist()


@pytest.mark.parametrize(
    "fractions, message",
    [((0.8, 0.1), "three fractions"), ((0.8, 0.3, 0.1), "sum to 1.2"), ((0, 0.5, 0.5), "no samples to train"),
     ((1.2, -0.1, -0.1), ">= 0")],
)  # fmt: skip
def test_bad_fractions(fractions, message):
    with pytest.raises(AamUserError, match=message):
        check_fractions(fractions)


def test_parse_split_text():
    assert parse_split("0.8/0.1/0.1") == (0.8, 0.1, 0.1)
    assert parse_split("0.7, 0.15, 0.15") == (0.7, 0.15, 0.15)
    assert np.isclose(sum(parse_split("1/0/0")), 1)
    for bad in ("80/10/10", "0.8-0.1-0.1", "a/b/c", "0.9/0.1"):
        with pytest.raises(AamUserError):
            parse_split(bad)
