"""The GPU-step issue's dataset, made reproducibly: mouse_age's longitudinal cohort.

shared/datasets/mouse_age's table restricted to the 433 samples of
`unweighted-unifrac-longitudinal.tsv` (the longitudinal study: 20 mice, 9-112 weeks), rarefied
to 2,733 reads (the authors' depth for those distances) with seed 42, target `Age_wk`, UniFrac
from that matrix, aam's default 0.8/0.1/0.1 split. Expected: 433 samples, 346 train / 44 val /
43 test (checked; a mismatch is an error, so a changed conversion cannot pass silently).

The sample filter is a metadata TSV holding only the matrix's samples (written to a temporary
folder, removed after); every other step is `aam convert`'s own (`convert_dataset`), i.e.

    aam convert --table mouse_age/feature-table.biom --metadata <metadata of the 433 samples> \\
        --target Age_wk --rarefy 2733 --seed 42 --unifrac mouse_age/unweighted-unifrac-longitudinal.tsv

    python benchmarks/make_longitudinal.py --out /tmp/bench/mouse_longitudinal
    python benchmarks/make_longitudinal.py --out DIR --shared /work/shared   # shared/ elsewhere
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's aam, whatever the venv has installed

from aam.data import convert_dataset  # noqa: E402
from aam.data._unifrac import load_matrix  # noqa: E402
MATRIX = "unweighted-unifrac-longitudinal.tsv"
RAREFY, SEED = 2733, 42
EXPECTED_SPLIT = {"train": 346, "val": 44, "test": 43}


def longitudinal_metadata(metadata: Path, sample_ids: set[str], out: Path) -> int:
    """Copy the header and the rows of `sample_ids` (first column) of a metadata TSV; rows kept."""
    lines = metadata.read_text().splitlines(keepends=True)
    kept = [line for line in lines[1:] if line.split("\t", 1)[0] in sample_ids]
    out.write_text(lines[0] + "".join(kept))
    return len(kept)


def make(out: Path, shared: Path, overwrite: bool = False):
    """Convert the longitudinal dataset into `out`; returns aam's ConvertReport."""
    source = shared / "datasets" / "mouse_age"
    if not (source / MATRIX).is_file():
        raise SystemExit(f"--shared {shared}: no datasets/mouse_age/{MATRIX} there; give the folder that holds "
                         "datasets/mouse_age (e.g. --shared /work/shared)")
    ids, _ = load_matrix(source / MATRIX)
    with tempfile.TemporaryDirectory(prefix="aam-longitudinal-") as tmp:
        metadata = Path(tmp) / "sample-metadata.tsv"
        n = longitudinal_metadata(source / "sample-metadata.tsv", set(ids), metadata)
        if n != len(ids):
            raise SystemExit(f"{source / 'sample-metadata.tsv'}: {n} of the matrix's {len(ids)} samples found")
        report = convert_dataset(table=source / "feature-table.biom", metadata=metadata, out=out,
                                 targets=["Age_wk"], rarefy=RAREFY, seed=SEED, unifrac=source / MATRIX,
                                 overwrite=overwrite)
    if report.split_counts != EXPECTED_SPLIT:
        raise SystemExit(f"{out}: split {report.split_counts}, expected {EXPECTED_SPLIT}: the conversion changed")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="dataset folder to write (a new folder)")
    parser.add_argument("--shared", default=str(REPO.parent / "shared"),
                        help="the folder holding datasets/mouse_age (default: the repository's ../shared)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset folder aam wrote before")
    args = parser.parse_args(argv)
    report = make(Path(args.out), Path(args.shared), args.overwrite)
    for line in report.lines():
        print(line)
    return report


if __name__ == "__main__":
    main()
