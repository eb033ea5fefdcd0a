"""Read feature tables (BIOM HDF5/JSON, QIIME 2 .qza) and FASTA files of ASV sequences."""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from aam.data import sequences as seqs
from aam.errors import AamUserError


@dataclass
class TableData:
    """A feature table: ASVs x samples counts, with each ASV's validated sequence."""

    name: str  # the file name, for messages
    sample_ids: list[str]
    observation_ids: list[str]
    sequences: list[str]
    matrix: sp.csc_matrix  # float64, ASVs x samples

    def select(self, sample_ids: list[str] | None = None) -> "TableData":
        """These samples in this order; only ASVs with reads in them, ordered by (sequence, ID).

        The canonical ASV order makes every output independent of the table's row order,
        and applying it twice changes nothing.
        """
        matrix = self.matrix
        if sample_ids is not None:
            index = {s: i for i, s in enumerate(self.sample_ids)}
            missing = [s for s in sample_ids if s not in index]
            if missing:
                raise AamUserError(
                    f"{len(missing)} requested samples are not in {self.name} (e.g. '{missing[0]}'); "
                    "check the sample IDs"
                )
            matrix = matrix[:, [index[s] for s in sample_ids]]
        else:
            sample_ids = list(self.sample_ids)
        present = np.flatnonzero(np.asarray(matrix.sum(axis=1)).ravel() > 0)
        order = sorted(present.tolist(), key=lambda i: (self.sequences[i], self.observation_ids[i]))
        matrix = sp.csc_matrix(matrix[order, :])
        matrix.eliminate_zeros()
        matrix.sort_indices()
        return TableData(
            name=self.name,
            sample_ids=list(sample_ids),
            observation_ids=[self.observation_ids[i] for i in order],
            sequences=[self.sequences[i] for i in order],
            matrix=matrix,
        )


def _require_file(path: Path, flag: str) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise AamUserError(f"{flag} file {path} {what}; check the path")
    return path


def _zip_member(path: Path, suffix: str, what: str) -> str:
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        raise AamUserError(
            f"{path} is a QIIME 2 archive without a {what} ('{suffix}' not found); "
            f"export the {what} artifact or pass the plain file"
        )
    return names[0]


def _load_biom(path: Path, shown: str):
    import biom
    import h5py
    from biom.exception import TableException

    with open(path, "rb") as fh:
        head = fh.read(512).lstrip()
    if not (h5py.is_hdf5(path) or head.startswith(b"{")):
        raise AamUserError(
            f"{shown} is not a BIOM table (expected BIOM HDF5 or JSON); convert a TSV with "
            "'biom convert -i table.tsv -o table.biom --to-hdf5'"
        )
    try:
        return biom.load_table(str(path))
    except TableException as e:
        if "Duplicate" in str(e):
            raise AamUserError(f"{shown} has duplicate IDs ({e}); make every sample and ASV ID unique") from None
        raise AamUserError(f"{shown} is not a readable BIOM table ({e}); check the file") from None
    except Exception as e:
        raise AamUserError(f"{shown} is not a readable BIOM table ({type(e).__name__}: {e}); check the file") from None


def _check_unique(ids: list[str], kind: str, shown: str) -> None:
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for i in ids:
            if i in seen:
                dup = i
                break
            seen.add(i)
        raise AamUserError(f"{shown} has duplicate {kind} ID '{dup}'; make every {kind} ID unique")


def read_fasta(path: str | Path) -> dict[str, str]:
    """{id: sequence} from a FASTA (multi-line records allowed) or a QIIME 2 rep-seqs .qza."""
    path = _require_file(Path(path), "--sequences")
    if zipfile.is_zipfile(path):
        member = _zip_member(path, "/data/dna-sequences.fasta", "representative sequences")
        with zipfile.ZipFile(path) as zf:
            text = zf.read(member).decode("utf-8", "replace")
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
    records: dict[str, list[str]] = {}
    current = None
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            current = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
            if not current:
                raise AamUserError(f"{path.name} line {line_no} has a '>' header without an ID; name every record")
            if current in records:
                raise AamUserError(f"{path.name} has the ID '{current}' twice (line {line_no}); make IDs unique")
            records[current] = []
        elif current is None:
            raise AamUserError(f"{path.name} is not a FASTA file (line {line_no} comes before any '>' header)")
        else:
            records[current].append(line)
    if not records:
        raise AamUserError(f"{path.name} has no FASTA records; pass the dna-sequences.fasta of the table")
    return {k: "".join(v) for k, v in records.items()}


def read_table(path: str | Path, sequences: str | Path | None = None) -> TableData:
    """Read a BIOM (HDF5/JSON) or QIIME 2 FeatureTable .qza; map IDs to sequences via FASTA if given."""
    path = _require_file(Path(path), "--table")
    shown = path.name
    if zipfile.is_zipfile(path):
        member = _zip_member(path, "/data/feature-table.biom", "feature table")
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path) as zf:
            table = _load_biom(Path(zf.extract(member, tmp)), shown)
    else:
        table = _load_biom(path, shown)

    sample_ids = [str(s) for s in table.ids("sample")]
    observation_ids = [str(o) for o in table.ids("observation")]
    if not sample_ids or not observation_ids:
        raise AamUserError(f"{shown} is empty ({len(observation_ids)} ASVs x {len(sample_ids)} samples)")
    _check_unique(sample_ids, "sample", shown)
    _check_unique(observation_ids, "observation", shown)

    matrix = sp.csc_matrix(table.matrix_data, dtype=np.float64)
    if matrix.nnz and (not np.isfinite(matrix.data).all() or (matrix.data < 0).any()):
        raise AamUserError(f"{shown} has negative or non-finite counts; pass a table of read counts")

    if sequences is not None:
        mapping = read_fasta(sequences)
        missing = [o for o in observation_ids if o not in mapping]
        if missing:
            raise AamUserError(
                f"{len(missing)} of {len(observation_ids)} observation IDs in {shown} are not in "
                f"{Path(sequences).name} (e.g. '{seqs._short(missing[0])}'); pass the FASTA made with this table"
            )
        raw = [mapping[o] for o in observation_ids]
        where = f"{Path(sequences).name}"
    else:
        seqs.check_ids_are_sequences(observation_ids, shown)
        raw, where = observation_ids, shown
    return TableData(
        name=shown,
        sample_ids=sample_ids,
        observation_ids=observation_ids,
        sequences=seqs.normalize(raw, observation_ids, where),
        matrix=matrix,
    )
