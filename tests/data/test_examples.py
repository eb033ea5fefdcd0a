import pytest

from aam import examples
from aam.data import read_table
from aam.data._metadata import read_metadata
from aam.errors import AamUserError


def test_mouse_age_mini_is_small_and_complete():
    folder = examples.path("mouse_age_mini")
    files = {p.name for p in folder.iterdir()}
    assert {"feature-table.biom", "sample-metadata.tsv", "weighted-unifrac.tsv", "README.md"} <= files
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    td = read_table(folder / "feature-table.biom")
    assert len(td.sample_ids) == 160 and td.matrix.shape[0] == td.select().matrix.shape[0]  # no empty ASVs
    meta = read_metadata(folder / "sample-metadata.tsv")
    assert set(meta.index) == set(td.sample_ids)
    assert meta["study"].value_counts().to_dict() == {"longitudinal": 80, "dietary": 80}


def test_unknown_example():
    with pytest.raises(AamUserError, match="no bundled example 'mouse'; available: mouse_age_mini"):
        examples.path("mouse")
