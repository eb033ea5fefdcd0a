"""Starting or joining Ray.

With no address every command starts an embedded local Ray (dashboard on 127.0.0.1 only);
with `--address` or `RAY_ADDRESS` it joins an existing cluster. The dashboard is on by default,
for monitoring and because Ray Train's placement-group cleanup needs its State API; a search
whose trials all run in-process may turn it off (`aam tune --no-dashboard`), which saves its
processes (about 9, ~0.3 GB of memory); it saved no measurable start-up time (BENCHMARKS.md §3).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from pathlib import Path

from aam._ray_internals import enable_token_auth, keep_ray_on_loopback, quiet_private_loggers
from aam.errors import AamUserError

# Defaults a user can still override in their environment. Workers inherit them.
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "300",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Snapshot the experiment state every second (default: adaptive, often ~10 s): a killed driver
    # then loses at most a second of which checkpoint each trial reached, so --resume restarts
    # trials from their last checkpoint rather than an older one (or from scratch).
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    # a failed trial is one line from aam's progress printer (its error.txt keeps the traceback),
    # not Tune's traceback of the driver's ray.get for every failure, retried ones included
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    # Ray Data configures its own logger on import from this, over any setLevel: "Starting
    # execution of Dataset ..." per epoch in every Train worker otherwise
    "RAY_DATA_LOG_LEVEL": "WARNING",
}


def set_ray_env() -> None:
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def quiet_ray_loggers() -> None:
    """Keep Ray's per-report and per-dataset INFO lines out of the terminal, in this process.

    Called in the driver and at the start of every Train worker, where the lines are made. Ray
    Train's "Reporting training result ..." comes from a logger named by its file's path
    (`logging.getLogger(__file__)`), not from "ray.train".
    """
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # and those of Ray's private modules: Train's per-report line, Data's "Progress bars disabled"
    # (RAY_DATA_DISABLE_PROGRESS_BARS is aam's choice: bars garble the per-epoch lines), token auth's advice
    quiet_private_loggers()


def setup_worker() -> None:
    """Run in every worker process of an embedded Ray (its `worker_process_setup_hook`).

    Ray's own code in workers (Train's placement-group cleaner) asks the State API for "the" local
    Ray; with two aam commands running on one machine it finds two and dies with a traceback in the
    user's terminal, leaving placement groups of a crashed run uncleaned. Naming this worker's own
    cluster answers it. Ray Train also triggers its own deprecation warning on every run
    (`ExecutionOptions.exclude_resources`), which no user can act on.
    """
    import warnings

    import ray

    if not os.environ.get("RAY_ADDRESS"):  # unset, or set empty ("start a local Ray") by the driver's caller
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    warnings.filterwarnings("ignore", message=r"`ExecutionOptions\.exclude_resources` is deprecated")
    quiet_ray_loggers()
    sys.unraisablehook = drop_teardown_exits


def drop_teardown_exits(unraisable) -> None:
    """A worker's `sys.unraisablehook`: Ray ends a worker group (after a worker dies) by SIGTERM,
    whose handler raises SystemExit; when that lands inside a finaliser (Ray Data's iterator
    `__del__`), Python prints "Exception ignored in ... Traceback ... SystemExit" in the user's
    terminal beside aam's own one-line error. Only that is dropped; any other is printed as before."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def secure_local_ray() -> None:
    """Before an embedded Ray starts: every port on 127.0.0.1, and token authentication on.

    Ray binds its GCS, raylet, worker, agent and metrics ports to the node's IP or to all
    interfaces, and loopback only when that IP is 127.0.0.1; `ray.init` turns
    `_node_ip_address="127.0.0.1"` back into the machine's reachable IP unless Ray thinks
    multi-node clusters are unsupported here (its RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER switch, read
    once at import into `ENABLE_RAY_CLUSTER`, which it consults on every call). Setting it here
    also covers a process that imported Ray already. Joining a cluster (`--address`) skips this.

    Token auth: Ray 2.60 turns it on for new local clusters when RAY_AUTH_MODE is unset, and
    writes its token file with the user's umask (0644 under the usual 022). aam asks for it
    itself (an explicit RAY_AUTH_MODE, e.g. `disabled` in the test session, is respected) and
    makes the token file readable by its owner only.
    """
    keep_ray_on_loopback()
    mode = os.environ.get(AUTH_MODE_VAR)
    if mode is not None and mode.lower() != "token":
        return
    private_token_file()
    if mode is None:
        # what Ray does for its own default: the env for the processes it starts, and a refresh
        # of this process's cached config, which Ray read before this variable was set
        enable_token_auth()


