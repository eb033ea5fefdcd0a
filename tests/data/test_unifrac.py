import zipfile

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from aam.data._unifrac import from_matrix, from_tree, load_matrix
from aam.errors import AamUserError

IDS = ["A", "B", "C"]
M = np.array([[0, 0.2, 0.5], [0.2, 0, 0.4], [0.5, 0.4, 0]])


def write_qiime_tsv(path, ids, m):
    lines = ["\t" + "\t".join(ids)] + [i + "\t" + "\t".join(repr(float(v)) for v in row) for i, row in zip(ids, m)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tsv_aligned_to_samples_with_a_subset(tmp_path):
    path = write_qiime_tsv(tmp_path / "d.tsv", IDS, M)
    uf = from_matrix(path, ["C", "X", "A", "Y"])
    assert uf.rows.tolist() == [0, -1, 1, -1]
    assert uf.matrix.dtype == np.float32
    assert np.allclose(uf.matrix, [[0, 0.5], [0.5, 0]])
    assert uf.info == {"source": "matrix", "metric": "precomputed", "n_samples": 2}


def test_other_formats_read_the_same(tmp_path):
    np.save(tmp_path / "d.npy", M)
    (tmp_path / "d.npy.ids.txt").write_text("\n".join(IDS) + "\n")
    with h5py.File(tmp_path / "d.h5", "w") as f:  # the ssu / unifrac-package layout
        f["order"] = np.array([i.encode() for i in IDS])
        f["matrix"] = M
    inner = write_qiime_tsv(tmp_path / "distance-matrix.tsv", IDS, M)
    with zipfile.ZipFile(tmp_path / "d.qza", "w") as zf:
        zf.write(inner, "1234/data/distance-matrix.tsv")
    for name in ("d.npy", "d.h5", "d.qza"):
        ids, m = load_matrix(tmp_path / name)
        assert ids == IDS and np.allclose(m, M), name


def test_npy_needs_its_ids(tmp_path):
    np.save(tmp_path / "d.npy", M)
    with pytest.raises(AamUserError, match=r"needs its sample IDs in d.npy.ids.txt"):
        load_matrix(tmp_path / "d.npy")


@pytest.mark.parametrize(
    "change, message",
    [("asym", "not symmetric"), ("diag", "non-zero diagonal"), ("nan", "non-finite")],
)
def test_not_a_distance_matrix(tmp_path, change, message):
    m = M.copy()
    if change == "asym":
        m[0, 1] = 0.3
    elif change == "diag":
        m[1, 1] = 0.1
    else:
        m[0, 2] = m[2, 0] = np.nan
    with pytest.raises(AamUserError, match=message):
        load_matrix(write_qiime_tsv(tmp_path / "d.tsv", IDS, m))


def test_ragged_or_disjoint(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("\tA\tB\nA\t0\t0.1\nB\t0.1\n")
    with pytest.raises(AamUserError, match="line 3 has 1 values for 2 samples"):
        load_matrix(path)
    with pytest.raises(AamUserError, match=r"covers none of the 2 kept samples \(e.g. matrix 'A', table 'S1'\)"):
        from_matrix(write_qiime_tsv(tmp_path / "ok.tsv", IDS, M), ["S1", "S2"])


TREE = "((AAAA:1,CCCC:2):1,GGGG:3);"


def test_tree_unifrac_by_hand(tmp_path):
    tree = tmp_path / "t.nwk"
    tree.write_text(TREE)
    # ASVs x samples; s1 = {AAAA, CCCC}, s2 = {AAAA, GGGG}, one read each; TTTT is not in the tree.
    counts = sp.csc_matrix(np.array([[1, 1], [1, 0], [0, 1], [0, 6]], dtype=float))
    obs = ["AAAA", "CCCC", "GGGG", "TTTT"]
    # Unweighted: branches of either sample 1+2+1+3 = 7, of only one 2+3 = 5.
    uw = from_tree(tree, counts, obs, ["s1", "s2"], "unweighted")
    assert uw.matrix[0, 1] == pytest.approx(5 / 7)
    # Weighted (unnormalised): sum of length x |proportion difference| = 2*.5 + 1*.5 + 3*.5 = 3.
    w = from_tree(tree, counts, obs, ["s1", "s2"], "weighted")
    assert w.matrix[0, 1] == pytest.approx(3.0)
    for uf in (uw, w):
        assert np.allclose(uf.matrix, uf.matrix.T) and np.all(np.diag(uf.matrix) == 0)
        assert uf.rows.tolist() == [0, 1]
    assert w.info["asvs_not_in_tree"] == 1
    assert w.info["reads_not_in_tree_fraction"] == pytest.approx(6 / 10)
    assert any("1 of 4 ASVs are not in the tree (60.00% of reads)" in n for n in w.notes)


def test_tree_properties_on_random_counts(tmp_path):
    tree = tmp_path / "t.nwk"
    tree.write_text("(((AAAA:1,CCCC:2):0.5,(GGGG:1,TTTT:0.2):1):1,ACGT:3);")
    rng = np.random.default_rng(0)
    counts = sp.csc_matrix(rng.poisson(2, size=(5, 6)).astype(float) + np.eye(5, 6))
    uf = from_tree(tree, counts, ["AAAA", "CCCC", "GGGG", "TTTT", "ACGT"], [f"s{i}" for i in range(6)], "unweighted")
    assert uf.matrix.shape == (6, 6)
    assert np.allclose(uf.matrix, uf.matrix.T) and np.all(np.diag(uf.matrix) == 0)
    assert ((uf.matrix >= 0) & (uf.matrix <= 1)).all()


def test_tree_sample_without_tree_reads_gets_no_row(tmp_path):
    tree = tmp_path / "t.nwk"
    tree.write_text(TREE)
    counts = sp.csc_matrix(np.array([[1, 0, 2], [0, 0, 1], [1, 0, 0], [0, 4, 0]], dtype=float))
    uf = from_tree(tree, counts, ["AAAA", "CCCC", "GGGG", "TTTT"], ["s1", "s2", "s3"], "weighted")
    assert uf.rows.tolist() == [0, -1, 1]


def test_tree_errors(tmp_path):
    tree = tmp_path / "t.nwk"
    tree.write_text(TREE)
    counts = sp.csc_matrix(np.ones((1, 2)))
    with pytest.raises(AamUserError, match="no ASV of the table is a tip of t.nwk"):
        from_tree(tree, counts, ["TTTT"], ["s1", "s2"], "weighted")
    with pytest.raises(AamUserError, match="does not exist"):
        from_tree(tmp_path / "missing.nwk", counts, ["TTTT"], ["s1", "s2"], "weighted")
