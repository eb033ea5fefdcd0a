"""Augmentation of real training rows (the bundled mouse_age slice): each draw is a new sample of
the same community, in the layout the collate reads."""

import numpy as np
import pyarrow as pa
import pytest

from aam.data import Dataset
from aam.data.augment import AUGMENTED, augment_rows, drop_asvs, mix_rows, rarefy_sample
from aam.data.collate import BatchSpec, collate


@pytest.fixture(scope="module")
def rows(example_dataset) -> pa.Table:
    return Dataset.open(example_dataset).split("train").slice(0, 16)


def _samples(rows: pa.Table):
    return list(zip(rows.column("asv_idx").to_pylist(), rows.column("counts").to_pylist()))


def test_rarefied_sample_is_a_subsample_of_its_reads_at_a_depth_in_range(rows):
    rng = np.random.default_rng(0)
    asvs, counts = (np.asarray(x) for x in _samples(rows)[0])
    depth = counts.sum()
    for _ in range(20):
        new_asvs, new_counts = rarefy_sample(asvs, counts.astype(np.float32), rng, 0.5)
        assert 0.5 * depth - 1 <= new_counts.sum() <= depth
        before = dict(zip(asvs.tolist(), counts.tolist()))
        # without replacement: no ASV gains reads, no ASV appears from nowhere
        assert all(c <= before[a] for a, c in zip(new_asvs.tolist(), new_counts.tolist()))
        assert (new_counts > 0).all()


def test_dropping_asvs_leaves_a_share_out_and_keeps_at_least_one(rows):
    rng = np.random.default_rng(1)
    asvs, counts = (np.asarray(x) for x in _samples(rows)[1])
    kept = [len(drop_asvs(asvs, counts, rng, 0.3)[0]) for _ in range(50)]
    assert 0.6 * len(asvs) < np.mean(kept) < 0.8 * len(asvs)
    assert all(len(drop_asvs(asvs[:3], counts[:3], rng, 0.9)[0]) >= 1 for _ in range(50))


def test_augmented_rows_keep_the_stored_layout_and_change_from_epoch_to_epoch(rows, example_dataset):
    first = augment_rows(rows, np.random.default_rng(0), rarefy=0.5, drop=0.1)
    again = augment_rows(rows, np.random.default_rng(0), rarefy=0.5, drop=0.1)
    other = augment_rows(rows, np.random.default_rng(1), rarefy=0.5, drop=0.1)
    assert first.schema == rows.schema
    assert first.equals(again) and not first.equals(other)
    for counts, depth in zip(first.column("counts").to_pylist(), first.column("depth").to_pylist()):
        assert counts == sorted(counts, reverse=True)  # token_limit keeps the most abundant
        assert abs(sum(counts) - depth) < 1
    assert all(s.endswith(AUGMENTED) for s in first.column("sample_id").to_pylist())
    assert first.column("target.Age_wk").equals(rows.column("target.Age_wk"))  # only mixup touches targets
    batch = collate(first, BatchSpec(Dataset.open(example_dataset).tokens, ["Age_wk"], [], 32, None))
    kept = np.minimum([len(a) for a in first.column("asv_idx").to_pylist()], 32)
    assert batch["asv_mask"].sum(1).tolist() == kept.tolist()


def test_mixup_mixes_shares_and_targets_by_one_weight(rows):
    rng = np.random.default_rng(3)
    mixed = mix_rows(rows, np.random.default_rng(3), 0.4)
    partner = (np.arange(rows.num_rows) + rng.integers(1, rows.num_rows, size=rows.num_rows)) % rows.num_rows
    weight = rng.beta(0.4, 0.4, size=rows.num_rows)
    age = rows.column("target.Age_wk").to_numpy()
    np.testing.assert_allclose(mixed.column("target.Age_wk").to_numpy(), weight * age + (1 - weight) * age[partner])
    samples, out = _samples(rows), _samples(mixed)
    for i in range(rows.num_rows):
        (a, ca), (b, cb), (m, cm) = samples[i], samples[partner[i]], out[i]
        assert set(m) == set(a) | set(b)
        shares = dict(zip(m, np.asarray(cm) / np.sum(cm)))
        top = a[0]  # the first sample's most abundant ASV carries its weight of that share at least
        assert shares[top] >= weight[i] * ca[0] / np.sum(ca) - 1e-5
    assert (mixed.column("unifrac_row").to_numpy() == -1).all()  # a mixed sample has no known distance
