"""`aam predict`: a trained model (rebuilt from its checkpoint alone) on a new BIOM table."""

import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from aam.cli._app import app
from aam.errors import AamUserError


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", help="Run folder (or its model.pt) from `aam train` or `aam export`.")],
    table: Annotated[Path, typer.Option("--table", help="BIOM table (HDF5, JSON or .qza) of the samples to predict.")],
    out: Annotated[Path, typer.Option("--out", help="Predictions TSV to write.")],
    sequences: Annotated[Optional[Path], typer.Option("--sequences", help="FASTA mapping hashed observation IDs to sequences.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per forward pass.")] = 64,
    metadata: Annotated[Optional[Path], typer.Option("--metadata", help="Sample-metadata TSV with the categorical "
                                                     "columns the model reads (needed only by such a model).")] = None,
):
    """Predict the trained targets, on their original scale, for every sample of a table."""
    from aam.training.predict import predict_table

    if out.is_dir():
        raise AamUserError(f"--out {out}: is a folder; give a file name such as predictions.tsv")
    if not out.parent.exists():
        raise AamUserError(f"--out {out}: folder {out.parent} does not exist")
    for flag, given in (("--table", table), ("--metadata", metadata), ("--sequences", sequences)):
        if given is not None and out.resolve() == given.resolve():
            raise AamUserError(f"--out {out}: it is the input {flag}; write the predictions to a file of their own")
    if out.name.endswith((".pt", ".sha256", ".json")) and out.resolve().parent == model.resolve():
        raise AamUserError(f"--out {out}: would write over a file of the --model run; give a name such as predictions.tsv")
    if not os.access(out.parent, os.W_OK):
        raise AamUserError(f"--out {out}: folder {out.parent} is not writable; choose another folder")
    frame, notes = predict_table(model, table, sequences=sequences, batch_size=batch_size, metadata=metadata)
    for note in notes:
        print(f"note: {note}")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.8g")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {len(frame)} predictions to {out}")
