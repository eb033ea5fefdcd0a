"""Nucleotide tokens: the one rule that turns an ASV sequence into model input.

Every letter of a sequence is a real token or an error, never padding: an ambiguous base is a
token of its own (`N`), so a sequence is never silently shortened.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from aam.errors import AamUserError

PAD, A, C, G, T, N, MASK = 0, 1, 2, 3, 4, 5, 6
VOCAB_SIZE = 7

SEQUENCE_RULE = (
    "letters are read case-insensitively; A C G T become tokens 1-4, U is read as T, "
    "the IUPAC ambiguity codes R Y S W K M B D H V N become N (5), 0 pads after the end, "
    "and any other character is an error"
)

_AMBIGUOUS = "RYSWKMBDHVN"
_INVALID = 255
_LUT = np.full(256, _INVALID, dtype=np.uint8)
for _letter, _code in {"A": A, "C": C, "G": G, "T": T, "U": T, **dict.fromkeys(_AMBIGUOUS, N)}.items():
    _LUT[ord(_letter)] = _code
    _LUT[ord(_letter.lower())] = _code

_HASH_LIKE = re.compile(r"^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _not_sequences(ids: Sequence[str]) -> np.ndarray:
    """True for IDs that are clearly names or hashes (MD5/SHA, 'OTU_12', 'ASV1'), not DNA."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.frombuffer("".join(ids).encode("ascii", "replace"), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def per_id(mask: np.ndarray) -> np.ndarray:
        total = np.add.reduceat(mask.astype(np.int64), starts) if flat.size else np.zeros(len(ids), np.int64)
        return np.where(lengths > 0, total, 0)

    digits = per_id((flat >= ord("0")) & (flat <= ord("9")))
    bases = per_id(np.isin(flat, np.frombuffer(b"ACGTUacgtu", dtype=np.uint8)))
    # A real read may carry a few odd letters (those get their own error); a name is mostly not bases.
    return (lengths == 0) | (digits > 0) | (bases < 0.8 * lengths)


def check_ids_are_sequences(observation_ids: Sequence[str], where: str) -> None:
    """Refuse tables whose observation IDs are hashes or names: their letters are not the ASV."""
    bad = np.flatnonzero(_not_sequences(observation_ids))
    hashes = [o for o in observation_ids if len(o) in (32, 40, 64) and _HASH_LIKE.match(o)]
    example = observation_ids[int(bad[0])] if bad.size else (hashes[0] if hashes else None)
    if example is not None:
        raise AamUserError(
            f"observation IDs in {where} are not DNA sequences (e.g. '{_short(example)}'); "
            "pass --sequences dna-sequences.fasta that maps each ID to its sequence"
        )


def normalize(sequences: Sequence[str], ids: Sequence[str] | None = None, where: str = "the table") -> list[str]:
    """Uppercase, U -> T; raises on any letter outside the rule (naming the ID and the letter)."""
    out = [s.upper().replace("U", "T") for s in sequences]
    _codes(out, ids, where)
    return out


def _codes(sequences: Sequence[str], ids: Sequence[str] | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """All sequences' letter codes concatenated, and each sequence's length."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    # "replace" keeps one byte per character, so positions still line up; '?' is invalid.
    flat = np.frombuffer("".join(sequences).encode("ascii", "replace"), dtype=np.uint8)
    codes = _LUT[flat]
    bad = np.flatnonzero(codes == _INVALID)
    if bad.size:
        first = int(bad[0])
        row = int(np.searchsorted(np.cumsum(lengths), first, side="right"))
        pos = first - int(lengths[:row].sum())
        name = ids[row] if ids is not None else f"#{row + 1}"
        raise AamUserError(
            f"sequence of '{_short(str(name))}' in {where} has the letter {sequences[row][pos]!r} at position "
            f"{pos + 1}; only A C G T U and IUPAC codes R Y S W K M B D H V N are allowed "
            "(remove gaps and other characters from the sequences)"
        )
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        name = ids[int(empty[0])] if ids is not None else f"#{int(empty[0]) + 1}"
        raise AamUserError(f"sequence of '{_short(str(name))}' in {where} is empty; every ASV needs its sequence")
    return codes, lengths


def tokenize(
    sequences: Sequence[str],
    width: int | None = None,
    *,
    ids: Sequence[str] | None = None,
    where: str = "the table",
) -> np.ndarray:
    """uint8 [n, width] tokens (rule in SEQUENCE_RULE); width defaults to the longest sequence."""
    codes, lengths = _codes(sequences, ids, where)
    longest = int(lengths.max()) if lengths.size else 0
    if width is None:
        width = longest
    if longest > width:
        row = int(np.argmax(lengths))
        name = ids[row] if ids is not None else f"#{row + 1}"
        raise AamUserError(
            f"sequence of '{_short(str(name))}' in {where} has {longest} letters, more than the token width "
            f"{width}; trim the sequences to {width} bp"
        )
    out = np.zeros((len(sequences), width), dtype=np.uint8)
    rows = np.repeat(np.arange(len(sequences)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths.size else lengths
    cols = np.arange(codes.size) - np.repeat(starts, lengths)
    out[rows, cols] = codes
    return out
