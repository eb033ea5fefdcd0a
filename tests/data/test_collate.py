import numpy as np
import pyarrow as pa
import pytest
import torch

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


def spec(limit=16, transform=None):
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


def test_depth_counts_every_read_of_the_sample_not_only_the_kept_slots():
    table = rows([[1, 2, 3], [0]], [[9, 2, 1], [4]], [1.0, 2.0])
    assert collate(table, spec(limit=2))["depth"].tolist() == [12.0, 4.0]  # summed when no depth column
    # a converted dataset's depth column (all reads, before any ASV was dropped) wins
    with_depth = table.append_column("depth", pa.array([20, 5], pa.int64()))
    assert collate(with_depth, spec(limit=2))["depth"].tolist() == [20.0, 5.0]


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


# --- reference (slow) paths: pad_to_limit, dedupe=False ----------------------------------------
def ref_spec(limit=16, pad_to_limit=False, dedupe=True, tokens=TOKENS):
    return BatchSpec(tokens, ["age"], ["diet"], limit, None, pad_to_limit=pad_to_limit, dedupe=dedupe)


def test_pad_to_limit_pads_slots_to_token_limit_and_keeps_full_token_width():
    r = rows([[0], [2, 3]], [[5], [4, 1]], [1.0, 2.0])
    fast = collate(r, ref_spec(limit=5))
    b = collate(r, ref_spec(limit=5, pad_to_limit=True))
    assert fast["asv_mask"].shape == (2, 2) and fast["tokens"].shape == (3, 4)
    assert b["asv_mask"].shape == (2, 5)
    assert b["asv_index"].shape == (2, 5) and b["counts"].shape == (2, 5)
    assert b["asv_mask"].tolist() == [[True] + [False] * 4, [True, True] + [False] * 3]
    assert b["counts"][1].tolist() == [4.0, 1.0, 0.0, 0.0, 0.0]
    assert b["tokens"].shape == (3, TOKENS.shape[1])  # not trimmed to the longest ASV (4 of 6 columns)
    assert b["asv_mask"][:, :2].tolist() == fast["asv_mask"].tolist()
    assert b["asv_index"][:, :2].tolist() == fast["asv_index"].tolist()


def test_pad_to_limit_still_cuts_samples_longer_than_the_limit():
    b = collate(rows([[1, 2, 3]], [[9, 2, 1]], [1.0]), ref_spec(limit=2, pad_to_limit=True))
    assert b["asv_mask"].shape == (1, 2)
    assert b["counts"][0].tolist() == [9.0, 2.0]


def test_without_dedupe_every_real_slot_has_its_own_token_row():
    asvs = [[0, 1], [1, 2, 3]]
    b = collate(rows(asvs, [[5, 3], [9, 2, 1]], [1.0, 2.0]), ref_spec(dedupe=False))
    assert b["tokens"].shape[0] == 5  # ASV 1 is encoded twice
    assert b["asv_index"][b["asv_mask"]].tolist() == [0, 1, 2, 3, 4]  # each slot its own row
    gathered = b["tokens"][b["asv_index"]]
    for sample, sample_asvs in enumerate(asvs):
        for slot, asv in enumerate(sample_asvs):
            assert gathered[sample, slot].tolist() == TOKENS[asv][: b["tokens"].shape[1]].tolist()
    both = collate(rows(asvs, [[5, 3], [9, 2, 1]], [1.0, 2.0]), ref_spec(limit=4, pad_to_limit=True, dedupe=False))
    assert both["tokens"].shape == (5, TOKENS.shape[1])
    assert both["asv_mask"].shape == (2, 4)


def test_reference_paths_of_an_empty_batch_do_not_fail():
    for pad, dedupe in [(True, True), (False, False), (True, False)]:
        b = collate(rows([[]], [[]], [1.0]), ref_spec(limit=3, pad_to_limit=pad, dedupe=dedupe))
        assert b["tokens"].shape[0] == 1
        assert not b["asv_mask"].any()


