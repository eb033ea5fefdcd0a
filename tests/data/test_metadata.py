import numpy as np
import pandas as pd
import pytest

from aam.data._metadata import parse_categorical, parse_target, read_metadata, require_columns
from aam.errors import AamUserError


@pytest.mark.parametrize("header", ["sample_id", "sample-id", "#SampleID", "id", "SampleID", "#Sample ID", "Sample-ID"])
def test_id_column_names(tmp_path, write_tsv, header):
    path = write_tsv(tmp_path / "m.tsv", [header, "age"], [["S1", "3"], ["S2", "4"]])
    df = read_metadata(path)
    assert list(df.index) == ["S1", "S2"] and df.index.name == "sample_id"


def test_qiime2_types_row_and_comments_are_skipped(tmp_path, write_tsv):
    path = write_tsv(
        tmp_path / "m.tsv",
        ["sample-id", "age", "diet"],
        [["#q2:types", "numeric", "categorical"], ["S1", "3", "SD"], ["# a comment", "", ""], ["S2", "4", "WD"]],
    )
    df = read_metadata(path)
    assert list(df.index) == ["S1", "S2"]
    assert parse_target(df["age"], "age", "m.tsv").tolist() == [3.0, 4.0]


def test_explicit_id_column_and_missing_one(tmp_path, write_tsv):
    path = write_tsv(tmp_path / "m.tsv", ["name", "host", "age"], [["a", "S1", "3"]])
    assert list(read_metadata(path, id_column="host").index) == ["S1"]
    with pytest.raises(AamUserError, match="no sample ID column .first column is 'name'.; name it sample_id or pass --id-column"):
        read_metadata(path)
    with pytest.raises(AamUserError, match="--id-column 'hots' is not a column of m.tsv; close matches: host"):
        read_metadata(path, id_column="hots")


def test_duplicate_sample_ids(tmp_path, write_tsv):
    path = write_tsv(tmp_path / "m.tsv", ["sample_id", "age"], [["S1", "3"], ["S2", "4"], ["S1", "5"]])
    with pytest.raises(AamUserError, match="duplicate sample ID 'S1'"):
        read_metadata(path)


def test_missing_markers_become_nan():
    markers = ["", "NA", "nan", "NaN", "none", "null", "Missing", "not applicable", "Not Collected",
               "not provided", "unknown", "missing: not collected", " 7 "]  # fmt: skip
    values = pd.Series(markers, index=[f"S{i}" for i in range(len(markers))])
    parsed = parse_target(values, "age", "m.tsv")
    assert np.isnan(parsed[:-1]).all() and parsed[-1] == 7.0


@pytest.mark.parametrize("bad", ["ten", "12 weeks", "inf", "3,5"])
def test_non_numeric_target_names_column_value_and_sample(bad):
    values = pd.Series(["1", bad, "2"], index=["S1", "S2", "S3"])
    with pytest.raises(AamUserError) as e:
        parse_target(values, "age", "m.tsv")
    msg = str(e.value)
    assert "'age'" in msg and repr(bad) in msg and "'S2'" in msg and "m.tsv" in msg


def test_categorical_codes_start_at_one_and_zero_is_missing():
    codes, vocab = parse_categorical(pd.Series(["WD", "SD", "", "WD", "NA"]))
    assert vocab == ["SD", "WD"]
    assert codes.dtype == np.int32 and codes.tolist() == [2, 1, 0, 2, 0]


def test_unknown_column_lists_close_matches(tmp_path, write_tsv):
    df = read_metadata(write_tsv(tmp_path / "m.tsv", ["sample_id", "Age_wk", "Age_days"], [["S1", "3", "21"]]))
    with pytest.raises(AamUserError, match="--target column 'age_wk' is not in m.tsv; close matches: Age_wk"):
        require_columns(df, ["age_wk"], "--target", "m.tsv")


def test_not_a_tsv(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("sample_id,age\nS1,3\n")
    with pytest.raises(AamUserError, match="1 column"):
        read_metadata(path)
