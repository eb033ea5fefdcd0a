"""`min_abundance`: ASVs below a share of their sample's reads are left out before token_limit."""

import numpy as np
import pyarrow as pa

from aam.data.collate import BatchSpec, collate

TOKENS = np.array([[1, 2, 0], [2, 1, 0], [3, 3, 3], [4, 1, 2]], dtype=np.uint8)


def rows(asv_lists, count_lists):
    return pa.table({
        "sample_id": [f"s{i}" for i in range(len(asv_lists))],
        "asv_idx": pa.array(asv_lists, pa.list_(pa.int32())),
        "counts": pa.array(count_lists, pa.list_(pa.float32())),
    })


def spec(limit, floor):
    return BatchSpec(TOKENS, [], [], limit, None, min_abundance=floor)


def test_asvs_below_the_floor_are_left_out_and_the_depth_still_counts_them():
    table = rows([[0, 1, 2, 3], [2, 0]], [[60, 30, 8, 2], [50, 50]])
    batch = collate(table, spec(limit=16, floor=0.05))
    # sample 0: 8% and 2% of 100 reads -> only the 2% ASV goes; sample 1 keeps both
    assert batch["asv_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["counts"][0].tolist() == [60.0, 30.0, 8.0]
    assert batch["depth"].tolist() == [100.0, 100.0]  # relative counts divide by every read
    assert sorted(batch["asv_ids"].tolist()) == [0, 1, 2]  # ASV 3 is never encoded


def test_the_floor_and_token_limit_both_apply_and_zero_changes_nothing():
    table = rows([[0, 1, 2, 3]], [[60, 30, 8, 2]])
    assert collate(table, spec(limit=2, floor=0.05))["asv_mask"].tolist() == [[True, True]]
    plain = collate(table, BatchSpec(TOKENS, [], [], 16, None))
    off = collate(table, spec(limit=16, floor=0.0))
    for key in ("tokens", "asv_index", "asv_mask", "counts", "depth"):
        assert off[key].equal(plain[key])
