"""asv_identity: a learned vector per training ASV, keyed by sequence; unseen ASVs use the sequence alone."""

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from aam.config import RunConfig
from aam.data.collate import BatchSpec, collate
from aam.data.sequences import tokenize
from aam.models import AAM

SEQUENCES = ["ACGTACGTAC", "ACGTACGTAA", "TTGCAACGTA", "GGGCCCAAAT"]
TINY = dict(d_model=16, n_heads=2, asv_layers=1, sample_layers=1, nucleotide_patch=1, dropout=0.0)


def batch(sequences):
    tokens = tokenize(sequences, 10)
    table = pa.table({
        "sample_id": ["a", "b"],
        "asv_idx": pa.array([[0, 1, 2], [3, 1]], pa.list_(pa.int32())),
        "counts": pa.array([[9, 5, 1], [7, 2]], pa.list_(pa.float32())),
        "target.y": pa.array([1.0, 2.0]),
    })
    return collate(table, BatchSpec(tokens, ["y"], [], 16, None))


def model(vocabulary, **changes):
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({**TINY, "asv_identity": True, **changes})
    return AAM(cfg, ["y"], 10, {}, asv_vocabulary=vocabulary).eval()


def test_an_asv_never_seen_in_training_reads_the_sequence_path_alone():
    with_identity = model(SEQUENCES[:2])
    with torch.no_grad():
        with_identity.asv_identity.embedding.weight[1:].normal_()  # row 0 (unseen) stays zero, as in training  # as if trained
    plain = AAM(RunConfig.from_dict(TINY), ["y"], 10, {})
    plain.load_state_dict({k: v for k, v in with_identity.state_dict().items() if not k.startswith("asv_identity.")})
    plain.eval()
    # the table's ASVs are none of the vocabulary's: the outputs are the plain model's
    assert with_identity.asv_identity.index_table(SEQUENCES[2:] + ["AAAAAAAAAA", "CCCCCCCCCC"]) == 0
    b = batch(SEQUENCES[2:] + ["AAAAAAAAAA", "CCCCCCCCCC"])
    torch.testing.assert_close(with_identity(b)["prediction"], plain(b)["prediction"])
    # ...while ASVs of the vocabulary change them
    assert with_identity.asv_identity.index_table(SEQUENCES) == 2
    b = batch(SEQUENCES)
    assert not torch.allclose(with_identity(b)["prediction"], plain(b)["prediction"])


def test_rows_are_keyed_by_sequence_not_by_the_tables_asv_index():
    m = model(SEQUENCES)
    with torch.no_grad():
        m.asv_identity.embedding.weight[1:].normal_()  # row 0 (unseen) stays zero, as in training
    m.asv_identity.index_table(SEQUENCES)
    before = m(batch(SEQUENCES))["prediction"]
    # the same samples in a table that lists its ASVs in another order
    order = [2, 0, 3, 1]
    reordered = [SEQUENCES[i] for i in order]
    m.asv_identity.index_table(reordered)
    tokens = tokenize(reordered, 10)
    position = {old: new for new, old in enumerate(order)}
    table = pa.table({
        "sample_id": ["a", "b"],
        "asv_idx": pa.array([[position[i] for i in (0, 1, 2)], [position[i] for i in (3, 1)]], pa.list_(pa.int32())),
        "counts": pa.array([[9, 5, 1], [7, 2]], pa.list_(pa.float32())),
        "target.y": pa.array([1.0, 2.0]),
    })
    after = m(collate(table, BatchSpec(tokens, ["y"], [], 16, None)))["prediction"]
    torch.testing.assert_close(after, before)


def test_identity_dropout_treats_asvs_as_unseen_in_training_only():
    m = model(SEQUENCES, asv_identity_dropout=1.0)
    with torch.no_grad():
        m.asv_identity.embedding.weight[1:].normal_()  # row 0 (unseen) stays zero, as in training
    m.asv_identity.index_table(SEQUENCES)
    vectors = torch.randn(4, 16)
    ids = torch.arange(4)
    m.asv_identity.train()
    torch.testing.assert_close(m.asv_identity(vectors, ids, None), vectors)  # every identity dropped
    m.asv_identity.eval()
    assert not torch.allclose(m.asv_identity(vectors, ids, None), vectors)


