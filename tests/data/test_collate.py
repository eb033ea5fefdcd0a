import numpy as np
import pyarrow as pa
import pytest

from aam.data.collate import BatchSpec, collate
from aam.data.transforms import TargetTransform

# four ASVs of different lengths; PAD=0 after each sequence
TOKENS = np.array(
    [
        [1, 2, 3, 4, 0, 0],
        [4, 3, 2, 1, 1, 0],
        [1, 1, 1, 0, 0, 0],
        [2, 2, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)


def rows(asv_lists, count_lists, ages, unifrac_rows=None):
    return pa.table(
        {
            "sample_id": [f"s{i}" for i in range(len(asv_lists))],
            "asv_idx": pa.array(asv_lists, pa.list_(pa.int32())),
            "counts": pa.array(count_lists, pa.list_(pa.float32())),
            "target.age": pa.array(ages, pa.float64()),
            "cat.diet": pa.array([1] * len(asv_lists), pa.int32()),
            "unifrac_row": pa.array(unifrac_rows or [-1] * len(asv_lists), pa.int32()),
        }
    )


def spec(limit=10, transform=None):
    return BatchSpec(TOKENS, ["age"], ["diet"], limit, transform)


def test_each_distinct_asv_is_encoded_once_and_scattered_back():
    b = collate(rows([[0, 1], [1, 2, 3]], [[5, 3], [9, 2, 1]], [1.0, 2.0]), spec())
    assert b["tokens"].shape[0] == 4  # ASV 1 is shared
    gathered = b["tokens"][b["asv_index"]]  # [B, S, L]
    for sample, asvs in enumerate([[0, 1], [1, 2, 3]]):
        for slot, asv in enumerate(asvs):
            expect = TOKENS[asv][: b["tokens"].shape[1]]
            assert gathered[sample, slot].tolist() == expect.tolist()


def test_pads_to_the_batch_longest_sample_and_masks_padding():
    b = collate(rows([[0], [1, 2, 3]], [[5], [9, 2, 1]], [1.0, 2.0]), spec())
    assert b["asv_mask"].shape == (2, 3)
    assert b["asv_mask"].tolist() == [[True, False, False], [True, True, True]]
    assert b["counts"][0].tolist() == [5.0, 0.0, 0.0]


def test_token_limit_keeps_the_first_most_abundant_slots():
    b = collate(rows([[1, 2, 3]], [[9, 2, 1]], [1.0]), spec(limit=2))
    assert b["asv_mask"].shape == (1, 2)
    assert b["counts"][0].tolist() == [9.0, 2.0]
    assert b["tokens"].shape[0] == 2  # ASV 3 is not encoded at all


def test_token_columns_that_are_padding_for_the_whole_batch_are_trimmed():
    b = collate(rows([[2, 3]], [[4, 1]], [1.0]), spec())
    assert b["tokens"].shape[1] == 3  # longest of ASVs 2 and 3


def test_targets_are_transformed_and_missing_stay_nan():
    transform = TargetTransform.fit("zscore", ["age"], np.array([[0.0], [10.0]]))
    b = collate(rows([[0], [1]], [[1], [1]], [10.0, None]), spec(transform=transform))
    assert b["targets"][0, 0].item() == pytest.approx(1.0)
    assert np.isnan(b["targets"][1, 0].item())
    assert b["categoricals"].tolist() == [[1], [1]]
    assert b["unifrac_row"].tolist() == [-1, -1]
