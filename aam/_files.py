"""Files aam writes and reads: output folders written all at once and marked as aam's own,
checksums beside checkpoints, checkpoints loaded without running code, and work folders that
go away with the process."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from aam.errors import AamUserError


@contextlib.contextmanager
def staged_folder(out: Path):
    """Yield a hidden sibling folder to write into; on success it replaces `out` by renames, on any
    error it is removed and `out` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():  # callers only get here with an empty folder or --force
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` all at once: a reader sees the old file or the new one, never half
    of it, and a crash leaves at most a hidden temp file beside it, never a truncated `path`.

    The temp file is in the same folder (so the rename stays on one filesystem) and is fsynced
    before the rename, so the new name never points at bytes the disk has not got yet."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; an output gets the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which races other threads.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


# --- what aam wrote: a marker in every output folder ---------------------------------------
OUTPUT_MARKER = ".aam-output"  # holds the kind: run, dataset, baseline, experiment


def mark_output(folder: Path, kind: str) -> None:
    """Say that aam wrote `folder` as a `kind`: only such a folder is ever replaced by --force."""
    (Path(folder) / OUTPUT_MARKER).write_text(kind + "\n")


def output_kind(folder: Path) -> str | None:
    marker = Path(folder) / OUTPUT_MARKER
    try:
        return marker.read_text().strip() if marker.is_file() else None
    except OSError:
        return None


def _relation(out: Path, other: Path) -> str | None:
    if out == other:
        return "is"
    if other in out.parents:
        return "is inside"
    if out in other.parents:
        return "contains"
    return None


def check_output_folder(out: Path, kind: str, force: bool, inputs: dict[str, object] | None = None,
                        flag: str = "--out", continuing: Path | None = None) -> bool:
    """Refuse, before any other work, an output folder that would lose data; True if it will be replaced.

    Refused: a file; a folder equal to, inside or containing an input of the same command (a
    `--force` would delete the input, writing into it would change it); a non-empty folder
    without --force; with --force, a folder that aam did not mark as its own `kind`.
    `continuing` is a folder this command continues in place (`aam train --resume-from`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AamUserError(f"{flag} {out}: exists and is not a folder; give a folder path")
    where = out.resolve()
    for name, value in (inputs or {}).items():
        if value in (None, ""):
            continue
        if isinstance(value, str) and "://" in value:
            continue
        relation = _relation(where, Path(value).resolve())
        if relation is not None and not (continuing is not None and where == Path(continuing).resolve()):
            raise AamUserError(f"{flag} {out}: it {relation} the input {name} {value}; "
                               "write the output to a folder of its own")
    existing = next((p for p in (where, *where.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise AamUserError(f"{flag} {out}: cannot write in {existing} (permission denied); choose a folder you can "
                           "write to")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if continuing is not None and where == Path(continuing).resolve():
        return False
    if not force:
        raise AamUserError(f"{flag} {out}: folder is not empty; choose a new folder or pass --force")
    found = output_kind(out)
    if found != kind:
        what = "aam did not write it" if found is None else f"aam wrote it as a {found}"
        raise AamUserError(f"{flag} {out}: --force replaces only a {kind} folder that aam wrote (it holds "
                           f"{OUTPUT_MARKER}), but {what}; choose a new folder, or move it away yourself")
    return True


@contextlib.contextmanager
def replacing_folder(out: Path, replace: bool):
    """Write into `out`; with `replace`, the old contents are moved aside first and removed only
    when the block succeeds (on an error they are put back, so a failed run loses nothing)."""
    out = Path(out)
    old = None
    if replace and out.is_dir():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        yield out
    except BaseException:
        if old is not None:
            shutil.rmtree(out, ignore_errors=True)  # only what this command wrote
            os.rename(old, out)
        elif out.is_dir() and {p.name for p in out.iterdir()} <= {OUTPUT_MARKER}:
            shutil.rmtree(out, ignore_errors=True)  # failed before writing anything: leave no folder
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- checksums beside checkpoint and model files -------------------------------------------
CHECKSUM_SUFFIX = ".sha256"


def checksum_file(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksum(path: Path) -> None:
    """`NAME.sha256` beside `path`, in `sha256sum` format (`sha256sum -c` checks it too)."""
    path = Path(path)
    checksum_file(path).write_text(f"{sha256_of(path)}  {path.name}\n")


def verify_checksum(path: Path) -> bool:
    """True when the checksum beside `path` matches; False when there is none (a file from
    before aam wrote them); a mismatch is one line naming the file."""
    path = Path(path)
    sidecar = checksum_file(path)
    if not sidecar.is_file():
        return False
    expected = sidecar.read_text().split()[:1]
    if expected != [sha256_of(path)]:
        raise AamUserError(f"{path}: its contents do not match {sidecar.name} (the file is corrupt or was changed "
                           "after aam wrote it); use another copy, or an earlier checkpoint")
    return True


def save_torch(obj, path: Path) -> None:
    """torch.save, then the checksum beside it."""
    import torch

    torch.save(obj, path)
    write_checksum(path)


_NOTED: set[str] = set()


def load_torch(path: Path, what: str = "aam file") -> object:
    """Load a model.pt/state.pt: its checksum checked, and only plain data and tensors unpickled
    (`weights_only=True`), so a received file can never run code."""
    import pickle

    import torch

    path = Path(path)
    checked = verify_checksum(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported (?:global|class)[:\s]*(?:GLOBAL\s+)?([\w.]+)", str(e))
        named = f" (it names {found.group(1)})" if found else ""
        raise AamUserError(f"{path}: refused: it holds Python objects that could run code when loaded, not only "
                           f"tensors and plain data{named}; not loaded: use a {path.name} that aam wrote") from None
    except Exception as e:  # a truncated or foreign file is the user's to fix
        detail = " ".join(str(e).split())[:160]
        raise AamUserError(f"{path}: not a readable {what} ({type(e).__name__}: {detail})") from None
    if not checked and str(path) not in _NOTED:
        _NOTED.add(str(path))
        print(f"note: {path} has no {checksum_file(path).name} beside it (written by an older aam); "
              "loaded without a corruption check", file=sys.stderr, flush=True)
    return loaded


# --- work folders: removed when the process ends, however it ends --------------------------
_WORK_FOLDERS: set[str] = set()


def work_folder(prefix: str) -> Path:
    """A folder in the system temp directory, removed by `remove_work_folder` or at process exit
    (normal, exception, or SIGTERM via `exit_on_sigterm`)."""
    path = tempfile.mkdtemp(prefix=prefix)
    _WORK_FOLDERS.add(path)
    return Path(path)


def remove_work_folder(path: Path) -> None:
    _WORK_FOLDERS.discard(str(path))
    shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _remove_work_folders() -> None:
    for path in list(_WORK_FOLDERS):
        remove_work_folder(Path(path))


def exit_on_sigterm() -> None:
    """SIGTERM becomes SystemExit in the main thread, so `finally` blocks and atexit run."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit)
