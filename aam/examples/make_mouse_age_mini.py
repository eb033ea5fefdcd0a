"""Rebuild aam/examples/mouse_age_mini from the full mouse_age dataset.

    python -m aam.examples.make_mouse_age_mini [--source DIR] [--out DIR]

Picks 80 longitudinal and 80 dietary samples (seeded, from the IDs sorted), keeps only the
ASVs with reads in them, and copies the metadata rows and the weighted UniFrac submatrix as
text, so values are unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 0
PER_STUDY = 80
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "mouse_age"
DEFAULT_OUT = Path(__file__).resolve().parent / "mouse_age_mini"


def choose_samples(study_of: dict[str, str], table_ids: set[str]) -> list[str]:
    rng = np.random.default_rng(SEED)
    chosen = []
    for study in ("longitudinal", "dietary"):
        ids = sorted(s for s, st in study_of.items() if st == study and s in table_ids)
        chosen += sorted(rng.choice(ids, size=PER_STUDY, replace=False).tolist())
    return chosen


def main() -> None:
    import biom
    from biom.util import biom_open

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    src, out = args.source, args.out
    out.mkdir(parents=True, exist_ok=True)

    meta_lines = (src / "sample-metadata.tsv").read_text().splitlines()
    header = meta_lines[0].split("\t")
    rows = {line.split("\t")[0]: line for line in meta_lines[1:] if line.strip()}
    study_col = header.index("study")
    study_of = {sid: line.split("\t")[study_col] for sid, line in rows.items()}

    table = biom.load_table(str(src / "feature-table.biom"))
    chosen = choose_samples(study_of, set(table.ids("sample")))
    keep = set(chosen)
    mini = table.filter(lambda _v, sid, _m: sid in keep, axis="sample", inplace=False)
    mini = mini.filter(lambda v, _id, _m: v.sum() > 0, axis="observation", inplace=False)
    with biom_open(str(out / "feature-table.biom"), "w") as f:
        mini.to_hdf5(f, "aam make_mouse_age_mini.py")

    (out / "sample-metadata.tsv").write_text(
        "\n".join([meta_lines[0]] + [line for sid, line in rows.items() if sid in keep]) + "\n"
    )

    uf_lines = (src / "weighted-unifrac-longitudinal.tsv").read_text().splitlines()
    uf_ids = uf_lines[0].split("\t")[1:]
    cols = [i for i, sid in enumerate(uf_ids) if sid in keep]
    picked = [uf_lines[0].split("\t")[0] + "\t" + "\t".join(uf_ids[i] for i in cols)]
    for line in uf_lines[1:]:
        cells = line.split("\t")
        if cells[0] in keep:
            picked.append(cells[0] + "\t" + "\t".join(cells[1 + i] for i in cols))
    (out / "weighted-unifrac.tsv").write_text("\n".join(picked) + "\n")
    print(f"{out}: {len(chosen)} samples, {mini.shape[0]} ASVs, UniFrac for {len(cols)} samples")


if __name__ == "__main__":
    main()