AUTH_MODE_VAR = "RAY_AUTH_MODE"


def private_token_file() -> Path | None:
    """Ray's token file (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token), made 0600 or created so.

    None when the token comes from RAY_AUTH_TOKEN itself. A file owned by someone else is left as it is.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:  # created 0600 from the start: no moment at which another user could read it
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another aam or Ray wrote it just now
                pass
            else:
                with os.fdopen(descriptor, "w") as out:
                    out.write(secrets.token_hex(32))  # as Ray's own generator: 256 bits
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(0o600)
    except OSError as e:
        raise AamUserError(f"Ray's token file {path}: {e.strerror}; set RAY_AUTH_TOKEN_PATH to a file you can "
                           "write (it is created 0600)") from None
    return path


def worker_runtime_env() -> dict:
    """The runtime_env of every Ray aam starts or joins: the set-up hook of its worker processes."""
    return {"worker_process_setup_hook": _setup_hook(os.path.abspath(os.curdir))}


def _setup_hook(driver_cwd: str):
    """`setup_worker`, behind a step that takes the driver's working directory off `sys.path`.

    Ray puts the driver's working directory first on every worker's `sys.path`, so a folder
    named `aam` there (the folder holding a checkout, or any project of that name) shadows the
    installed package in the workers only ("module 'aam' has no attribute '__version__'"). The
    returned closure is pickled by value, so loading it in a worker imports nothing of aam; it
    cleans the path first. A driver run from the checkout itself keeps it: that is its aam.
    """
    import aam

    keep = Path(aam.__file__).resolve().parent == Path(driver_cwd, "aam").resolve()

    def setup() -> None:
        import sys

        if not keep:
            sys.path[:] = [entry for entry in sys.path if entry != driver_cwd]
        from aam.distributed.cluster import setup_worker as aam_setup

        aam_setup()

    return setup


def local_init_options(num_cpus: int, dashboard: bool = True) -> dict:
    """`ray.init` keywords for an embedded local Ray (the CLI's and the test session's)."""
    import ray

    secure_local_ray()
    return dict(
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        # Ray Train, Tune and Ray Data log every report, checkpoint and dataset execution at INFO
        # in every worker, and the driver prints them whenever they arrive
        logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"),
        log_to_driver=True,
        runtime_env=worker_runtime_env(),
    )


def dashboard_line(url: str) -> str:
    """The dashboard's address, and how to log in when the cluster asks for a token.

    Ray 2.60's dashboard has no link that carries the token: its page asks for the token once and
    keeps it in a cookie. Where Ray reads the token from: RAY_AUTH_TOKEN, else the file named by
    RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (written at the first start with token auth).
    """
    line = f"Ray dashboard: http://{url}"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return line
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the token is in $RAY_AUTH_TOKEN"
    else:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
        where = f"paste the token from {path} (`ray get-auth-token` prints it)"
    return f"{line}  (it asks for a token once: {where})"


@contextlib.contextmanager
def ray_runtime(address: str | None = None, cpus_needed: float = 0.0, quiet: bool = False, dashboard: bool = True):
    """Yield a connected Ray; shut it down afterwards only if this call started it."""
    set_ray_env()
    import ray

    quiet_ray_loggers()  # Ray's "token authentication is enabled" too: the dashboard line says where the token is
    if ray.is_initialized():  # tests and the in-process tune trial share one runtime
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING", runtime_env=worker_runtime_env())
        started = False
    else:
        cpus = os.cpu_count() or 1
        # Logical CPUs may exceed physical ones: a 2-worker run on a 2-core laptop must start.
        num_cpus = max(cpus, int(-(-cpus_needed // 1)))
        # "local": a new cluster of this command's own. With no address ray.init would join the
        # cluster of the last `ray start` on this machine (its ray_current_cluster file), and
        # this command's work would run on, and its end disturb, someone else's Ray.
        context = ray.init(address="local", **local_init_options(num_cpus, dashboard))
        started = True
        url = getattr(context, "dashboard_url", None)
        if url and not quiet:
            print(dashboard_line(url), file=sys.stderr, flush=True)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
