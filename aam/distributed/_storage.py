"""Where an experiment lives: a local folder (a `Path`) or a URI such as s3://bucket/experiments (a
`str`), which Ray Tune and `write_text` reach through pyarrow's file systems."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from aam._files import WholeFile, atomic_write


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
        atomic_write(folder / name, text)
        return
    fs, root = pafs.FileSystem.from_uri(folder)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as out:
        out.write(text.encode())


def whole_files_filesystem():
    """The local filesystem for Tune's storage, on which a file appears only when written whole.

    Tune writes its state (the experiment state, the searcher's snapshots) into a staging folder
    and copies it into the experiment through its storage filesystem, and trials copy their
    checkpoints and results the same way; on pyarrow's own local filesystem each copy is written
    in place, so a driver killed mid-copy left a truncated experiment state that no resume could
    use. Through this one, a killed copy leaves the previous version and a hidden temp file."""
    return pafs.PyFileSystem(WholeFilesFileSystem())


class WholeFilesFileSystem(pafs.FileSystemHandler):
    """See `whole_files_filesystem`. Picklable (Tune sends its storage filesystem to trials and
    pickles it into tuner.pkl: moving this class means answering its old name on resume, as
    `tune._OLD_MODULE_NAMES` does for the search space)."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def __reduce__(self):
        return type(self), ()

    def _source(self, path: str) -> str:
        """Where a read of `path` is served from (a subclass may answer another file)."""
        return path

    def get_type_name(self):
        return "aam-whole-files"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def equals(self, other):
        return type(other) is type(self) and other.__reduce__() == self.__reduce__()

    def get_file_info(self, paths):
        infos = self.local.get_file_info([self._source(p) for p in paths])
        return [pafs.FileInfo(p, i.type, size=i.size, mtime=i.mtime) for p, i in zip(paths, infos)]

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def open_input_stream(self, path):
        return self.local.open_input_stream(self._source(path))

    def open_input_file(self, path):
        return self.local.open_input_file(self._source(path))

    def copy_file(self, src, dest):
        with self.local.open_input_stream(self._source(src)) as source, self.open_output_stream(dest, None) as out:
            while block := source.read(1 << 20):
                out.write(block)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.local.delete_root_dir_contents()

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(WholeFile(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, metadata=metadata)
