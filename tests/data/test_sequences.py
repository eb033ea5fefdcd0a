import numpy as np
import pytest

from aam.data import sequences as s
from aam.errors import AamUserError


def test_token_codes_and_padding():
    tok = s.tokenize(["ACGT", "GA"])
    assert tok.dtype == np.uint8
    assert tok.tolist() == [[1, 2, 3, 4], [3, 1, 0, 0]]
    assert s.tokenize(["AC"], width=4).tolist() == [[s.A, s.C, s.PAD, s.PAD]]
    assert (s.PAD, s.N, s.MASK, s.VOCAB_SIZE) == (0, 5, 6, 7)


def test_lowercase_and_u_read_as_t():
    assert s.tokenize(["acgu"]).tolist() == [[1, 2, 3, 4]]
    assert s.normalize(["acgu"]) == ["ACGT"]


@pytest.mark.parametrize("code", list("RYSWKMBDHVN") + list("rysn"))
def test_ambiguity_codes_become_n_never_padding(code):
    tok = s.tokenize([f"A{code}C"])
    assert tok.tolist() == [[s.A, s.N, s.C]]


@pytest.mark.parametrize("bad", ["-", ".", "1", "X", "*", "é"])
def test_other_letters_are_an_error_naming_id_and_letter(bad):
    with pytest.raises(AamUserError) as e:
        s.tokenize(["ACGT", f"AC{bad}GT"], ids=["first", "second"], where="t.biom")
    msg = str(e.value)
    assert "'second'" in msg and repr(bad) in msg and "position 3" in msg and "t.biom" in msg
    assert "\n" not in msg


def test_sequence_longer_than_width_is_an_error():
    with pytest.raises(AamUserError, match="more than the token width 3"):
        s.tokenize(["ACGT"], width=3)


@pytest.mark.parametrize(
    "oid", ["4b5eeb300fd0a6c4d2a7c1b5e3f6a9d0", "OTU_12", "ASV1", "Bacteroides", "da39a3ee5e6b4b0d3255bfef95601890afd80709"]
)
def test_hash_or_name_ids_are_not_sequences(oid):
    with pytest.raises(AamUserError):
        s.check_ids_are_sequences([oid], "T.biom")
    with pytest.raises(AamUserError) as e:
        s.check_ids_are_sequences(["ACGTACGT", oid], "T.biom")
    msg = str(e.value)
    assert msg.startswith("observation IDs in T.biom are not DNA sequences")
    assert "--sequences dna-sequences.fasta" in msg and oid[:10] in msg


def test_real_sequences_pass_even_with_an_odd_letter():
    # A '-' inside a read is a sequence with a bad letter (its own error later), not a hash.
    s.check_ids_are_sequences(["TACGTAGGGTGCAAGCGTTAATCGG", "tacgnaggg", "TACG-AGGGTGCA"], "T.biom")
    with pytest.raises(AamUserError, match="letter '-'"):
        s.normalize(["TACG-AGGGTGCA"], ["TACG-AGGGTGCA"])


def test_rule_text_mentions_every_case():
    for word in ("U", "T", "IUPAC", "N (5)", "error"):
        assert word in s.SEQUENCE_RULE
