import json

import numpy as np
import pytest

from aam import examples
from aam.data import Dataset, convert_dataset
from aam.data.sequences import tokenize
from aam.errors import AamUserError


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    ex = examples.path("mouse_age_mini")
    out = tmp_path_factory.mktemp("ds") / "mini"
    convert_dataset(
        ex / "feature-table.biom", ex / "sample-metadata.tsv", out, ["Age_wk"],
        categoricals=["Diet"], unifrac=ex / "weighted-unifrac.tsv",
    )  # fmt: skip
    return out


def test_open_gives_everything_a_trainer_needs(mini):
    ds = Dataset.open(mini)
    assert ds.targets == ["Age_wk"] and ds.categoricals == {"Diet": ["SD", "WD"]}
    assert ds.token_width == 176 and ds.tokens.shape == (len(ds.asvs), 176) and ds.tokens.dtype == np.uint8
    assert np.array_equal(ds.tokens, tokenize(ds.asvs.column("sequence").to_pylist()))
    assert ds.unifrac.dtype == np.float32 and ds.unifrac.shape == (80, 80)
    rows = ds.samples.column("unifrac_row").to_numpy()
    assert sorted(rows[rows >= 0].tolist()) == list(range(80))
    sizes = {name: ds.split(name).num_rows for name in ("train", "val", "test")}
    assert sizes == ds.manifest["split"]["counts"] and sum(sizes.values()) == 160
    assert set(ds.split("val").column("split").to_pylist()) == {"val"}
    assert "160 samples" in repr(ds)


def test_asv_index_covers_every_asv(mini):
    ds = Dataset.open(mini)
    used = np.unique(np.concatenate(ds.samples.column("asv_idx").to_numpy(zero_copy_only=False)))
    assert used.tolist() == list(range(len(ds.asvs)))  # only ASVs present in a kept sample
    assert ds.asvs.column("asv_idx").to_pylist() == list(range(len(ds.asvs)))


def test_bad_split_name(mini):
    with pytest.raises(AamUserError, match="split 'validation' is not one of: train, val, test"):
        Dataset.open(mini).split("validation")


def test_not_a_dataset(tmp_path):
    with pytest.raises(AamUserError, match="does not exist") as missing:
        Dataset.open(tmp_path / "nothing")
    # the bundled example is one command away: the hint names it with this very folder
    assert f"aam convert --example mouse_age_mini --out {tmp_path / 'nothing'}" in str(missing.value)
    with pytest.raises(AamUserError, match="is not an aam dataset .no manifest.json.; create one with: aam convert"):
        Dataset.open(tmp_path)


def test_unknown_schema_version(mini, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mini, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AamUserError, match="schema_version 99"):
        Dataset.open(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(AamUserError, match="not a valid aam manifest"):
        Dataset.open(copy)


@pytest.mark.parametrize("key, value, expected", [
    ("targets", 5, "'targets' is 5, not a list of target column names"),
    ("targets", [1], "'targets' is [1], not a list"),
    ("categoricals", "x", "'categoricals' is \"x\", not a mapping"),
    ("categoricals", {"Diet": "SD"}, "'categoricals' is"),
    ("token_width", "176", "'token_width' is \"176\", not a whole number"),
    ("token_width", True, "'token_width' is true"),
    ("split", [], "'split' is [], not a mapping"),
])
def test_a_manifest_field_of_the_wrong_type_is_one_line_naming_it(mini, tmp_path, key, value, expected):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(mini, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest[key] = value
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AamUserError, match="re-run aam convert") as caught:
        Dataset.open(data)
    assert str(caught.value).startswith(f"{data / 'manifest.json'}: ") and expected in str(caught.value)
