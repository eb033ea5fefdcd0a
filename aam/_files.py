"""Files aam writes and reads: output folders written all at once and marked as aam's own,
checksums beside checkpoints, checkpoints loaded without running code, and work folders that
go away with the process."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
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
    error it is removed and `out` is left as it was. A marker put in the folder ends up listing
    every file in it: all of them were written by this command."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        kind = output_kind(tmp)
        if kind is not None:
            mark_output(tmp, kind, written=_files_below(tmp))
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
    of it, and a crash leaves at most a hidden temp file beside it, never a truncated `path`."""
    with WholeFile(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


class WholeFile(io.RawIOBase):
    """A file opened for writing that appears under `path` only when it is closed whole.

    It is written as a hidden temp file in the same folder (so the rename stays on one
    filesystem), fsynced, then renamed over `path`: a process killed while writing leaves the old
    `path` (or none) and a temp file, never a truncated `path`. Leaving a `with` block by an
    exception discards it. `close()` alone commits: pyarrow closes the streams it copies into."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._file = os.fdopen(fd, "wb")

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        if not self._file.closed:  # IOBase.close flushes too, after the temp file is closed
            self._file.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())  # the new name never points at bytes the disk has not got
            self._file.close()
            os.chmod(self._tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; an output gets the user's usual mode
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise
        finally:
            super().close()

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
        super().close()

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


def _read_umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which races other threads.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


# --- what aam wrote: a marker that lists it ------------------------------------------------
# `.aam-output`: its first line is the kind of folder aam wrote ("-" for a folder aam did not
# make but wrote a file into); then one "KIND<TAB>PATH" line per file aam wrote there (PATH
# relative to the folder). Only a listed file is ever replaced: a marker alone, written by hand
# or by an older aam, lists nothing, so it lets nothing be replaced.
OUTPUT_MARKER = ".aam-output"
_NO_KIND = "-"
_MAX_MARKER_BYTES = 16 << 20


def _read_marker(folder: Path) -> tuple[str | None, dict[str, str]]:
    marker = Path(folder) / OUTPUT_MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > _MAX_MARKER_BYTES:
            return None, {}
        lines = marker.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None, {}
    kind = lines[0].strip() if lines else ""
    listed = {}
    for line in lines[1:]:
        written_as, tab, relative = line.partition("\t")
        if tab and relative:
            listed[relative] = written_as
    return (kind if kind and kind != _NO_KIND else None), listed


def _write_marker(folder: Path, kind: str | None, listed: dict[str, str]) -> None:
    lines = [kind or _NO_KIND] + [f"{k}\t{p}" for p, k in sorted(listed.items()) if "\n" not in p]
    atomic_write(Path(folder) / OUTPUT_MARKER, "\n".join(lines) + "\n")


def mark_output(folder: Path, kind: str, written=()) -> None:
    """Say that aam wrote `folder` as a `kind`, and add `written` (paths relative to it) to what it
    lists as aam's: only listed files are ever replaced by --force."""
    _, listed = _read_marker(folder)
    _write_marker(folder, kind, {**listed, **{str(p): kind for p in written}})


def output_kind(folder: Path) -> str | None:
    return _read_marker(folder)[0]


def _files_below(folder: Path) -> set[str]:
    """Every file, link or other non-folder below `folder` (links not followed), relative to it,
    without the marker itself."""
    found = set()
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            found.add(os.path.relpath(os.path.join(root, name), folder))
    found.discard(OUTPUT_MARKER)
    return found


def foreign_files(folder: Path) -> list[str]:
    """The files below `folder` that its marker does not list as aam's."""
    _, listed = _read_marker(folder)
    return sorted(p for p in _files_below(folder) if p not in listed)


def _relation(out: Path, other: Path) -> str | None:
    if out == other:
        return "is"
    if other in out.parents:
        return "is inside"
    if out in other.parents:
        return "contains"
    return None


def _check_inputs(out: Path, where: Path, inputs: dict | None, flag: str, allowed: tuple) -> None:
    """Refuse an output that is, is inside or contains an input of the same command, unless it
    is inside one of `allowed` (a place inside an input that the command writes to by design)."""
    if any(where == a or a in where.parents for a in (Path(p).resolve() for p in allowed)):
        return
    found = []
    for name, value in (inputs or {}).items():
        if value in (None, ""):
            continue
        if isinstance(value, str) and "://" in value:
            continue
        relation = _relation(where, Path(value).resolve())
        if relation is not None:
            found.append((relation != "is", relation, name, value))
    if found:  # "is the input --table" says more than "is inside the input --model"
        _, relation, name, value = min(found, key=lambda f: f[0])
        raise AamUserError(f"{flag} {out}: it {relation} the input {name} {value}; "
                           "write the output to a place of its own")


def _check_not_special(out: Path, flag: str, expected: str) -> None:
    if out.is_symlink():
        raise AamUserError(f"{flag} {out}: is a symbolic link; aam writes only to a real path, give the "
                           f"{expected} path itself")
    if out.exists() and not (out.is_dir() if expected == "folder" else out.is_file()):
        what = "a folder" if out.is_dir() else "a file" if out.is_file() else "a FIFO, socket or device"
        raise AamUserError(f"{flag} {out}: is {what}, not a {expected}; give a new {expected} path")


def _check_writable(out: Path, where: Path, flag: str) -> None:
    existing = next((p for p in (where, *where.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise AamUserError(f"{flag} {out}: cannot write in {existing} (permission denied); choose a folder you can "
                           "write to")


def check_output_folder(out: Path, kind: str, force: bool, inputs: dict[str, object] | None = None,
                        flag: str = "--out", continuing: Path | None = None, allowed: tuple = ()) -> bool:
    """Refuse, before any other work, an output folder that would lose data; True if it will be replaced.

    Refused: a link, file, FIFO or device; a folder equal to, inside or containing an input of the
    same command (a `--force` would delete the input, writing into it would change it), unless it
    is inside one of `allowed`; a non-empty folder without --force; with --force, a folder that aam
    did not mark as its own `kind`, or that holds a file its marker does not list.
    `continuing` is a folder this command continues in place (`aam train --resume-from`).
    """
    out = Path(out)
    _check_not_special(out, flag, "folder")
    where = out.resolve()
    if continuing is not None and where == Path(continuing).resolve():
        _check_writable(out, where, flag)
        return False
    _check_inputs(out, where, inputs, flag, allowed)
    _check_writable(out, where, flag)
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not force:
        raise AamUserError(f"{flag} {out}: folder is not empty; choose a new folder or pass --force")
    found = output_kind(out)
    if found != kind:
        what = "aam did not write it" if found is None else f"aam wrote it as a {found}"
        raise AamUserError(f"{flag} {out}: --force replaces only a {kind} folder that aam wrote (it holds "
                           f"{OUTPUT_MARKER}), but {what}; choose a new folder, or move it away yourself")
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise AamUserError(f"{flag} {out}: --force replaces only what aam wrote there, but it also holds {shown} "
                           f"(not listed in its {OUTPUT_MARKER}); move those away, or choose a new folder")
    return True


def check_output_file(out: Path, kind: str, inputs: dict[str, object] | None = None, flag: str = "--out",
                      allowed: tuple = ()) -> None:
    """Refuse, before any other work, an output file that would lose data.

    Refused: a link, folder, FIFO or device; a missing parent folder; a path that is or lies inside
    an input of the same command (unless inside one of `allowed`); an existing file unless aam
    listed it as a `kind` it wrote (so a second run of the same command replaces its own output).
    """
    out = Path(out)
    _check_not_special(out, flag, "file")
    if not out.parent.is_dir():
        raise AamUserError(f"{flag} {out}: folder {out.parent} does not exist; create it first")
    where = out.parent.resolve() / out.name
    _check_inputs(out, where, inputs, flag, allowed)
    if out.exists():
        found = _read_marker(out.parent)[1].get(out.name)
        if found is None:
            raise AamUserError(f"{flag} {out}: exists and aam did not write it; choose a new file name, or move it "
                               "away yourself")
        if found != kind:
            raise AamUserError(f"{flag} {out}: aam wrote it as part of a {found}, not as a {kind}; choose a new "
                               "file name")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise AamUserError(f"{flag} {out}: cannot write in {out.parent} (permission denied); choose a folder you can "
                           "write to")


def write_output_file(out: Path, kind: str, data: bytes | str) -> None:
    """Write a file checked by `check_output_file` all at once, and list it as aam's `kind` in its
    folder's marker (so the same command may replace it next time, and nothing else may)."""
    out = Path(out)
    atomic_write(out, data)
    folder_kind, listed = _read_marker(out.parent)
    _write_marker(out.parent, folder_kind, {**listed, out.name: kind})


@contextlib.contextmanager
def replacing_folder(out: Path, replace: bool):
    """Write into `out`; with `replace`, the old contents are moved aside first and removed only
    when the block succeeds (on an error they are put back, so a failed run loses nothing).
    Whatever the block wrote is listed in the marker, even when it fails (a failed run's folder is
    still aam's to replace); files that were there before are not."""
    out = Path(out)
    old = None
    if replace and out.is_dir():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    before = _files_below(out) if out.is_dir() else set()
    try:
        yield out
    except BaseException:
        if old is not None:
            shutil.rmtree(out, ignore_errors=True)  # only what this command wrote
            os.rename(old, out)
        elif out.is_dir() and {p.name for p in out.iterdir()} <= {OUTPUT_MARKER}:
            shutil.rmtree(out, ignore_errors=True)  # failed before writing anything: leave no folder
        else:
            _list_written(out, before)
        raise
    _list_written(out, before)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _list_written(out: Path, before: set[str]) -> None:
    kind = output_kind(out) if out.is_dir() else None
    if kind is not None:
        mark_output(out, kind, written=_files_below(out) - before)


# --- JSON that aam wrote and reads back ----------------------------------------------------
MAX_JSON_BYTES = 64 << 20


def read_json(path: Path, what: str = "file") -> object:
    """A JSON file aam wrote, read back from a folder a user may have edited or received: a file
    that is missing, too large, not text, not JSON or nested past Python's limits is one line
    (AamUserError) naming it. The caller checks the types of what it uses."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise AamUserError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a {what} aam wrote")
        return json.loads(path.read_bytes())
    except OSError as e:
        raise AamUserError(f"{path}: cannot read this {what} ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise AamUserError(f"{path}: this {what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise AamUserError(f"{path}: this {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") \
            from None
    except RecursionError:
        raise AamUserError(f"{path}: this {what} is nested too deeply to be one aam wrote") from None


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
    before aam wrote them); a mismatch is one line naming the file. Only for a check alone: a
    file that is then used must be read with `read_verified`, so what is used is what was checked."""
    return read_verified(path)[1]


def read_verified(path: Path) -> tuple[bytes, bool]:
    """The bytes of `path`, read once, and whether the checksum beside it vouched for them (False
    when there is none); a mismatch is one line naming the file. Use these bytes: reopening the
    path would read whatever was swapped in after the check."""
    path = Path(path)
    data = path.read_bytes()
    sidecar = checksum_file(path)
    if not sidecar.is_file():
        return data, False
    expected = sidecar.read_text().split()[:1]
    if expected != [hashlib.sha256(data).hexdigest()]:
        raise AamUserError(f"{path}: its contents do not match {sidecar.name} (the file is corrupt or was changed "
                           "after aam wrote it); use another copy, or an earlier checkpoint")
    return data, True


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
    data, checked = read_verified(path)
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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


# --- one driver per experiment ------------------------------------------------------------
@contextlib.contextmanager
def driver_lock(folder: Path, what: str = "experiment"):
    """Hold the lock of `folder` (a file beside it, `.NAME.aam-lock`) while the block runs, or
    refuse in one line naming the process that holds it.

    The lock is the kernel's (flock): it goes with the process however that ends, so a killed
    driver never leaves it held. The file also names the holder (PID and host) for that message;
    a name left by a dead process on this host is taken over with a note. One left by a process
    on another host cannot be checked from here: it is refused, and says how to clear it."""
    import fcntl
    import socket

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.aam-lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise AamUserError(f"{lock}: cannot open the lock of {what} {folder} ({e.strerror}); is it a link, or a "
                           "folder you cannot write to?") from None
    try:
        host = socket.gethostname()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AamUserError(f"{folder}: this {what} is being run by {_holder(fd) or 'another process'}; one "
                               "driver per experiment: wait for it to end, or stop it first") from None
        held = _holder_record(fd)
        if held and held.get("host") != host:
            raise AamUserError(f"{folder}: this {what} is being run by {_holder(fd)}, which cannot be checked from "
                               f"{host}; if that process has ended, delete {lock} and try again")
        if held and held.get("pid") != os.getpid():
            print(f"note: {lock}: took over from process {held.get('pid')}, which no longer holds it (it was "
                  "killed or ended before it could let go)", file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host}).encode(), 0)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)  # ended cleanly: the next driver has nothing to take over
    finally:
        os.close(fd)  # lets the flock go


def _holder_record(fd: int) -> dict | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _holder(fd: int) -> str:
    record = _holder_record(fd)
    return f"process {record.get('pid')} on {record.get('host')}" if record else ""


# --- work folders: removed when the process ends, however it ends --------------------------
_WORK_FOLDERS: set[str] = set()
_WORK_PREFIXES = ("aam-run-", "aam-ckpt-", "aam-state-")


def work_folder(prefix: str) -> Path:
    """A folder in the system temp directory, removed by `remove_work_folder` or at process exit
    (normal, exception, or SIGTERM via `exit_on_sigterm`). Its name carries this process's id, so
    the folder of a process that was killed (SIGKILL runs no exit handler) is removed by the next
    one that makes a work folder (`remove_stale_work_folders`)."""
    remove_stale_work_folders()
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    _WORK_FOLDERS.add(path)
    return Path(path)


def remove_stale_work_folders(root: str | Path | None = None) -> list[Path]:
    """Remove this user's aam work folders (aam-run-PID-*, aam-ckpt-PID-*) whose process no longer
    runs; return them. Only folders named so, owned by this user, in the temp directory: nothing
    else is touched, and a folder of a live process is left alone."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        prefix = next((p for p in _WORK_PREFIXES if entry.name.startswith(p)), None)
        pid = entry.name[len(prefix):].split("-", 1)[0] if prefix else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not process_alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


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