def _random_table(n_asvs=16, width=32, seed=0) -> np.ndarray:
    """ASVs of 12-19 nucleotides in a table 32 wide: trimming drops whole 4-nucleotide patches."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 5, size=(n_asvs, width)).astype(np.uint8)
    lengths = rng.integers(12, 20, size=n_asvs)
    tokens[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return tokens


def _random_rows(n_samples=6, n_asvs=16, seed=1) -> pa.Table:
    rng = np.random.default_rng(seed)
    asvs, counts = [], []
    for i in range(n_samples):
        k = int(rng.integers(2, 13))  # all shorter than the token limit (16) below
        asvs.append(rng.choice(n_asvs, size=k, replace=False).tolist())  # samples share ASVs
        counts.append(sorted(rng.integers(1, 300, size=k).astype(float).tolist(), reverse=True))
    return rows(asvs, counts, rng.normal(size=n_samples).tolist())


@pytest.mark.parametrize("pad_to_limit,dedupe", [(True, True), (False, False), (True, False)])
def test_model_outputs_are_the_same_on_the_fast_and_reference_paths(pad_to_limit, dedupe):
    import torch

    from aam.config import RunConfig
    from aam.models import AAM

    table = _random_table()
    r = _random_rows()
    cfg = RunConfig().replace(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, dropout=0.1)
    torch.manual_seed(0)
    model = AAM(cfg, targets=["target0"], token_width=table.shape[1]).eval()
    fast_batch = collate(r, ref_spec(limit=16, tokens=table))
    ref_batch = collate(r, ref_spec(limit=16, pad_to_limit=pad_to_limit, dedupe=dedupe, tokens=table))
    # the reference batch really is a different (bigger) batch
    assert fast_batch["asv_mask"].shape[1] < 16
    if pad_to_limit:
        assert ref_batch["asv_mask"].shape[1] == 16 and ref_batch["tokens"].shape[1] == table.shape[1]
        assert fast_batch["tokens"].shape[1] <= 20 < table.shape[1]
    if not dedupe:
        assert ref_batch["tokens"].shape[0] == int(fast_batch["asv_mask"].sum()) > fast_batch["tokens"].shape[0]
    with torch.no_grad():
        fast, ref = model(fast_batch), model(ref_batch)
    for key in ("prediction", "sample_embedding"):
        torch.testing.assert_close(fast[key], ref[key], atol=1e-5, rtol=1e-5, msg=key)


# --- shape buckets ------------------------------------------------------------------------------
def test_bucket_ladder_rounds_up_by_at_most_a_quarter_and_repeats():
    from aam.data.collate import bucket_size

    assert [bucket_size(n) for n in (1, 8, 9, 63, 64, 65, 80, 81, 128, 129, 1000)] == [
        8, 8, 16, 64, 64, 80, 80, 96, 128, 160, 1024]
    sizes = range(1, 3000)
    assert all(n <= bucket_size(n) <= max(8, 1.25 * n) for n in sizes if n > 64)
    assert all(bucket_size(bucket_size(n)) == bucket_size(n) for n in sizes)  # a bucket is its own bucket
    assert len({bucket_size(n) for n in range(16, 2049)}) <= 30


def test_bucketed_batch_is_the_unbucketed_one_plus_masked_padding():
    r = rows([[0, 1], [1, 2, 3]], [[5, 3], [9, 2, 1]], [1.0, 2.0])
    plain = collate(r, spec())
    bucketed = collate(r, BatchSpec(TOKENS, ["age"], ["diet"], 16, None, shape_buckets=True))
    U, L = plain["tokens"].shape
    S = plain["asv_mask"].shape[1]
    assert bucketed["bucketed_from"] == {"asv_rows": U, "token_length": L, "slots": S}
    # rows 4 -> 8; positions 5 -> 6 (capped at the dataset's token width); slots 3 -> 8 (<= token_limit)
    assert bucketed["tokens"].shape == (8, TOKENS.shape[1]) and bucketed["asv_mask"].shape == (2, 8)
    assert torch.equal(bucketed["tokens"][:U, :L], plain["tokens"])
    assert (bucketed["tokens"][U:] == 0).all() and (bucketed["tokens"][:, L:] == 0).all()  # PAD
    assert torch.equal(bucketed["asv_mask"][:, :S], plain["asv_mask"]) and not bucketed["asv_mask"][:, S:].any()
    assert torch.equal(bucketed["counts"][:, :S], plain["counts"]) and not bucketed["counts"][:, S:].any()
    assert torch.equal(bucketed["asv_index"][:, :S], plain["asv_index"])
    assert len(bucketed["asv_ids"]) == 8 and torch.equal(bucketed["asv_ids"][:U], plain["asv_ids"])
    for key in ("depth", "targets", "categoricals", "unifrac_row"):
        assert torch.equal(bucketed[key], plain[key]), key
    # the slots never exceed token_limit
    capped = collate(r, BatchSpec(TOKENS, ["age"], ["diet"], 3, None, shape_buckets=True))
    assert capped["asv_mask"].shape == (2, 3)
