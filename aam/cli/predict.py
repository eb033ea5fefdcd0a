"""`aam predict`: a trained model (rebuilt from its checkpoint alone) on a new BIOM table."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from aam._files import check_output_file, write_output_file
from aam.cli._app import app


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

    run_folder = model if model.is_dir() else model.parent  # every file of the run is an input, not only model.pt
    check_output_file(out, "predictions", {"--model": run_folder, "--table": table, "--metadata": metadata,
                                           "--sequences": sequences})
    frame, notes = predict_table(model, table, sequences=sequences, batch_size=batch_size, metadata=metadata)
    for note in notes:
        print(f"note: {note}")
    write_output_file(out, "predictions", frame.to_csv(sep="\t", index=False, float_format="%.8g"))
    print(f"wrote {len(frame)} predictions to {out}")
