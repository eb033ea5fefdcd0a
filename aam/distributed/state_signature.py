"""Signatures over the Ray Tune state files of aam's searches, so `--resume` unpickles only what
this user's aam wrote.

Tune keeps a search's state as pickles (tuner.pkl, experiment_state-*.json with pickled fields,
the searcher and search-generator snapshots, callback states) and `Tuner.restore` unpickles them:
an experiment folder someone handed over could run code. aam signs every version of those files
with an HMAC-SHA256 under a per-user key (`$XDG_CONFIG_HOME/aam/state-key`, default
`~/.config/aam/state-key`, created 0600), and `--resume` verifies them before anything is
unpickled.

When the signing happens: Tune writes a snapshot into a local staging folder (its storage's
driver staging path), then copies it to the experiment folder in the background, file by file.
`StateSigner.get_state` runs inside that save, after the experiment state and searcher files are
written, so each version is signed before any copy of it can reach the experiment folder, and the
signature log (`aam-state-signatures.json`, a few versions per file) is written straight into the
experiment folder. The staging folder is read off the first trial's storage, so a new search's
first save (in the step that creates its first trials) is signed at the end of that step
instead, moments after its copy may have begun: a driver killed in those moments leaves a state
that `--resume` refuses in one line rather than trusts. aam's own callbacks keep no Tune callback
state (Tune would pickle it after the signing), so no callback-states file is written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

import pyarrow.fs as _pafs
from ray.tune import Callback

from aam._files import atomic_write
from aam._ray_internals import PICKLED_STATE, driver_staging_folder, experiment_folder
from aam.distributed._storage import WholeFilesFileSystem
from aam.errors import AamUserError

SIGNATURE_FILE = "aam-state-signatures.json"
KEEP_VERSIONS = 16  # signatures kept per file name: versions still being copied while newer ones are signed


def key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aam" / "state-key"


def state_key() -> bytes:
    """This user's signing key, created on first use (0600: only its owner can sign or read it)."""
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another aam made it just now
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AamUserError(f"{path}: aam's signing key is readable or writable by other users (mode "
                           f"{stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
    key = path.read_text().strip()
    if len(key) < 32:
        raise AamUserError(f"{path}: not an aam signing key (too short); remove it and aam makes a new one "
                           "(experiments signed with the old key can then not be resumed)")
    return key.encode()


def _mac(key: bytes, name: str, data: bytes) -> str:
    return hmac.new(key, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def state_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in PICKLED_STATE for p in Path(folder).glob(pattern) if p.is_file()})


def _read_log(experiment: Path) -> dict[str, list[str]]:
    try:
        data = json.loads((experiment / SIGNATURE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {k: list(v) for k, v in files.items() if isinstance(v, list)} if isinstance(files, dict) else {}


def sign_state(source: Path, experiment: Path, names: list[str] | None = None) -> None:
    """Add the signatures of the state files in `source` (a staging folder or the experiment
    itself) to the experiment's signature log (written whole, then renamed: never half-written)."""
    key = state_key()
    files = state_files(source) if names is None else [Path(source) / n for n in names if (Path(source) / n).is_file()]
    if not files:
        return
    log = _read_log(experiment)
    changed = False
    for path in files:
        mac = _mac(key, path.name, path.read_bytes())
        versions = log.setdefault(path.name, [])
        if mac not in versions:
            versions.append(mac)
            del versions[:-KEEP_VERSIONS]
            changed = True
    if changed:
        atomic_write(experiment / SIGNATURE_FILE, json.dumps({"files": log}, indent=0) + "\n")


def verify_state(experiment: Path) -> None:
    """Before anything of `experiment` is unpickled: every Tune state file must carry this user's
    signature; one line naming the first that does not."""
    experiment = Path(experiment)
    log = _read_log(experiment)
    key = state_key()
    for path in state_files(experiment):
        if _mac(key, path.name, path.read_bytes()) not in log.get(path.name, ()):
            raise _unsigned(experiment, path, log)


class StateSigner(Callback):
    """Signs each snapshot of the search's state as Tune saves it (see the module docstring)."""

    def __init__(self, experiment: Path):
        self.experiment = Path(experiment)
        self.staging: Path | None = None

    def on_step_begin(self, iteration, trials, **info):
        self._learn_folders(trials)

    def on_step_end(self, iteration, trials, **info):
        # a new search saves its first snapshot in the step that created its first trials, before
        # this callback could learn the staging folder from them: sign what that save wrote
        if self._learn_folders(trials):
            self.get_state()

    def _learn_folders(self, trials) -> bool:
        """Read the staging and experiment folders off the first trial's storage; True the first time."""
        if self.staging is not None or not trials:
            return False
        self.staging = driver_staging_folder(trials[0])
        self.experiment = Path(experiment_folder(trials[0]))
        return True

    def get_state(self):
        if self.staging is not None and self.staging.is_dir():
            sign_state(self.staging, self.experiment)
        return None  # nothing for Tune to pickle


# --- resuming from a verified private copy --------------------------------------------------
def verified_private_copy(experiment: Path) -> Path:
    """Tune's state files of `experiment`, each read once, its signature checked on those bytes
    and the bytes written into a private folder (0700, this user's; removed with the process).

    Tune restores from this copy (`PinnedStateFileSystem`), so a file swapped in the experiment
    folder after this check changes nothing: what is unpickled is what was verified."""
    from aam._files import work_folder

    experiment = Path(experiment)
    log = _read_log(experiment)
    key = state_key()
    private = work_folder("aam-state-")  # mkdtemp: 0700, owned by this user
    for path in state_files(experiment):
        data = path.read_bytes()
        if _mac(key, path.name, data) not in log.get(path.name, ()):
            raise _unsigned(experiment, path, log)
        fd = os.open(private / path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return private


def _unsigned(experiment: Path, path: Path, log: dict) -> AamUserError:
    why = ("has no signature from this user's aam (written by someone else, another account or an aam "
           "from before signing)") if path.name not in log else "was changed after aam wrote it"
    return AamUserError(
        f"--resume {experiment}: {path.name} {why}; Tune would unpickle it, which can run code, so it is "
        f"not loaded; resume only searches your own aam ran, or start the search again under a new --name "
        f"(`aam runs {experiment}` still reads its trials without unpickling)"
    )


def pinned_state_filesystem(experiment: Path, private: Path):
    """The local filesystem, except that Tune's state files at the top of `experiment` are read
    from the verified copy in `private` (Tune's restore reads them through its storage filesystem:
    tuner.pkl, the newest experiment state, the searcher's snapshots). Everything else is read
    from the experiment folder, and every write goes there, each file whole (`whole_files_filesystem`)."""
    return _pafs.PyFileSystem(PinnedStateFileSystem(str(Path(experiment).resolve()), str(private)))


class PinnedStateFileSystem(WholeFilesFileSystem):
    """See `pinned_state_filesystem`. Picklable (Tune sends its storage filesystem to trials)."""

    def __init__(self, experiment: str, private: str):
        super().__init__()
        self.experiment, self.private = experiment, private

    def __reduce__(self):
        return PinnedStateFileSystem, (self.experiment, self.private)

    def _source(self, path: str) -> str:
        """The private copy that stands for `path`, or `path` itself."""
        folder, _, name = path.rstrip("/").rpartition("/")
        if folder == self.experiment and os.path.isfile(os.path.join(self.private, name)):
            return os.path.join(self.private, name)
        return path

    def get_type_name(self):
        return "aam-pinned-state"
