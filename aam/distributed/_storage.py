"""Where an experiment lives: a local folder (a `Path`) or a URI such as s3://bucket/experiments (a
`str`), which Ray Tune and `write_text` reach through pyarrow's file systems."""

from __future__ import annotations

from pathlib import Path


def is_local(path: str | Path) -> bool:
    return "://" not in str(path)


def storage_join(storage: str, name: str) -> Path | str:
    """A folder below the storage path: a local Path, or a URI string (s3://...)."""
    if not is_local(storage):
        return f"{storage.rstrip('/')}/{name}"
    return Path(storage) / name


def write_text(folder: Path | str, name: str, text: str) -> None:
    """Write `folder/name`, creating the folder, on local disk or at a URI."""
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
        return
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(folder)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as out:
        out.write(text.encode())
