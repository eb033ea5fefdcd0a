"""`aam convert`: BIOM + metadata (+ UniFrac) -> dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from aam.cli._app import app


@app.command()
def convert(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    table: Annotated[
        Optional[Path], typer.Option("--table", help="BIOM table (HDF5 or JSON) or QIIME 2 FeatureTable .qza.")
    ] = None,
    metadata: Annotated[Optional[Path], typer.Option("--metadata", help="Sample metadata TSV (QIIME 2 style).")] = None,
    target: Annotated[
        Optional[list[str]], typer.Option("--target", help="Metadata column to predict (repeatable).")
    ] = None,
    categorical: Annotated[
        Optional[list[str]], typer.Option("--categorical", help="Categorical metadata column (repeatable).")
    ] = None,
    id_column: Annotated[Optional[str], typer.Option("--id-column", help="Sample ID column of the metadata.")] = None,
    sequences: Annotated[
        Optional[Path], typer.Option("--sequences", help="FASTA mapping observation IDs (e.g. MD5) to sequences.")
    ] = None,
    rarefy: Annotated[
        Optional[int], typer.Option("--rarefy", help="Subsample every sample to this many reads.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed for the split and rarefaction.")] = 0,
    split: Annotated[str, typer.Option("--split", help="train/val/test fractions.")] = "0.8/0.1/0.1",
    group_by: Annotated[
        Optional[str], typer.Option("--group-by", help="Keep each value of this column on one side of the split.")
    ] = None,
    unifrac: Annotated[
        Optional[Path], typer.Option("--unifrac", help="Precomputed UniFrac matrix (TSV, .qza, .npy+.ids.txt, HDF5).")
    ] = None,
    tree: Annotated[Optional[Path], typer.Option("--tree", help="Newick tree to compute UniFrac from.")] = None,
    unifrac_metric: Annotated[
        str, typer.Option("--unifrac-metric", help="With --tree: unweighted or weighted.")
    ] = "unweighted",
    example: Annotated[
        Optional[str],
        typer.Option("--example", help="Convert a bundled example (mouse_age_mini); other flags override its files."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an --out folder that aam wrote as a dataset.")] = False,
) -> None:
    """Convert a BIOM table and its metadata into a dataset folder for training."""
    from aam.data import convert_dataset, parse_split

    given = {"table": table, "metadata": metadata, "targets": target or None, "categoricals": categorical or None,
             "unifrac": unifrac}  # fmt: skip
    report = convert_dataset(out=out, id_column=id_column, sequences=sequences, rarefy=rarefy, seed=seed,
                             split=parse_split(split), group_by=group_by, tree=tree, unifrac_metric=unifrac_metric,
                             overwrite=force, **_inputs(given, example, tree))
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"wrote {out}")


def _inputs(given: dict, example: str | None, tree: Path | None) -> dict:
    """The table, metadata, targets, categoricals and UniFrac to convert: a bundled example's, then
    the flags given (a --tree replaces the example's UniFrac matrix); the table and metadata required."""
    from aam.errors import AamUserError

    args = {}
    if example is not None:
        from aam import examples

        args = examples.convert_args(example)
        if tree is not None:
            args.pop("unifrac", None)
    args.update({k: v for k, v in given.items() if v is not None})
    for key, flag in (("table", "--table"), ("metadata", "--metadata")):
        if not args.get(key):
            raise AamUserError(f"{flag} is required (or pass --example mouse_age_mini to convert the bundled example)")
    if not args.get("targets"):
        args["targets"] = []
        print("no --target: writing a pretraining dataset (UniFrac and masked nucleotides only)")
    return args
