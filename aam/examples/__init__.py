"""Small real datasets bundled with aam, for tutorials, the demo and tests."""

from pathlib import Path

from aam.errors import AamUserError

_HERE = Path(__file__).parent

# What `aam convert --example NAME` converts (file names inside the example folder).
CONVERT = {
    "mouse_age_mini": {
        "table": "feature-table.biom",
        "metadata": "sample-metadata.tsv",
        "targets": ["Age_wk"],
        "categoricals": ["Diet", "study"],
        "unifrac": "weighted-unifrac.tsv",
    },
}


def names() -> list[str]:
    return sorted(p.name for p in _HERE.iterdir() if p.is_dir() and (p / "README.md").is_file())


def path(name: str) -> Path:
    """The folder of a bundled example, e.g. path("mouse_age_mini") / "feature-table.biom"."""
    folder = _HERE / name
    if not (folder / "README.md").is_file():
        raise AamUserError(f"no bundled example '{name}'; available: {', '.join(names())}")
    return folder


def convert_args(name: str) -> dict:
    """Keyword arguments of `aam.data.convert_dataset` for an example (paths made absolute)."""
    folder = path(name)
    args = dict(CONVERT[name])
    for key in ("table", "metadata", "unifrac", "tree", "sequences"):
        if key in args:
            args[key] = folder / args[key]
    return args
