"""The Typer app every command module registers itself on."""

import typer

app = typer.Typer(
    name="aam",
    help="Attention All Microbes: train and tune transformers on 16S amplicon tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Attention All Microbes: train and tune transformers on 16S amplicon tables."""