def test_asv_identity_is_refused_with_a_frozen_encoder():
    from aam.errors import AamUserError

    with pytest.raises(AamUserError, match="asv_identity=true needs a sample encoder that trains"):
        RunConfig.from_dict({"asv_identity": True, "freeze_encoder": True, "pretrained_encoder": "x"})


def test_the_abundance_bag_reads_every_asv_weighted_by_its_share_of_the_reads():
    m = model(SEQUENCES, abundance_bag=True)
    with torch.no_grad():
        m.asv_identity.bag.weight[1:].normal_()
    m.asv_identity.index_table(SEQUENCES)
    tokens = tokenize(SEQUENCES, 10)
    table = pa.table({
        "sample_id": ["a"], "asv_idx": pa.array([[0, 1, 2]], pa.list_(pa.int32())),
        "counts": pa.array([[6, 3, 1]], pa.list_(pa.float32())), "target.y": pa.array([1.0]),
    })
    # token_limit 1: attention reads one ASV, the bag all three
    b = collate(table, BatchSpec(tokens, ["y"], [], 1, None, all_asvs=True))
    assert b["asv_mask"].shape == (1, 1) and b["all_asvs"].tolist() == [[0, 1, 2]]
    weight = m.asv_identity.bag.weight
    expected = 0.6 * weight[1] + 0.3 * weight[2] + 0.1 * weight[3]
    torch.testing.assert_close(m.asv_identity.pool(b["all_asvs"], b["all_shares"], None)[0], expected)
    # an ASV not in the vocabulary adds nothing
    m.asv_identity.index_table(SEQUENCES[:2] + ["AAAAAAAAAA", "CCCCCCCCCC"])
    torch.testing.assert_close(m.asv_identity.pool(b["all_asvs"], b["all_shares"], None)[0],
                               0.6 * weight[1] + 0.3 * weight[2])


@pytest.mark.parametrize("bag_weight, weigh", [
    ("sqrt", np.sqrt),
    ("log", lambda share: np.log1p(share * 1e4)),
])
def test_the_bag_weight_transforms_each_share_and_padding_still_adds_nothing(bag_weight, weigh):
    m = model(SEQUENCES, abundance_bag=True, abundance_bag_weight=bag_weight)
    with torch.no_grad():
        m.asv_identity.bag.weight[1:].normal_()
    m.asv_identity.index_table(SEQUENCES)
    tokens = tokenize(SEQUENCES, 10)
    table = pa.table({
        "sample_id": ["a", "b"], "asv_idx": pa.array([[0, 1, 2], [3]], pa.list_(pa.int32())),
        "counts": pa.array([[6, 3, 1], [4]], pa.list_(pa.float32())), "target.y": pa.array([1.0, 2.0]),
    })
    b = collate(table, BatchSpec(tokens, ["y"], [], 1, None, all_asvs=True))
    weight = m.asv_identity.bag.weight
    pooled = m.asv_identity.pool(b["all_asvs"], b["all_shares"], None)
    expected_a = sum(float(weigh(share)) * weight[row] for share, row in ((0.6, 1), (0.3, 2), (0.1, 3)))
    torch.testing.assert_close(pooled[0], expected_a)
    torch.testing.assert_close(pooled[1], float(weigh(1.0)) * weight[4])  # sample b's padding slots add nothing


def test_a_bag_weight_without_a_bag_is_flagged_as_having_no_effect():
    cfg = RunConfig.from_dict({"abundance_bag_weight": "sqrt"})
    assert any("abundance_bag_weight=sqrt" in w for w in cfg.redundancy_warnings([]))
    with pytest.raises(Exception, match="abundance_bag_weight"):
        RunConfig.from_dict({"abundance_bag_weight": "cube"})


def test_abundance_bag_needs_asv_identity():
    from aam.errors import AamUserError

    with pytest.raises(AamUserError, match="abundance_bag=true pools the vectors of asv_identity"):
        RunConfig.from_dict({"abundance_bag": True})
