import json
import zipfile

import numpy as np
import pytest

from aam.data import read_table
from aam.errors import AamUserError

HASHES = ["4b5eeb300fd0a6c4d2a7c1b5e3f6a9d0", "0339c877cba6f85390ee3befc5fda52f"]


@pytest.mark.parametrize("fmt", ["hdf5", "json"])
def test_reads_hdf5_and_json(tmp_path, fmt, write_biom):
    path = write_biom(tmp_path / "t.biom", [[1, 0], [2, 3]], ["acgt", "GGUA"], ["S1", "S2"], fmt=fmt)
    td = read_table(path)
    assert td.sample_ids == ["S1", "S2"]
    assert td.observation_ids == ["acgt", "GGUA"]
    assert td.sequences == ["ACGT", "GGTA"]  # uppercase, U read as T
    assert td.matrix.format == "csc" and td.matrix.toarray().tolist() == [[1, 0], [2, 3]]


def test_hash_ids_need_sequences_then_work_with_fasta(tmp_path, write_biom):
    path = write_biom(tmp_path / "t.biom", [[1, 0], [2, 3]], HASHES, ["S1", "S2"])
    with pytest.raises(AamUserError, match=r"observation IDs in t.biom are not DNA sequences \(e.g. '4b5e.*--sequences"):
        read_table(path)
    fasta = tmp_path / "dna-sequences.fasta"
    fasta.write_text(f">{HASHES[1]} some description\nGGGT\nTTAA\n\n>{HASHES[0]}\nACGTN\n>unused\nAAAA\n")
    td = read_table(path, sequences=fasta)
    assert td.observation_ids == HASHES
    assert td.sequences == ["ACGTN", "GGGTTTAA"]


def test_fasta_missing_an_id_is_an_error(tmp_path, write_biom):
    path = write_biom(tmp_path / "t.biom", [[1], [2]], HASHES, ["S1"])
    fasta = tmp_path / "s.fasta"
    fasta.write_text(f">{HASHES[0]}\nACGT\n")
    with pytest.raises(AamUserError, match=rf"1 of 2 observation IDs in t.biom are not in s.fasta \(e.g. '{HASHES[1]}'\)"):
        read_table(path, sequences=fasta)


def test_bad_letter_in_fasta_names_the_id(tmp_path, write_biom):
    path = write_biom(tmp_path / "t.biom", [[1], [2]], HASHES, ["S1"])
    fasta = tmp_path / "s.fasta"
    fasta.write_text(f">{HASHES[0]}\nACGT\n>{HASHES[1]}\nAC-GT\n")
    with pytest.raises(AamUserError, match=rf"'{HASHES[1]}' in s.fasta has the letter '-'"):
        read_table(path, sequences=fasta)


def test_qza_feature_table_and_rep_seqs(tmp_path, write_biom):
    inner = write_biom(tmp_path / "feature-table.biom", [[1, 0], [2, 3]], HASHES, ["S1", "S2"])
    qza = tmp_path / "table.qza"
    with zipfile.ZipFile(qza, "w") as zf:
        zf.writestr("0f1e/metadata.yaml", "uuid: 0f1e\ntype: FeatureTable[Frequency]\nformat: BIOMV210DirFmt\n")
        zf.write(inner, "0f1e/data/feature-table.biom")
    seqs = tmp_path / "rep-seqs.qza"
    with zipfile.ZipFile(seqs, "w") as zf:
        zf.writestr("aa11/data/dna-sequences.fasta", f">{HASHES[0]}\nACGT\n>{HASHES[1]}\nGGCC\n")
    td = read_table(qza, sequences=seqs)
    assert td.name == "table.qza"
    assert td.sequences == ["ACGT", "GGCC"] and td.matrix.toarray().sum() == 6


def test_qza_without_a_table(tmp_path):
    qza = tmp_path / "other.qza"
    with zipfile.ZipFile(qza, "w") as zf:
        zf.writestr("x/data/distance-matrix.tsv", "\tA\nA\t0\n")
    with pytest.raises(AamUserError, match="without a feature table"):
        read_table(qza)


def test_not_a_biom_names_the_file(tmp_path):
    path = tmp_path / "metadata.tsv"
    path.write_text("sample_id\tage\nS1\t3\n")
    with pytest.raises(AamUserError, match="metadata.tsv is not a BIOM table"):
        read_table(path)
    with pytest.raises(AamUserError, match="does not exist"):
        read_table(tmp_path / "nope.biom")


def test_duplicate_sample_ids_are_an_error(tmp_path, seqs):
    doc = {
        "id": "x", "format": "Biological Observation Matrix 1.0.0", "format_url": "http://biom-format.org",
        "type": "OTU table", "generated_by": "test", "date": "2020-01-01T00:00:00", "matrix_type": "sparse",
        "matrix_element_type": "float", "shape": [2, 2], "data": [[0, 0, 1.0], [1, 1, 2.0]],
        "rows": [{"id": seqs[0], "metadata": None}, {"id": seqs[1], "metadata": None}],
        "columns": [{"id": "S1", "metadata": None}, {"id": "S1", "metadata": None}],
    }  # fmt: skip
    path = tmp_path / "dup.biom"
    path.write_text(json.dumps(doc))
    with pytest.raises(AamUserError, match="dup.biom has duplicate IDs"):
        read_table(path)


def test_negative_counts_are_an_error(tmp_path, write_biom, seqs):
    path = write_biom(tmp_path / "t.biom", [[1, -1]], seqs[:1], ["S1", "S2"])
    with pytest.raises(AamUserError, match="negative or non-finite"):
        read_table(path)


def test_select_is_canonical_and_idempotent(tmp_path, write_biom):
    path = write_biom(tmp_path / "t.biom", [[0, 0], [3, 1], [2, 0]], ["TTTT", "GGGG", "AAAA"], ["S1", "S2"])
    td = read_table(path).select(["S2", "S1"])
    assert td.observation_ids == ["AAAA", "GGGG"]  # empty ASV gone, sorted by sequence
    assert td.sample_ids == ["S2", "S1"]
    again = td.select()
    assert again.observation_ids == td.observation_ids
    assert np.array_equal(again.matrix.toarray(), td.matrix.toarray())
