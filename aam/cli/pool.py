"""`aam pool`: converted dataset folders -> one target-free pretraining dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aam.cli._app import app


@app.command()
def pool(
    datasets: Annotated[list[Path], typer.Argument(help="Dataset folders made by `aam convert`.")],
    out: Annotated[Path, typer.Option("--out", help="Pretraining dataset folder to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an --out folder that aam wrote as a dataset.")] = False,
) -> None:
    """Pool datasets' train and val samples (never test) into one pretraining dataset, without targets.

    Pretrain on it with `aam train --data OUT`, then fine-tune on one of the sources with
    `--pretrained-encoder RUN`.
    """
    from aam.data import pool_datasets

    for line in pool_datasets(datasets, out, overwrite=force):
        typer.echo(line)
    typer.echo(f"wrote {out}")
